"""Proof 1: one verification step is exactly lossless.

A tiny "language" gives a target p(. | prefix) and a draft q(. | prefix) for every short prefix.
One speculative step from the empty prefix (draft a tree, `verify_tree` it) emits the accepted
tokens plus one more; continuing with vanilla sampling from p up to D = depth + 1 tokens must give
exactly the vanilla joint distribution of p over length-D sequences. "Exactly" is computed, not
sampled: `enumerate_outcomes` runs the step once per branch of every random decision (each draft
token, each accept test, the final draw) and weighs the outcome by the branch's probability.
Broken verifiers must fail the same check (the negative controls at the end).
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import specbench.verify as verify_mod
from specbench.errors import SpecbenchError
from specbench.tree import DraftTree
from specbench.verify import TorchRandom, verify_tree

TOL = 1e-9
Prefix = tuple[int, ...]
Choice = tuple[object, float]   # (value returned to the program, its probability)


# ---- exact enumeration of a randomized program ---------------------------------------------------

class Enumerator:
    """A RandomSource that replays recorded choices, then takes the first option of every new
    decision and records the other options as branches still to run."""

    def __init__(self, replay: tuple[Choice, ...], sum_tol: float):
        self.replay, self.sum_tol = replay, sum_tol
        self.trail: tuple[Choice, ...] = ()
        self.weight = 1.0
        self.pending: list[tuple[Choice, ...]] = []

    def _decide(self, options: list[Choice]) -> object:
        k = len(self.trail)
        if k < len(self.replay):
            choice = self.replay[k]
            assert choice in options, "the program must be deterministic given its random choices"
        else:
            choice = options[0]
            self.pending.extend(self.trail + (alt,) for alt in options[1:])
        self.trail += (choice,)
        self.weight *= choice[1]
        return choice[0]

    def bernoulli(self, prob: float) -> bool:
        assert 0.0 <= prob <= 1.0, prob
        return bool(self._decide([(v, w) for v, w in ((True, prob), (False, 1.0 - prob)) if w > 0]))

    def categorical(self, probs: torch.Tensor) -> int:
        assert probs.dim() == 1 and bool((probs >= 0).all()), probs
        assert abs(float(probs.sum()) - 1.0) <= self.sum_tol, probs
        return int(self._decide([(i, w) for i, w in enumerate(probs.tolist()) if w > 0]))

    def presample(self, probs: torch.Tensor) -> None:
        return None   # every draw is enumerated where the verifier needs it


def enumerate_outcomes(program: Callable[[Enumerator], tuple[int, ...]],
                       sum_tol: float = 1e-12) -> dict[tuple[int, ...], float]:
    """The exact distribution of program(rng)'s result, by running every branch once."""
    dist: dict[tuple[int, ...], float] = defaultdict(float)
    todo: list[tuple[Choice, ...]] = [()]
    while todo:
        rng = Enumerator(todo.pop(), sum_tol)
        out = program(rng)
        dist[out] += rng.weight
        todo.extend(rng.pending)
    return dist


class NoRandom:
    """Greedy verification must not draw anything."""

    def bernoulli(self, prob: float) -> bool:
        raise AssertionError("greedy verification used randomness")

    def categorical(self, probs: torch.Tensor) -> int:
        raise AssertionError("greedy verification used randomness")

    def presample(self, probs: torch.Tensor) -> torch.Tensor:
        raise AssertionError("greedy verification used randomness")


class FixedDraft(NoRandom):
    """Hands out the fixed draft tokens (so the tree carries a q), then forbids any randomness."""

    def __init__(self, tokens: list[int]):
        self.tokens = list(tokens)

    def categorical(self, probs: torch.Tensor) -> int:
        if not self.tokens:
            return super().categorical(probs)
        return self.tokens.pop(0)


# ---- the tiny language and one speculative step --------------------------------------------------

@dataclass
class Language:
    V: int
    p: dict[Prefix, torch.Tensor]   # target after each prefix up to the tree depth, float64
    q: dict[Prefix, torch.Tensor]   # draft after each prefix

    def continue_vanilla(self, dist: dict[Prefix, float], D: int) -> dict[Prefix, float]:
        """Extend every sequence in dist with vanilla sampling from p up to length D."""
        out: dict[Prefix, float] = defaultdict(float)
        while dist:
            seq, w = dist.popitem()
            assert len(seq) <= D, seq
            if len(seq) == D:
                out[seq] += w
                continue
            for x, px in enumerate(self.p[seq].tolist()):
                if px > 0:
                    dist[seq + (x,)] = dist.get(seq + (x,), 0.0) + w * px
        return out


