"""Triton kernels for specbench's hot paths, each beside the PyTorch reference it must equal.

Imported as `specbench_kernels` (the folder is mapped in pyproject.toml; a top-level `kernels`
would collide with the PyPI package of that name). No kernel has landed yet: attention runs
through `specbench.attention.attention` (PyTorch SDPA), tested against
`specbench.attention.attention_reference`, and on CUDA torch.compile generates the fused Triton
kernels of the decode step (specbench/cuda_graph.py).
"""
