"""On a GPU only (skipped elsewhere): the compiled, captured forward equals the eager forward.

The CUDA-graph path pads new tokens to a bucket, reads the committed length from a device tensor
and writes K/V from inside a compiled graph; this checks its logits and the K/V it leaves in the
cache against the plain forward, in float32, for a chain and a tree on a prefilled cache.
"""
import pytest
import torch

import specbench
from specbench import engine
from specbench.cuda_graph import graphed_model
from specbench.tree import ancestor_mask

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


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
    step_inputs = engine.step_inputs

    def recording(root, draft, length, device):
        drafts.append(draft.tokens.tolist())
        return step_inputs(root, draft, length, device)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "step_inputs", recording)
        out = specbench.generate(model, prompt, method=kind, max_new_tokens=40, chat=False, **options)
    return vanilla.token_ids, out.token_ids, drafts


@pytest.mark.parametrize("method", ["eagle_static", "eagle_dynamic", "eagle3"])
def test_compiled_drafts_match_plain(monkeypatch, method):
    """EAGLE's and EAGLE-3's draft steps are captured in CUDA graphs and torch.compile'd by
    default: in float32 they give vanilla's tokens and draft, step for step, the trees of
    SPECBENCH_COMPILE=0 (so a draft that compiles wrongly shows)."""
    vanilla, compiled, compiled_drafts = _draft_run("1", monkeypatch, method)
    _, plain, plain_drafts = _draft_run("0", monkeypatch, method)
    assert compiled == vanilla == plain
    assert len(plain_drafts) > 1 and any(plain_drafts)
    assert compiled_drafts == plain_drafts
