"""The kernels as PyTorch custom operators (`torch.ops.specbench.*`), as specbench's model calls them.

A custom operator is opaque to torch.compile (it is called, never traced into, and its fake
implementation gives the output's shape), and its launch is captured by CUDA graphs like any
other kernel. So the compiled, graph-captured decode step (specbench/cuda_graph.py) runs these
kernels unchanged.
"""
# no `from __future__ import annotations`: custom_op reads the real type hints for the schema
from typing import Optional

import torch

from . import attention as _attention
from . import matmul as _matmul
from . import rmsnorm as _rmsnorm
from . import skinny as _skinny


@torch.library.custom_op("specbench::matmul", mutates_args=())
def matmul(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _matmul.matmul(x, weight, bias)


@matmul.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


@torch.library.custom_op("specbench::skinny_linear", mutates_args=())
def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  norm_weight: Optional[torch.Tensor], eps: float, residual: Optional[torch.Tensor],
                  gated: bool) -> torch.Tensor:
    return _skinny.skinny_linear(x, weight, bias, norm_weight, eps, residual, gated)


@skinny_linear.register_fake
def _(x, weight, bias, norm_weight, eps, residual, gated):
    return x.new_empty(x.shape[0], weight.shape[0] // 2 if gated else weight.shape[0])


@torch.library.custom_op("specbench::invariant_linear", mutates_args=())
def invariant_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     norm_weight: Optional[torch.Tensor], eps: float, gated: bool) -> torch.Tensor:
    return _skinny.invariant_linear(x, weight, bias, norm_weight, eps, gated)


@invariant_linear.register_fake
def _(x, weight, bias, norm_weight, eps, gated):
    return x.new_empty(x.shape[0], weight.shape[0] // 2 if gated else weight.shape[0])


@torch.library.custom_op("specbench::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rmsnorm.rms_norm(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty_like(x)


@torch.library.custom_op("specbench::tree_attention", mutates_args=())
def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                   mask: Optional[torch.Tensor]) -> torch.Tensor:
    return _attention.tree_attention(q, k_cache, v_cache, start, mask)


@tree_attention.register_fake
def _(q, k_cache, v_cache, start, mask):
    return torch.empty_like(q)


@torch.library.custom_op("specbench::invariant_attention", mutates_args=())
def invariant_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start: torch.Tensor,
                        tail: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return _attention.invariant_attention(q, k_cache, v_cache, start, tail, positions)


@invariant_attention.register_fake
def _(q, k_cache, v_cache, start, tail, positions):
    return torch.empty_like(q)
