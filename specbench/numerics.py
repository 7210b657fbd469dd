"""The one switch between the two numerics modes of a forward: "fast" and "batch_invariant".

A forward over k new tokens must give each token the bits that k forwards over one token give it,
or a lossless method's greedy output can differ from vanilla's (bf16 rounding flips near-ties).
The model routes its three reductions (matrix multiply, RMSNorm, attention) and its one
nonlinearity through this module, which picks, per mode and device:

| | fast | batch_invariant |
|---|---|---|
| CPU matmul | the layer (`model.Linear`: oneDNN, prepacked) | `F.linear` on blocks of exactly `CPU_ROWS` rows (zero-padded); bf16 / fp16 in float32, rounded once |
| CPU RMSNorm | `RMSNorm` (torch) | the same: row-invariant as it is (measured, tests/test_numerics.py) |
| CPU SiLU | `F.silu` | `F.silu` row by row |
| CPU attention | `sdpa` over slots [0, start + n), masked (on an empty cache: causal) | per token, its keys in position order |
| CUDA matmul / RMSNorm | one row by a small weight: one Triton kernel per product with its norm or gate / residual (`fused_linear`); otherwise cuBLAS / torch (fused by torch.compile) | a small weight: the same fusion on fixed tiles (`invariant_linear`); otherwise Triton, fixed tiles (specbench_kernels) |
| CUDA attention | Triton over the live slots only | Triton, per token in position order |

Why each CPU choice (measured on this repository's machine, torch 2.13 with MKL / oneDNN): an
`F.linear` row differs between a 1-row call (a matrix-vector kernel) and a k-row call in float32
for every k, and in bfloat16 at some shapes; a call of exactly CPU_ROWS rows gives a row the same
bits wherever it sits in the block. Vectorised elementwise kernels finish a tensor's tail with a
scalar loop, and for float32 SiLU the two disagree in the last bit: a row computed alone sees the
same split every time. SDPA gives a row alone other bits than the same row among 64 queries.
A bfloat16 or float16 product runs in float32 (inputs widened exactly, one rounding of the output,
which is elementwise and so row-invariant), from a float32 copy of the weight kept beside it
(`model.Linear.float32_weight`, twice the bfloat16 weight's memory): a CPU without native
bfloat16 multiplies 8 bfloat16 rows 2.7-3.7x slower than 8 float32 ones (the default model's and
the tests' shapes; 1.1x for the default model's LM head; session 35's AVX2-only AMD EPYC,
`python experiments/cpu_half_rows.py`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import SpecbenchError

if TYPE_CHECKING:
    from .model import Linear

MODES = ("fast", "batch_invariant")
# SDPA's backends for eager CUDA calls: all but cuDNN, which builds a plan for every new shape
# (50 ms, on the host, for EAGLE's draft prefill of each new prompt length on the H200)
EAGER_CUDA_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
CPU_ROWS = 8     # rows per F.linear call in batch_invariant mode on CPU
HALF = (torch.bfloat16, torch.float16)


def check_numerics(mode: str) -> str:
    if mode not in MODES:
        raise SpecbenchError(f"unknown numerics {mode!r}: choose one of {', '.join(MODES)}")
    return mode


def on_kernel_device(t: torch.Tensor) -> bool:
    """Whether `t` lives where the Triton kernels run: CUDA (tests redirect CPU tensors here to run
    them under TRITON_INTERPRET=1)."""
    return t.is_cuda


def uses_kernels(t: torch.Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether work on `t`, in `dtype` (default: t's), runs the Triton kernels: on their device, in
    a dtype they take (a float64 model stays on the PyTorch paths on CUDA too)."""
    if not on_kernel_device(t):
        return False
    from specbench_kernels._common import DTYPES
    return (dtype or t.dtype) in DTYPES


def _ops():
    """The Triton kernels as custom operators (imported on first use: triton is optional)."""
    from specbench_kernels import ops
    return ops


def linear(x: torch.Tensor, layer: Linear, mode: str) -> torch.Tensor:
    if mode == "fast":
        return layer(x)
    if uses_kernels(x):
        return _ops().matmul(x, layer.weight, layer.bias)
    rows = x.shape[0]   # F.linear, not the layer: the facts above are MKL's, not prepacked oneDNN's
    weight, bias = layer.weight, layer.bias
    if x.dtype in HALF:   # in float32 from a kept copy of the weight, rounded once (see above)
        weight, bias = layer.float32_weight()
    wide = x.to(weight.dtype)
    padded = torch.cat([wide, wide.new_zeros((-rows) % CPU_ROWS, x.shape[1])])
    # each block is a fresh (aligned) tensor, so MKL takes the same path for every block
    blocks = [F.linear(padded[i:i + CPU_ROWS].clone(), weight, bias) for i in range(0, padded.shape[0], CPU_ROWS)]
    return torch.cat(blocks)[:rows].to(x.dtype)


