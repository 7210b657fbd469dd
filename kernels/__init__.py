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
