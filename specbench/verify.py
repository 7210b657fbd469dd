"""The one verifier: which draft nodes the target accepts, and the token it emits after them.

Every method (chain or tree, sampled or deterministic draft) goes through `verify_tree`, so the
losslessness proof (tests/test_verify_exact.py) covers all of them at once.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .errors import SpecbenchError
from .model import send
from .sampling import sample
from .tree import DraftTree


class RandomSource(Protocol):
    """The verifier's only source of randomness, so tests can enumerate every branch exactly."""

    def bernoulli(self, prob: float) -> bool: ...

    def categorical(self, probs: torch.Tensor) -> int: ...   # probs [V], sums to 1

    # one draw per row of probs [R, V], made ahead on their device, so that the verifier reads the
    # one it needs with everything else in one transfer; None: draw lazily with `categorical`
    def presample(self, probs: torch.Tensor) -> torch.Tensor | None: ...


class TorchRandom:
    """The production RandomSource: categorical draws from a torch.Generator (None = torch's
    default) on its device; accept tests from a host generator seeded from it, so that they never
    wait for the device. On CUDA (`ahead`) the verifier's final draw is made ahead for every row, so
    a sampled step reads the device once; on a CPU a read costs nothing and drawing every row of a
    60-node tree would cost more than it saves."""

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator
        self.device = generator.device if generator is not None else torch.device("cpu")
        seed = generator.initial_seed() if generator is not None else int(torch.randint(2 ** 62, ()))
        self.host = random.Random(seed)
        self.ahead = self.device.type == "cuda"

    def bernoulli(self, prob: float) -> bool:
        return self.host.random() < prob

    def categorical(self, probs: torch.Tensor) -> int:
        return int(sample(probs.to(self.device), self.generator).item())

    def presample(self, probs: torch.Tensor) -> torch.Tensor | None:
        return sample(probs.to(self.device), self.generator) if self.ahead else None


@dataclass
class VerifyResult:
    accepted: list[int]   # draft node indices on the accepted path, root side first
    next_token: int       # the correction (after a rejection) or bonus token, drawn from the target
    read_along: list[int] = field(default_factory=list)   # the caller's `read_along` tensor, on the host


def _read(*parts: torch.Tensor | None) -> list[list[float] | None]:
    """Tensors of one device, flattened, in ONE device-to-host transfer (float64 holds token ids
    and probabilities exactly); the lists come back in order, None for a None part."""
    flat = [t.reshape(-1).to(torch.float64) for t in parts if t is not None]
    values = torch.cat(flat).tolist() if flat else []
    out, start = [], 0
    for t in parts:
        if t is None:
            out.append(None)
            continue
        out.append(values[start:start + t.numel()])
        start += t.numel()
    return out


def _ints(values: list[float] | None) -> list[int]:
    return [int(v) for v in values] if values is not None else []


def _children(parents: list[int] | list[float]) -> list[list[int]]:
    """Each row's children in sibling order: row 0 is the root, row i + 1 is node i."""
    children: list[list[int]] = [[] for _ in range(1 + len(parents))]
    for i, parent in enumerate(parents):
        children[int(parent) + 1].append(i)
    return children


