"""Token trees: what a proposer hands the engine.

Node 0 of every forward is the *root*: the last committed token, whose K/V are not yet in the cache.
Draft nodes are numbered 0..n-1 in topological order (a parent comes before its children) and
siblings in priority order; `parents[i] == -1` marks a child of the root. A chain is the tree with
parents = [-1, 0, 1, ...].

`parents` lives on the CPU: the tree's shape is host knowledge (the engine builds positions and the
attention mask from it without reading the device), while `tokens` and `q` may live on the device.
A proposer that shapes its tree on the device (EAGLE-2's dynamic tree) gives `ancestors` there
instead, and its parents may stay on the device: the engine then builds the step from
`ancestors` and reads neither back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DraftTree:
    tokens: torch.Tensor                   # [n] long, drafted tokens
    parents: torch.Tensor                  # [n] long on the CPU, parent node index, -1 = child of the root
    # [n, V]: q[i] is the (processed) draft distribution node i was *sampled* from. None means the
    # draft is deterministic (a lookup or a top-k pick), which the verifier treats as a one-hot q.
    q: torch.Tensor | None = None
    # Work the proposer already did on the target for root + nodes, so verification need not redo
    # it: the residual stream after `resume_layer` layers, [1 + n, hidden]. Early exit uses this.
    resume_layer: int = 0
    resume_hidden: torch.Tensor | None = None
    # Extra nodes scored in the same forward but never candidates (lookahead's Jacobi window).
    # aux_positions [m] are absolute positions; aux_mask [m, 1 + m] says which of (root, aux nodes)
    # each aux node sees (it always sees the committed cache and never the draft nodes).
    aux_tokens: torch.Tensor | None = None
    aux_positions: torch.Tensor | None = None
    aux_mask: torch.Tensor | None = None
    # Set only by LOSSY proposers: the next token, chosen without target verification; the proposer
    # has already written the root's K/V into the target cache itself.
    decided: int | None = None
    # [n, n] bool on the device: ancestors[i, j] says node j is an ancestor-or-self of node i (a
    # tree shaped on the device; see the module docstring). Not with aux nodes.
    ancestors: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    def ancestors_on(self, device: torch.device | str) -> torch.Tensor:
        """[n, n] ancestor-or-self mask of the nodes on `device`: the tree's own when it was shaped
        on the device, else built from its parents and sent without waiting."""
        if self.ancestors is not None:
            return self.ancestors.to(device)
        return ancestor_mask(self.parents)[1:, 1:].to(device, non_blocking=True)

    @staticmethod
    def chain(tokens: torch.Tensor, q: torch.Tensor | None = None) -> "DraftTree":
        n = int(tokens.numel())
        return DraftTree(tokens=tokens, parents=torch.arange(-1, n - 1), q=q)

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> "DraftTree":
        return DraftTree(tokens=torch.zeros(0, dtype=torch.long, device=device),
                         parents=torch.zeros(0, dtype=torch.long))


def depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth of each draft node below the root (children of the root have depth 1)."""
    out: list[int] = []
    for p in parents.tolist():
        out.append(1 if p < 0 else out[p] + 1)
    return torch.tensor(out, dtype=torch.long)


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """[1 + n, 1 + n] bool over (root, nodes): True where column is an ancestor-or-self of row.
    Each node's chain is its parent's plus itself, set with one indexed write: row-by-row tensor
    copies cost 3.4x more for a 48-node tree, on the host while the device waits, every step
    (docs/results/gpu_defaults_h200/NOTE.md)."""
    chains: list[list[int]] = []
    rows: list[int] = [0]
    cols: list[int] = [0]
    for i, p in enumerate(parents.tolist()):
        chain = (chains[p] if p >= 0 else [0]) + [i + 1]
        chains.append(chain)
        rows += [i + 1] * len(chain)
        cols += chain
    mask = torch.zeros(1 + len(chains), 1 + len(chains), dtype=torch.bool)
    mask[rows, cols] = True
    return mask


TOPK_SLICE = 256     # columns per slice of two_pass_top_k's first pass
SMALL_SORT = 4096    # the longest row CUDA sorts in shared memory (torch's in-place sort kernels)
TWO_PASS_MAX = 8192  # the widest rows for which two_pass_top_k measured faster than topk on CUDA


def top_k_rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries of each row of x [n, V] and their columns. On CUDA, rows of up to
    TWO_PASS_MAX columns (a draft vocabulary) go through `two_pass_top_k`: one EAGLE drafting step
    took 0.263 against 0.377 ms with 8,192 draft tokens, EAGLE-3's (4,096) 0.253 against 0.314 ms,
    while over the whole 49,152-token vocabulary it lost (EAGLE 0.530 against 0.473 ms, Medusa 0.135
    against 0.086 ms; H200, `experiments/gpu_draft_trace.py`, docs/results/gpu_draft_step_h200/).
    On a CPU torch's topk is kept: the two passes measured slower there."""
    if x.device.type == "cuda" and x.shape[1] <= TWO_PASS_MAX:
        return two_pass_top_k(x, k)
    return x.topk(k)


def two_pass_top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`x.topk(k)` (the order among equal values aside) in two sorts of short rows, which CUDA does
    in shared memory: every TOPK_SLICE-wide slice of a row, then the best k of each slice
    together. CUDA's topk is a radix select, 25 us even for slices of 256 (H200)."""
    n, width = x.shape
    if width <= 2 * TOPK_SLICE or k > TOPK_SLICE or width // TOPK_SLICE * k > SMALL_SORT:
        return x.topk(k)
    pad = -width % TOPK_SLICE
    if pad:      # a pad column is only chosen in a row with fewer than k finite entries (all -inf)
        x = torch.nn.functional.pad(x, (0, pad), value=float("-inf"))
    values, index = x.view(n, -1, TOPK_SLICE).sort(dim=-1, descending=True)
    values, index = values[..., :k], index[..., :k]                                   # [n, S, k]
    index = index + torch.arange(0, x.shape[1], TOPK_SLICE, device=x.device)[:, None]
    best, pick = values.flatten(1).sort(dim=-1, descending=True)
    return best[:, :k], index.flatten(1).gather(1, pick[:, :k]).clamp_max(width - 1)
