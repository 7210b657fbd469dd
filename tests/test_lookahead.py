"""Lookahead decoding: the window's mask and layout, exactness of every row of the combined forward,
greedy equality with vanilla, the committed cache invariant, and acceptance on the default model.

(Lossless sampling is checked with every other method in tests/test_lossless.py.)
"""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import specbench
from specbench import engine
from specbench.errors import SpecbenchError
from specbench.sampling import SamplingParams
from specbench.strategies import make_proposer
from specbench.strategies.lookahead import Lookahead, NGramPool, lookahead_mask, ngram_trie, shift_window
from specbench.tree import DraftTree



def tiny(seed: int):
    return specbench.random_model(vocab_size=16, num_layers=2, hidden_size=32, num_heads=4,
                                  num_kv_heads=2, seed=seed, dtype="float64")


# ---- the combined mask against a slow construction -------------------------------------------------

def slow_layout(root: int, length: int, ngrams: list[tuple[int, ...]], window: int, levels: int,
                aux: dict[tuple[int, int], int]):
    """Tokens, positions and mask of (root, trie of `ngrams`, window) from "who sees whom" rules.

    Rows: the root; one per distinct non-empty prefix of the n-grams (in order of first
    appearance); the window cells (0, 1..W-1), then (l, 0..W-1) for l = 1..levels, with tokens
    `aux[(l, j)]`. A row sees the committed cache (not part of this mask) and exactly the rows of
    the sequence it continues:
      root          -> itself
      prefix P      -> the root and every prefix of P
      cell (l, j)   -> the root, cells (0, 1), ..., (0, j), then (1, j), ..., (l, j)
    """
    rows: list[tuple] = [("root",)]
    for gram in ngrams:
        for d in range(1, len(gram) + 1):
            if ("draft", gram[:d]) not in rows:
                rows.append(("draft", gram[:d]))
    rows += [("cell", 0, j) for j in range(1, window)]
    rows += [("cell", l, j) for l in range(1, levels + 1) for j in range(window)]

    def context(row) -> list:
        if row[0] == "root":
            return [row]
        if row[0] == "draft":
            return [("root",)] + [("draft", row[1][:d]) for d in range(1, len(row[1]) + 1)]
        _, l, j = row
        chain = [("root",)]
        for jj in range(1, j + 1):
            chain.append(("cell", 0, jj))
        for ll in range(1, l + 1):
            chain.append(("cell", ll, j))
        return chain

    size = len(rows)
    mask = torch.zeros(size, size, dtype=torch.bool)
    for a in range(size):
        seen = context(rows[a])
        for b in range(size):
            if rows[b] in seen:
                mask[a, b] = True
    tokens, positions = [], []
    for row in rows:
        if row[0] == "root":
            tokens.append(root), positions.append(length)
        elif row[0] == "draft":
            tokens.append(row[1][-1]), positions.append(length + len(row[1]))
        else:
            tokens.append(aux[(row[1], row[2])]), positions.append(length + row[1] + row[2])
    return torch.tensor(tokens), torch.tensor(positions), mask


def fast_layout(root: int, length: int, ngrams, window: int, levels: int, aux):
    """The same through the code under test: ngram_trie + lookahead_mask + engine.step_inputs."""
    tokens, parents = ngram_trie(ngrams)
    offsets, aux_mask = lookahead_mask(window, levels)
    cells = [(0, j) for j in range(1, window)] + [(l, j) for l in range(1, levels + 1) for j in range(window)]
    tree = DraftTree(tokens=torch.tensor(tokens, dtype=torch.long), parents=torch.tensor(parents, dtype=torch.long),
                     aux_tokens=torch.tensor([aux[c] for c in cells], dtype=torch.long),
                     aux_positions=offsets + length, aux_mask=aux_mask)
    return engine.step_inputs(root, tree, length, "cpu")