def verify_tree(tree: DraftTree, p: torch.Tensor, greedy: bool, rng: RandomSource,
                read_along: torch.Tensor | None = None) -> VerifyResult:
    """Accept a path of `tree` and draw the next token so the output is distributed exactly as p.

    p [1 + n, V]: p[0] is the processed target distribution after the root, p[i + 1] after node i.
    Sampled mode tries the children of the current node in order, each against the residual left
    by its rejected elder siblings. This is exact when each child's token was drawn from its q
    independently of its elder siblings (i.i.d. samples of one q, or fixed picks = one-hot q): a
    try against residual r emits y w.p. min(r, q)(y) and otherwise passes on normalize(max(0, r - q))
    with the remaining mass, so by induction the node emits exactly r. (Sampling siblings without
    replacement breaks the independence and is not exact.) A draw made ahead from every row's final
    residual (`rng.presample`) is independent of the accept tests, so using the stopping row's
    draw keeps this exact.

    The device is read once: the acceptance probabilities, the tree's parents (EAGLE's dynamic tree
    keeps them on the device), the draws made ahead, and `read_along` (a long tensor on p's device
    the caller needs on the host: the engine's tree tokens and argmax), returned in the result.
    """
    n = tree.size
    if p.dim() != 2 or p.shape[0] != 1 + n:
        raise SpecbenchError(f"verify_tree: p must be [1 + {n}, V], got {list(p.shape)}")
    if greedy:
        order, count, next_token = verify_greedy(tree, p.argmax(-1), tree.ancestors_on(p.device))
        head, order, along = _read(torch.stack([count, next_token]), order, read_along)
        return VerifyResult(_ints(order[:int(head[0])]), int(head[1]), _ints(along))
    accept, residual = sibling_trials(tree, p)
    on_host = tree.parents.device.type == "cpu"
    accept, parents, drawn, along = _read(accept, None if on_host else tree.parents,
                                          rng.presample(residual), read_along)
    children = _children(tree.parents.tolist() if on_host else parents)
    accepted: list[int] = []
    row = 0
    while True:
        for child in children[row]:
            a = accept[child]
            if a >= 1.0 or (a > 0.0 and rng.bernoulli(a)):
                accepted.append(child)
                row = child + 1
                break
        else:   # no child accepted (or none to try): the correction or bonus token comes from r
            token = int(drawn[row]) if drawn is not None else rng.categorical(residual[row])
            return VerifyResult(accepted, token, _ints(along))


