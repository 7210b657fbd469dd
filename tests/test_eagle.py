"""EAGLE: greedy identity, trees equal to a slow construction, official layout, drafter checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import specbench
from sampled_data import own_samples
from specbench.drafters.base import frequent_tokens
from specbench.drafters.eagle import EagleDraft
from specbench.model import device_kind
from specbench.strategies import eagle as eagle_strategy
from specbench.train import TrainConfig, train_drafter

SHIPPED = Path(specbench.drafters.__file__).parent / "shipped" / "eagle" / "config.json"


@pytest.fixture(scope="module")
def target():
    return specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=1, dtype="float64")


@pytest.fixture(scope="module")
def trained(target, tmp_path_factory):
    """A draft trained on the target's own samples: deep acceptances, so every path of the
    draft-cache bookkeeping (several committed rows per step) is exercised."""
    data = own_samples(target, 24, new_tokens=40, temperature=0.5,
                       prompt=lambda s: [(s * 5 + i * (s % 3 + 1)) % 16 for i in range(4)])
    config = TrainConfig(kind="eagle", epochs=8, lr=2e-2, batch_size=4, warmup_steps=2, validation=4)
    folder = train_drafter(target, config, tmp_path_factory.mktemp("eagle") / "d", data=data, eval_tokens=16,
                           progress=False)
    return specbench.load_drafter(folder, target)


SETTINGS = [{}, {"depth": 1, "draft_top_k": 1, "total_tokens": 1}, {"depth": 5, "draft_top_k": 3, "total_tokens": 24}]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_greedy_identical_float64(seed, tree):
    target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=10 + seed, dtype="float64")
    drafter = specbench.random_drafter(target, "eagle", seed=seed)
    prompt = [(seed + i) % 5 for i in range(12)]
    vanilla = specbench.generate(target, prompt, max_new_tokens=40).token_ids
    for options in SETTINGS:
        out = specbench.generate(target, prompt, method="eagle", drafter=drafter, tree=tree, max_new_tokens=40,
                                 **options)
        assert out.token_ids == vanilla, options
        assert out.stats["lossless"] is True


@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_overflowing_draft_rows_rank_last(target, tree, monkeypatch):
    """A draft row of NaN log-probabilities (a random bf16 draft overflowed on CUDA) must not
    break the tree: NaN sorted above its parent, so a kept node lost its parent and the engine
    failed (tree.depths: IndexError, before the fix). Its nodes now rank last, and decoding stays
    greedy-identical."""
    rows = eagle_strategy.DraftStep.rows

    def overflowing(self, *args):     # the second row of every beam level overflows
        h = rows(self, *args)
        return h.index_fill(0, torch.tensor([1]), float("nan")) if h.shape[0] > 1 else h

    monkeypatch.setattr(eagle_strategy.DraftStep, "rows", overflowing)
    drafter = specbench.random_drafter(target, "eagle", seed=1)
    prompt = [1, 2, 3, 4]
    vanilla = specbench.generate(target, prompt, max_new_tokens=24).token_ids
    out = specbench.generate(target, prompt, method="eagle", drafter=drafter, tree=tree, max_new_tokens=24,
                             depth=4, draft_top_k=4, total_tokens=12)
    assert out.token_ids == vanilla


@pytest.mark.parametrize("tree", ["dynamic", "static", [[0], [1], [0, 0], [0, 1], [0, 0, 0], [1, 0], [0, 0, 0, 0]]])
def test_trained_draft_greedy_identical_and_accepts_deeply(target, trained, tree):
    accepted = []
    for prompt in ([1, 2, 3, 4, 5], [7], [3, 3]):    # [7]: a one-token prompt starts with no feature
        vanilla = specbench.generate(target, prompt, max_new_tokens=50).token_ids
        out = specbench.generate(target, prompt, method="eagle", drafter=trained, tree=tree, max_new_tokens=50)
        assert out.token_ids == vanilla
        accepted += out.stats["accepted_lengths"]
    assert max(accepted) >= 3 and sum(accepted) / len(accepted) > 1.8


@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_draft_vocab_drafts_only_frequent_tokens(target, trained, tree, monkeypatch):
    """draft_vocab=N: the draft scores only the N tokens most often seen in training; still exact."""
    assert int(trained.token_counts.sum()) > 0                 # training counted its targets
    allowed = set(frequent_tokens(trained.token_counts, 6).tolist())
    seen = record_trees(monkeypatch)
    prompt = [1, 2, 3, 4, 5]
    out = specbench.generate(target, prompt, method="eagle", drafter=trained, tree=tree, draft_vocab=6,
                             draft_top_k=3, max_new_tokens=40)
    assert out.token_ids == specbench.generate(target, prompt, max_new_tokens=40).token_ids
    assert seen and all(set(tokens) <= allowed for _, tokens, _ in seen)
    assert max(out.stats["accepted_lengths"]) >= 2


def test_default_draft_vocab_applies_only_where_it_can(target, trained, monkeypatch):
    """A device's default draft_vocab (CUDA's: 4,096) restricts a drafter that counted its training
    tokens; a drafter without counts, or a tree that drafts more choices per node than the default
    holds, drafts over the whole vocabulary instead of failing; EAGLE-3 keeps its own head."""
    from specbench.strategies import eagle
    kind = device_kind(target.device)
    monkeypatch.setitem(eagle.DEFAULTS, kind, {**eagle.DEFAULTS[kind], "draft_vocab": 6})
    def size(proposer):
        return None if proposer.vocab_ids is None else len(proposer.vocab_ids)
    assert size(eagle.Eagle(target, drafter=trained)) == 6
    assert size(eagle.Eagle(target, drafter=trained, draft_top_k=7)) is None
    assert size(eagle.Eagle(target, drafter=trained, draft_vocab=9)) == 9
    assert size(eagle.Eagle(target, drafter=specbench.random_drafter(target, "eagle", seed=0))) is None
    assert size(eagle.Eagle3(target, drafter=specbench.random_drafter(target, "eagle3", seed=0))) is None


# ---- the drafted trees against a slow construction: fresh forwards, no cache reuse ------------------

class SlowDraft:
    """Draft outputs after the committed tokens and a path of tree tokens, each from a fresh
    target forward and a fresh causal draft forward over every row."""

    def __init__(self, model, drafter, committed: list[int]):
        self.model, self.drafter, self.committed = model, drafter, committed
        cache = model.new_cache(len(committed))
        out = model(torch.tensor(committed[:-1]), torch.arange(len(committed) - 1), cache,
                    output_layers=(model.args.num_layers,))
        self.features = EagleDraft.feature(out.layer_hidden[model.args.num_layers], model)
        self.memo: dict[tuple, torch.Tensor] = {}

    def hidden(self, path: tuple) -> torch.Tensor:
        if path not in self.memo:
            if path:
                feats = torch.cat([self.features, torch.stack([self.hidden(path[:i]) for i in range(len(path))])])
            else:
                feats = self.features
            tokens = torch.tensor(self.committed[1:] + list(path))
            n = len(tokens)
            cache = self.drafter.new_cache(n, self.model.device, self.model.dtype)
            self.memo[path] = self.drafter(feats, tokens, torch.arange(n), cache, None, self.model)[-1]
        return self.memo[path]

    def logp(self, path: tuple) -> torch.Tensor:
        return torch.log_softmax(self.model.lm_head(self.hidden(path)), -1)


def record_trees(monkeypatch) -> list:
    seen = []
    propose = eagle_strategy.Eagle.propose

    def spy(self, ctx):
        tree = propose(self, ctx)
        seen.append((list(ctx.tokens), tree.tokens.tolist(), tree.parents.tolist()))
        return tree
    monkeypatch.setattr(eagle_strategy.Eagle, "propose", spy)
    return seen


def paths_of(tokens: list[int], parents: list[int]) -> list[tuple]:
    out: list[tuple] = []
    for t, p in zip(tokens, parents):
        out.append((out[p] if p >= 0 else ()) + (t,))
    return out


def slow_dynamic(slow: SlowDraft, depth: int, k: int, size: int) -> list[tuple]:
    """EAGLE-2's expansion and reranking, written plainly over token paths."""
    lp = slow.logp(())
    top = lp.topk(k)
    cands = [((int(t),), float(s)) for s, t in zip(top.values, top.indices)]
    beam = list(cands)
    for d in range(1, depth):
        level = []
        for path, score in beam:
            top = slow.logp(path).topk(k)
            level += [(path + (int(t),), score + float(s)) for s, t in zip(top.values, top.indices)]
        cands += level
        beam = sorted(level, key=lambda c: -c[1])[:k]
    ranked = sorted(range(len(cands)), key=lambda i: (-cands[i][1], i))[:size]
    return [cands[i][0] for i in sorted(ranked)]