def fused_linear(x: torch.Tensor, layer: Linear, mode: str, norm: nn.Module | None = None,
                 residual: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    """[residual +] layer(norm(x)), with `gated`: SiLU(gate) * up of the layer's two halves.

    On CUDA, for a small weight and without autograd, it runs as one Triton kernel
    (specbench_kernels.skinny: a decode step's products cost latency, not arithmetic, so the norm
    and the epilogue ride along): in fast numerics for one row (`skinny.handles`), in
    batch_invariant numerics for any number of rows on fixed tiles (`invariant_linear`).
    Otherwise the ops run one by one in `mode`.
    """
    norm = None if isinstance(norm, nn.Identity) else norm    # EAGLE's draft layer has no input norm
    if uses_kernels(x) and _skinny_fits(x, layer, mode):
        norm_weight, eps = (None, 0.0) if norm is None else (norm.weight, norm.eps)
        if mode == "fast":
            return _ops().skinny_linear(x, layer.weight, layer.bias, norm_weight, eps, residual, gated)
        y = _ops().invariant_linear(x, layer.weight, layer.bias, norm_weight, eps, gated)
        return y if residual is None else residual + y
    y = linear(x if norm is None else rms_norm(x, norm, mode), layer, mode)
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = silu(gate, mode) * up
    return y if residual is None else residual + y


def _skinny_fits(x: torch.Tensor, layer: Linear, mode: str) -> bool:
    """Whether the product runs a fused kernel: a small weight without autograd, and in fast
    numerics a row count `skinny.handles` takes (batch_invariant: any, the tiles never depend on it)."""
    from specbench_kernels.skinny import handles, small
    grad = torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)
    sized = handles(x.shape[0], *layer.weight.shape) if mode == "fast" else small(*layer.weight.shape)
    return sized and not grad


def rms_norm(x: torch.Tensor, norm: nn.Module, mode: str) -> torch.Tensor:
    if mode == "batch_invariant" and uses_kernels(x):
        return _ops().rms_norm(x, norm.weight, norm.eps)
    return norm(x)


def silu(x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "fast" or uses_kernels(x):   # a CUDA elementwise kernel computes every element alike
        return F.silu(x)
    return torch.stack([F.silu(row.clone()) for row in x])


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
         causal: bool = False) -> torch.Tensor:
    """PyTorch's attention of q [n, heads, d] over k, v [kv_heads, span, d] with mask [n, span]
    (None: every key; or already `grouped_mask`'d, [group * n, span]): fast mode's on CPU, and
    differentiable (training a draft uses it).

    `causal` (mask None, span == n: a forward on an empty cache, i.e. prefill): query i sees keys
    0..i, and SDPA skips the masked blocks instead of reading a materialised mask (prefill of 1,800
    tokens on CPU, default model: 2.1 s of attention instead of 3.7 + 1.3 s). Otherwise the query
    heads sharing a kv head run as one batch of (group x n) rows over it, so no k or v is copied
    (SDPA's enable_gqa repeats them per query head on CPU, which at a 512-token cache cost more
    than the layer's matrix products); query head h uses kv head h // group, as in
    repeat_interleave. Eager CUDA calls never use cuDNN (`EAGER_CUDA_SDPA`).
    """
    if q.is_cuda and not torch.compiler.is_compiling():
        with sdpa_kernel(EAGER_CUDA_SDPA):
            return _sdpa(q, k, v, mask, causal)
    return _sdpa(q, k, v, mask, causal)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
          causal: bool) -> torch.Tensor:
    n, heads, d = q.shape
    kv_heads = k.shape[0]
    if causal:
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], is_causal=True,
                                             enable_gqa=heads != kv_heads)
        return out[0].transpose(0, 1)
    group = heads // kv_heads
    if mask is not None and group > 1 and mask.shape[0] == n:
        mask = grouped_mask(mask, group)  # else the caller passed it grouped already
    rows = q.transpose(0, 1).reshape(1, kv_heads, group * n, d)
    out = F.scaled_dot_product_attention(rows, k[None], v[None], attn_mask=mask)
    return out.reshape(heads, n, d).transpose(0, 1)


def grouped_mask(mask: torch.Tensor, group: int) -> torch.Tensor:
    """mask [n, span] -> [group * n, span] for `sdpa`'s batched rows: row g * n + i is query i of
    the g-th query head sharing a kv head."""
    return mask.repeat(group, 1)


