"""Batch-invariant RMSNorm: one program per row, the whole row in one block.

The sum of squares of a row is one tl.sum over a block of fixed size (the hidden size rounded up to
a power of two), so its order depends on the hidden size only, never on the number of rows. The
arithmetic follows specbench.model.RMSNorm (and transformers): normalise in float32, round to the
model's dtype, then multiply by the weight in that dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_dtype, pad


@triton.jit
def _rms_norm_kernel(X, W, OUT, D, stride_x, stride_o, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < D
    x = tl.load(X + row * stride_x + cols, mask=inside, other=0.0).to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
    y = (x * inv_rms).to(OUT.dtype.element_ty).to(tl.float32)
    w = tl.load(W + cols, mask=inside, other=0.0).to(tl.float32)
    tl.store(OUT + row * stride_o + cols, (w * y).to(OUT.dtype.element_ty), mask=inside)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of every row of x [M, D] with weight [D]."""
    check_dtype(x, weight)
    x = x.contiguous()
    out = torch.empty_like(x)
    D = x.shape[-1]
    _rms_norm_kernel[(x.shape[0],)](x, weight, out, D, x.stride(0), out.stride(0), eps,
                                    BLOCK=pad(D), num_warps=4 if D <= 2048 else 8)
    return out


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The exact value in float64, rounded once to x's dtype."""
    xd = x.double()
    return (weight.double() * xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
