"""What every kernel module shares: the interpreter switch and tile arithmetic."""
from __future__ import annotations

import os

import torch
import triton

# Triton kernels accept these element types; float64 models stay on the PyTorch paths.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreted() -> bool:
    """True under TRITON_INTERPRET=1 (CPU tensors, numpy semantics)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def upcast_dots(dtype: torch.dtype) -> bool:
    """Whether tl.dot operands must go to float32 first: Triton's interpreter multiplies bfloat16
    tiles as raw integers (measured with triton 3.9: errors of 1e10), and a bfloat16 x bfloat16
    product is exact in float32, so upcasting changes nothing else."""
    return interpreted() and dtype in (torch.bfloat16, torch.float16)


def pad(n: int, least: int = 16) -> int:
    """A power of two >= n and >= least (tl.arange and tl.dot need such tile sides)."""
    return max(least, triton.next_power_of_2(n))


def check_dtype(*tensors: torch.Tensor) -> None:
    dtype = tensors[0].dtype
    if dtype not in DTYPES or any(t.dtype != dtype for t in tensors):
        raise TypeError(f"Triton kernels take one of {DTYPES} for every operand, got "
                        f"{[t.dtype for t in tensors]}")