@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_trees_equal_slow_construction(target, trained, tree, monkeypatch):
    seen = record_trees(monkeypatch)
    settings = {"depth": 4, "draft_top_k": 3, "total_tokens": 14}
    out = specbench.generate(target, [2, 7, 1, 8, 2, 8], method="eagle", drafter=trained, tree=tree,
                             max_new_tokens=40, **settings)
    assert max(out.stats["accepted_lengths"]) >= 3, "the check must cover steps that commit several rows"
    proposer = eagle_strategy.Eagle(target, drafter=trained, tree=tree, **settings)
    for committed, tokens, parents in seen:
        slow = SlowDraft(target, trained, committed)
        paths = paths_of(tokens, parents)
        if tree == "dynamic":
            assert paths == slow_dynamic(slow, settings["depth"], settings["draft_top_k"], settings["total_tokens"])
        else:
            assert len(paths) == len(proposer.plan.paths)
            for path, ranks in zip(paths, proposer.plan.paths):
                assert path[-1] == int(slow.logp(path[:-1]).topk(ranks[-1] + 1).indices[ranks[-1]])


# ---- drafter files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_official_layout_roundtrip(tmp_path, weights, qkv_bias):
    target = specbench.random_model(vocab_size=16, num_layers=2, hidden_size=32, seed=4, qkv_bias=qkv_bias,
                                    dtype="float64")
    drafter = specbench.random_drafter(target, "eagle", seed=3)
    folder = drafter.export_official(tmp_path / "official", target, dtype=torch.float64, weights=weights)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["bias"] is True and (folder / weights).is_file()
    if weights == "pytorch_model.bin":
        names = set(torch.load(folder / weights, weights_only=True))
        assert {"fc.weight", "fc.bias", "embed_tokens.weight", "layers.0.self_attn.q_proj.weight",
                "layers.0.mlp.gate_proj.weight", "layers.0.post_attention_layernorm.weight"} <= names
        assert not any("input_layernorm" in n for n in names)
    loaded = specbench.load_drafter(folder, target)
    assert loaded.args.qkv_bias == qkv_bias
    feats, tokens = torch.randn(5, 32, dtype=torch.float64), torch.tensor([1, 4, 2, 9, 3])
    run = [d(feats, tokens, torch.arange(5), d.new_cache(5, "cpu", torch.float64), None, target)
           for d in (drafter, loaded)]
    torch.testing.assert_close(run[0], run[1])
    prompt = [3, 1, 4, 1, 5]
    a = specbench.generate(target, prompt, method="eagle", drafter=drafter, max_new_tokens=20)
    b = specbench.generate(target, prompt, method="eagle", drafter=folder, max_new_tokens=20)
    assert a.token_ids == b.token_ids and a.stats["accepted_lengths"] == b.stats["accepted_lengths"]


