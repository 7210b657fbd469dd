"""Shared by test_kernels and test_numerics: tolerances, random token trees and attention inputs."""
import torch

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}     # relative error allowed against a reference
DTYPES = list(TOL)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute error relative to the largest reference value."""
    assert torch.isfinite(out).all()
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def random_tree(n: int, seed: int):
    """parents (each node's parent precedes it; -1: a child of the committed text), the
    ancestor-or-self mask [n, n] and the depths."""
    gen = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(-1, i, (1,), generator=gen)) for i in range(1, n)]
    mask = torch.zeros(n, n, dtype=torch.bool)
    depth = []
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] = mask[p]
        mask[i, i] = True
        depth.append(0 if p < 0 else depth[p] + 1)
    return parents, mask, torch.tensor(depth)


def attention_case(dtype, heads, kv_heads, d, start, n, seed=0, slots=160):
    """q, a cache whose slots past the live ones hold NaN (a kernel that reads them fails), a tree."""
    q = randn(n, heads, d, dtype=dtype, seed=seed)
    k, v = randn(kv_heads, slots, d, dtype=dtype, seed=seed + 1), randn(kv_heads, slots, d, dtype=dtype, seed=seed + 2)
    k[:, start + n:] = float("nan")
    v[:, start + n:] = float("nan")
    parents, mask, depth = random_tree(n, seed)
    return q, k, v, parents, mask, start + depth