@st.composite
def layouts(draw):
    window = draw(st.integers(1, 5))
    ngram = draw(st.integers(2, 5))
    levels = draw(st.integers(0, ngram - 2))           # warm-up windows have fewer levels
    guess_set = draw(st.integers(0, 4))
    grams = draw(st.lists(st.tuples(*[st.integers(0, 3)] * (ngram - 1)), max_size=guess_set, unique=True))
    cells = [(0, j) for j in range(1, window)] + [(l, j) for l in range(1, levels + 1) for j in range(window)]
    aux = {c: draw(st.integers(0, 15)) for c in cells}
    return draw(st.integers(0, 15)), draw(st.integers(0, 40)), grams, window, levels, aux


@given(layouts())
def test_combined_mask_matches_slow_rules(layout):
    tokens, positions, mask = fast_layout(*layout)
    want_tokens, want_positions, want_mask = slow_layout(*layout)
    assert torch.equal(tokens, want_tokens)
    assert torch.equal(positions, want_positions)
    if mask is None:    # the engine's shortcut for a lone root
        assert want_mask.shape == (1, 1)
    else:
        assert torch.equal(mask, want_mask)
        # every row sees one token at each position from the root's to its own: a real sequence
        for a in range(mask.shape[0]):
            seen = sorted(positions[mask[a]].tolist())
            assert seen == list(range(int(positions[0]), int(positions[a]) + 1))


@pytest.mark.parametrize("window", range(1, 7))
@pytest.mark.parametrize("levels", range(0, 5))
def test_lookahead_mask_all_small_sizes(window, levels):
    """Exhaustive over small W and L = 0..N-2 (no trie): the window part alone."""
    aux = {(l, j): 0 for l in range(levels + 1) for j in range(window)}
    _, positions, mask = fast_layout(0, 5, [], window, levels, aux)
    _, want_positions, want_mask = slow_layout(0, 5, [], window, levels, aux)
    assert torch.equal(positions, want_positions)
    if mask is not None:
        assert torch.equal(mask, want_mask)
    offsets, aux_mask = lookahead_mask(window, levels)
    assert offsets.numel() == window - 1 + levels * window == aux_mask.shape[0] == aux_mask.shape[1] - 1


def test_ngram_trie_shares_prefixes():
    tokens, parents = ngram_trie([(1, 2, 3), (1, 2, 4), (5, 2, 3), (1, 6, 3)])
    assert tokens == [1, 2, 3, 4, 5, 2, 3, 6, 3]
    assert parents == [-1, 0, 1, 1, -1, 4, 5, 0, 7]


def test_pool_keeps_most_recent_per_key():
    pool = NGramPool(capacity=2)
    for g in [(1,), (2,), (1,), (3,)]:
        pool.add(7, g)
    assert pool.get(7) == [(3,), (1,)] and pool.get(8) == [] and len(pool) == 2


# ---- every row of the combined forward is exact, and the committed cache stays clean -------------

class Checked(Lookahead):
    """Lookahead that checks, at every step, what the shared engine did with its tree:
    - the logits of every row (root, draft nodes, window nodes) equal a fresh forward over the
      committed tokens followed by the sequence that row continues (so mask + positions are right);
    - after compaction the cache holds exactly the committed tokens' K/V (no window entries leak);
    - the step fits max_nodes."""

    def begin(self, ctx):
        super().begin(ctx)
        self.ctx, self.checked_rows, self.window_rows = ctx, 0, 0

    def propose(self, ctx):
        tree = super().propose(ctx)
        assert tree.size + tree.aux_tokens.numel() <= self.max_nodes
        self.tree, self.committed = tree, list(ctx.tokens)
        return tree

    def accept(self, ctx, step):
        tokens, positions, mask = engine.step_inputs(self.committed[-1], self.tree, len(self.committed) - 1, "cpu")
        if mask is None:
            mask = torch.ones(1, 1, dtype=torch.bool)
        for row in range(tokens.numel()):
            seen = mask[row].nonzero().flatten()
            seen = seen[positions[seen].argsort()]
            seq = self.committed[:-1] + tokens[seen].tolist()
            want = fresh_logits(ctx.model, seq)[-1]
            torch.testing.assert_close(step.logits[row], want, rtol=0, atol=1e-9)
            self.checked_rows += 1
            self.window_rows += row > self.tree.size
        check_cache(ctx)
        super().accept(ctx, step)


