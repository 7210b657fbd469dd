"""Medusa-1 heads (Cai et al. 2024): K small residual blocks on the frozen target's last hidden
state; head k (0-based) predicts the token k + 2 places after the state's own token, i.e. k + 1
places after the next token, which the target's LM head predicts.

Our heads read the target's final residual stream, apply the target's final norm (as the official
heads read the base model's normed output), then `num_layers` ResBlocks (x + SiLU(W x + b)), then
either the target's own LM head (shared, the default) or one LM head per head (the official
layout). Shared is the default for the shipped heads: an own LM head for the default model is
576 x 49,152 parameters = 57 MB per head in fp16, over the 16 MB a shipped file may hold, while a
ResBlock is 0.66 MB.
"""
from __future__ import annotations

import heapq
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecbenchError
from ..model import Linear, Transformer
from .base import Drafter, read_json, read_weights, target_signature

OFFICIAL_WEIGHTS = ("medusa_lm_head.safetensors", "medusa_lm_head.pt")


class ResBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


def prior_accuracy(num_heads: int, topk: int = 10) -> list[list[float]]:
    """A stand-in for measured top-k accuracies when a drafter carries none (random or official
    heads): each head half as sure as the one before, each rank half as likely as the one above.
    Only the default tree's shape depends on it."""
    return [[0.6 * 0.5 ** k * 0.5 ** i for i in range(topk)] for k in range(num_heads)]


class MedusaHeads(Drafter):
    kind = "medusa"

    def __init__(self, target: dict, num_heads: int = 4, num_layers: int = 1, own_lm_head: bool = False,
                 rank_accuracy: list[list[float]] | None = None):
        super().__init__(target)
        dim, vocab = target["hidden_size"], target["vocab_size"]
        self.num_heads, self.num_layers, self.own_lm_head = num_heads, num_layers, own_lm_head
        # P(the target's token is head k's i-th choice), measured on held-out data after training;
        # the default token tree is built from it (see `medusa_tree`)
        self.rank_accuracy = rank_accuracy or prior_accuracy(num_heads)
        self.heads = nn.ModuleList(nn.Sequential(*(ResBlock(dim) for _ in range(num_layers)))
                                   for _ in range(num_heads))
        self.lm_heads = nn.ModuleList(Linear(dim, vocab, bias=False) for _ in range(num_heads)) \
            if own_lm_head else None
        # how often each token was an assistant token in the training data (`draft_vocab` ranks by it)
        self.register_buffer("token_counts", torch.zeros(vocab, dtype=torch.long))

    def config(self) -> dict:
        return {"num_heads": self.num_heads, "num_layers": self.num_layers, "own_lm_head": self.own_lm_head,
                "rank_accuracy": self.rank_accuracy}

    def init_from_data(self, counts: torch.Tensor) -> None:
        self.token_counts.copy_(counts)

    def head_states(self, features: torch.Tensor, model: Transformer) -> torch.Tensor:
        """[n, D] target final residual streams -> [n, K, D] head outputs (before any LM head), in
        the heads' dtype (which may differ from the target's)."""
        h = model.norm(features).to(self.dtype)
        return torch.stack([head(h) for head in self.heads], dim=-2)

    def forward(self, features: torch.Tensor, model: Transformer) -> torch.Tensor:
        """[n, D] -> logits [n, K, V]."""
        states = self.head_states(features, model)
        if self.lm_heads is None:
            return model.lm_head(states.to(model.dtype))
        return torch.stack([lm(states[..., k, :]) for k, lm in enumerate(self.lm_heads)], dim=-2)

    def init_from_target(self, model: Transformer) -> None:
        """Training starts at the identity: zero ResBlocks (each head first predicts the next token
        itself), own LM heads copied from the target's."""
        for head in self.heads:
            for block in head:
                nn.init.zeros_(block.linear.weight)
                nn.init.zeros_(block.linear.bias)
        if self.lm_heads is not None:
            for lm in self.lm_heads:
                lm.weight.data.copy_(model.lm_head.weight.data)

    # ---- the official FasterDecoding layout -------------------------------------------------------
    def export_official(self, folder: str | Path, model: Transformer, dtype: torch.dtype = torch.float16) -> Path:
        """Write medusa_lm_head.safetensors + config.json as FasterDecoding/Medusa reads them:
        head k is nn.Sequential(ResBlock x num_layers, Linear(D, V, bias=False)), so its keys are
        `k.j.linear.{weight,bias}` and `k.<num_layers>.weight` (a shared LM head is written out
        per head, as that layout has no sharing)."""
        import json

        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {}
        for k, head in enumerate(self.heads):
            for j, block in enumerate(head):
                state[f"{k}.{j}.linear.weight"] = block.linear.weight
                state[f"{k}.{j}.linear.bias"] = block.linear.bias
            lm = self.lm_heads[k].weight if self.lm_heads is not None else model.lm_head.weight
            state[f"{k}.{self.num_layers}.weight"] = lm
        save_file({k: v.detach().to("cpu", dtype).clone().contiguous() for k, v in state.items()},
                  str(folder / OFFICIAL_WEIGHTS[0]))
        config = {"medusa_num_heads": self.num_heads, "medusa_num_layers": self.num_layers,
                  "base_model_name_or_path": self.target.get("name") or "", "hidden_size": self.target["hidden_size"],
                  "vocab_size": self.target["vocab_size"]}
        (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        return folder

    @classmethod
    def from_official(cls, folder: Path, model: Transformer) -> "MedusaHeads":
        """Read a FasterDecoding Medusa folder; LM heads equal to the target's become the shared one."""
        config = read_json(folder / "config.json")
        try:
            num_heads, num_layers = int(config["medusa_num_heads"]), int(config["medusa_num_layers"])
        except (KeyError, TypeError, ValueError) as e:
            raise SpecbenchError(f"{folder / 'config.json'}: needs integer medusa_num_heads and medusa_num_layers") from e
        state = read_weights(folder, OFFICIAL_WEIGHTS)
        dim, vocab = model.args.hidden_size, model.args.vocab_size
        lm_key = f"0.{num_layers}.weight"
        if lm_key not in state:
            raise SpecbenchError(f"{folder}: Medusa weights lack {lm_key} (expected {num_heads} heads of {num_layers} layers)")
        if state[lm_key].shape != (vocab, dim):
            raise SpecbenchError(f"{folder}: Medusa heads were made for another model: LM head "
                                 f"{list(state[lm_key].shape)}, this model needs [{vocab}, {dim}]")
        target_lm = model.lm_head.weight.detach().float().cpu()
        shared = all(torch.allclose(state[f"{k}.{num_layers}.weight"].float(), target_lm, atol=1e-2)
                     for k in range(num_heads) if f"{k}.{num_layers}.weight" in state)
        heads = cls(target_signature(model), num_heads, num_layers, own_lm_head=not shared)
        ours = {}
        for k in range(num_heads):
            for j in range(num_layers):
                for p in ("weight", "bias"):
                    ours[f"heads.{k}.{j}.linear.{p}"] = state.get(f"{k}.{j}.linear.{p}")
            if not shared:
                ours[f"lm_heads.{k}.weight"] = state.get(f"{k}.{num_layers}.weight")
        ours["token_counts"] = heads.token_counts     # the official layout keeps no counts
        missing = [k for k, v in ours.items() if v is None]
        if missing:
            raise SpecbenchError(f"{folder}: Medusa weights lack {missing[0]!r} (as named in our layout)")
        try:
            heads.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ours.items()}, strict=True)
        except RuntimeError as e:
            raise SpecbenchError(f"{folder}: Medusa weights do not fit this model: {str(e).splitlines()[0]}") from e
        return heads