def test_our_layout_roundtrip(target, tmp_path):
    drafter = specbench.random_drafter(target, "eagle", seed=4)
    drafter.save(tmp_path / "d", dtype=torch.float64)
    loaded = specbench.load_drafter(tmp_path / "d", target)
    assert loaded.config() == drafter.config()
    for name, value in drafter.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)


def test_official_weights_of_other_shapes_are_refused(target, tmp_path):
    drafter = specbench.random_drafter(target, "eagle")
    folder = drafter.export_official(tmp_path / "o", target, weights="model.safetensors")
    from safetensors.torch import load_file, save_file
    state = load_file(str(folder / "model.safetensors"))
    state["layers.0.input_layernorm.weight"] = torch.ones(32)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(specbench.SpecbenchError, match="unexpected 'layers.0.input_layernorm.weight'"):
        specbench.load_drafter(folder, target)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    with pytest.raises(specbench.SpecbenchError, match="one decoder layer"):
        specbench.load_drafter(folder, target)


def test_drafter_for_another_model_is_refused(target, tmp_path):
    other_dims = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=48, seed=1, dtype="float64")
    same_dims = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=99, dtype="float64")
    drafter = specbench.random_drafter(target, "eagle")
    drafter.save(tmp_path / "ours")
    drafter.export_official(tmp_path / "official", target)
    for model, why in ((other_dims, "hidden size 32"), (same_dims, "other weights")):
        with pytest.raises(specbench.SpecbenchError, match=why):
            specbench.generate(model, [1, 2, 3], method="eagle", drafter=drafter)
        for folder in ("ours", "official"):
            with pytest.raises(specbench.SpecbenchError, match="made for another model"):
                specbench.load_drafter(tmp_path / folder, model)