def key_table(start: int | torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
    """[n, n] int32: entry (i, e) is the new token at depth e (position start + e) that token i
    sees, -1 where there is none. Token i's keys in position order are then the committed slots
    0 .. start-1 followed by start + table[i, 0 .. positions[i] - start]. Built with device ops
    only (no host synchronisation), so a CUDA graph can capture it. `mask` [n, n] (None: causal)
    must let each token see at most one token per position, as token trees do."""
    n = positions.shape[0]
    idx = torch.arange(n, device=positions.device)
    sees = idx[:, None] >= idx[None, :] if mask is None else mask
    depth = (positions - start)[None, :].expand(n, n)
    col = torch.where(sees & (depth >= 0) & (depth < n), depth, n)     # column n: discarded
    table = torch.full((n, n + 1), -1, dtype=torch.int32, device=positions.device)
    table.scatter_(1, col, idx.to(torch.int32)[None, :].expand(n, n))
    return table[:, :n].contiguous()


class Attention:
    """How the n new tokens of one forward attend over the cache, prepared once for all layers.

    The new tokens sit at slots start .. start+n-1 and see every slot below `start` (an int, or a
    one-element device tensor inside a CUDA graph) and each other through `mask` [n, n] (bool,
    None = causal); `positions` [n] are theirs.
    """

    def __init__(self, mode: str, start: int | torch.Tensor, mask: torch.Tensor | None,
                 positions: torch.Tensor, dtype: torch.dtype = torch.float32):
        self.mode, self.mask, self.positions = mode, mask, positions
        n, device = positions.shape[0], positions.device
        self.kernels = uses_kernels(positions, dtype)      # dtype: the queries' (the model's)
        if self.kernels:
            self.start = start.reshape(1) if isinstance(start, torch.Tensor) else \
                torch.tensor([start], dtype=torch.long, device=device)
            if mode == "batch_invariant":
                self.table = key_table(self.start, mask, positions)
            return
        if isinstance(start, torch.Tensor) and mode == "fast":
            # a CUDA graph without the kernels (a float64 model): the committed length stays on the
            # device, so the mask spans the whole cache and is built there (`_device_mask`)
            self.start, self.causal, self._grouped_full = start.reshape(()), False, None
            self.local = mask if mask is not None else torch.ones(n, n, dtype=torch.bool, device=device).tril()
            self.full = None
            return
        self.start = int(start)
        if mode == "fast":
            self.causal = mask is None and n > 1 and self.start == 0     # prefill: no mask to read
            if mask is None and n > 1 and not self.causal:
                mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            self.full = None if mask is None else \
                torch.cat([torch.ones(n, self.start, dtype=torch.bool, device=device), mask], dim=1)
            self._grouped_full = None
            return
        table, committed = key_table(self.start, mask, positions), torch.arange(self.start)
        self.keys = []       # per token: its key slots in position order
        for i, p in enumerate(positions.tolist()):
            if p < self.start:
                self.keys.append(torch.arange(p + 1))
            else:
                tail = table[i, :p - self.start + 1].long()
                self.keys.append(torch.cat([committed, self.start + tail[tail >= 0]]))

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q [n, heads, d] -> [n, heads, d]; k_cache, v_cache [kv_heads, slots, d] (one layer)."""
        if self.kernels:
            if self.mode == "fast":
                return _ops().tree_attention(q, k_cache, v_cache, self.start, self.mask)
            return _ops().invariant_attention(q, k_cache, v_cache, self.start, self.table, self.positions)
        if self.mode == "fast":
            if isinstance(self.start, torch.Tensor):
                if self.full is None:
                    self.full = self._device_mask(k_cache.shape[1])
                span = k_cache.shape[1]
            else:
                span = self.start + q.shape[0]
            return sdpa(q, k_cache[:, :span], v_cache[:, :span], self._grouped(q.shape[1] // k_cache.shape[0]),
                        self.causal)
        return self._rows(q, k_cache, v_cache)

    def _device_mask(self, slots: int) -> torch.Tensor:
        """[n, slots]: every slot below the device-held start, and the new tokens' own slots through
        their mask; computed without reading start on the host."""
        n = self.local.shape[0]
        rel = torch.arange(slots, device=self.local.device) - self.start
        inside = (rel >= 0) & (rel < n)
        return (rel < 0)[None, :] | (inside[None, :] & self.local[:, rel.clamp(0, n - 1)])

    def _grouped(self, group: int) -> torch.Tensor | None:
        """The mask as `sdpa` reads it, made once per forward instead of once per layer (the default
        model on the CPU: attention over 4 / 6 / 16 new tokens 1.12x / 1.16x / 1.18x faster, 0.4-2
        ms of a 50-60 ms verification forward; experiments/cpu_grouped_mask.py)."""
        if self.full is None or group == 1:
            return self.full
        if self._grouped_full is None:
            self._grouped_full = grouped_mask(self.full, group)
        return self._grouped_full

    def _rows(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """Each token alone: softmax(q k^T / sqrt(d)) v over its own keys, in float32 or wider."""
        heads, d = q.shape[1], q.shape[2]
        kv_heads = k_cache.shape[0]
        wide = torch.promote_types(q.dtype, torch.float32)
        out = torch.empty_like(q)
        for i, slots in enumerate(self.keys):
            qi = q[i].reshape(kv_heads, heads // kv_heads, d).to(wide, copy=True)
            k = k_cache.index_select(1, slots).to(wide)
            v = v_cache.index_select(1, slots).to(wide)
            weights = (qi @ k.transpose(1, 2) * d ** -0.5).softmax(-1)
            out[i] = (weights @ v).reshape(heads, d).to(q.dtype)
        return out