def medusa_tree(rank_accuracy: list[list[float]], size: int) -> list[tuple[int, ...]]:
    """The `size` index paths with the highest estimated acceptance, as the Medusa paper builds its
    sparse trees: a path (i1, .., id) (head 1's i1-th choice, then head 2's i2-th, ...) is accepted
    with probability prod_d accuracy[d][i_d], so best-first search over paths yields a tree
    (a path never scores above its parent). Returned in topological order, siblings by rank."""
    heap = [(-rank_accuracy[0][i], (i,)) for i in range(len(rank_accuracy[0]))]
    heapq.heapify(heap)
    chosen: list[tuple[int, ...]] = []
    while heap and len(chosen) < size:
        neg, path = heapq.heappop(heap)
        chosen.append(path)
        depth = len(path)
        if depth < len(rank_accuracy):
            for i, acc in enumerate(rank_accuracy[depth]):
                heapq.heappush(heap, (neg * acc, path + (i,)))
    return sorted(chosen, key=lambda p: (len(p), p))


def check_tree(paths, num_heads: int, max_rank: int = 64) -> list[tuple[int, ...]]:
    """Validate user tree choices (a list of index paths, Medusa's `medusa_choices` format)."""
    try:
        out = sorted({tuple(int(i) for i in p) for p in paths}, key=lambda p: (len(p), p))
    except (TypeError, ValueError) as e:
        raise SpecbenchError("tree must be a node count or a list of index paths such as [[0], [1], [0, 0]]") from e
    if not out:
        raise SpecbenchError("tree must hold at least one path")
    have = set(out)
    for p in out:
        if not p or len(p) > num_heads:
            raise SpecbenchError(f"tree path {list(p)} must have 1..{num_heads} indices (one per head)")
        if any(not 0 <= i < max_rank for i in p):
            raise SpecbenchError(f"tree path {list(p)}: indices must be in 0..{max_rank - 1}")
        if len(p) > 1 and p[:-1] not in have:
            raise SpecbenchError(f"tree path {list(p)} lacks its parent {list(p[:-1])}")
    return out


def tree_arrays(paths: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """parents [n] (-1 = child of the root), head [n] (depth - 1) and rank [n] of each node."""
    index = {p: i for i, p in enumerate(paths)}
    parents = torch.tensor([index[p[:-1]] if len(p) > 1 else -1 for p in paths], dtype=torch.long)
    head = torch.tensor([len(p) - 1 for p in paths], dtype=torch.long)
    rank = torch.tensor([p[-1] for p in paths], dtype=torch.long)
    return parents, head, rank


def expected_accepted(rank_accuracy: list[list[float]], paths: list[tuple[int, ...]]) -> float:
    """Estimated mean tokens per step of a tree: 1 + the sum of its paths' acceptance estimates."""
    return 1.0 + sum(math.prod(rank_accuracy[d][i] for d, i in enumerate(p)) for p in paths)
