"""EAGLE-3's objective (Li et al. 2025): training-time test. The draft is unrolled `ttt_steps`
times over each sequence (`Eagle3Draft.unroll`): step 0 reads the target's fused features, step k
its own step k - 1 outputs, with the attention a tree node k levels deep sees at decode time; every
step is trained by cross-entropy against the target's next-token distribution restricted to the
draft vocabulary (renormalised there), step k weighted 0.8^k. No feature regression: EAGLE-3 drops
it, so the draft's hidden state is free to be whatever predicts best. `ttt_steps=1` switches the
training-time test off (the paper's ablation). Step count 7 and the 0.8 decay are SpecForge's
defaults (`ttt_length`, the loss weights of `specforge/core/eagle3.py`).

A row of step k counts when its input token t + 1 + k is an assistant token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..drafters.eagle import RANKS
from ..drafters.eagle3 import Eagle3Draft
from ..model import Transformer
from .data import TokenData
from .trainer import Sequence, greedy_acceptance, held_out

TTT_STEPS = 7
STEP_DECAY = 0.8
EVAL_STEPS = 4      # steps whose held-back top-1 the card reports (with or without training-time test)


class Eagle3Objective:
    def __init__(self, drafter: Eagle3Draft, model: Transformer, ttt_steps: int = TTT_STEPS):
        self.drafter = drafter
        self.feature_layers = drafter.feature_layers(model)
        self.ttt_steps = ttt_steps

    def step_logits(self, model: Transformer, features: torch.Tensor, ids: torch.Tensor,
                    steps: int) -> list[torch.Tensor]:
        """Draft-vocabulary logits of each unrolled step over a padded batch (features [B, L, k * D],
        ids [B, L]): [B, L - 1 - k, N] at step k."""
        if not torch.is_autocast_enabled("cuda"):   # the draft computes in its own dtype, or bf16 under autocast
            features = features.to(self.drafter.dtype)
        out = []
        for h in self.drafter.unroll(features, ids, steps, model):
            b, m, d = h.shape
            out.append(self.drafter.draft_logits(h.reshape(b * m, d), model)[0].view(b, m, -1))
        return out

    def loss(self, model: Transformer, batch: list[Sequence]) -> tuple[torch.Tensor, dict[str, float], int]:
        """The batch padded at its ends to its longest sequence and unrolled at once; padding is
        masked out (its mask is false), so each sequence's loss is what it would be alone."""
        vocab = self.drafter.draft_ids
        features = pad([s.features for s in batch])
        ids, mask = pad([s.ids for s in batch]), pad([s.mask for s in batch])
        with torch.no_grad():       # the target's logits over the draft vocabulary, and its greedy tokens
            target = pad([s.logits[:, vocab] for s in batch])
            greedy = pad([s.logits.argmax(-1) for s in batch])
        count = int(mask[:, 1:].sum())
        if ids.shape[1] < 2 or count == 0:
            return features.new_zeros(()), {}, 0
        total, metrics = features.new_zeros((), dtype=torch.float32), {}
        for k, out in enumerate(self.step_logits(model, features, ids, self.ttt_steps)):
            rows = mask[:, 1 + k:]
            with torch.no_grad():
                p = torch.softmax(target[:, 1 + k:][rows].float(), dim=-1)
            logq = F.log_softmax(out[rows].float(), dim=-1)
            ce = -(p * logq).sum()
            total = total + STEP_DECAY ** k * ce
            metrics[f"loss_step{k}"] = ce
            metrics[f"agree_step{k}"] = (vocab[logq.argmax(-1)] == greedy[:, 1 + k:][rows]).sum()
        metrics["loss"] = total
        return total, {key: float(v.detach()) for key, v in metrics.items()}, count

    @torch.no_grad()
    def evaluate(self, model: Transformer, data: TokenData, indices: list[int], eval_tokens: int) -> dict:
        """Held-back conversations: the rank of the target's greedy token among the draft's choices
        one step ahead (stored on the drafter: the default static tree is built from it), top-1 at
        steps 1..EVAL_STEPS-1 on the draft's own hidden states, then greedy decoding (dynamic tree)."""
        self.drafter.to(dtype=model.dtype).eval()          # as generate will run it
        vocab = self.drafter.draft_ids
        ranks = min(RANKS, len(vocab))
        counts = torch.zeros(RANKS + 1)
        hits, rows_seen = torch.zeros(EVAL_STEPS), torch.zeros(EVAL_STEPS)
        for features, logits, ids, mask in held_out(model, self, data, indices):
            for k, out in enumerate(self.step_logits(model, features[None], ids[None], EVAL_STEPS)):
                out = out[0]
                rows = mask[1 + k:]
                if not rows.any():
                    continue
                greedy = logits[1 + k:][rows].argmax(-1)
                hit = (vocab[out[rows].topk(ranks, dim=-1).indices] == greedy[:, None]).cpu()
                hits[k] += float(hit[:, 0].sum())
                rows_seen[k] += float(rows.sum())
                if k == 0:
                    counts[:ranks] += hit.sum(0).float()
                    counts[RANKS] += float((~hit.any(-1)).sum())
        accuracy = (counts[:RANKS] / counts.sum().clamp_min(1)).tolist()
        self.drafter.rank_accuracy = [round(x, 4) for x in accuracy]
        by_step = (hits / rows_seen.clamp_min(1)).tolist()
        figures = greedy_acceptance(model, data, indices, eval_tokens, method="eagle3", drafter=self.drafter)
        self.drafter.float()
        return {"rank_accuracy": self.drafter.rank_accuracy, "top1": round(accuracy[0], 4),
                "top3": round(sum(accuracy[:3]), 4),
                **{f"top1_step{k}": round(by_step[k], 4) for k in range(1, EVAL_STEPS)}, **figures}


def pad(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sequences of different lengths [n_i, ...] as one [B, max n_i, ...] batch, zeros after each."""
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)
