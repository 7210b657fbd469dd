"""Distilling a draft model from its target (DistillSpec, Zhou et al. 2024): at every assistant
position, a divergence between the frozen target's next-token distribution p and the draft's q,
over the whole vocabulary.

- `fkl`  KL(p || q): classic knowledge distillation (covers every mode of p).
- `rkl`  KL(q || p): mode-seeking.
- `jsd`  Jensen-Shannon: KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2.
- `tvd`  total variation, sum |p - q| / 2 = 1 - sum min(p, q): exactly the probability that
  speculative sampling at temperature 1 rejects the draft's token, so minimising it maximises
  that acceptance (DistillSpec's argument for it).

DistillSpec also finds on-policy data (sequences the target generates) better than a fixed corpus:
the self-distilled token file (`specbench train data --data self_distill`) is exactly that for
greedy decoding. Metrics per predicted token: the loss, `agree` (the draft's argmax is the
target's: greedy acceptance of one position) and `accept` (sum min(p, q)). Training also counts
the tokens the draft learns to predict (`DraftLayers.token_counts`, for sps's `draft_vocab`).
"""
from __future__ import annotations

import math

import torch

from ..drafters.draft import DraftLayers
from ..errors import SpecbenchError
from ..model import Transformer
from .data import TokenData
from .trainer import PerSequence, greedy_acceptance, held_out

DIVERGENCES = ("fkl", "rkl", "jsd", "tvd")


def divergence(logp: torch.Tensor, logq: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row divergence [m] between the log-distributions logp, logq [m, V]."""
    p, q = logp.exp(), logq.exp()
    if kind == "fkl":
        return (p * (logp - logq)).sum(-1)
    if kind == "rkl":
        return (q * (logq - logp)).sum(-1)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    logm = torch.logaddexp(logp, logq) - math.log(2)
    return 0.5 * (p * (logp - logm)).sum(-1) + 0.5 * (q * (logq - logm)).sum(-1)


class DistillObjective(PerSequence):
    feature_layers: tuple[int, ...] = ()     # the draft needs only the target's logits

    def __init__(self, drafter: DraftLayers, model: Transformer, divergence: str = "fkl"):
        if divergence not in DIVERGENCES:
            raise SpecbenchError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {divergence!r}")
        self.drafter, self.divergence = drafter, divergence

    def sequence_loss(self, model: Transformer, features: torch.Tensor | None, logits: torch.Tensor, ids: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], int]:
        m = mask[1:]                                      # row i predicts ids[i + 1]
        count = int(m.sum())
        if not count:
            return logits.new_zeros(()), {}, 0
        rows = torch.cat([m, m.new_zeros(1)])             # the last row predicts nothing here
        logq = self.drafter(ids, model, rows).float().log_softmax(-1)
        logp = logits[:-1][m].float().log_softmax(-1)
        loss = divergence(logp, logq, self.divergence).sum()
        with torch.no_grad():
            if self.drafter.training:
                self.drafter.token_counts += torch.bincount(ids[1:][m], minlength=len(self.drafter.token_counts))
            metrics = {"loss": loss.item(), "agree": float((logq.argmax(-1) == logp.argmax(-1)).sum()),
                       "accept": float(torch.minimum(logp.exp(), logq.exp()).sum())}
        return loss, metrics, count

    @torch.no_grad()
    def evaluate(self, model: Transformer, data: TokenData, indices: list[int], eval_tokens: int) -> dict:
        """Held-back conversations: the per-token metrics (teacher-forced), then greedy `sps` with
        this draft from their first prompts: mean accepted tokens and acceptance rate."""
        sums: dict[str, float] = {}
        count = 0
        self.drafter.eval()
        for feats, logits, ids, mask in held_out(model, self, data, indices):
            _, metrics, n = self.sequence_loss(model, feats, logits, ids, mask)
            count += n
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        figures = greedy_acceptance(model, data, indices, eval_tokens, method="sps", draft=self.drafter)
        self.drafter.float()
        return {**{f"val_{k}": round(v / max(1, count), 4) for k, v in sums.items()}, **figures}
