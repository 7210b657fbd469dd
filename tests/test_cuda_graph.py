"""The compiled, captured forward equals the eager forward (on a GPU only, skipped elsewhere); which
captured set and shapes a generation uses (also on CPU, with a stand-in for the captured set).

The CUDA-graph path pads new tokens to a bucket, reads the committed length from a device tensor
and writes K/V from inside a compiled graph; this checks its logits and the K/V it leaves in the
cache against the plain forward, in float32, for a chain and a tree on a prefilled cache.
"""
import gc

import pytest
import torch

import specbench
from specbench import cuda_graph, engine
from specbench.cuda_graph import graphed_model, step_buckets
from specbench.strategies.early_exit import EarlyExit
from specbench.tree import ancestor_mask

needs_cuda = pytest.mark.cuda


def test_cuda_tests_skip_where_they_cannot_run(monkeypatch):
    """conftest's hook: without CUDA, or with TRITON_INTERPRET=1 in the process (the interpreter's
    tests set it, and the CUDA tests would then fail, session 35), the tests marked cuda are
    skipped with the reason; on a GPU machine in a process of their own they run."""
    import conftest

    class Item:
        def __init__(self, cuda: bool):
            self.cuda, self.skips = cuda, []

        def get_closest_marker(self, name):
            return name == "cuda" and self.cuda or None

        def add_marker(self, marker):
            self.skips.append(marker.kwargs["reason"])

    def skips(cuda_available: bool, environ: dict) -> list[list[str]]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
        items = [Item(cuda=True), Item(cuda=False)]
        conftest.pytest_collection_modifyitems(None, items)
        return [item.skips for item in items]

    assert skips(False, {}) == [["needs a CUDA device"], []]
    interpreted = skips(True, {"TRITON_INTERPRET": "1"})
    assert "make test-cuda" in interpreted[0][0] and interpreted[1] == []
    assert skips(True, {}) == [[], []]


def test_graphed_model_reuses_a_larger_captured_set(monkeypatch):
    """A prompt that needs a larger cache gets a new set; every later, shorter one reuses the
    smallest set large enough instead of capturing again (a benchmark warms up on its longest
    prompt so that no timed answer captures)."""
    class Captured:      # stands in for GraphedModel: records the sizes captured
        def __init__(self, model, size):
            self.size, self.cache = size, type("Cache", (), {"length": 5})()

    monkeypatch.setattr(cuda_graph, "GraphedModel", Captured)
    model = specbench.random_model(seed=0)
    long = graphed_model(model, 1500)
    assert long.size == 2048 and long.cache.length == 0
    assert graphed_model(model, 100) is long
    assert graphed_model(model, 1792) is long
    assert graphed_model(model, 1793).size == 3072
    assert graphed_model(model, 100) is long
    assert step_buckets(0) == (1,) and step_buckets(3) == (1, 4) and step_buckets(151) == cuda_graph.BUCKETS


def test_early_exit_verifies_from_the_layer_it_declares(monkeypatch):
    """engine.run captures the step shapes at the proposer's `verify_start_layer` before the first
    step; early exit's trees resume at its exit layer, so that is what it must declare."""
    model = specbench.random_model(vocab_size=64, num_layers=4, seed=0)
    resumed = []
    step_forward = engine.step_forward

    def recording(ctx, draft, *args):
        resumed.append(draft.resume_layer)
        return step_forward(ctx, draft, *args)

    monkeypatch.setattr(engine, "step_forward", recording)
    specbench.generate(model, [1, 2, 3, 4], method="early_exit", exit_layer=2, max_new_tokens=12, chat=False)
    assert resumed and set(resumed) == {EarlyExit(model, exit_layer=2).verify_start_layer} == {2}