def sibling_trials(tree: DraftTree, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every probability sampled verification needs, computed ahead on p's device.

    A node is tried only after its elder siblings were all rejected, so the residual it meets
    depends on its row and elder siblings alone. Hence, for every node at once, `accept` [n]: the
    chance min(1, r(x) / q(x)) that it is accepted when tried; and for every row `residual`
    [1 + n, V]: r once all its children are rejected (the correction's distribution; p itself for
    a row without children, whose draw is the bonus token). This replaces a walk over p on the
    host, which took 16 ms per step of EAGLE's 60-node tree at temperature 1 on the H200
    (docs/results/gpu_eagle_t1_h200/NOTE.md)."""
    dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
    p = p.detach().to(dtype)
    if tree.q is None:
        return _one_hot_trials(tree, p)
    device = p.device
    children = _children(tree.parents.tolist())   # sampled drafts keep their parents on the host
    r = p.clone()
    accept = torch.zeros(tree.size, dtype=dtype, device=device)
    tokens = tree.tokens.to(device, non_blocking=True)
    q_all = tree.q.detach().to(device, dtype)
    for k in range(max(map(len, children))):      # one pass per sibling rank
        rows, nodes = zip(*((row, kids[k]) for row, kids in enumerate(children) if len(kids) > k))
        rows, nodes = send(list(rows), device), send(list(nodes), device)
        x = tokens[nodes][:, None]
        q, r_rows = q_all[nodes], r[rows]
        accept[nodes] = _accept_prob(r_rows.gather(1, x)[:, 0], q.gather(1, x)[:, 0])
        r[rows] = _residual(r_rows, q)
    return accept, r


def _one_hot_trials(tree: DraftTree, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`sibling_trials` for a deterministic draft (q one-hot at each node's token), in closed form:
    a rejected try zeroes its token and renormalizes, so the node tried after elder siblings with
    distinct tokens x_1..x_j meets r(x) = p(x) / (1 - p(x_1) - ... - p(x_j)), or 0 when x repeats
    one of them; and a row's final residual is p with all its children's tokens zeroed,
    renormalized. A fixed number of tensor operations, however many siblings (EAGLE's dynamic tree
    has ten per row)."""
    device, n = p.device, tree.size
    rows = tree.parents.to(device, non_blocking=True) + 1
    tokens = tree.tokens.to(device, non_blocking=True)
    p_x = p[rows, tokens]                                             # [n]
    idx = torch.arange(n, device=device)
    elder = (rows[:, None] == rows[None, :]) & (idx[None, :] < idx[:, None])   # [i, j]: j before i
    repeats = (elder & (tokens[:, None] == tokens[None, :])).any(-1)
    taken = (elder & ~repeats[None, :]).to(p.dtype) @ p_x            # mass of the distinct elders
    left = 1.0 - taken
    r_x = torch.where(repeats | (left <= 0), 0.0, p_x / left.clamp_min(1e-300))
    accept = _accept_prob(r_x, torch.ones_like(r_x))
    children_tokens = torch.zeros_like(p).index_put_((rows, tokens), torch.ones_like(p_x))
    return accept, _residual(p, children_tokens)


def _accept_prob(r_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    """min(1, r(x) / q(x)); never accepts a token the target rules out, even if q(x) == 0."""
    return torch.where(r_x <= 0, 0.0, torch.where(r_x >= q_x, 1.0, r_x / q_x.clamp_min(1e-300)))


def _residual(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalize(max(0, r - q)) per row: what r still owes after a rejected try with draft q.

    Zero mass means the rejection had probability 0 (r <= q everywhere, i.e. r == q) and only
    rounding got us here; keep r rather than divide by zero.
    """
    res = (r - q).clamp_min(0.0)
    mass = res.sum(-1, keepdim=True)
    return torch.where(mass > 0, res / mass.clamp_min(1e-300), r)


def verify_greedy(tree: DraftTree, argmax: torch.Tensor, anc: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy verification on argmax's device, reading nothing back to the host (so a CUDA step
    keeps one synchronisation, the engine's). argmax [1 + n]: the target's choice after the root
    and after each node; anc [n, n]: the nodes' ancestor-or-self mask (None without nodes).
    Returns (order, count, next_token) as `deepest_ok_path`, next_token [] being the argmax after
    the path's last node."""
    if tree.size == 0:
        return argmax.new_zeros(0), argmax.new_zeros(()), argmax[0]
    parents = tree.parents.to(argmax.device, non_blocking=True)
    ok = tree.tokens.to(argmax.device, non_blocking=True) == argmax.index_select(0, parents + 1)
    order, count = deepest_ok_path(anc, ok)
    last = order.index_select(0, (count - 1).clamp_min(0).view(1)) + 1
    row = torch.where(count > 0, last, torch.zeros_like(last))
    return order, count, argmax.index_select(0, row)[0]


def deepest_ok_path(anc: torch.Tensor, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The deepest root-to-node path whose every node is ok (the earlier node on ties), computed
    with tensor operations only (no host read, no data-dependent shape).

    anc [n, n] bool: anc[i, j] says node j is an ancestor-or-self of node i; ok [n] bool (n >= 1).
    Returns order [n] (the path's nodes root side first, then every other node) and count [] (the
    path's length; 0 when no child of the root is ok).
    """
    holds = ~(anc & ~ok[None, :]).any(-1)          # every node from the root down to i is ok
    score = anc.sum(-1) * holds                     # i's depth where the path holds, else 0
    best = score.argmax().view(1)                   # argmax returns the first maximum
    on_path = anc.index_select(0, best)[0] & (score.max() > 0)
    order = torch.argsort((~on_path).long(), stable=True)   # topological order: root side first
    return order, on_path.sum()


def verify_typical(tree: DraftTree, p: torch.Tensor, threshold: float, alpha: float,
                   rng: RandomSource, read_along: torch.Tensor | None = None) -> VerifyResult:
    """Medusa's typical acceptance (LOSSY): a node is plausible when the target gives its token
    p(x) > min(threshold, alpha * exp(-H(p))) at its parent; the deepest path of plausible nodes
    is accepted (the first one on ties) and the next token is drawn from p after it. It trades
    exactness for longer acceptances at high temperature; the distribution test rejects it.
    Reads the device once, as `verify_tree` does."""
    n = tree.size
    if p.dim() != 2 or p.shape[0] != 1 + n:
        raise SpecbenchError(f"verify_typical: p must be [1 + {n}, V], got {list(p.shape)}")
    p = p.detach().float()           # on p's device: only the accepted path is read back
    path = torch.zeros(1, dtype=torch.long, device=p.device)   # [count, order...]: empty without nodes
    if n:
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        bound = torch.minimum(torch.full_like(entropy, threshold), alpha * torch.exp(-entropy))
        rows = tree.parents.to(p.device) + 1
        plausible = p[rows, tree.tokens.to(p.device)] > bound[rows]
        order, count = deepest_ok_path(tree.ancestors_on(p.device), plausible)
        path = torch.cat([count.view(1), order])
    path, drawn, along = _read(path, rng.presample(p), read_along)
    accepted = _ints(path[1:1 + int(path[0])])
    row = accepted[-1] + 1 if accepted else 0
    token = int(drawn[row]) if drawn is not None else rng.categorical(p[row])
    return VerifyResult(accepted, token, _ints(along))
