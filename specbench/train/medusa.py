"""Medusa-1's objective: each head's cross-entropy on the token it must predict, head k weighted
0.8^k (the paper's decay: far heads are less accurate and matter less), the target frozen.

`labels="target"` (the default) takes as label the target's own distribution for that token given
the true context (soft labels, Medusa-2's self-distillation loss): the heads learn what the target
would say, which is what greedy and sampled verification accept. `labels="data"` is Medusa-1's
cross-entropy on the data's token."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..drafters.medusa import MedusaHeads
from ..model import Transformer
from .data import TokenData
from .trainer import PerSequence, greedy_acceptance, held_out

HEAD_DECAY = 0.8
RANKS = 10     # ranks measured per head for the tree (medusa_tree)


class MedusaObjective(PerSequence):
    def __init__(self, drafter: MedusaHeads, model: Transformer, labels: str = "target"):
        self.drafter = drafter
        self.feature_layers = (model.args.num_layers,)
        self.labels = labels

    def sequence_loss(self, model: Transformer, features: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], int]:
        head_logits = self.drafter(features, model)             # [n, K, V]
        greedy = logits.argmax(-1)                               # the target's own next tokens
        n, total, metrics = len(ids), head_logits.new_zeros(()), {}
        count = int(mask[2:].sum())
        for k in range(self.drafter.num_heads):
            shift = k + 2                                        # position i predicts ids[i + shift]
            if n <= shift:
                break
            m = mask[shift:]
            pred = head_logits[: n - shift, k][m].float()
            if self.labels == "data":
                ce = F.cross_entropy(pred, ids[shift:][m], reduction="sum")
            else:   # logits row j is the target's distribution for token j + 1
                soft = torch.softmax(logits[shift - 1: n - 1][m].float(), dim=-1)
                ce = -(soft * F.log_softmax(pred, dim=-1)).sum()
            total = total + HEAD_DECAY ** k * ce
            top1 = pred.argmax(-1)
            metrics[f"loss_head{k}"] = ce.item()
            metrics[f"top1_head{k}"] = float((top1 == ids[shift:][m]).sum())
            metrics[f"agree_head{k}"] = float((top1 == greedy[shift - 1: n - 1][m]).sum())
        metrics["loss"] = total.item()
        return total, metrics, count

    @torch.no_grad()
    def rank_counts(self, model: Transformer, features: torch.Tensor, logits: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
        """[K, RANKS + 1] counts of the rank of the target's greedy token among each head's
        choices (last column: not in the top RANKS), over assistant positions."""
        head_logits = self.drafter(features, model)
        greedy = logits.argmax(-1)
        n, K = len(greedy), self.drafter.num_heads
        counts = torch.zeros(K, RANKS + 1)
        for k in range(K):
            shift = k + 2
            if n <= shift:
                break
            m = mask[shift:]
            top = head_logits[: n - shift, k][m].topk(RANKS, dim=-1).indices
            hit = top == greedy[shift - 1: n - 1][m, None]
            counts[k, :RANKS] += hit.sum(0).float().cpu()
            counts[k, RANKS] += float((~hit.any(-1)).sum())
        return counts

    @torch.no_grad()
    def evaluate(self, model: Transformer, data: TokenData, indices: list[int], eval_tokens: int) -> dict:
        """Per-head rank accuracy on the held-back conversations (stored on the heads: the default
        tree is built from it), then greedy decoding with the heads."""
        self.drafter.to(dtype=model.dtype).eval()          # as generate will run it
        counts = None
        for features, logits, _, mask in held_out(model, self, data, indices):
            c = self.rank_counts(model, features, logits, mask)
            counts = c if counts is None else counts + c
        rank_accuracy = (counts[:, :RANKS] / counts.sum(-1, keepdim=True).clamp_min(1)).tolist()
        self.drafter.rank_accuracy = [[round(x, 4) for x in row] for row in rank_accuracy]
        figures = greedy_acceptance(model, data, indices, eval_tokens, method="medusa", drafter=self.drafter)
        self.drafter.float()
        return {"rank_accuracy": self.drafter.rank_accuracy, **figures}
