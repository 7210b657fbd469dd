"""Lookahead decoding (Fu et al., ICML 2024): Jacobi iteration grows an n-gram pool, the pool drafts.

Two branches share ONE target forward per step, laid out as one DraftTree:

* the **verification branch**: the pool's n-grams (N - 1 tokens each) that follow the root, at most
  G of them, merged into a trie under the root (shared prefixes are scored once). They are ordinary
  draft nodes, deterministic (q=None), so the shared verifier accepts them losslessly.
* the **lookahead branch**: a 2-D window of guesses, passed as aux nodes. Level 0 is the root
  followed by W - 1 guesses; levels 1..L (L <= N - 2) hold W guesses each. With r the root's
  position, the token at (level l, column j) sits at position r + l + j and sees (besides the
  committed cache) level 0's columns 0..j and its own column's levels 1..l: the contiguous chain
  r, r + 1, ..., r + l + j (`lookahead_mask`). Window nodes never see the draft nodes and the draft
  nodes never see them; the engine keeps only root + accepted path in the cache.

After the forward (`Lookahead.accept`), the greedy argmax of the target at the top level's W nodes
is the next Jacobi level (a guess generator: greedy even when sampling; the verifier keeps the
output exact). Once the window is full (L = N - 2), column j reads, bottom to top, an n-gram of N
tokens at consecutive positions (level 0 .. level N-2, then the new token); it goes to the pool
under its first token. The pool keeps, per first token, the G most recently seen n-grams (LRU, as
lade's GUESS_SET_SIZE).

Window shift (`shift_window`). Positions are kept consistent across steps: when the step commits
c tokens the root moves c positions on. While warming up (L < N - 2) every level stays and the new level goes on
top; once full the oldest level is dropped and the others move one level down. Either way each
level then has d columns that now lie at or before the new root (d = c while warming up, d = c - 1
once full); they are dropped from the left and d guesses (tokens drawn from the committed text, as
lade's default) are appended on the right. With c = 1 this is plain Jacobi iteration; with c > 1 it
is lade's shift by the number of accepted tokens.

Defaults W=7, N=5, G=7, prompt_ngrams=True (Spec-Bench's setting). Greedy, default model, 10 MT-bench
first turns x 128 tokens, mean accepted tokens per step: W,N,G = 3,3,3: 1.40 | 5,4,5: 1.55 |
7,4,7: 1.63 | 7,5,7: 1.65 (1.52 without prompt_ngrams) | 7,6,7: 1.67 | 10,4,10: 1.66 |
10,5,10: 1.74 | 15,5,15: 1.73. Acceptance saturates near W = G = 10 while the forward grows
(G(N-1) + (N-1)W tokens); on a GPU ~60 tokens cost about one, on a CPU they do not and no setting
beats vanilla there (3,3,3 is the fastest, ~0.66x).
"""
from __future__ import annotations

import random
from collections import OrderedDict
from functools import lru_cache
from typing import Annotated

import torch

from ..engine import DecodeContext, Proposer, StepResult
from ..errors import SpecbenchError
from ..model import send
from ..options import AtLeast, NonNegativeInt, PositiveInt
from ..tree import DraftTree


