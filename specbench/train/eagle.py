"""EAGLE's objective (Li et al. 2024): the draft reads [embedding of token t + 1, target feature at
t] (the feature with uniform noise U(-noise/2, noise/2), the paper's augmentation against the
draft's own errors at decode time) and is trained on two losses per row: smooth L1 between its
output and the target's feature at t + 1 (weight 1), and cross-entropy of the LM head on its
output against the target's next-token distribution there (weight 0.1). The weights and the noise
width 0.2 are the official training's (SafeAILab/EAGLE `eagle/train/main.py`: v_w, p_w, std; its
extra scaling of the noise by 512 / sequence length is not the paper's and is left out).

A row counts when its input token t + 1 is an assistant token (the tokens drafted at decode time).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..drafters.eagle import RANKS, EagleDraft
from ..model import Transformer
from .data import TokenData
from .trainer import PerSequence, greedy_acceptance, held_out

FEATURE_WEIGHT = 1.0
CE_WEIGHT = 0.1
NOISE = 0.2


class EagleObjective(PerSequence):
    def __init__(self, drafter: EagleDraft, model: Transformer, noise: float = NOISE):
        self.drafter = drafter
        self.feature_layers = (model.args.num_layers,)
        self.noise = noise

    def predict(self, model: Transformer, feats: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced draft outputs [n - 1, D] over one sequence: row t reads feature t and token t + 1."""
        n = len(ids)
        # the draft computes in its own dtype, or bf16 under autocast (training on CUDA); its cache too
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
        else:
            dtype = self.drafter.dtype
            feats = feats.to(dtype)
        cache = self.drafter.new_cache(n - 1, feats.device, dtype)
        return self.drafter(feats[:-1], ids[1:], torch.arange(n - 1, device=ids.device), cache, None, model)

    def sequence_loss(self, model: Transformer, features: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], int]:
        rows = mask[1:]
        count = int(rows.sum())
        if len(ids) < 2 or count == 0:
            return features.new_zeros(()), {}, 0
        with torch.no_grad():
            target = EagleDraft.feature(features, model).float()
            noisy = target + (torch.rand_like(target) - 0.5) * self.noise
            p = torch.softmax(logits[1:].float(), dim=-1)[rows]
        out = self.predict(model, noisy.to(features.dtype), ids)[rows].float()
        feature_loss = F.smooth_l1_loss(out, target[1:][rows], reduction="none").mean(-1).sum()
        logp = torch.log_softmax(model.lm_head(out.to(model.dtype)).float(), dim=-1)
        ce = -(p * logp).sum()
        total = FEATURE_WEIGHT * feature_loss + CE_WEIGHT * ce
        if self.drafter.training:
            self.drafter.token_counts += torch.bincount(ids[1:][rows], minlength=len(self.drafter.token_counts))
        agree = float((logp.argmax(-1) == p.argmax(-1)).sum())
        return total, {"loss": total.item(), "loss_feature": feature_loss.item(), "loss_ce": ce.item(),
                       "agree": agree}, count

    @torch.no_grad()
    def evaluate(self, model: Transformer, data: TokenData, indices: list[int], eval_tokens: int) -> dict:
        """Held-back conversations: how often the target's greedy token is the draft's i-th choice
        one step ahead from the target's own features (stored on the drafter: the default static
        tree is built from it), then greedy decoding with the draft (default dynamic tree)."""
        self.drafter.to(dtype=model.dtype).eval()          # as generate will run it
        counts = torch.zeros(RANKS + 1)
        for features, logits, ids, mask in held_out(model, self, data, indices):
            rows = mask[1:]
            if len(ids) < 2 or not rows.any():
                continue
            out = self.predict(model, EagleDraft.feature(features, model), ids)[rows]
            top = model.lm_head(out).topk(RANKS, dim=-1).indices
            hit = top == logits[1:][rows].argmax(-1, keepdim=True)
            counts[:RANKS] += hit.sum(0).float().cpu()
            counts[RANKS] += float((~hit.any(-1)).sum())
        accuracy = (counts[:RANKS] / counts.sum().clamp_min(1)).tolist()
        self.drafter.rank_accuracy = [round(x, 4) for x in accuracy]
        figures = greedy_acceptance(model, data, indices, eval_tokens, method="eagle", drafter=self.drafter)
        self.drafter.float()
        return {"rank_accuracy": self.drafter.rank_accuracy, "top1": round(accuracy[0], 4),
                "top3": round(sum(accuracy[:3]), 4), **figures}
