"""Sampling parameters and the one logits processor shared by target and draft.

Losslessness is stated with respect to the *processed* target distribution, so the target and every
draft must go through exactly this function.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SpecbenchError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0 means greedy (exact argmax)
    top_k: int = 0             # 0 disables
    top_p: float = 1.0         # 1 disables

    def __post_init__(self) -> None:
        def number(x) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool)
        if not (number(self.temperature) and self.temperature >= 0):
            raise SpecbenchError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0):
            raise SpecbenchError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not (number(self.top_p) and 0 < self.top_p <= 1):
            raise SpecbenchError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def process_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits [..., V] -> probabilities [..., V] after temperature, top-k and top-p.

    Greedy returns the one-hot of the argmax, so greedy decoding is sampling from it.
    Computation runs in float32 (float64 stays float64) whatever the model dtype.
    """
    logits = logits.float() if logits.dtype != torch.float64 else logits
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        sorted_p = sorted_p.masked_fill(mass_before >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs [..., V], drawn with the given generator (no host sync)."""
    # argmax of p / Exp(1) noise is a draw from p (the exponential-race trick)
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(-1)


def draw(probs: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """A draft token from processed probs: the argmax when greedy (no randomness spent), else a sample."""
    return probs.argmax(-1) if params.greedy else sample(probs, generator)