def fresh_logits(model, seq: list[int]) -> torch.Tensor:
    cache = model.new_cache(len(seq))
    return model(torch.tensor(seq), torch.arange(len(seq)), cache).logits


def check_cache(ctx):
    """The cache holds the K/V of tokens[:-1] exactly as a fresh prefill writes them, and decoding
    the root on it gives the fresh forward's logits."""
    toks, cache = ctx.tokens, ctx.cache
    n = len(toks) - 1
    assert cache.length == n   # also after a step the budget cut short
    fresh = ctx.model.new_cache(len(toks))
    logits = ctx.model(torch.tensor(toks), torch.arange(len(toks)), fresh).logits[-1]
    torch.testing.assert_close(cache.k[:, :, :n], fresh.k[:, :, :n], rtol=0, atol=1e-9)
    torch.testing.assert_close(cache.v[:, :, :n], fresh.v[:, :, :n], rtol=0, atol=1e-9)
    scratch = copy.deepcopy(cache)
    scratch.truncate(n)
    on_cache = ctx.model(torch.tensor([toks[-1]]), torch.tensor([n]), scratch).logits[-1]
    torch.testing.assert_close(on_cache, logits, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed,options", [(0, dict(W=3, N=4, G=3)),
                                          (1, dict(W=2, N=2, G=2)),
                                          (2, dict(W=4, N=3, G=4, prompt_ngrams=False))])
def test_every_row_exact_and_cache_clean(seed, options):
    model = tiny(seed)
    prompt = [3, 1, 4, 1, 5, 3, 1, 4, 1, 5, 3, 1]
    proposer = Checked(**options)
    with torch.inference_mode():
        result = engine.run(model, proposer, prompt, SamplingParams(), 20, seed=0, eos_ids=())
    vanilla = specbench.generate(model, prompt, max_new_tokens=20).token_ids
    assert result.token_ids == vanilla
    assert proposer.window_rows > 0 and max(result.stats["accepted_lengths"]) > 1
    check_cache(proposer.ctx)   # after the last step as well


@given(st.integers(1, 6), st.integers(2, 6), st.data())
def test_shift_keeps_every_guess_at_its_position(window, ngram, data):
    """Label each window token by the position it stands for (root r: level l, column j is r + l + j;
    the new level is one above the top). After committing c tokens the root is r + c and every
    kept token must still stand for its position in the new layout; exactly max(0, W - d) tokens
    per level survive (d = c while warming up, c - 1 once full) and the level count grows to N - 1."""
    levels = data.draw(st.integers(0, ngram - 2))
    c = data.draw(st.integers(1, window + ngram + 1))
    r = 100
    grid = [[r + l + j for j in range(window)] for l in range(levels + 1)]
    new = [r + levels + 1 + j for j in range(window)]
    out = shift_window(grid, new, c, ngram, lambda k: [-1] * k)
    assert len(out) == min(levels + 2, ngram - 1)
    d = c if levels + 1 <= ngram - 2 else c - 1
    for l, level in enumerate(out):
        assert len(level) == window
        kept = [t for t in level if t != -1]
        assert kept == [r + c + l + j for j in range(len(kept))]
        assert len(kept) == max(0, window - d)


# ---- greedy equality with vanilla -------------------------------------------------------------

PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2],
           [5, 9, 5, 9, 5, 9, 2, 7, 5, 9],
           [0, 3, 8, 1, 12, 0, 3, 8, 6, 0, 3],
           [7, 7, 7, 7, 2, 11]]
CONFIGS = [dict(), dict(W=1, N=2, G=1), dict(W=3, N=3, G=3),
           dict(W=5, N=4, G=2, prompt_ngrams=False), dict(W=4, N=6, G=5),
           dict(W=3, N=3, G=0)]