def test_no_shipped_drafter_for_other_models(target):
    with pytest.raises(specbench.SpecbenchError, match="specbench train eagle"):
        specbench.generate(target, [1, 2, 3], method="eagle")


@pytest.mark.parametrize("options, match", [
    ({"tree": "bushy"}, "tree must be 'dynamic', 'static' or a list"),
    ({"tree": 3}, "option tree of method 'eagle' must be str or list, got 3"),   # its declared type
    ({"depth": 0}, "depth must be an integer >= 1"),
    ({"draft_top_k": True}, "option draft_top_k of method 'eagle' must be int or None, got True"),
    ({"total_tokens": 2.5}, "option total_tokens of method 'eagle' must be int or None, got 2.5"),
    ({"draft_top_k": 17}, "draft_top_k must be at most the vocabulary size 16"),
    ({"total_tokens": 256}, "total_tokens must be at most 255"),
    ({"tree": [[0], [1]], "depth": 3}, "an explicit tree fixes its own shape: drop depth"),
    ({"tree": [[0, 0]]}, "lacks its parent"),
    ({"tree": []}, "at least one"),
    ({"tree": [[16]]}, "indices must be in 0..15"),
    ({"draft_vocab": 0}, "option draft_vocab of method 'eagle' must be int >= 1 or None, got 0"),
    ({"draft_vocab": 17}, "draft_vocab must be a token count in 1..16 or None, got 17"),
    ({"draft_vocab": 8}, "draft_vocab needs a drafter from `specbench train eagle`"),
])
def test_bad_options(target, options, match):
    drafter = specbench.random_drafter(target, "eagle")
    with pytest.raises(specbench.SpecbenchError, match=match):
        specbench.generate(target, [1, 2], method="eagle", drafter=drafter, **options)


def test_draft_vocab_must_hold_every_drafted_rank(target, trained):
    with pytest.raises(specbench.SpecbenchError, match="draft_vocab 3 is smaller than the 4 choices"):
        specbench.generate(target, [1, 2], method="eagle", drafter=trained, draft_top_k=4, draft_vocab=3)
    with pytest.raises(specbench.SpecbenchError, match="draft_vocab 2 is smaller than the 3 choices"):
        specbench.generate(target, [1, 2], method="eagle", drafter=trained, tree=[[0], [2]], draft_vocab=2)


