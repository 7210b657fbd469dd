"""The matrix products of a one-token forward (decoding), each with its neighbours fused.

At batch 1 a decode step multiplies one row by each weight: the work is reading the weight, and for
the default model's small layers cuBLAS took 3.7-3.9 us per product on an H200 whatever its size,
while the RMSNorm before it, the SiLU gate and the residual add after it were kernels of their own
(docs/results/gpu_profile_split_h200/). `skinny_linear` does one such piece in one kernel:

    y = [residual +] epilogue( [RMSNorm(x) or x] @ W^T [+ b] )

* `norm_weight` given: x is normalised first (the arithmetic of specbench.model.RMSNorm:
  normalise in float32, round to the dtype, multiply by the weight in the dtype). Every program
  computes the row's norm itself: the row is a few KB, cheaper to reread than to launch for.
* `gated`: W is [gate; up] (2N rows); the output is SiLU(x Wg^T) * (x Wu^T), rounded as PyTorch
  rounds each of those ops.
* `residual` given: the product, rounded to the dtype, is added to it (x + Linear(...)).

Each program owns BLOCK_N outputs and loads their weight rows over all of K at once (no split-K, so
no atomics and a fixed order), then multiplies each row elementwise and sums once: one row needs
no matrix unit. Numerics "fast" uses it for one row where `handles` says
(specbench.numerics.fused_linear). It takes any number of rows, each reduced by the same
instructions, but each further row costs about 0.7 us per product (docs/results/gpu_invariant_attention_h200/),
so batch_invariant numerics use the tiles below instead.

`invariant_linear` is the same fusion (without the residual add) for numerics "batch_invariant",
at any row count: tiles of 16 rows by 16 or 32 outputs on the tensor cores (tl.dot), K in one step
or a few (a long K split among programs whose partial sums one program adds in a fixed order), and
tiles that depend on the weight's shape only, never on the row count. A row is then reduced in one order
whatever call it sits in, as matmul.py's tiles are, with the norm and the epilogue in the same
kernel instead of three more. (For fast numerics over several rows these tiles lost to cuBLAS:
docs/results/gpu_skinny_tiles_h200/.)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_dtype, dot, emulate_dots, pad, rounded

MAX_ROWS = 1
MAX_WEIGHT = 1 << 22    # elements: the default model's layers (the largest, gate/up, has 1.8 M)
MAX_K = 2048


def handles(rows: int, n: int, k: int) -> bool:
    """Whether a product of `rows` rows by an [n, k] weight runs here. Larger weights go to cuBLAS,
    which streams them from memory faster than this kernel (7B layers and LM heads, H200, weights
    read from memory: `gpu_check skinny`); what this kernel saves is a launch or two and the wait
    for memory once per product, which matters for small products only."""
    return rows <= MAX_ROWS and small(n, k)


def small(n: int, k: int) -> bool:
    """Whether an [n, k] weight is small enough for the fused kernels (`handles`); for
    `invariant_linear` the only condition, at any row count."""
    return n * k <= MAX_WEIGHT and k <= MAX_K


def config(n: int, k: int, gated: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for an output of n columns over k: the whole of K in one step
    and thin column blocks, so that every program issues its loads at once and many programs wait
    for memory together; 8 warps unless the tiles are large (two for a gated product). From
    `python -m specbench_kernels.gpu_check OUT skinny` on an H200, weights read from memory
    (docs/results/gpu_skinny_h200/skinny.csv): the default model's four products took 2.9 / 2.4 /
    4.3 / 3.1 us this way (qkv, o, gate/up, down), against 3.9 / 3.4 / 4.1 / 5.3 us for cuBLAS's
    product alone."""
    block_k = pad(k)
    block_n = 8 if k > 1024 else 4
    return block_n, block_k, 4 if gated or block_n * block_k > 8192 else 8