def speculative_step(lang: Language, parents: list[int], fixed_tokens: list[int] | None,
                     rng, greedy: bool = False, verify=verify_tree,
                     dtype: torch.dtype = torch.float64) -> tuple[int, ...]:
    """Draft a tree from the empty prefix (each node ~ q(. | its path), or fixed tokens with
    q = None), verify it, and return the emitted tokens: the accepted path plus next_token."""
    tokens: list[int] = []
    paths: list[Prefix] = []
    for i, parent in enumerate(parents):
        ctx = () if parent < 0 else paths[parent]
        x = rng.categorical(lang.q[ctx]) if fixed_tokens is None else fixed_tokens[i]
        tokens.append(x)
        paths.append(ctx + (x,))
    p = torch.stack([lang.p[()]] + [lang.p[path] for path in paths]).to(dtype)
    q = None
    if fixed_tokens is None:
        q = torch.stack([lang.q[path[:-1]] for path in paths]) if paths else torch.zeros(0, lang.V)
        q = q.to(dtype)
    tree = DraftTree(tokens=torch.tensor(tokens, dtype=torch.long),
                     parents=torch.tensor(parents, dtype=torch.long), q=q)
    result = verify(tree, p, greedy, rng)
    for k, node in enumerate(result.accepted):   # the accepted nodes form a path from the root
        assert parents[node] == (result.accepted[k - 1] if k else -1), result
    assert 0 <= result.next_token < lang.V
    return tuple(tokens[i] for i in result.accepted) + (result.next_token,)


def tree_depth(parents: list[int]) -> int:
    depth: list[int] = []
    for parent in parents:
        depth.append(1 if parent < 0 else depth[parent] + 1)
    return max(depth, default=0)


def note_size(lang: Language, parents: list[int]) -> None:
    """For `pytest --hypothesis-show-statistics`: which sizes the search covered."""
    siblings = max((parents.count(i) for i in range(-1, len(parents))), default=0)
    event(f"V={lang.V} nodes={len(parents)} depth={tree_depth(parents)} max_siblings={siblings}")


def exact_error(lang: Language, parents: list[int], fixed_tokens: list[int] | None,
                verify=verify_tree, dtype: torch.dtype = torch.float64) -> float:
    """Max |P_spec(z) - P_vanilla(z)| over sequences z of length depth + 1."""
    D = tree_depth(parents) + 1
    sum_tol = 1e-12 if dtype == torch.float64 else 1e-5
    emitted = enumerate_outcomes(
        lambda rng: speculative_step(lang, parents, fixed_tokens, rng, verify=verify, dtype=dtype),
        sum_tol)
    spec = lang.continue_vanilla(dict(emitted), D)
    vanilla = lang.continue_vanilla({(): 1.0}, D)
    return max(abs(spec.get(z, 0.0) - vanilla.get(z, 0.0)) for z in spec.keys() | vanilla.keys())


# ---- hypothesis strategies -----------------------------------------------------------------------

def distributions(V: int) -> st.SearchStrategy[torch.Tensor]:
    """Small integer or arbitrary float weights, so zeros, one-hots and ties are common."""
    weight = st.one_of(st.integers(0, 4).map(float),
                       st.floats(0.0, 1.0, allow_subnormal=False))
    nonzero = st.lists(weight, min_size=V, max_size=V).map(lambda w: w if sum(w) else [1.0] + w[1:])
    return nonzero.map(lambda w: torch.tensor(w, dtype=torch.float64) / sum(w))


def one_hots(V: int) -> st.SearchStrategy[torch.Tensor]:
    return st.integers(0, V - 1).map(
        lambda x: torch.nn.functional.one_hot(torch.tensor(x), V).to(torch.float64))


@st.composite
def languages(draw, V: int, depth: int, dist=distributions) -> Language:
    """p and q for every prefix of length <= depth, drawn from a small shared palette, so p == q,
    disjoint supports and repeated distributions all occur."""
    palette = draw(st.lists(dist(V), min_size=1, max_size=5))
    pick = st.integers(0, len(palette) - 1)
    p: dict[Prefix, torch.Tensor] = {}
    q: dict[Prefix, torch.Tensor] = {}
    for length in range(depth + 1):
        for prefix in itertools.product(range(V), repeat=length):
            p[prefix] = palette[draw(pick)]
            q[prefix] = palette[draw(pick)]
    return Language(V, p, q)


@st.composite
def tree_shapes(draw, min_nodes: int, max_nodes: int, max_depth: int = 3) -> list[int]:
    """Parents of a random tree in topological order; siblings need not be adjacent."""
    parents: list[int] = []
    depth: list[int] = []
    for _ in range(draw(st.integers(min_nodes, max_nodes))):
        parent = draw(st.sampled_from([-1] + [j for j, d in enumerate(depth) if d < max_depth]))
        parents.append(parent)
        depth.append(1 if parent < 0 else depth[parent] + 1)
    return parents