@pytest.mark.parametrize("seed", range(4))
def test_greedy_identical_to_vanilla(seed):
    model = tiny(seed)
    multi = window_multi = 0
    for prompt in PROMPTS[seed % 2::2]:
        vanilla = specbench.generate(model, prompt, max_new_tokens=32)
        for options in CONFIGS:
            out = specbench.generate(model, prompt, method="lookahead", max_new_tokens=32, **options)
            assert out.token_ids == vanilla.token_ids, (prompt, options)
            assert out.stats["lossless"] is True and out.stats["new_tokens"] == 32
            multi += sum(a > 1 for a in out.stats["accepted_lengths"])
            if options.get("prompt_ngrams") is False:   # hits from window n-grams alone
                window_multi += out.stats["lookahead_hit_steps"]
            if options.get("guess_set") == 0:
                assert out.stats["mean_accepted"] == 1.0
    assert multi > 0, "vacuous: no step accepted more than one token"
    assert window_multi > 0, "the Jacobi window's n-grams never got accepted"


def test_eos_and_budget_stop():
    model = tiny(3)
    prompt = PROMPTS[0]
    vanilla = specbench.generate(model, prompt, max_new_tokens=30).token_ids
    eos = vanilla[17]
    cut = vanilla[: vanilla.index(eos) + 1]
    proposer = Lookahead(W=3, N=3, G=3)
    with torch.inference_mode():
        out = engine.run(model, proposer, prompt, SamplingParams(), 30, seed=0, eos_ids=(eos,))
    assert out.token_ids == cut
    for budget in (1, 2, 7):
        out = specbench.generate(model, prompt, method="lookahead", max_new_tokens=budget, W=3, N=3)
        assert out.token_ids == vanilla[:budget]


def test_sampling_runs_and_is_seeded():
    model = tiny(0)
    kw = dict(method="lookahead", max_new_tokens=30, temperature=0.8, top_k=5, W=3, N=3, G=3)
    a = specbench.generate(model, PROMPTS[0], seed=4, **kw)
    b = specbench.generate(model, PROMPTS[0], seed=4, **kw)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 30


def test_options_are_checked():
    for bad in (dict(W=0), dict(N=1), dict(G=-1), dict(W=2.5)):
        with pytest.raises(SpecbenchError):
            make_proposer("lookahead", None, **bad)
    with pytest.raises(SpecbenchError, match="unknown option"):
        make_proposer("lookahead", None, level=5)
    p = make_proposer("lookahead", None, W=7, N=5, G=7)
    assert p.max_nodes == 7 * 4 + 4 * 7 - 1


def test_stats():
    out = specbench.generate(tiny(0), PROMPTS[0], method="lookahead", max_new_tokens=30, W=3, N=3)
    s = out.stats
    assert s["lookahead_pool_ngrams"] > 0 and s["lookahead_pool_keys"] > 0
    assert s["lookahead_hit_steps"] <= s["lookahead_guess_steps"] <= s["steps"]
    # (>=: a step cut short by the budget commits fewer tokens than it accepted)
    assert s["lookahead_guess_tokens_accepted"] >= out.stats["new_tokens"] - s["steps"] > 0
    assert s["lookahead_warmup_steps"] == 1   # N - 2 steps fill the window


# ---- the default model ------------------------------------------------------------------------

DEFAULT_PROMPTS = [
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
    "experiences and must-see attractions.",   # MT-bench question 81
    "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
]


def test_default_model_greedy_identical_and_accepts(default_model):
    # a smaller window than the default keeps this CPU test fast; the layout code is the same
    options = dict(W=4, N=4, G=4)
    for i, prompt in enumerate(DEFAULT_PROMPTS):
        vanilla = specbench.generate(default_model, prompt, max_new_tokens=48)
        out = specbench.generate(default_model, prompt, method="lookahead", max_new_tokens=48, **options)
        assert out.token_ids == vanilla.token_ids, i
        if i == 0:
            assert out.stats["mean_accepted"] > 1.0