def test_static_default_tree_follows_measured_rank_accuracy(target):
    drafter = specbench.random_drafter(target, "eagle")
    drafter.rank_accuracy = [0.9, 0.05] + [0.0] * 8       # a sure draft: the static tree is a chain
    proposer = eagle_strategy.Eagle(target, drafter=drafter, tree="static", depth=4, draft_top_k=3, total_tokens=4)
    assert proposer.plan.paths == [(0,), (0, 0), (0, 0, 0), (0, 0, 0, 0)]
    drafter.rank_accuracy = [0.3, 0.3, 0.3] + [0.0] * 7    # an unsure one: a bush
    proposer = eagle_strategy.Eagle(target, drafter=drafter, tree="static", depth=4, draft_top_k=3, total_tokens=4)
    assert proposer.plan.paths == [(0,), (1,), (2,), (0, 0)]


# ---- the default model ------------------------------------------------------------------------------

@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_default_model_greedy_identical(default_model, tree):
    """fp32 on CPU: the shipped head when there is one, else a random draft (the same code paths)."""
    drafter = None if SHIPPED.is_file() else specbench.random_drafter(default_model, "eagle")
    prompt = "Name three prime numbers and explain why they are prime."
    vanilla = specbench.generate(default_model, prompt, max_new_tokens=32)
    out = specbench.generate(default_model, prompt, method="eagle", drafter=drafter, tree=tree, max_new_tokens=32)
    assert out.token_ids == vanilla.token_ids


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_cuda_graphed_draft_step(tree, kind, monkeypatch):
    """On CUDA the captured draft step drafts the same trees as the eager step, and greedy
    decoding with it gives vanilla's tokens (EAGLE and EAGLE-3) (float64: no rounding differences between forwards)."""
    monkeypatch.setenv("SPECBENCH_COMPILE", "0")
    target = specbench.random_model(vocab_size=64, num_layers=3, hidden_size=64, seed=3, dtype="float64").to("cuda")
    prompt = [(3 * i) % 64 for i in range(20)]
    vanilla = specbench.generate(target, prompt, max_new_tokens=60).token_ids
    options = {"tree": tree, "depth": 4, "draft_top_k": 4, "total_tokens": 20, "max_new_tokens": 60}
    seen = record_trees(monkeypatch)
    graphed = specbench.generate(target, prompt, method=kind, drafter=specbench.random_drafter(target, kind, seed=1),
                                 **options)
    assert graphed.token_ids == vanilla
    trees = list(seen)
    seen.clear()
    monkeypatch.setattr(eagle_strategy, "GraphedDraftStep",
                        lambda model, drafter, plan, size, vocab, pending:
                        eagle_strategy.DraftStep(model, drafter, plan, size, vocab))
    eager = specbench.generate(target, prompt, method=kind, drafter=specbench.random_drafter(target, kind, seed=1),
                               **options)
    assert eager.token_ids == vanilla and seen == trees


@pytest.mark.parametrize("kind", ["eagle", "eagle3", "medusa"])
def test_drafter_layers_are_packed_on_cpu_and_agree_with_f_linear(kind):
    """A drafter placed on the CPU multiplies by oneDNN-packed weights, as the target's layers do
    (MKL's product repacked the weight on every call of 2+ rows: EAGLE's CPU draft step took about
    twice as long, experiments/cpu_draft_profile.py), with the results of F.linear; the draft
    vocabulary's head too."""
    from specbench.model import Linear, fixed_linear
    target = specbench.random_model(vocab_size=128, num_layers=3, hidden_size=32, seed=1)   # float32
    drafter = specbench.random_drafter(target, kind, seed=1)
    layers = [m for m in drafter.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(isinstance(m, Linear) and m.__dict__.get("_packed") is not None for m in layers)
    x = torch.randn(4, layers[0].in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(layers[0](x), torch.nn.functional.linear(x, layers[0].weight, layers[0].bias),
                              rtol=1e-5, atol=1e-5)
        head = fixed_linear(target.lm_head.weight[:100])
        h = torch.randn(3, target.args.hidden_size, generator=torch.Generator().manual_seed(1))
        assert head.__dict__.get("_packed") is not None
        assert torch.allclose(head(h), h @ target.lm_head.weight[:100].T, rtol=1e-5, atol=1e-5)