@needs_cuda
@pytest.mark.parametrize("compiled", ["1", "0"])     # SPECBENCH_COMPILE=0 captures the eager forward
def test_graphed_forward_matches_eager(monkeypatch, compiled):
    monkeypatch.setenv("SPECBENCH_COMPILE", compiled)
    model = specbench.random_model(vocab_size=64, num_layers=3, hidden_size=64, num_heads=4,
                                   num_kv_heads=2, seed=1).to("cuda")
    graphed = graphed_model(model, 128)
    eager = model.new_cache(graphed.cache.max_len)
    gen = torch.Generator(device="cuda").manual_seed(0)
    prompt = torch.randint(64, (20,), device="cuda", generator=gen)
    with torch.inference_mode():
        for cache in (graphed.cache, eager):
            model(prompt, torch.arange(20, device="cuda"), cache, stop_layer=model.args.num_layers)
            cache.length = 20
        tree = ancestor_mask(torch.tensor([-1, 0, 0, 1, -1, 4])).cuda()     # root + 6 nodes
        for n, mask in ((1, None), (3, None), (16, None), (7, tree)):
            tokens = torch.randint(64, (n,), device="cuda", generator=gen)
            positions = torch.arange(20, 20 + n, device="cuda")
            got = graphed.forward(tokens, positions, mask).logits
            want = model(tokens, positions, eager, mask).logits
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            for a, b in ((graphed.cache.k, eager.k), (graphed.cache.v, eager.v)):
                torch.testing.assert_close(a[:, :, :20 + n], b[:, :, :20 + n], rtol=1e-4, atol=1e-4)
        # a tree step's inputs go straight into the captured buffers (tree_forward); the same
        # graphs then serve the generic path again, whose mask layout must come back
        for root, parents in ((5, tree[1:, 1:]), (7, None), (9, tree[1:, 1:])):
            tokens = torch.randint(64, (0 if parents is None else 6,), device="cuda", generator=gen)
            rows = torch.cat([torch.tensor([root], device="cuda"), tokens])
            mask = None if parents is None else tree
            depth = torch.zeros(1, dtype=torch.long) if parents is None else torch.tensor([0, 1, 2, 2, 3, 1, 2])
            positions = 20 + depth.cuda()
            got = graphed.tree_forward(root, tokens, parents).logits
            want = model(rows, positions, eager, mask).logits
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            for a, b in ((graphed.cache.k, eager.k), (graphed.cache.v, eager.v)):
                torch.testing.assert_close(a[:, :, :20 + len(rows)], b[:, :, :20 + len(rows)], rtol=1e-4, atol=1e-4)
            tokens = torch.randint(64, (9,), device="cuda", generator=gen)    # the tree's bucket
            positions = torch.arange(20, 29, device="cuda")
            got = graphed.forward(tokens, positions, None).logits
            torch.testing.assert_close(got, model(tokens, positions, eager).logits, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_captured_prefill_matches_eager():
    """On CUDA the prompt is prefilled through the captured forwards in chunks of the largest
    bucket: a 300-token prompt (two chunks) leaves the eager prefill's K/V and features."""
    model = specbench.random_model(vocab_size=64, num_layers=3, hidden_size=64, num_heads=4,
                                   num_kv_heads=2, seed=1).to("cuda")
    prompt = torch.randint(64, (301,), generator=torch.Generator().manual_seed(0)).tolist()
    layers = (1, 3)
    graphed = graphed_model(model, 400)
    with torch.inference_mode():
        ctx = engine.DecodeContext(model, graphed.cache, prompt, 301, specbench.SamplingParams(), None, 0, graphed)
        got = engine.prefill(ctx, prompt[:-1], layers)
        plain = engine.DecodeContext(model, model.new_cache(graphed.cache.max_len), prompt, 301,
                                     specbench.SamplingParams(), None, 0)
        want = engine.prefill(plain, prompt[:-1], layers)
    assert graphed.cache.length == plain.cache.length == 300
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for a, b in ((graphed.cache.k, plain.cache.k), (graphed.cache.v, plain.cache.v)):
        torch.testing.assert_close(a[:, :, :300], b[:, :, :300], rtol=1e-4, atol=1e-4)


def _draft_run(compiled: str, monkeypatch, method: str) -> tuple[list[int], list[int], list[list[int]]]:
    """Greedy float32 tokens of vanilla and of `method` (random drafter), and the tokens of every
    tree it drafted, on a fresh model and drafter (graphs and captured drafts are cached on them)."""
    monkeypatch.setenv("SPECBENCH_COMPILE", compiled)
    model = specbench.random_model(vocab_size=64, num_layers=3, hidden_size=64, num_heads=4,
                                   num_kv_heads=2, seed=1).to("cuda")
    kind, _, tree = method.partition("_")
    options = {"drafter": specbench.random_drafter(model, kind, seed=0)}
    if tree:
        options["tree"] = tree
    prompt = [1, 2, 3, 4, 5, 1, 2, 3]
    vanilla = specbench.generate(model, prompt, max_new_tokens=40, chat=False)
    drafts = []
    step_forward = engine.step_forward

    def recording(ctx, draft, *args):
        drafts.append(draft.tokens.tolist())
        return step_forward(ctx, draft, *args)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "step_forward", recording)
        out = specbench.generate(model, prompt, method=kind, max_new_tokens=40, chat=False, **options)
    return vanilla.token_ids, out.token_ids, drafts


