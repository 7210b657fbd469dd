"""The KV cache and the forward's cache/layer plumbing, on small float64 random models.

Convention (engine.py): `cache.length` entries are committed; a forward over new tokens writes them
at slots length, length+1, ...; the caller then keeps a root-to-node path (`compact`, offsets
relative to length) or rolls back (`truncate`). Whatever the history, the cache must act exactly as
if the surviving token sequence had been run from scratch.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import specbench
from specbench.model import KVCache, Transformer

TOL = 1e-9
MAX_LEN = 128



MODELS = [
    specbench.random_model(vocab_size=16, num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, seed=0,
                           dtype="float64"),
    specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, num_heads=4, num_kv_heads=4, seed=1,
                           qkv_bias=True, dtype="float64"),
]


def fresh(model: Transformer, seq: list[int]):
    """Logits [len, V] and the cache of one forward over seq from an empty cache."""
    cache = model.new_cache(max(1, len(seq)))
    with torch.inference_mode():
        out = model(torch.tensor(seq), torch.arange(len(seq)), cache)
    return out.logits, cache


def forward(model, cache, tokens, positions, mask=None, **kw):
    with torch.inference_mode():
        return model(torch.tensor(tokens), torch.tensor(positions), cache,
                     None if mask is None else torch.tensor(mask), **kw)


def tree_layout(parents: list[int], length: int):
    """Positions (length + depth, top-level nodes at depth 0) and the ancestor-or-self mask."""
    depth, mask = [], []
    for i, p in enumerate(parents):
        depth.append(0 if p < 0 else depth[p] + 1)
        row = [False] * len(parents) if p < 0 else list(mask[p])
        row[i] = True
        mask.append(row)
    return [length + d for d in depth], mask


def path_to(parents: list[int], node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    return path[::-1]


def check_against_fresh(model, cache: KVCache, seq: list[int], next_token: int) -> None:
    """The committed slots hold a fresh prefill's K/V, and one more token's logits match."""
    n = len(seq)
    assert cache.length == n
    ref_logits, ref_cache = fresh(model, seq + [next_token])
    for name in ("k", "v"):
        got, want = getattr(cache, name)[:, :, :n], getattr(ref_cache, name)[:, :, :n]
        if n:
            assert (got - want).abs().max().item() <= TOL, f"cache.{name} differs"
    out = forward(model, cache, [next_token], [n])
    err = (out.logits[0] - ref_logits[-1]).abs().max().item()
    assert err <= TOL, f"next-token logits differ by {err:.2e} after a history leaving {n} tokens"


token = st.integers(0, 15)
chain_op = st.tuples(st.just("chain"), st.lists(token, min_size=1, max_size=6), st.integers(0, 6))
# parents[i] in [-1, i-1] (topological order; -1 = top level), then the node whose path is kept
# (-1: keep nothing)
tree_op = st.integers(1, 8).flatmap(lambda n: st.tuples(
    st.just("tree"), st.lists(token, min_size=n, max_size=n),
    st.tuples(*[st.integers(-1, i - 1) for i in range(n)]), st.integers(-1, n - 1)))
truncate_op = st.tuples(st.just("truncate"), st.integers(0, 10 ** 6))


@given(model_index=st.sampled_from(range(len(MODELS))),
       prompt=st.lists(token, min_size=0, max_size=10),
       ops=st.lists(st.tuples(st.one_of(chain_op, tree_op, truncate_op), token), min_size=1, max_size=8))
def test_cache_history_equals_fresh_forward(model_index, prompt, ops):
    model = MODELS[model_index]
    cache = model.new_cache(MAX_LEN)
    seq: list[int] = []
    if prompt:
        forward(model, cache, prompt, list(range(len(prompt))))
        cache.compact(list(range(len(prompt))))
        seq = list(prompt)
    for op, next_token in ops:
        length = cache.length
        if op[0] == "chain":          # k new tokens, the first `keep` of them accepted
            _, tokens, keep = op
            forward(model, cache, tokens, list(range(length, length + len(tokens))))
            keep = min(keep, len(tokens))
            cache.compact(list(range(keep)))
            seq += tokens[:keep]
        elif op[0] == "tree":         # a token tree, then one root-to-node path accepted
            _, tokens, parents, node = op
            parents = list(parents)
            positions, mask = tree_layout(parents, length)
            forward(model, cache, tokens, positions, mask)
            keep = path_to(parents, node)
            cache.compact(keep)
            seq += [tokens[i] for i in keep]
        else:                         # rollback
            keep_len = op[1] % (len(seq) + 1)
            cache.truncate(keep_len)
            seq = seq[:keep_len]
        # (this check's own forward leaves a stale entry at slot `length`: later steps must ignore it)
        check_against_fresh(model, cache, seq, next_token)


def test_tree_logits_equal_fresh_forward_of_each_branch():
    """Each node of a token tree gets the logits of a fresh forward over committed + its path."""
    model = MODELS[0]
    prefix = [3, 1, 4, 1, 5]
    parents = [-1, 0, 0, 1, 1, 2, 5, -1]
    tokens = [9, 2, 6, 5, 3, 5, 8, 9]
    cache = model.new_cache(32)
    forward(model, cache, prefix, list(range(5)))
    cache.compact(list(range(5)))
    positions, mask = tree_layout(parents, 5)
    out = forward(model, cache, tokens, positions, mask)
    for i in range(len(tokens)):
        ref, _ = fresh(model, prefix + [tokens[j] for j in path_to(parents, i)])
        assert (out.logits[i] - ref[-1]).abs().max().item() <= TOL


def test_compact_moves_entries_and_truncate_validates():
    model = MODELS[0]
    cache = model.new_cache(16)
    cache.length = 2
    cache.k.normal_()
    cache.v.normal_()
    k, v = cache.k.clone(), cache.v.clone()
    cache.compact([1, 3, 4])
    assert cache.length == 5
    assert torch.equal(cache.k[:, :, 2:5], k[:, :, [3, 5, 6]]) and torch.equal(cache.v[:, :, 2:5], v[:, :, [3, 5, 6]])
    assert torch.equal(cache.k[:, :, :2], k[:, :, :2])
    cache.compact([0, 1])          # an accepted chain prefix already in place
    assert cache.length == 7 and torch.equal(cache.k[:, :, 5:7], k[:, :, 5:7])
    cache.compact([])
    assert cache.length == 7
    cache.truncate(3)
    assert cache.length == 3
    for bad in (-1, 17):
        with pytest.raises(ValueError):
            cache.truncate(bad)


# ---- early exit and layer outputs ----------------------------------------------------------------

@given(model_index=st.sampled_from(range(len(MODELS))), data=st.data(),
       prefix=st.lists(token, min_size=0, max_size=8),
       tree=st.integers(1, 6).flatmap(lambda n: st.tuples(
           st.lists(token, min_size=n, max_size=n), st.tuples(*[st.integers(-1, i - 1) for i in range(n)]))))
def test_stop_then_resume_equals_one_forward(model_index, data, prefix, tree):
    model = MODELS[model_index]
    layers = model.args.num_layers
    k = data.draw(st.integers(0, layers), label="stop_layer")
    tokens, parents = tree
    caches = []
    for _ in range(2):
        cache = model.new_cache(32)
        if prefix:
            forward(model, cache, prefix, list(range(len(prefix))))
            cache.compact(list(range(len(prefix))))
        caches.append(cache)
    positions, mask = tree_layout(list(parents), len(prefix))
    full = forward(model, caches[0], tokens, positions, mask)
    part = forward(model, caches[1], tokens, positions, mask, stop_layer=k)
    assert part.logits is None
    resumed = forward(model, caches[1], tokens, positions, mask, start_layer=k, hidden=part.hidden)
    assert (resumed.logits - full.logits).abs().max().item() <= TOL
    assert (resumed.hidden - full.hidden).abs().max().item() <= TOL
    end = len(prefix) + len(tokens)
    for name in ("k", "v"):
        diff = getattr(caches[0], name)[:, :, :end] - getattr(caches[1], name)[:, :, :end]
        assert diff.abs().max().item() <= TOL, f"cache.{name} differs after stop at {k} + resume"


def test_output_layers_are_the_residual_after_those_layers():
    model = MODELS[1]
    layers = model.args.num_layers
    seq = [1, 2, 3, 5, 8, 13, 5, 2]
    positions = list(range(len(seq)))
    out = forward(model, model.new_cache(16), seq, positions, output_layers=tuple(range(1, layers + 1)))
    assert sorted(out.layer_hidden) == list(range(1, layers + 1))
    for i in range(1, layers + 1):
        ref = forward(model, model.new_cache(16), seq, positions, stop_layer=i).hidden
        assert (out.layer_hidden[i] - ref).abs().max().item() <= TOL
    assert torch.equal(out.layer_hidden[layers], out.hidden)
    assert (model.logits_from(out.hidden) - out.logits).abs().max().item() <= TOL
    # layers after stop_layer are not reported; the layers before are, and differ from each other
    part = forward(model, model.new_cache(16), seq, positions, stop_layer=2, output_layers=(1, 2, 3))
    assert sorted(part.layer_hidden) == [1, 2] and torch.equal(part.layer_hidden[2], part.hidden)
    assert (part.layer_hidden[1] - part.layer_hidden[2]).abs().max().item() > 1e-3
    last = forward(model, model.new_cache(16), seq, positions, last_only=True)
    assert last.logits.shape == (1, model.args.vocab_size)
    assert (last.logits[0] - out.logits[-1]).abs().max().item() <= TOL


# ---- the engine's use of the cache ---------------------------------------------------------------

@pytest.mark.parametrize("prompt", [[7], [3, 1, 4, 1, 5, 9, 2, 6]], ids=["one-token", "eight-tokens"])
def test_greedy_generate_equals_recomputing_everything(prompt):
    model = MODELS[1]
    out = specbench.generate(model, prompt, max_new_tokens=30)
    seq = list(prompt)
    for _ in range(30):
        logits, _ = fresh(model, seq)
        seq.append(int(logits[-1].argmax()))
        if seq[-1] in model.args.eos_token_ids:
            break
    assert out.token_ids == seq[len(prompt):]
    assert out.stats["steps"] == len(out.token_ids) == 30


def _method_options(method: str) -> dict:
    if method == "sps":
        return {"draft": specbench.random_model(vocab_size=16, num_layers=1, hidden_size=32, seed=5)}
    return {}


@pytest.mark.parametrize("method", ["vanilla", "pld", "lookahead", "early_exit", "sps"])
def test_cache_allocated_once_per_generation(monkeypatch, method):
    from specbench.strategies import STRATEGIES
    if method not in STRATEGIES:
        pytest.skip(f"no method {method!r} in this tree")
    target = specbench.random_model(vocab_size=16, num_layers=3, hidden_size=32, seed=4)
    allocated: list[tuple[KVCache, int, int]] = []
    target_new_cache: list[int] = []
    seen: dict[int, set[tuple[int, int]]] = {}
    init, new_cache, fwd = KVCache.__init__, Transformer.new_cache, Transformer.forward

    def counting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        allocated.append((self, self.k.data_ptr(), self.v.data_ptr()))

    def counting_new_cache(self, max_len):
        if self is target:
            target_new_cache.append(max_len)
        return new_cache(self, max_len)

    def recording_forward(self, tokens, positions, cache, *args, **kwargs):
        seen.setdefault(id(cache), set()).add((cache.k.data_ptr(), cache.v.data_ptr()))
        return fwd(self, tokens, positions, cache, *args, **kwargs)

    monkeypatch.setattr(KVCache, "__init__", counting_init)
    monkeypatch.setattr(Transformer, "new_cache", counting_new_cache)
    monkeypatch.setattr(Transformer, "forward", recording_forward)
    prompt = [1, 2, 3, 4, 1, 2, 3, 4, 5]
    counts = []
    for n in (6, 40):
        allocated.clear()
        target_new_cache.clear()
        seen.clear()
        out = specbench.generate(target, prompt, method=method, max_new_tokens=n, **_method_options(method))
        assert len(out.token_ids) == n and out.stats["steps"] >= (1 if n == 6 else 8)
        assert len(target_new_cache) == 1, f"the target cache was allocated {len(target_new_cache)} times"
        assert target_new_cache[0] >= len(prompt) + n
        by_id = {id(c): (k, v) for c, k, v in allocated}
        for cache_id, ptrs in seen.items():
            assert cache_id in by_id, "a forward ran on a cache that was never allocated as a KVCache"
            assert ptrs == {by_id[cache_id]}, "a cache's storage was reallocated during the generation"
        for c, k, v in allocated:
            assert (c.k.data_ptr(), c.v.data_ptr()) == (k, v)
        counts.append(len(allocated))
    assert counts[0] == counts[1], f"allocations grow with the generation length: {counts}"


# ---- random models have peaked outputs (what gives distribution tests their power) ---------------

def mean_entropy_ratio(model, n_seqs: int = 6, length: int = 32) -> float:
    V = model.args.vocab_size
    ents = []
    for s in range(n_seqs):
        ids = torch.randint(0, V, (length,), generator=torch.Generator().manual_seed(s)).tolist()
        logits, _ = fresh(model, ids)
        lp = logits.double().log_softmax(-1)
        ents.append(-(lp.exp() * lp).sum(-1))
    return torch.cat(ents).mean().item() / math.log(V)


@pytest.mark.parametrize("kwargs", [{}, dict(vocab_size=16, num_layers=3, seed=1, dtype="float64"),
                                    dict(vocab_size=16, num_layers=1, seed=2, dtype="float64"),
                                    dict(vocab_size=64, seed=3)], ids=["default", "v16-l3", "v16-l1", "v64"])
def test_random_model_is_far_from_uniform(kwargs):
    assert mean_entropy_ratio(specbench.random_model(**kwargs)) < 0.6


def test_entropy_check_has_power():
    """Without the LM head scaling, the same check fails: it does measure peakedness."""
    assert mean_entropy_ratio(specbench.random_model(logit_scale=1.0)) > 0.6