# The draft enumeration costs V ** n branches for n sampled nodes, so bound n by V.
MAX_SAMPLED_NODES = {2: 6, 3: 4, 4: 3, 5: 3}


@st.composite
def sampled_cases(draw, chain: bool):
    V = draw(st.integers(2, 5))
    if chain:
        n = draw(st.integers(1, min(3, MAX_SAMPLED_NODES[V])))
        parents = list(range(-1, n - 1))
    else:
        parents = draw(tree_shapes(2, MAX_SAMPLED_NODES[V]))
    return draw(languages(V, tree_depth(parents))), parents


@st.composite
def fixed_cases(draw, chain: bool, dist=distributions):
    V = draw(st.integers(2, 5))
    if chain:
        parents = list(range(-1, draw(st.integers(1, 3)) - 1))
    else:
        parents = draw(tree_shapes(1, 8))
    tokens = draw(st.lists(st.integers(0, V - 1), min_size=len(parents), max_size=len(parents)))
    return draw(languages(V, tree_depth(parents), dist)), parents, tokens


# ---- proofs --------------------------------------------------------------------------------------

@given(sampled_cases(chain=True))
def test_sampled_chain_is_exact(case):
    lang, parents = case
    note_size(lang, parents)
    assert exact_error(lang, parents, None) <= TOL


@given(fixed_cases(chain=True))
def test_deterministic_chain_is_exact(case):
    lang, parents, tokens = case
    note_size(lang, parents)
    assert exact_error(lang, parents, tokens) <= TOL


@given(sampled_cases(chain=False))
def test_iid_sampled_siblings_are_exact(case):
    """Siblings drawn i.i.d. from the same q (SpecInfer multi-draft), any tree shape."""
    lang, parents = case
    note_size(lang, parents)
    assert exact_error(lang, parents, None) <= TOL


@given(fixed_cases(chain=False))
def test_deterministic_siblings_are_exact(case):
    """Fixed siblings (top-k picks, or any tokens, duplicates included) with q = None."""
    lang, parents, tokens = case
    note_size(lang, parents)
    assert exact_error(lang, parents, tokens) <= TOL


@given(fixed_cases(chain=False, dist=one_hots), st.booleans())
def test_greedy_emits_the_argmax_chain(case, with_q):
    lang, parents, tokens = case
    note_size(lang, parents)
    argmax_chain: list[int] = []
    for _ in range(tree_depth(parents) + 1):
        argmax_chain.append(int(lang.p[tuple(argmax_chain)].argmax()))
    path: list[Prefix] = []
    for i, parent in enumerate(parents):
        path.append((() if parent < 0 else path[parent]) + (tokens[i],))
    longest = max((len(s) for s in path if list(s) == argmax_chain[:len(s)]), default=0)

    emitted = speculative_step(lang, parents, None if with_q else tokens,
                               FixedDraft(tokens) if with_q else NoRandom(), greedy=True)
    event(f"greedy accepts {longest} of depth {tree_depth(parents)}")
    assert list(emitted) == argmax_chain[:longest + 1]


def test_float32_is_exact_to_float32_precision():
    lang, parents = tree_example()
    assert exact_error(lang, parents, None, dtype=torch.float32) <= 1e-6
    assert exact_error(lang, parents, [0, 1, 2, 0], dtype=torch.float32) <= 1e-6


def test_torch_random_draws_valid_reproducible_results():
    lang, parents = tree_example()
    rng_a, rng_b = TorchRandom(torch.Generator().manual_seed(0)), TorchRandom(None)
    seen_a, seen_b = [], []
    for _ in range(50):
        seen_a.append(speculative_step(lang, parents, None, rng_a))
        seen_b.append(speculative_step(lang, parents, None, rng_b))
    rng_a = TorchRandom(torch.Generator().manual_seed(0))
    assert [speculative_step(lang, parents, None, rng_a) for _ in range(50)] == seen_a
    assert len(set(seen_a)) > 1 and len(set(seen_b)) > 1
    assert rng_a.bernoulli(1.0) and not rng_a.bernoulli(0.0)


def test_bad_shape_is_rejected():
    tree = DraftTree.chain(torch.tensor([0, 1]))
    with pytest.raises(SpecbenchError):
        verify_tree(tree, torch.full((2, 3), 1 / 3), False, TorchRandom(None))


# ---- negative controls: the same check must catch broken verifiers -------------------------------

