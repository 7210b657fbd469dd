"""Batch-invariant matrix multiply: y = x W^T (+ b), the nn.Linear product, on fixed tiles.

Every output row is reduced over K in the same order whatever the number of rows M: the tiles
(BLOCK_M x BLOCK_N x BLOCK_K) and the launch configuration never depend on M, there is no split-K,
and M is not specialised by the JIT (Triton compiles separate variants for arguments equal to 1 or
divisible by 16). A row's result is therefore bit-identical whether the call has 1 row or 256.
cuBLAS gives no such promise: it picks kernels, and split-K reductions, by shape.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_dtype, dot, emulate_dots

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 64


@triton.jit(do_not_specialize=["M"])
def _matmul_kernel(X, W, B, OUT, M, N, K, stride_xm, stride_wn, stride_om,
                   HAS_BIAS: tl.constexpr, EMULATE: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(X + rm[:, None] * stride_xm + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(W + rn[None, :] * stride_wn + rk[:, None],
                    mask=(rn[None, :] < N) & (rk[:, None] < K), other=0.0)
        acc = dot(a, b, acc, EMULATE)
    if HAS_BIAS:
        acc += tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(OUT + rm[:, None] * stride_om + rn[None, :], acc.to(OUT.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias [N]) -> [M, N] in x's dtype, accumulated in float32."""
    check_dtype(x, weight, *([] if bias is None else [bias]))
    x, weight = x.contiguous(), weight.contiguous()
    (M, K), N = x.shape, weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"matmul: x has {K} columns, weight {weight.shape[1]}")
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    _matmul_kernel[grid](x, weight, x if bias is None else bias, out, M, N, K,
                         x.stride(0), weight.stride(0), out.stride(0),
                         HAS_BIAS=bias is not None, EMULATE=emulate_dots(),
                         BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K, num_warps=4, num_stages=3)
    return out


def matmul_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same product in float64, rounded once to x's dtype."""
    y = x.double() @ weight.double().T
    if bias is not None:
        y = y + bias.double()
    return y.to(x.dtype)
