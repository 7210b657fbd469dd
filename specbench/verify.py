"""The one verifier: which draft nodes the target accepts, and the token it emits after them.

Every method (chain or tree, sampled or deterministic draft) goes through `verify_tree`, so the
losslessness proof (tests/test_verify_exact.py) covers all of them at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .errors import SpecbenchError
from .sampling import sample
from .tree import DraftTree


class RandomSource(Protocol):
    """The verifier's only source of randomness, so tests can enumerate every branch exactly."""

    def bernoulli(self, prob: float) -> bool: ...

    def categorical(self, probs: torch.Tensor) -> int: ...   # probs [V], sums to 1


class TorchRandom:
    """The production RandomSource: draws from a torch.Generator (None = torch's default)."""

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator
        self.device = generator.device if generator is not None else torch.device("cpu")

    def bernoulli(self, prob: float) -> bool:
        return bool(torch.rand(1, generator=self.generator, device=self.device).item() < prob)

    def categorical(self, probs: torch.Tensor) -> int:
        return int(sample(probs.to(self.device), self.generator).item())


@dataclass
class VerifyResult:
    accepted: list[int]   # draft node indices on the accepted path, root side first
    next_token: int       # the correction (after a rejection) or bonus token, drawn from the target


def verify_tree(tree: DraftTree, p: torch.Tensor, greedy: bool, rng: RandomSource) -> VerifyResult:
    """Accept a path of `tree` and draw the next token so the output is distributed exactly as p.

    p [1 + n, V]: p[0] is the processed target distribution after the root, p[i + 1] after node i.
    Sampled mode tries the children of the current node in order, each against the residual left
    by its rejected elder siblings. This is exact when each child's token was drawn from its q
    independently of its elder siblings (i.i.d. samples of one q, or fixed picks = one-hot q): a
    try against residual r emits y w.p. min(r, q)(y) and otherwise passes on normalize(max(0, r - q))
    with the remaining mass, so by induction the node emits exactly r. (Sampling siblings without
    replacement breaks the independence and is not exact.)
    """
    n = tree.size
    if p.dim() != 2 or p.shape[0] != 1 + n:
        raise SpecbenchError(f"verify_tree: p must be [1 + {n}, V], got {list(p.shape)}")
    tokens: list[int] = tree.tokens.tolist()
    parents: list[int] = tree.parents.tolist()
    if greedy:
        return _verify_greedy(tokens, parents, p.argmax(-1).tolist())

    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    p = p.detach().to("cpu", dtype)
    if tree.q is None:   # a deterministic draft is a draft whose q is one-hot at its token
        q = torch.nn.functional.one_hot(tree.tokens.cpu(), p.shape[1]).to(dtype)
    else:
        q = tree.q.detach().to("cpu", dtype)
    children: list[list[int]] = [[] for _ in range(1 + n)]   # by row: root = 0, node i = i + 1
    for i, parent in enumerate(parents):
        children[parent + 1].append(i)

    accepted: list[int] = []
    row, r = 0, p[0]
    while True:
        for child in children[row]:
            x = tokens[child]
            a = _accept_prob(float(r[x]), float(q[child, x]))
            if a >= 1.0 or (a > 0.0 and rng.bernoulli(a)):
                accepted.append(child)
                row, r = child + 1, p[child + 1]
                break
            r = _residual(r, q[child])
        else:   # no child accepted (or none to try): the correction or bonus token comes from r
            return VerifyResult(accepted, rng.categorical(r))


def _accept_prob(r_x: float, q_x: float) -> float:
    """min(1, r(x) / q(x)); never accepts a token the target rules out, even if q(x) == 0."""
    if r_x <= 0.0:
        return 0.0
    return 1.0 if r_x >= q_x else r_x / q_x


def _residual(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalize(max(0, r - q)): what r still owes after a rejected try with draft q.

    Zero mass means the rejection had probability 0 (r <= q everywhere, i.e. r == q) and only
    rounding got us here; keep r rather than divide by zero.
    """
    res = (r - q).clamp_min_(0.0)
    mass = float(res.sum())
    return res / mass if mass > 0.0 else r


def _verify_greedy(tokens: list[int], parents: list[int], argmax: list[int]) -> VerifyResult:
    """Longest path whose every token is the target argmax at its parent; exact, no randomness."""
    accepted = deepest_path(parents, [t == argmax[parent + 1] for t, parent in zip(tokens, parents)])
    return VerifyResult(accepted, argmax[accepted[-1] + 1 if accepted else 0])


def deepest_path(parents: list[int], ok: list[bool]) -> list[int]:
    """The deepest root-to-node path whose every node is ok (the earlier node on ties), root side
    first; [] when no child of the root is ok."""
    depth = [0] * len(parents)   # depth of an ok node on an all-ok path, 0 where the path breaks
    best = -1
    for i, parent in enumerate(parents):
        if ok[i] and (parent < 0 or depth[parent] > 0):
            depth[i] = 1 + (depth[parent] if parent >= 0 else 0)
            if best < 0 or depth[i] > depth[best]:
                best = i
    path: list[int] = []
    while best >= 0:
        path.append(best)
        best = parents[best]
    return path[::-1]


def verify_typical(tree: DraftTree, p: torch.Tensor, threshold: float, alpha: float,
                   rng: RandomSource) -> VerifyResult:
    """Medusa's typical acceptance (LOSSY): a node is plausible when the target gives its token
    p(x) > min(threshold, alpha * exp(-H(p))) at its parent; the deepest path of plausible nodes
    is accepted (the first one on ties) and the next token is drawn from p after it. It trades
    exactness for longer acceptances at high temperature; the distribution test rejects it."""
    n = tree.size
    if p.dim() != 2 or p.shape[0] != 1 + n:
        raise SpecbenchError(f"verify_typical: p must be [1 + {n}, V], got {list(p.shape)}")
    p = p.detach().to("cpu", torch.float64)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
    bound = torch.minimum(torch.full_like(entropy, threshold), alpha * torch.exp(-entropy))
    tokens, parents = tree.tokens.tolist(), tree.parents.tolist()
    plausible = [bool(p[parent + 1, x] > bound[parent + 1]) for x, parent in zip(tokens, parents)]
    accepted = deepest_path(parents, plausible)
    return VerifyResult(accepted, rng.categorical(p[accepted[-1] + 1 if accepted else 0]))
