"""What every kernel module shares: the interpreter switch and tile arithmetic."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Triton kernels accept these element types; float64 models stay on the PyTorch paths.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreted() -> bool:
    """True under TRITON_INTERPRET=1 (CPU tensors, numpy semantics)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def emulate_dots() -> bool:
    """Whether `dot` computes its products elementwise instead of with tl.dot: under the
    interpreter, tl.dot is numpy's matmul, which multiplies bfloat16 tiles as raw integers
    (measured with triton 3.9: errors of 1e10) and whose float32 result for a row depends on the
    row's place in the tile (OpenBLAS kernels handle rows in groups: measured, rows 6-11 of each
    12 differ from rows 0-5). A GPU's MMA computes every row alike; gpu_check measures that."""
    return interpreted()


@triton.jit
def dot(a, b, acc, EMULATE: tl.constexpr):
    """acc + a @ b, accumulated in float32 (emulated: products exact, each row summed in one order)."""
    if EMULATE:
        acc += tl.sum(a.to(tl.float32)[:, :, None] * b.to(tl.float32)[None, :, :], axis=1)
    elif a.dtype == tl.float32:
        acc = tl.dot(a, b, acc, input_precision="ieee")     # full float32, not TF32
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def rounded(x, dtype: tl.constexpr, EMULATE: tl.constexpr):
    """float32 x rounded to `dtype` (to nearest, ties to even) and widened back to float32. The
    interpreter truncates float32 -> bfloat16 casts instead (measured, triton 3.x: errors up to one
    unit in the last place), so there the rounding is done on the bits."""
    if EMULATE and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(dtype).to(tl.float32)


def pad(n: int, least: int = 16) -> int:
    """A power of two >= n and >= least (tl.arange and tl.dot need such tile sides)."""
    return max(least, triton.next_power_of_2(n))


def check_dtype(*tensors: torch.Tensor) -> None:
    dtype = tensors[0].dtype
    if dtype not in DTYPES or any(t.dtype != dtype for t in tensors):
        raise TypeError(f"Triton kernels take one of {DTYPES} for every operand, got "
                        f"{[t.dtype for t in tensors]}")
