"""Checks that need no model, shared by every command (`generate`, `bench`, `train`) and the API.

Each returns the checked value in the form the code uses, or raises SpecbenchError with one line.
Commands run them all before any slow work (model loading, conversion, data reading), so a typo
costs a second, not a model load. `specbench.loading.locate_model` is the model-path check.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import SpecbenchError
from .sampling import SamplingParams

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float64": torch.float64}


def check_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SpecbenchError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_device(device: str | torch.device) -> torch.device:
    """A device this machine has: cpu, cuda / cuda:N with a visible GPU N, or mps."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SpecbenchError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise SpecbenchError(f"device {device!r} is not available: {why} (use --device cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SpecbenchError(f"device {device!r} is not available: {count} GPU{'s' if count > 1 else ''} visible")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise SpecbenchError(f"device {device!r} is not available on this machine")
    elif dev.type != "cpu":
        raise SpecbenchError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return dev


def check_max_new_tokens(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecbenchError(f"max_new_tokens must be an integer >= 1, got {n!r}")
    return n


def check_decoding(method: str, options: dict, max_new_tokens, temperature, top_k, top_p
                   ) -> tuple[SamplingParams, dict]:
    """Sampling parameters, max_new_tokens, the method and its options (parsed to their declared
    types)."""
    from .options import parse_options
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    check_max_new_tokens(max_new_tokens)
    return params, parse_options(method, options)


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """A folder that exists or can be created, and can be written."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise SpecbenchError(f"{what} is a file, not a folder: {p}")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SpecbenchError(f"{what} cannot be written: {p} ({existing} is not a writable folder)")
    return p
