"""Attention of new tokens over the live part of a static KV cache, split over the context.

Layout (one layer, batch 1): q [n, heads, d]; k_cache, v_cache [kv_heads, slots, d] (grouped-query
attention: kv head h serves query heads h*group .. h*group+group-1). `start` is a one-element
integer tensor on the device: the committed length. Slots below it hold the committed tokens
(position = slot) and every new token sees all of them; the n new tokens sit at slots
start .. start+n-1. Because the length is read on the device, a CUDA graph captured once replays
at any length, and only the live slots are read: a 4,096-slot cache costs what a 512-slot one does.

Both kernels split the keys into chunks of `split_slots` slots (flash-decoding: every chunk is one
program that writes a partial softmax state) and `_combine_kernel` merges the chunks of each row in
order. The chunk size depends on the model's kv heads only, so a row's reduction order never
depends on the length or the number of new tokens.

* `tree_attention` (numerics "fast"): the keys in slot order; the new tokens see each other through
  an [n, n] mask (a token tree; None = causal). A program serves a block of tokens, so the K/V
  tiles are shared between them.
* `invariant_attention` (numerics "batch_invariant"): every new token reduces over its keys in the
  order of their *positions* 0..p, in chunks and tiles aligned at position 0, one program per token
  and chunk. Its key at position q is slot q below `start` and its ancestor at depth q - start
  above (`tail`, see specbench.numerics.key_table). So a token's result depends only on its own
  keys: verified at depth 3 of a tree beside 63 other tokens, it gets the bits it gets when decoded
  alone (its ancestors then sit at slots equal to their positions).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_dtype, dot, emulate_dots, pad

BLOCK_N = 64         # keys per inner step


def split_slots(kv_heads: int) -> int:
    """Slots (positions, for `invariant_attention`) per program. At batch 1 there are few (kv head, chunk) programs,
    so few kv heads want short chunks: on an H200, graph-replayed, 64 was the fastest of 32-256 for
    3 kv heads at 1-64 new tokens and live lengths 200-1,500 (a one-token step 6.0 us against 8.7 us
    with 256 at length 500), 128 about the best for 8 and 32 kv heads
    (docs/results/gpu_attention_splits_h200/splits.csv, `python -m specbench_kernels.gpu_check
    OUT splits`). `invariant_attention` took 256 until session 30: 7.8 us a layer for a one-token step
    on the H200 against 3.1 us for `tree_attention` with 64 (torch.profiler, kernels_*.txt in
    docs/results/gpu_invariant_attention_h200/)."""
    return 64 if kv_heads <= 4 else 128


@triton.jit
def _online_softmax_step(s, v, m, l, acc, EMULATE: tl.constexpr):
    """Fold scores s [R, BN] (-inf = not visible) and values v [BN, DPAD] into (m, l, acc)."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)      # a row with nothing visible yet
    alpha = tl.exp(m - m_use)
    p = tl.exp(s - m_use[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    acc = dot(p.to(v.dtype), v, acc * alpha[:, None], EMULATE)
    return m_new, l, acc


@triton.jit(do_not_specialize=["n"])
def _tree_split_kernel(Q, K, V, START, MASK, PM, PL, PACC, n, stride_qn, stride_qh, stride_kh,
                       stride_vh, stride_mask, scale, NSPLIT,
                       GROUP: tl.constexpr, GPAD: tl.constexpr, BLOCK_T: tl.constexpr,
                       BN: tl.constexpr, D: tl.constexpr, DPAD: tl.constexpr, SPLIT_: tl.constexpr,
                       CAUSAL: tl.constexpr, EMULATE: tl.constexpr):
    kvh, split = tl.program_id(1), tl.program_id(2)
    start = tl.load(START).to(tl.int32)
    end = start + n
    lo = split * SPLIT_
    if lo >= end:           # past the live slots: nothing to read
        return
    hi = tl.minimum(lo + SPLIT_, end)
    r = tl.arange(0, BLOCK_T * GPAD)
    tok = tl.program_id(0) * BLOCK_T + r // GPAD
    g = r % GPAD
    head = kvh * GROUP + g
    row_ok = (tok < n) & (g < GROUP)
    d = tl.arange(0, DPAD)
    d_ok = d < D
    q = tl.load(Q + tok[:, None] * stride_qn + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m = tl.full((BLOCK_T * GPAD,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_T * GPAD,), tl.float32)
    acc = tl.zeros((BLOCK_T * GPAD, DPAD), tl.float32)
    for s0 in range(lo, hi, BN):
        cols = s0 + tl.arange(0, BN)
        col_ok = cols < hi
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + kvh * stride_kh + cols[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + kvh * stride_vh + cols[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
        s = dot(q, tl.trans(k), tl.zeros((q.shape[0], BN), tl.float32), EMULATE) * scale
        j = cols - start                      # index among the new tokens (negative: committed)
        if CAUSAL:
            sees_new = j[None, :] <= tok[:, None]
        else:
            sees_new = tl.load(MASK + tok[:, None] * stride_mask + j[None, :],
                               mask=row_ok[:, None] & (col_ok & (j >= 0))[None, :], other=0) != 0
        visible = row_ok[:, None] & col_ok[None, :] & ((j < 0)[None, :] | sees_new)
        s = tl.where(visible, s, float("-inf"))
        m, l, acc = _online_softmax_step(s, v, m, l, acc, EMULATE)
    part = (tok * (tl.num_programs(1) * GROUP) + head) * NSPLIT + split
    tl.store(PM + part, m, mask=row_ok)
    tl.store(PL + part, l, mask=row_ok)
    tl.store(PACC + part[:, None] * DPAD + d[None, :], acc, mask=row_ok[:, None])


@triton.jit(do_not_specialize=["n"])
def _invariant_split_kernel(Q, K, V, START, TAIL, POS, PM, PL, PACC, n, T, stride_qn, stride_qh,
                            stride_kh, stride_vh, scale, NSPLIT,
                            GROUP: tl.constexpr, GPAD: tl.constexpr, BN: tl.constexpr,
                            D: tl.constexpr, DPAD: tl.constexpr, SPLIT_: tl.constexpr,
                            EMULATE: tl.constexpr):
    tok, kvh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(START).to(tl.int32)
    p = tl.load(POS + tok).to(tl.int32)       # the token's position: it sees positions 0..p
    lo = split * SPLIT_
    if lo > p:
        return
    hi = tl.minimum(lo + SPLIT_, p + 1)
    g = tl.arange(0, GPAD)
    head = kvh * GROUP + g
    row_ok = g < GROUP
    d = tl.arange(0, DPAD)
    d_ok = d < D
    q = tl.load(Q + tok * stride_qn + head[:, None] * stride_qh + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m = tl.full((GPAD,), float("-inf"), tl.float32)
    l = tl.zeros((GPAD,), tl.float32)
    acc = tl.zeros((GPAD, DPAD), tl.float32)
    for b0 in range(lo, hi, BN):
        pos = b0 + tl.arange(0, BN)
        depth = pos - start                   # >= 0: a new token, found through the tail table
        node = tl.load(TAIL + tok * T + depth, mask=(pos < hi) & (depth >= 0) & (depth < T), other=-1)
        slot = tl.where(depth < 0, pos, start + node)
        key_ok = (pos < hi) & ((depth < 0) | (node >= 0))
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(K + kvh * stride_kh + slot[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + kvh * stride_vh + slot[:, None] * D + d[None, :], mask=kv_mask, other=0.0)
        s = dot(q, tl.trans(k), tl.zeros((q.shape[0], BN), tl.float32), EMULATE) * scale
        s = tl.where(row_ok[:, None] & key_ok[None, :], s, float("-inf"))
        m, l, acc = _online_softmax_step(s, v, m, l, acc, EMULATE)
    part = (tok * (tl.num_programs(1) * GROUP) + head) * NSPLIT + split
    tl.store(PM + part, m, mask=row_ok)
    tl.store(PL + part, l, mask=row_ok)
    tl.store(PACC + part[:, None] * DPAD + d[None, :], acc, mask=row_ok[:, None])


@triton.jit(do_not_specialize=["n"])
def _combine_kernel(PM, PL, PACC, ENDS, OUT, n, stride_on, stride_oh, NSPLIT,
                    D: tl.constexpr, DPAD: tl.constexpr, SPLIT_: tl.constexpr):
    """Merge the chunks 0 .. ceil(end / SPLIT) - 1 of one (token, head), in order."""
    tok, head = tl.program_id(0), tl.program_id(1)
    count = (tl.load(ENDS + tok).to(tl.int32) + SPLIT_ - 1) // SPLIT_
    base = (tok * tl.num_programs(1) + head) * NSPLIT
    d = tl.arange(0, DPAD)
    m = tl.load(PM + base)
    l = tl.load(PL + base)
    acc = tl.load(PACC + base * DPAD + d)
    for s in range(1, count):
        ms = tl.load(PM + base + s)
        m_new = tl.maximum(m, ms)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        a, b = tl.exp(m - m_use), tl.exp(ms - m_use)
        l = l * a + tl.load(PL + base + s) * b
        acc = acc * a + tl.load(PACC + (base + s) * DPAD + d) * b
        m = m_new
    out = tl.where(l > 0, acc / l, 0.0)       # a row that sees nothing (a graph's padding) -> 0
    tl.store(OUT + tok * stride_on + head * stride_oh + d, out.to(OUT.dtype.element_ty), mask=d < D)


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor) -> None:
    check_dtype(q, k_cache, v_cache)
    if q.dim() != 3 or k_cache.dim() != 3 or k_cache.shape != v_cache.shape:
        raise ValueError(f"attention: q [n, heads, d] and k, v [kv_heads, slots, d], got "
                         f"{list(q.shape)}, {list(k_cache.shape)}, {list(v_cache.shape)}")
    if q.shape[1] % k_cache.shape[0] or q.shape[2] != k_cache.shape[2]:
        raise ValueError(f"attention: {q.shape[1]} heads of width {q.shape[2]} cannot share "
                         f"{k_cache.shape[0]} kv heads of width {k_cache.shape[2]}")
    if start.numel() != 1 or start.dtype not in (torch.int32, torch.int64):
        raise ValueError("attention: start must be a one-element integer tensor")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous() and q.stride(2) == 1):
        raise ValueError("attention: k_cache and v_cache must be contiguous, q contiguous in d")


def _partials(q: torch.Tensor, slots: int, split: int):
    n, heads, _ = q.shape
    nsplit = triton.cdiv(slots, split)
    dpad = pad(q.shape[2])
    pm = torch.empty(n, heads, nsplit, dtype=torch.float32, device=q.device)
    return pm, torch.empty_like(pm), torch.empty(n, heads, nsplit, dpad, dtype=torch.float32,
                                                 device=q.device), nsplit, dpad


def _combine(pm, pl, pacc, ends: torch.Tensor, q: torch.Tensor, nsplit: int, dpad: int, split: int):
    n, heads, d = q.shape
    out = torch.empty_like(q)
    _combine_kernel[(n, heads)](pm, pl, pacc, ends, out, n, out.stride(0), out.stride(1), nsplit,
                                D=d, DPAD=dpad, SPLIT_=split, num_warps=1)
    return out


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                   mask: torch.Tensor | None, split: int | None = None) -> torch.Tensor:
    """Attention of q [n, heads, d] over the committed slots [0, start) and the new tokens at
    [start, start + n), which see each other through mask [n, n] (bool; None = causal), in chunks
    of `split` slots (None: `split_slots`)."""
    _check(q, k_cache, v_cache, start)
    n, heads, d = q.shape
    kv_heads, slots, _ = k_cache.shape
    split = split or split_slots(kv_heads)
    group = heads // kv_heads
    gpad = triton.next_power_of_2(group)
    rows = max(gpad, 16 if n * gpad <= 16 else 64)
    pm, pl, pacc, nsplit, dpad = _partials(q, slots, split)
    causal = mask is None
    if not causal and (mask.shape != (n, n) or mask.dtype != torch.bool):
        raise ValueError(f"tree_attention: mask must be a bool [{n}, {n}] tensor")
    grid = (triton.cdiv(n, rows // gpad), kv_heads, nsplit)
    _tree_split_kernel[grid](q, k_cache, v_cache, start, q if causal else mask, pm, pl, pacc, n,
                             q.stride(0), q.stride(1), k_cache.stride(0), v_cache.stride(0),
                             0 if causal else mask.stride(0), d ** -0.5, nsplit,
                             GROUP=group, GPAD=gpad, BLOCK_T=rows // gpad, BN=min(BLOCK_N, split),
                             D=d, DPAD=dpad, SPLIT_=split, CAUSAL=causal,
                             EMULATE=emulate_dots(), num_warps=4)
    ends = (start.reshape(1) + n).expand(n).contiguous()
    return _combine(pm, pl, pacc, ends, q, nsplit, dpad, split)


def invariant_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                        tail: torch.Tensor, positions: torch.Tensor, split: int | None = None) -> torch.Tensor:
    """Batch-invariant attention: token i (at positions[i] = p) sees positions 0..p, position q
    being slot q below start and slot start + tail[i, q - start] above it (tail [n, T] int32,
    -1 = no key), in chunks of `split` positions (None: `split_slots`). Row i's bits depend only on
    q[i] and those keys."""
    _check(q, k_cache, v_cache, start)
    n, heads, d = q.shape
    kv_heads, slots, _ = k_cache.shape
    group = heads // kv_heads
    split = split or split_slots(kv_heads)
    if tail.dim() != 2 or tail.shape[0] != n or tail.dtype != torch.int32 or not tail.is_contiguous():
        raise ValueError(f"invariant_attention: tail must be a contiguous int32 [{n}, T] tensor")
    if positions.shape != (n,):
        raise ValueError(f"invariant_attention: positions must be [{n}]")
    pm, pl, pacc, nsplit, dpad = _partials(q, slots, split)
    _invariant_split_kernel[(n, kv_heads, nsplit)](
        q, k_cache, v_cache, start, tail, positions, pm, pl, pacc, n, tail.shape[1],
        q.stride(0), q.stride(1), k_cache.stride(0), v_cache.stride(0), d ** -0.5, nsplit,
        GROUP=group, GPAD=max(16, triton.next_power_of_2(group)), BN=min(BLOCK_N, split), D=d,
        DPAD=dpad, SPLIT_=split, EMULATE=emulate_dots(), num_warps=4)
    return _combine(pm, pl, pacc, positions + 1, q, nsplit, dpad, split)


def attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: int,
                        mask: torch.Tensor | None) -> torch.Tensor:
    """Plain softmax(q k^T / sqrt(d)) v in float64 over slots [0, start + n): what both kernels
    (and every other attention path) are tested against."""
    n, heads, d = q.shape
    group = heads // k_cache.shape[0]
    span = start + n
    new = torch.ones(n, n, dtype=torch.bool, device=q.device).tril() if mask is None else mask
    full = torch.cat([torch.ones(n, start, dtype=torch.bool, device=q.device), new], dim=1)
    k = k_cache[:, :span].double().repeat_interleave(group, 0)
    v = v_cache[:, :span].double().repeat_interleave(group, 0)
    scores = q.double().transpose(0, 1) @ k.transpose(-1, -2) / d ** 0.5
    scores = scores.masked_fill(~full, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1).to(q.dtype)