@lru_cache(maxsize=64)
def lookahead_mask(window: int, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layout of the lookahead window: (offsets [m], aux_mask [m, 1 + m]) for DraftTree's aux fields.

    The aux nodes are, in order: level 0's guesses (columns 1..W-1; column 0 is the root, row 0 of
    the forward), then levels 1..`levels`, W columns each, so m = W - 1 + levels * W. Node (l, j)
    sits at offset l + j from the root's position. Column 0 of aux_mask is the root, column 1 + k
    aux node k. Node (l, j) may see node (l', j') iff
        l' == 0 and j' <= j            (level 0 up to its own column, the root included), or
        1 <= l' <= l and j' == j       (its own column, from level 1 up to itself).
    Every node therefore sees exactly one token at each position from the root to itself. Callers
    must not modify the returned tensors (they are cached).
    """
    if window < 1 or levels < 0:
        raise SpecbenchError(f"lookahead_mask: need window >= 1 and levels >= 0, got {window}, {levels}")
    col = torch.cat([torch.arange(window), torch.arange(window).repeat(levels)])
    lev = torch.cat([torch.zeros(window, dtype=torch.long),
                     torch.arange(1, levels + 1).repeat_interleave(window)])
    # rows and columns over (root, aux nodes) = the W * (levels + 1) cells, level-major
    row_l, row_j = lev[:, None], col[:, None]
    col_l, col_j = lev[None, :], col[None, :]
    sees = ((col_l == 0) & (col_j <= row_j)) | ((col_l >= 1) & (col_l <= row_l) & (col_j == row_j))
    return (lev + col)[1:], sees[1:]


def ngram_trie(ngrams: list[tuple[int, ...]]) -> tuple[list[int], list[int]]:
    """Merge n-grams into one token trie under the root: (tokens, parents) in DraftTree's order.

    Nodes are numbered in order of first appearance, so a parent precedes its children and
    siblings keep the priority order of the n-grams.
    """
    tokens: list[int] = []
    parents: list[int] = []
    index: dict[tuple[int, int], int] = {}    # (parent node, token) -> node
    for gram in ngrams:
        node = -1
        for t in gram:
            key = (node, t)
            if key not in index:
                index[key] = len(tokens)
                tokens.append(t)
                parents.append(node)
            node = index[key]
    return tokens, parents


def shift_window(grid: list[list[int]], new: list[int], committed: int, ngram: int, fill) -> list[list[int]]:
    """The window for the next step, after `committed` tokens moved the root on.

    grid: levels 0..L (W tokens each; the token at (l, j) stands for position root + l + j), new:
    the next level the forward produced. While warming up (L + 1 <= N - 2) every level stays and
    `new` goes on top, so the columns must move by d = committed; once full the oldest level is
    dropped and the rest move one level down, which already accounts for one position, so
    d = committed - 1. Each level loses its first d columns and gets `fill(d)` fresh guesses at the
    right (fill(W) when d >= W). The caller sets the new level 0's column 0 to the new root.
    """
    width = len(new)
    stack = grid + [new]
    if len(stack) - 1 <= ngram - 2:
        d = committed
    else:
        stack, d = stack[1:], committed - 1
    return [level[d:] + fill(min(d, width)) for level in stack]


class NGramPool:
    """n-grams keyed by their first token; each key keeps its `capacity` most recently added."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.table: dict[int, OrderedDict[tuple[int, ...], None]] = {}

    def add(self, key: int, gram: tuple[int, ...]) -> None:
        if self.capacity <= 0:
            return
        grams = self.table.setdefault(key, OrderedDict())
        if gram in grams:
            grams.move_to_end(gram)
            return
        grams[gram] = None
        if len(grams) > self.capacity:
            grams.popitem(last=False)

    def get(self, key: int) -> list[tuple[int, ...]]:
        """The n-grams after `key`, most recent first."""
        grams = self.table.get(key)
        return list(reversed(grams)) if grams else []

    def __len__(self) -> int:
        return sum(len(g) for g in self.table.values())