@needs_cuda
@pytest.mark.parametrize("method", ["medusa", "eagle_static", "eagle_dynamic", "eagle3"])
def test_compiled_drafts_match_plain(monkeypatch, method):
    """Medusa's, EAGLE's and EAGLE-3's draft steps are captured in CUDA graphs and torch.compile'd by
    default: in float32 they give vanilla's tokens and draft, step for step, the trees of
    SPECBENCH_COMPILE=0 (so a draft that compiles wrongly shows)."""
    vanilla, compiled, compiled_drafts = _draft_run("1", monkeypatch, method)
    _, plain, plain_drafts = _draft_run("0", monkeypatch, method)
    assert compiled == vanilla == plain
    assert len(plain_drafts) > 1 and any(plain_drafts)
    assert compiled_drafts == plain_drafts


@needs_cuda
def test_a_captured_draft_outlives_the_proposer_that_captured_it():
    """A captured draft step is kept on the drafter and replayed by later generations' proposers:
    it must own every tensor it reads. Memory the first proposer held is refilled with
    out-of-vocabulary ids before the second generation, which must still equal vanilla."""
    model = specbench.random_model(vocab_size=64, num_layers=3, hidden_size=64, num_heads=4,
                                   num_kv_heads=2, seed=1).to("cuda")
    prompt = [1, 2, 3, 4, 5, 1, 2, 3]
    vanilla = specbench.generate(model, prompt, max_new_tokens=24, chat=False).token_ids
    for kind in ("medusa", "eagle"):
        drafter = specbench.random_drafter(model, kind, seed=0)
        first = specbench.generate(model, prompt, method=kind, drafter=drafter, max_new_tokens=24, chat=False)
        gc.collect()
        filler = [torch.full((n,), 10 ** 9, dtype=torch.long, device="cuda") for n in range(1, 512) for _ in range(4)]
        second = specbench.generate(model, prompt, method=kind, drafter=drafter, max_new_tokens=24, chat=False)
        del filler
        assert first.token_ids == second.token_ids == vanilla, kind


@needs_cuda
def test_a_generation_captures_every_step_shape_first():
    """Every bucket a step may use is captured before the first step (lookahead: up to 256 nodes),
    so none is captured inside a timed step."""
    model = specbench.random_model(vocab_size=64, seed=0).to("cuda")
    specbench.generate(model, list(range(3, 40)), method="lookahead", max_new_tokens=4, W=31, N=5)
    graphed = graphed_model(model, 40 + 4 + 152)
    assert {key[0] for key in graphed.graphs if key[1:] == (0, None, ())} == set(cuda_graph.BUCKETS)
