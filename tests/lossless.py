"""Exact vanilla distributions by enumeration, and a goodness-of-fit test for sampled methods.

On a random model with a small vocabulary, the joint distribution of the first L new tokens under
vanilla sampling is computable exactly: V + V^2 + ... prefixes through the model. A method is
lossless iff its samples follow that distribution; `fit_pvalue` measures the agreement with a
chi-square test over cells pooled to expected counts >= 5.
"""
from __future__ import annotations

from collections import Counter

import torch
from scipy.stats import chisquare

import specbench
from specbench.sampling import SamplingParams, process_logits

ALPHA = 1e-3   # false-alarm rate of one check against a correct implementation


@torch.inference_mode()
def next_distribution(model, ids: list[int], params: SamplingParams) -> torch.Tensor:
    """Processed target distribution after `ids`, from a fresh forward (no cache reuse)."""
    cache = model.new_cache(len(ids))
    logits = model(torch.tensor(ids), torch.arange(len(ids)), cache, last_only=True).logits[-1]
    return process_logits(logits.double(), params)


def vanilla_joint(model, prompt: list[int], params: SamplingParams, length: int) -> dict[tuple, float]:
    """P(first `length` new tokens) under vanilla sampling, by enumeration of nonzero prefixes."""
    out: dict[tuple, float] = {(): 1.0}
    for _ in range(length):
        nxt: dict[tuple, float] = {}
        for prefix, prob in out.items():
            p = next_distribution(model, prompt + list(prefix), params)
            for token in torch.nonzero(p).flatten().tolist():
                nxt[prefix + (token,)] = prob * float(p[token])
        out = nxt
    return out


def sample_counts(model, prompt: list[int], method: str, params: SamplingParams, n: int, length: int,
                  **options) -> tuple[Counter, list[dict]]:
    """First `length` tokens of n seeded generations (seeds 0..n-1) of one method."""
    counts: Counter = Counter()
    stats = []
    for seed in range(n):
        out = specbench.generate(model, prompt, method=method, max_new_tokens=length,
                                 temperature=params.temperature, top_k=params.top_k,
                                 top_p=params.top_p, seed=seed, **options)
        counts[tuple(out.token_ids[:length])] += 1
        stats.append(out.stats)
    return counts, stats


def fit_pvalue(counts: Counter, exact: dict[tuple, float]) -> float:
    """Chi-square p-value of the counts against the exact distribution. An outcome the exact
    distribution gives probability 0 returns 0.0 outright."""
    n = sum(counts.values())
    if any(k not in exact for k in counts):
        return 0.0
    cells = sorted(exact, key=lambda k: exact[k], reverse=True)
    observed, expected, pool_o, pool_e = [], [], 0, 0.0
    for k in cells:
        e = exact[k] * n
        if e >= 5:
            observed.append(counts.get(k, 0))
            expected.append(e)
        else:
            pool_o += counts.get(k, 0)
            pool_e += e
    if pool_e > 0:
        observed.append(pool_o)
        expected.append(pool_e)
    if len(observed) < 2:
        return 1.0
    expected = [e * sum(observed) / sum(expected) for e in expected]  # exact sums to 1 up to rounding
    return float(chisquare(observed, expected).pvalue)