class Lookahead(Proposer):
    """Jacobi window + n-gram pool (Fu et al. 2024), both branches in one tree-shaped forward.

    prompt_ngrams seeds the pool with the prompt's own n-grams and keeps adding those of the
    committed text (lade's POOL_FROM_PROMPT does both); the window's n-grams are always added.
    guess_seed seeds the guesses that fill the window's new columns (never the verifier's generator).

    Options:
    W: window width
    N: n-gram size
    G: n-grams kept per first token and verified per step
    """

    def __init__(self, W: PositiveInt = 7, N: Annotated[int, AtLeast(2)] = 5, G: NonNegativeInt = 7,
                 prompt_ngrams: bool = True, guess_seed: int = 0):
        # the paper's names: window W, n-gram size N, guess set G
        self.window, self.ngram, self.guess_set = W, N, G
        window, ngram, guess_set = W, N, G
        self.prompt_ngrams = prompt_ngrams
        self.seed = guess_seed
        # draft trie (G n-grams of N - 1 tokens) + window (W - 1 + (N - 2) * W aux nodes)
        self.max_nodes = guess_set * (ngram - 1) + (ngram - 1) * window - 1
        self._reset()

    def _reset(self) -> None:
        self.pool = NGramPool(self.guess_set)
        self.grid: list[list[int]] = []       # levels 0..L, W tokens each; grid[0][0] stands for the root
        self.rng = random.Random(self.seed)
        self._step: tuple[int, int, int] | None = None   # (root, draft nodes, window levels) of the last propose
        self._stats = {"guess_steps": 0, "hit_steps": 0, "guess_tokens_accepted": 0,
                       "window_ngrams": 0, "warmup_steps": 0}

    def _fill(self, ctx: DecodeContext, k: int) -> list[int]:
        return [self.rng.choice(ctx.tokens) for _ in range(k)]

    def begin(self, ctx: DecodeContext) -> None:
        self._reset()
        self.grid = [[ctx.root] + self._fill(ctx, self.window - 1)]
        if self.prompt_ngrams:
            self._add_context_ngrams(ctx.tokens, 0)

    def _add_context_ngrams(self, tokens: list[int], start: int) -> None:
        """Pool the n-grams of `tokens` that end at index >= start."""
        n = self.ngram
        for end in range(max(start, n - 1), len(tokens)):
            self.pool.add(tokens[end - n + 1], tuple(tokens[end - n + 2: end + 1]))

    def propose(self, ctx: DecodeContext) -> DraftTree:
        device = ctx.model.device
        root, r = ctx.root, len(ctx.tokens) - 1
        tokens, parents = ngram_trie(self.pool.get(root)[: self.guess_set])
        levels = len(self.grid) - 1
        offsets, aux_mask = lookahead_mask(self.window, levels)
        aux = self.grid[0][1:] + [t for level in self.grid[1:] for t in level]
        self._step = (root, len(tokens), levels)
        return DraftTree(tokens=send(tokens, device), parents=torch.tensor(parents, dtype=torch.long),
                         aux_tokens=send(aux, device),
                         aux_positions=offsets + r, aux_mask=aux_mask)

    def accept(self, ctx: DecodeContext, step: StepResult) -> None:
        root, n, levels = self._step
        W, N = self.window, self.ngram
        if n:
            self._stats["guess_steps"] += 1
            self._stats["hit_steps"] += bool(step.accepted)
            self._stats["guess_tokens_accepted"] += len(step.accepted)
        # rows of the top level in the forward (root, n draft nodes, aux nodes)
        if levels == 0:
            rows = [0] + list(range(1 + n, 1 + n + W - 1))
        else:
            first = 1 + n + W - 1 + (levels - 1) * W
            rows = list(range(first, first + W))
        new = [step.argmax[row] for row in rows]
        if levels == N - 2:   # full window: column j is an n-gram at consecutive positions
            for j in range(W):
                key = root if j == 0 else self.grid[0][j]
                self.pool.add(key, tuple(self.grid[l][j] for l in range(1, levels + 1)) + (new[j],))
            self._stats["window_ngrams"] += W
        else:
            self._stats["warmup_steps"] += 1
        if self.prompt_ngrams:
            self._add_context_ngrams(ctx.tokens, len(ctx.tokens) - len(step.tokens))
        self.grid = shift_window(self.grid, new, len(step.tokens), N, lambda k: self._fill(ctx, k))
        self.grid[0][0] = ctx.root

    def stats(self) -> dict:
        s = {f"lookahead_{k}": v for k, v in self._stats.items()}
        s["lookahead_pool_ngrams"] = len(self.pool)
        s["lookahead_pool_keys"] = len(self.pool.table)
        return s
