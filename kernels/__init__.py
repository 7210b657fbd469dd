"""Triton kernels for specbench's forward, each beside the PyTorch reference it must equal.

Imported as `specbench_kernels` (the folder is mapped in pyproject.toml; a top-level `kernels`
would collide with the PyPI package of that name). Modules:

* `matmul`: batch-invariant x W^T on fixed tiles (`matmul_reference`: float64).
* `rmsnorm`: batch-invariant RMSNorm, a row per program (`rms_norm_reference`).
* `skinny`: fast numerics' one-row matrix products by small weights, each fused with the RMSNorm
  before it or the SiLU gate / residual add after it (`skinny_linear_reference`).
* `attention`: `tree_attention` (numerics "fast") and `invariant_attention` (numerics
  "batch_invariant") over the live slots of a static cache, split over the context in fixed
  chunks (`attention_reference`).
* `ops`: the kernels as torch custom operators, which specbench.numerics calls on CUDA (and which
  torch.compile and CUDA graphs take as they are).
* `gpu_check`: `python -m specbench_kernels.gpu_check OUTDIR` validates and times them on a GPU.

Nothing is imported here, so `import specbench_kernels` needs no triton; the modules do.
"""

if __name__ == "kernels":
    # Imported as `kernels`: the repository root is on sys.path (`python -m pytest` or `python -c`
    # run there) and this folder shadows the PyPI package `kernels`, which transformers (5.x
    # requires it) imports while loading GGUF files and models. Put that package in this
    # module's place: the import statement hands the caller whatever sys.modules then holds.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or ".") != _root])
    if _spec is not None:
        _real = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _real
        _spec.loader.exec_module(_real)