def constant_language(V: int, depth: int, p: list[float], q: list[float]) -> Language:
    prefixes = [s for n in range(depth + 1) for s in itertools.product(range(V), repeat=n)]
    pt, qt = torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64)
    return Language(V, {s: pt for s in prefixes}, {s: qt for s in prefixes})


def chain_example() -> tuple[Language, list[int]]:
    return constant_language(2, 2, [0.75, 0.25], [0.25, 0.75]), [-1, 0]


def tree_example() -> tuple[Language, list[int]]:
    """Three siblings at the root, one grandchild under the first."""
    return constant_language(3, 2, [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]), [-1, -1, -1, 0]


def always_accept(monkeypatch):
    monkeypatch.setattr(verify_mod, "_accept_prob", lambda r_x, q_x: torch.ones_like(r_x))


def resample_from_p(monkeypatch):
    """After a rejection, draw from the current target instead of the residual."""
    monkeypatch.setattr(verify_mod, "_residual", lambda r, q: r)


def forget_earlier_siblings(monkeypatch):
    """Each child tried against its row's target, not against the residual its rejected elder
    siblings left (the correction then comes from the last child's residual alone)."""
    def trials(tree, p):
        n, tokens = tree.size, tree.tokens
        children = verify_mod._children(tree.parents.tolist())
        q = tree.q if tree.q is not None else torch.nn.functional.one_hot(tokens, p.shape[1]).to(p.dtype)
        accept = verify_mod._accept_prob(p[tree.parents + 1, tokens], q[torch.arange(n), tokens])
        residual = p.clone()
        for row, kids in enumerate(children):
            if kids:
                residual[row] = verify_mod._residual(p[row:row + 1], q[kids[-1]:kids[-1] + 1])[0]
        return accept, residual
    monkeypatch.setattr(verify_mod, "sibling_trials", trials)


def test_examples_pass_with_the_real_verifier():
    lang, _ = tree_example()
    for lang, parents in (chain_example(), tree_example(), (lang, [])):
        assert exact_error(lang, parents, None) <= TOL
        assert exact_error(lang, parents, [0, 1, 2, 0][:len(parents)]) <= TOL


@pytest.mark.parametrize("breakage", [always_accept, resample_from_p])
def test_check_catches_broken_chain_verifiers(monkeypatch, breakage):
    breakage(monkeypatch)
    lang, parents = chain_example()
    assert exact_error(lang, parents, None) > 1e-3
    assert exact_error(lang, parents, [1, 1]) > 1e-3


def test_check_catches_a_tree_verifier_that_forgets_earlier_siblings(monkeypatch):
    forget_earlier_siblings(monkeypatch)
    lang, parents = chain_example()
    assert exact_error(lang, parents, None) <= TOL       # on a chain the bug is invisible...
    lang, parents = tree_example()
    assert exact_error(lang, parents, None) > 1e-3       # ...but i.i.d. siblings expose it
    assert exact_error(lang, parents, [0, 1, 2, 0]) > 1e-3   # and so do deterministic ones


# ---- draws made ahead (CUDA's one read per step) --------------------------------------------------

class ShiftedDraws(TorchRandom):
    """A broken RandomSource: each row's draw made ahead comes from the next row's distribution."""

    def presample(self, probs: torch.Tensor) -> torch.Tensor:
        return super().presample(probs.roll(-1, 0))


@pytest.mark.parametrize("fixed_tokens", [None, [0, 1, 2, 0]], ids=["sampled_q", "one_hot_q"])
def test_draws_made_ahead_keep_the_exact_distribution(fixed_tokens):
    """On CUDA the correction / bonus token is drawn ahead for every row (`TorchRandom.ahead`) so a
    sampled step reads the device once; the stopping row's draw is independent of the accept tests,
    so one step's emitted tokens keep the enumerated distribution. 4,000 steps at a fixed seed,
    chi-square at ALPHA = 1e-3 (the false-alarm rate); negative control: draws made ahead from the
    wrong rows fail the same check."""
    from collections import Counter

    from lossless import ALPHA, fit_pvalue

    lang, parents = tree_example()
    exact = enumerate_outcomes(lambda rng: speculative_step(lang, parents, fixed_tokens, rng))

    def pvalue(rng: TorchRandom) -> float:
        rng.ahead = True
        counts = Counter(speculative_step(lang, parents, fixed_tokens, rng) for _ in range(4000))
        return fit_pvalue(counts, exact)

    assert pvalue(TorchRandom(torch.Generator().manual_seed(3))) > ALPHA
    assert pvalue(ShiftedDraws(torch.Generator().manual_seed(3))) < ALPHA