@triton.jit(do_not_specialize=["M"])
def _skinny_kernel(X, W, B, NW, RES, OUT, M, N, K, stride_wn, eps,
                   NORM: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                   EMULATE: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """BN outputs of each of M rows: the weight block (all of K, BK >= K) is loaded once and every
    row is reduced against it by the same instructions, so a row's bits do not depend on M (M is not
    specialised: Triton compiles other code for arguments equal to 1 or divisible by 16)."""
    dtype = OUT.dtype.element_ty
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    col_ok, k_ok = rn < N, rk < K
    w_ok = col_ok[:, None] & k_ok[None, :]
    w = tl.load(W + rn[:, None] * stride_wn + rk[None, :], mask=w_ok, other=0.0)
    if GATED:
        w_up = tl.load(W + (rn[:, None] + N) * stride_wn + rk[None, :], mask=w_ok, other=0.0)
    if NORM:
        nw = tl.load(NW + rk, mask=k_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(B + rn, mask=col_ok, other=0.0).to(tl.float32)
    for m in range(0, M):
        x = tl.load(X + m * K + rk, mask=k_ok, other=0.0).to(tl.float32)
        if NORM:
            inv_rms = tl.rsqrt(tl.sum(x * x, axis=0) / K + eps)
            x = rounded(nw * rounded(x * inv_rms, dtype, EMULATE), dtype, EMULATE)
        # products summed per lane, across lanes once
        y = tl.sum(w.to(tl.float32) * x[None, :], axis=1)
        if HAS_BIAS:
            y += bias
        if GATED:
            gate = rounded(y, dtype, EMULATE)
            up = tl.sum(w_up.to(tl.float32) * x[None, :], axis=1)
            y = rounded(gate * tl.sigmoid(gate), dtype, EMULATE) * rounded(up, dtype, EMULATE)
        if RESIDUAL:
            y = rounded(y, dtype, EMULATE) + tl.load(RES + m * N + rn, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(OUT + m * N + rn, rounded(y, dtype, EMULATE).to(dtype), mask=col_ok)


@triton.jit(do_not_specialize=["M"])
def _tiles_kernel(X, W, B, NW, OUT, PART, TICKETS, M, N, K, K_SPAN, stride_wn, eps,
                  NORM: tl.constexpr, GATED: tl.constexpr, HAS_BIAS: tl.constexpr,
                  EMULATE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  SPLIT: tl.constexpr):
    """The fusion of `_skinny_kernel` but the residual add, for a [BM, BN] tile of outputs, products
    on tl.dot. M is not specialised (Triton compiles other code for arguments equal to 1 or
    divisible by 16).

    SPLIT > 1: program (n, m, s) sums K columns [s * K_SPAN, (s + 1) * K_SPAN) into PART (float32,
    [SPLIT, 1 or 2 for the up half, M, N]) and takes a ticket for its tile; the program that draws
    the last one adds the SPLIT partial sums in the order s = 0, 1, ..., applies the epilogue,
    stores, and resets the tile's ticket to 0 for the next call. The order is fixed by s, never by
    which program finishes last, so a row's bits still do not depend on M."""
    dtype = OUT.dtype.element_ty
    rm = tl.program_id(1) * BM + tl.arange(0, BM)
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok, col_ok = rm < M, rn < N
    if NORM:
        sum_sq = tl.zeros((BM, BK), tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            x = tl.load(X + rm[:, None] * K + rk[None, :], mask=row_ok[:, None] & (rk < K)[None, :], other=0.0)
            sum_sq += x.to(tl.float32) * x.to(tl.float32)
        inv_rms = tl.rsqrt(tl.sum(sum_sq, axis=1) / K + eps)
    acc = tl.zeros((BM, BN), tl.float32)
    acc_up = tl.zeros((BM, BN), tl.float32)
    k_lo = tl.program_id(2) * K_SPAN
    for k0 in range(k_lo, tl.minimum(k_lo + K_SPAN, K), BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < K
        x = tl.load(X + rm[:, None] * K + rk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            nw = tl.load(NW + rk, mask=k_ok, other=0.0).to(tl.float32)
            x = rounded(nw[None, :] * rounded(x.to(tl.float32) * inv_rms[:, None], dtype, EMULATE),
                        dtype, EMULATE).to(dtype)
        w_ok = k_ok[:, None] & col_ok[None, :]
        w = tl.load(W + rn[None, :] * stride_wn + rk[:, None], mask=w_ok, other=0.0)
        acc = dot(x, w, acc, EMULATE)
        if GATED:
            w = tl.load(W + (rn[None, :] + N) * stride_wn + rk[:, None], mask=w_ok, other=0.0)
            acc_up = dot(x, w, acc_up, EMULATE)
    out_ok = row_ok[:, None] & col_ok[None, :]
    if SPLIT > 1:
        planes = 2 if GATED else 1
        tile = rm[:, None] * N + rn[None, :]
        part = PART + tl.program_id(2) * planes * M * N + tile
        tl.store(part, acc, mask=out_ok)
        if GATED:
            tl.store(part + M * N, acc_up, mask=out_ok)
        ticket = TICKETS + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        drawn = tl.atomic_add(ticket, 1, sem="acq_rel")      # releases the stores above
        # broadcast before comparing: the interpreter refuses a mask made with a scalar comparison
        last = tl.zeros((BM, BN), tl.int32) + drawn == SPLIT - 1
        acc = tl.zeros((BM, BN), tl.float32)
        acc_up = tl.zeros((BM, BN), tl.float32)
        for s in tl.static_range(SPLIT):
            acc += tl.load(PART + s * planes * M * N + tile, mask=out_ok & last, other=0.0, cache_modifier=".cg")
            if GATED:
                acc_up += tl.load(PART + (s * planes + 1) * M * N + tile, mask=out_ok & last, other=0.0,
                                  cache_modifier=".cg")
        tl.atomic_xchg(ticket, 0, mask=drawn == SPLIT - 1)
        out_ok = out_ok & last
    y = acc
    if HAS_BIAS:
        y += tl.load(B + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if GATED:
        gate = rounded(y, dtype, EMULATE)
        y = rounded(gate * tl.sigmoid(gate), dtype, EMULATE) * rounded(acc_up, dtype, EMULATE)
    tl.store(OUT + rm[:, None] * N + rn[None, :], rounded(y, dtype, EMULATE).to(dtype), mask=out_ok)


def tiles_config(n: int, k: int, gated: bool = False, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, split) of `invariant_linear`: from the weight's shape
    and dtype only. The best tiles of session 29's sweep at 4 and 16 rows on an H200
    (docs/results/gpu_skinny_tiles_h200/skinny.csv): all of K in one step, 16 outputs a program;
    for the gated product, 32 outputs and K 256 at a time (6.6-6.9 against 10.4-10.6 us). float32
    tiles take 512 of K at a time: all of the down product's K (1,536, padded to 2,048) needed 256 KB
    of shared memory, past the H200's 227 KB (`gpu_check invariant`, session 30).

    `split` programs share a tile's K. Over a long K (the down product's 1,536) each 256 columns
    get a program of their own: on an H100 that took 4.9 / 5.0 / 5.1 / 6.9 us at 1 / 4 / 16 / 64
    rows against 5.6 / 5.6 / 5.7 / 9.3 us for all of K in one program. Over K = 576 (the other
    products) no split was faster at every row count (session 36, `experiments/gpu_split_tiles.py`,
    docs/results/gpu_split_tiles_h100/)."""
    if k > 1024 and not gated and dtype != torch.float32:
        return 16, 16, 256, 4, triton.cdiv(k, 256)
    k_step = 256 if gated else 512 if dtype == torch.float32 else 2048
    return 16, 32 if gated else 16, min(pad(k), k_step), 4, 1


def split_span(k: int, block_k: int, split: int) -> tuple[int, int]:
    """(K columns a program takes, programs a tile runs) for `split` programs asked: each takes a
    whole number of K blocks, and none is left empty (so fewer may run than were asked)."""
    k_span = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    return k_span, triton.cdiv(k, k_span)


_TICKETS: dict[torch.device, torch.Tensor] = {}
_OUTGROWN: list[torch.Tensor] = []     # kept alive: graphs captured with them still use them


def tickets(device: torch.device, count: int) -> torch.Tensor:
    """The split tiles' ticket counters on `device`: zeroed once, and every kernel leaves them at
    zero, so one buffer serves every call. Made on the first call, which must not be inside a CUDA
    graph capture (the graph would own the memory); `cuda_graph.capture` and gpu_check warm up
    first. A call with more tiles gets a larger buffer (outside a capture); the smaller one is
    kept, as graphs captured earlier hold its address."""
    have = _TICKETS.get(device)
    if have is None or have.numel() < count:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("invariant_linear: a split-K call needs more ticket counters than exist on "
                               f"{device} inside a CUDA graph capture; make such a call once before capturing")
        if have is not None:
            _OUTGROWN.append(have)
        have = _TICKETS[device] = torch.zeros(max(count, 4096), dtype=torch.int32, device=device)
    return have


def _checked(name: str, x: torch.Tensor, weight: torch.Tensor, bias, norm_weight, residual, gated: bool) -> int:
    """The fused product's operands checked; returns N (the output's columns)."""
    check_dtype(x, weight, *[t for t in (bias, norm_weight, residual) if t is not None])
    (M, K), rows = x.shape, weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"{name}: x [{M}, {K}] against weight {list(weight.shape)} (the columns must match)")
    if gated and (rows % 2 or bias is not None):
        raise ValueError(f"{name}: a gated product takes [gate; up] weights (an even row count) and no bias")
    N = rows // 2 if gated else rows
    if residual is not None and residual.shape != (M, N):
        raise ValueError(f"{name}: residual {list(residual.shape)} for an output [{M}, {N}]")
    if bias is not None and bias.shape != (rows,) or norm_weight is not None and norm_weight.shape != (K,):
        raise ValueError(f"{name}: bias {None if bias is None else list(bias.shape)} or norm weight "
                         f"{None if norm_weight is None else list(norm_weight.shape)} for a weight {list(weight.shape)}")
    return N


def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     norm_weight: torch.Tensor | None = None, eps: float = 0.0, gated: bool = False,
                     block: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K], any M, through the fused product on fixed tiles -> [M, N] in x's dtype; a row's
    bits do not depend on M. `block` overrides `tiles_config` (measurements).

    No residual add: the model adds it with torch. With it inside, every layer's residual stream
    ran through custom operators only, and torch.compile on CUDA stalled printing them (inductor's
    ExternKernel.__str__ prints its inputs, recursively: past 270 s,
    docs/results/gpu_invariant_tiles_h200/); an add between them is an inductor node, which prints
    without recursing."""
    N = _checked("invariant_linear", x, weight, bias, norm_weight, None, gated)
    M, K = x.shape
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_m, block_n, block_k, warps, split = block or tiles_config(N, K, gated, x.dtype)
    k_span, split = split_span(K, block_k, split)
    grid = (triton.cdiv(N, block_n), triton.cdiv(M, block_m), split)
    # unsplit, the kernel reads neither the partial sums nor the tickets: x stands in, as for a missing bias
    parts = x.new_empty(split * (2 if gated else 1) * M * N, dtype=torch.float32) if split > 1 else x
    _tiles_kernel[grid](
        x, weight, x if bias is None else bias, x if norm_weight is None else norm_weight, out, parts,
        tickets(x.device, grid[0] * grid[1]) if split > 1 else x, M, N, K, k_span,
        weight.stride(0), eps, NORM=norm_weight is not None, GATED=gated, HAS_BIAS=bias is not None,
        EMULATE=emulate_dots(), BM=block_m, BN=block_n, BK=block_k, SPLIT=split, num_warps=warps,
        num_stages=1 if block_k >= k_span else 2)
    return out


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                  residual: torch.Tensor | None = None, gated: bool = False,
                  block: tuple[int, int, int] | None = None) -> torch.Tensor:
    """x [1, K] through the fused product described above -> [1, N] in x's dtype (N = weight's
    rows, or half of them when `gated`). `block` overrides `config` (measurements)."""
    N = _checked("skinny_linear", x, weight, bias, norm_weight, residual, gated)
    M, K = x.shape
    x, weight = x.contiguous(), weight.contiguous()
    residual = None if residual is None else residual.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    block_n, block_k, warps = block or config(N, K, gated)
    if block_k < K:
        raise ValueError(f"skinny_linear: a K block of {block_k} for K = {K} (the kernel reads all of K at once)")
    _skinny_kernel[(triton.cdiv(N, block_n),)](
        x, weight, x if bias is None else bias, x if norm_weight is None else norm_weight,
        x if residual is None else residual, out, M, N, K, weight.stride(0), eps,
        NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
        EMULATE=emulate_dots(), BN=block_n, BK=block_k, num_warps=warps)
    return out


def skinny_linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                            norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                            residual: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    """The unfused ops of the model, each exact in float64 and rounded to x's dtype where the model
    rounds its result (after the norm, the product, the SiLU, the gate and the residual add)."""
    def exact(t: torch.Tensor) -> torch.Tensor:
        return t.to(x.dtype).double()

    xd = x.double()
    if norm_weight is not None:
        xd = exact(norm_weight.double() * exact(xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)))
    y = xd @ weight.double().T
    if bias is not None:
        y = y + bias.double()
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = exact(torch.nn.functional.silu(exact(gate))) * exact(up)
    if residual is not None:
        y = exact(y) + residual.double()
    return y.to(x.dtype)
