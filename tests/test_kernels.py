"""The Triton kernels (kernels/, imported as specbench_kernels) against their PyTorch references,
and the batch-invariance property, under TRITON_INTERPRET=1 at small shapes.

The interpreter runs the kernels' programs with numpy on the CPU: it checks what each program
computes and reads, and that no program's work depends on how many rows the call has. The compiled
kernels are checked at the default model's and a 7B model's shapes on a GPU by
`python -m specbench_kernels.gpu_check OUTDIR`.
"""
import os
import subprocess
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")   # before triton compiles anything: no CPU backend

import pytest  # noqa: E402
import torch  # noqa: E402

import specbench  # noqa: E402
from specbench import numerics  # noqa: E402
from specbench_kernels import gpu_check, ops, skinny  # noqa: E402
from specbench_kernels.attention import attention_reference, invariant_attention, tree_attention  # noqa: E402
from specbench_kernels.matmul import BLOCK_M, matmul, matmul_reference  # noqa: E402
from specbench_kernels.rmsnorm import rms_norm, rms_norm_reference  # noqa: E402
from specbench_kernels.skinny import MAX_ROWS, invariant_linear, skinny_linear, skinny_linear_reference, tickets  # noqa: E402

from attention_cases import DTYPES, TOL, attention_case, randn, random_tree, rel_err  # noqa: E402, I001


# ---- matrix multiply ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5, BLOCK_M + 6])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_matches_reference(dtype, rows, bias):
    x, w = randn(rows, 80, dtype=dtype), randn(100, 80, dtype=dtype, seed=1)   # K, N not tile multiples
    b = randn(100, dtype=dtype, seed=2) if bias else None
    assert rel_err(matmul(x, w, b), matmul_reference(x, w, b)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_rows_are_batch_invariant(dtype):
    """A row's bits depend neither on how many rows the call has nor on where the row sits (the
    interpreter emulates tl.dot row by row, see specbench_kernels._common.emulate_dots: numpy's
    matmul gives row 23 of a tile other bits than row 0)."""
    x, w = randn(BLOCK_M + 6, 80, dtype=dtype), randn(100, 80, dtype=dtype, seed=1)
    full = matmul(x, w)
    for rows in (1, 2, 17, BLOCK_M):
        assert torch.equal(matmul(x[:rows], w), full[:rows])
    for i in (3, 23, BLOCK_M + 5):      # the last row sits in the second row tile of the full call
        assert torch.equal(matmul(x[i:i + 1], w), full[i:i + 1])


# ---- RMSNorm --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [32, 80])
def test_rms_norm_matches_reference_and_is_batch_invariant(dtype, dim):
    x, w = randn(9, dim, dtype=dtype) * 3, 1 + 0.1 * randn(dim, dtype=dtype, seed=1)
    full = rms_norm(x, w, 1e-5)
    assert rel_err(full, rms_norm_reference(x, w, 1e-5)) < TOL[dtype]
    for i in (0, 8):
        assert torch.equal(rms_norm(x[i:i + 1], w, 1e-5), full[i:i + 1])


# ---- fused one-row products (fast numerics) ---------------------------------------------------

SKINNY_FUSIONS = {
    "plain": {},
    "norm+bias": {"norm": True, "bias": True},
    "residual": {"residual": True},
    "norm+gated": {"norm": True, "gated": True},
    "gated+residual": {"gated": True, "residual": True},
}


def skinny_case(dtype, fusion, k=80, n=50, rows=1):
    """x [rows, k], a weight of n (or 2n, gated) rows and the fusion's operands; k, n not multiples
    of any tile side."""
    f = SKINNY_FUSIONS[fusion]
    x, w = 3 * randn(rows, k, dtype=dtype), randn(2 * n if f.get("gated") else n, k, dtype=dtype, seed=1) / k ** 0.5
    kwargs = {"gated": bool(f.get("gated")),
              "bias": randn(n, dtype=dtype, seed=2) if f.get("bias") else None,
              "norm_weight": 1 + 0.1 * randn(k, dtype=dtype, seed=3) if f.get("norm") else None, "eps": 1e-5,
              "residual": randn(rows, n, dtype=dtype, seed=4) if f.get("residual") else None}
    return x, w, kwargs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fusion", list(SKINNY_FUSIONS))
def test_skinny_linear_matches_reference(dtype, fusion):
    """Each fusion, with the chosen blocks and with other ones (ragged column blocks, a K block
    wider than K), over one row and over 19; and every row's bits the same in calls of 1, 2 and 19
    rows (batch_invariant numerics runs this kernel at any row count)."""
    x, w, kwargs = skinny_case(dtype, fusion, rows=19)
    ref = skinny_linear_reference(x, w, **kwargs)
    assert ref.shape == (19, 50)
    for block in (None, (16, 256, 4)):
        full = skinny_linear(x, w, block=block, **kwargs)
        assert rel_err(full, ref) < TOL[dtype]
        for rows in (slice(0, 1), slice(0, 2), slice(7, 8), slice(18, 19)):
            part = {**kwargs, "residual": None if kwargs["residual"] is None else kwargs["residual"][rows]}
            assert torch.equal(skinny_linear(x[rows], w, block=block, **part), full[rows])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fusion", list(SKINNY_FUSIONS))
def test_invariant_linear_matches_reference_and_is_batch_invariant(dtype, fusion):
    """batch_invariant's fused product (the residual add stays outside): 40 rows (three row tiles,
    the last ragged) within TOL of the reference, with the chosen tiles, with small ones (several K
    steps and column blocks), and with K split among 3 programs a tile (the last K block ragged;
    the ticket counters left at zero for the next call); and every row's bits the same in calls
    of 1, 2, 17 and 40 rows."""
    x, w, kwargs = skinny_case(dtype, fusion, rows=40)
    residual = kwargs.pop("residual")
    ref = skinny_linear_reference(x, w, **kwargs)
    for block in (None, (16, 16, 32, 4, 1), (16, 16, 16, 4, 3)):
        full = invariant_linear(x, w, block=block, **kwargs)
        assert rel_err(full, ref) < TOL[dtype]
        if residual is not None:
            assert rel_err(residual + full, skinny_linear_reference(x, w, residual=residual, **kwargs)) < TOL[dtype]
        for rows in (1, 2, 17):
            assert torch.equal(invariant_linear(x[:rows], w, block=block, **kwargs), full[:rows])
        for i in (5, 39):
            assert torch.equal(invariant_linear(x[i:i + 1], w, block=block, **kwargs), full[i:i + 1])
        assert not tickets(x.device, 1).any()


def test_split_tickets_grow_and_keep_the_buffer_a_graph_may_hold():
    """A call with more split tiles than counters gets a larger zeroed buffer; the smaller one
    stays alive (a CUDA graph captured with it keeps its address)."""
    device = torch.device("cpu")
    small = tickets(device, 1)
    big = tickets(device, small.numel() + 1)
    assert big.numel() > small.numel() and not big.any()
    assert any(t is small for t in skinny._OUTGROWN) and tickets(device, 1) is big


def test_skinny_linear_reference_catches_a_missing_fusion():
    """Negative control: leaving out any fused step misses the reference by far more than TOL."""
    x, w, kwargs = skinny_case(torch.float32, "norm+bias")
    assert rel_err(skinny_linear(x, w, bias=kwargs["bias"]), skinny_linear_reference(x, w, **kwargs)) > 0.1
    x, w, kwargs = skinny_case(torch.float32, "gated+residual")
    assert rel_err(skinny_linear(x, w, gated=True), skinny_linear_reference(x, w, **kwargs)) > 0.1


def test_skinny_linear_refuses_bad_operands():
    x, w = randn(2, 8), randn(6, 8, seed=1)
    with pytest.raises(ValueError, match="columns must match"):
        skinny_linear(x, randn(6, 9))
    with pytest.raises(ValueError, match="K block of 16 for K = 24"):
        skinny_linear(randn(1, 24), randn(6, 24), block=(4, 16, 4))
    with pytest.raises(ValueError, match="gated"):
        skinny_linear(x[:1], w, bias=randn(3), gated=True)
    with pytest.raises(ValueError, match="residual"):
        skinny_linear(x[:1], w, residual=randn(1, 5))
    with pytest.raises(ValueError, match="bias"):
        skinny_linear(x[:1], w, bias=randn(8))
    with pytest.raises(ValueError, match="norm"):
        skinny_linear(x[:1], w, norm_weight=randn(6))


def test_fused_linear_takes_the_kernel_only_without_autograd(kernels_on_cpu, monkeypatch):
    """Fast numerics on kernels: one row by a small weight runs the fused kernel; under autograd
    (training a draft), past MAX_ROWS rows or past MAX_WEIGHT the PyTorch ops run."""
    layer = torch.nn.Linear(24, 10, bias=False)
    norm = specbench.model.RMSNorm(24, 1e-5)
    x = randn(MAX_ROWS, 24)
    with torch.no_grad():
        fused = numerics.fused_linear(x, layer, "fast", norm=norm)
        assert torch.equal(fused, skinny_linear(x, layer.weight, norm_weight=norm.weight, eps=1e-5))
    out = numerics.fused_linear(x, layer, "fast", norm=norm)
    assert out.grad_fn is not None
    out.sum().backward()
    assert layer.weight.grad is not None
    assert rel_err(out.detach(), fused) < 1e-5
    many = randn(MAX_ROWS + 1, 24)
    with torch.no_grad():
        assert torch.equal(numerics.fused_linear(many, layer, "fast", norm=norm), layer(norm(many)))
        identity = numerics.fused_linear(x, layer, "fast", norm=torch.nn.Identity())   # EAGLE's layer
        assert torch.equal(identity, skinny_linear(x, layer.weight))
        monkeypatch.setattr(skinny, "MAX_WEIGHT", 239)    # this layer has 240 weights: cuBLAS's size now
        assert torch.equal(numerics.fused_linear(x, layer, "fast", norm=norm), layer(norm(x)))


def test_batch_invariant_fused_linear_takes_the_tiles_at_any_row_count(kernels_on_cpu, monkeypatch):
    """batch_invariant numerics on kernels: a small weight runs `invariant_linear` at every row
    count; a large one the unfused kernels (RMSNorm, then the tiled matmul)."""
    layer = torch.nn.Linear(24, 10, bias=False)
    norm = specbench.model.RMSNorm(24, 1e-5)
    many = randn(MAX_ROWS + 69, 24)
    with torch.no_grad():
        fused = numerics.fused_linear(many, layer, "batch_invariant", norm=norm)
        assert torch.equal(fused, invariant_linear(many, layer.weight, norm_weight=norm.weight, eps=1e-5))
        monkeypatch.setattr(skinny, "MAX_WEIGHT", 239)
        assert torch.equal(numerics.fused_linear(many, layer, "batch_invariant", norm=norm),
                           matmul(rms_norm(many, norm.weight, 1e-5), layer.weight))


# ---- attention ------------------------------------------------------------------------------

SHAPES = [(6, 2, 16), (4, 4, 8)]          # GQA with a group of 3 (padded to 4); MHA with d=8 (padded)
LAYOUTS = [(0, 1), (0, 6), (45, 1), (45, 20), (100, 9)]    # (committed length, new tokens)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("start,n", LAYOUTS)
def test_tree_attention_matches_reference(dtype, shape, start, n):
    q, k, v, _, mask, _ = attention_case(dtype, *shape, start, n)
    st = torch.tensor([start])
    for m in (mask, None):    # a token tree; causal
        out = tree_attention(q, k, v, st, m, split=32)     # 32-slot splits: up to 4 per row here
        assert rel_err(out, attention_reference(q, k, v, start, m)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("start,n", LAYOUTS)
def test_invariant_attention_matches_reference(dtype, shape, start, n):
    q, k, v, _, mask, positions = attention_case(dtype, *shape, start, n)
    st = torch.tensor([start])
    out = invariant_attention(q, k, v, st, numerics.key_table(st, mask, positions), positions, split=32)
    assert rel_err(out, attention_reference(q, k, v, start, mask)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_default_split(dtype):
    """The shipped split size (256 slots) over a context that needs two splits."""
    q, k, v, _, mask, positions = attention_case(dtype, 6, 2, 16, 300, 5, slots=320)
    st = torch.tensor([300])
    ref = attention_reference(q, k, v, 300, mask)
    assert rel_err(tree_attention(q, k, v, st, mask), ref) < TOL[dtype]
    table = numerics.key_table(st, mask, positions)
    assert rel_err(invariant_attention(q, k, v, st, table, positions), ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_invariant_attention_tree_row_equals_the_token_alone(dtype, shape):
    """Each token of a 14-node tree over 45 committed slots gets exactly the bits it gets when it
    is the only new token and its ancestors are committed at slots equal to their positions (the
    layout in which vanilla decoding computes it). The slot-order kernel, as a control, does not
    (float32; in bf16 the output's rounding hides most differences)."""
    start, n = 45, 14
    q, k, v, parents, mask, positions = attention_case(dtype, *shape, start, n)
    st = torch.tensor([start])
    tree = invariant_attention(q, k, v, st, numerics.key_table(st, mask, positions), positions, split=32)
    control = tree_attention(q, k, v, st, mask, split=32)
    control_differs = 0
    for i in range(n):
        path = [i]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        path.reverse()                                  # depth 0 .. the token itself
        k1, v1 = k.clone(), v.clone()
        k1[:, start:], v1[:, start:] = float("nan"), float("nan")
        k1[:, start:start + len(path)] = k[:, [start + j for j in path]]
        v1[:, start:start + len(path)] = v[:, [start + j for j in path]]
        alone_at = torch.tensor([int(positions[i])])
        alone = invariant_attention(q[i:i + 1], k1, v1, alone_at, torch.zeros(1, 1, dtype=torch.int32),
                                    positions[i:i + 1], split=32)
        assert torch.equal(alone, tree[i:i + 1]), i
        if dtype == torch.float32:
            alone = tree_attention(q[i:i + 1], k1, v1, alone_at, None, split=32)
            control_differs += not torch.equal(alone, control[i:i + 1])
    assert dtype != torch.float32 or control_differs > 0


def test_key_table_lists_each_tokens_ancestors_by_depth():
    parents, mask, depth = random_tree(12, seed=3)
    table = numerics.key_table(7, mask, 7 + depth)
    for i in range(12):
        path = [i]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        assert table[i].tolist() == path[::-1] + [-1] * (12 - len(path))
    causal = numerics.key_table(torch.tensor([3]), None, torch.arange(3, 7))
    assert causal.tolist() == [[0, -1, -1, -1], [0, 1, -1, -1], [0, 1, 2, -1], [0, 1, 2, 3]]


def test_gpu_check_skinny_stage_runs_at_small_shapes():
    """The GPU check's fused-product stage, interpreted at tiny shapes: every check passes."""
    rows = gpu_check.skinny_checks({"tiny": (32, 6, 2, 16, 48, 100)}, "cpu")
    assert len(rows) == 2 * 5 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


def test_gpu_check_invariant_stage_runs_at_small_shapes():
    """The GPU check's batch_invariant fused-product stage, interpreted at tiny shapes: every
    check passes (5 products, the tiny LM head being small too, x 2 dtypes x 3 row counts)."""
    rows = gpu_check.invariant_checks({"tiny": (32, 6, 2, 16, 48, 100)}, "cpu", row_counts=(1, 5, 40))
    assert len(rows) == 5 * 2 * 3 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]


def test_gpu_check_kernel_stage_runs_at_small_shapes(tmp_path):
    """The GPU check's kernel stage, interpreted at tiny shapes: every check passes, a CSV results."""
    rows = gpu_check.kernel_checks({"tiny": (32, 6, 2, 16, 48, 100)}, "cpu", rows=(1, 5, 70), starts=(0, 45),
                                   news=(1, 9), slots=64)
    assert len(rows) == 2 * (5 + 1 + 2 * 4) and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    gpu_check.write_csv(tmp_path / "kernels.csv", rows)
    assert (tmp_path / "kernels.csv").read_text().startswith("stage,kernel,model")


COMPILE_FOR_H200 = """
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from specbench_kernels import attention as at, matmul as mm, rmsnorm as rn, skinny as sk

def build(fn, types, consts, num_warps=4, num_stages=3):
    sig = {a: "constexpr" if a in consts else types[a] for a in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(a),): v for a, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})

for dt in ("bf16", "fp32"):
    ints = lambda *names: {n: "i32" for n in names}
    k = build(mm._matmul_kernel, {"X": "*" + dt, "W": "*" + dt, "B": "*" + dt, "OUT": "*" + dt,
              **ints("M", "N", "K", "stride_xm", "stride_wn", "stride_om")},
              {"HAS_BIAS": True, "EMULATE": False, "BM": 64, "BN": 64, "BK": 64})
    assert ("wgmma" in k.asm["ptx"]) == (dt == "bf16")        # tensor cores for bf16; exact fp32 FMAs
    build(sk._skinny_kernel, {"X": "*" + dt, "W": "*" + dt, "B": "*" + dt, "NW": "*" + dt, "RES": "*" + dt,
          "OUT": "*" + dt, "eps": "fp32", **ints("M", "N", "K", "stride_wn")},
          {"NORM": True, "GATED": True, "RESIDUAL": True, "HAS_BIAS": False, "EMULATE": False, "BN": 8, "BK": 512})
    # the default model's four products on their chosen tiles: tensor cores for bf16, and shared
    # memory within the H200's 227 KB (all of K = 1,536 at once in float32 took 256 KB)
    for n_out, k_in, gated in ((960, 576, False), (576, 576, False), (1536, 576, True), (576, 1536, False)):
        bm, bn, bk, warps, split = sk.tiles_config(n_out, k_in, gated, torch.float32 if dt == "fp32" else torch.bfloat16)
        for split in {split, 4}:     # the chosen split, and 4 programs a tile (atomic tickets)
            k = build(sk._tiles_kernel, {"X": "*" + dt, "W": "*" + dt, "B": "*" + dt, "NW": "*" + dt,
                      "OUT": "*" + dt, "PART": "*fp32", "TICKETS": "*i32", "eps": "fp32",
                      **ints("M", "N", "K", "K_SPAN", "stride_wn")},
                      {"NORM": True, "GATED": gated, "HAS_BIAS": False, "EMULATE": False, "BM": bm, "BN": bn,
                       "BK": bk, "SPLIT": split},
                      num_warps=warps, num_stages=1 if bk >= k_in else 2)
            assert ("mma" in k.asm["ptx"]) == (dt == "bf16")
            assert ("atom" in k.asm["ptx"]) == (split > 1)
            assert k.metadata.shared <= 232448, (dt, n_out, k_in, k.metadata.shared)
    build(rn._rms_norm_kernel, {"X": "*" + dt, "W": "*" + dt, "OUT": "*" + dt, "eps": "fp32",
          **ints("D", "stride_x", "stride_o")}, {"BLOCK": 1024})
    common = {"Q": "*" + dt, "K": "*" + dt, "V": "*" + dt, "START": "*i64", "PM": "*fp32", "PL": "*fp32",
              "PACC": "*fp32", "scale": "fp32", **ints("n", "stride_qn", "stride_qh", "stride_kh", "stride_vh", "NSPLIT")}
    for causal in (True, False):
        build(at._tree_split_kernel, {**common, "MASK": "*i1", "stride_mask": "i32"},
              {"GROUP": 3, "GPAD": 4, "BLOCK_T": 4, "BN": 64, "D": 64, "DPAD": 64, "SPLIT_": 256, "CAUSAL": causal,
               "EMULATE": False})
    build(at._invariant_split_kernel, {**common, "TAIL": "*i32", "POS": "*i64", "T": "i32"},
          {"GROUP": 3, "GPAD": 16, "BN": 64, "D": 64, "DPAD": 64, "SPLIT_": 256, "EMULATE": False})
    build(at._combine_kernel, {"PM": "*fp32", "PL": "*fp32", "PACC": "*fp32", "ENDS": "*i64", "OUT": "*" + dt,
          **ints("n", "stride_on", "stride_oh", "NSPLIT")}, {"D": 64, "DPAD": 64, "SPLIT_": 256})
print("compiled")
"""


def test_kernels_compile_for_the_h200():
    """The GPU branch of every kernel (which the interpreter never runs) compiles to sm_90 machine
    code with triton's bundled ptxas, no GPU needed: at the default model's head shape, bf16 and
    fp32. A fresh process: here the kernels are the interpreter's."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_H200], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


# ---- the custom operators the model calls ---------------------------------------------------

def test_custom_ops_schemas_and_fake_tensors():
    """torch.library's own checks: schema, fake (meta) implementation, tracing by AOT autograd;
    what torch.compile relies on when the compiled decode step calls the kernels."""
    x, w = randn(3, 32), randn(40, 32, seed=1)
    q, k, v, _, mask, positions = attention_case(torch.float32, 4, 2, 16, 10, 4, slots=32)
    k, v = k.nan_to_num(), v.nan_to_num()
    st = torch.tensor([10])
    cases = [(ops.matmul, (x, w, None)), (ops.rms_norm, (x, w[0], 1e-5)),
             (ops.skinny_linear, (x[:1], w, None, x[0], 1e-5, None, True)),
             (ops.skinny_linear, (x[:1], w, randn(40, seed=5), None, 0.0, randn(1, 40, seed=2), False)),
             (ops.invariant_linear, (x, w, randn(40, seed=5), x[0], 1e-5, False)),
             (ops.tree_attention, (q, k, v, st, mask)),
             (ops.invariant_attention, (q, k, v, st, numerics.key_table(st, mask, positions), positions))]
    for op, args in cases:
        torch.library.opcheck(op, args)


# ---- the model on the Triton path -----------------------------------------------------------

@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """Run the model's reductions through the Triton kernels (interpreted) on CPU tensors."""
    monkeypatch.setattr(numerics, "on_kernel_device", lambda t: True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", numerics.MODES)
def test_model_on_kernels_matches_float64(kernels_on_cpu, monkeypatch, dtype, mode):
    """Logits of a prefill and a tree step through the kernels are as close to the float64 model's
    as the PyTorch path's are. In bf16 rounding compounds over the layers: measured 0.013-0.024
    through the kernels, 0.015 through PyTorch (max error relative to the largest logit)."""
    exact_model = specbench.random_model(vocab_size=64, num_layers=2, hidden_size=32, seed=3, dtype="float64")
    model = specbench.random_model(vocab_size=64, num_layers=2, hidden_size=32, seed=3, dtype=dtype, numerics=mode)
    prompt = torch.arange(11) % 64
    parents, mask, depth = random_tree(7, seed=4)
    tree_tokens = torch.arange(20, 27)

    def run(m):
        cache = m.new_cache(32)
        first = m(prompt, torch.arange(11), cache).logits
        cache.length = 11
        return torch.cat([first, m(tree_tokens, 11 + depth, cache, mask).logits])

    on_kernels = run(model)
    monkeypatch.setattr(numerics, "on_kernel_device", lambda t: False)
    exact = run(exact_model)
    assert rel_err(on_kernels, exact) < {torch.float32: 1e-5, torch.bfloat16: 4e-2}[dtype]
    assert rel_err(run(model), exact) < {torch.float32: 1e-5, torch.bfloat16: 4e-2}[dtype]


@pytest.mark.parametrize("mode", numerics.MODES)
def test_float64_model_on_the_kernels_device_stays_on_pytorch(kernels_on_cpu, monkeypatch, mode):
    """The kernels take float32 / bfloat16 / float16 only: a float64 model where they run (CUDA;
    here the redirected CPU) keeps every op on PyTorch, its attention included, and computes
    exactly what it computes elsewhere. (Attention once asked only where the tensors lived, so
    the GPU tests' float64 models reached `tree_attention` and were refused, as the negative
    control shows.)"""
    model = specbench.random_model(vocab_size=64, num_layers=2, hidden_size=32, seed=3, dtype="float64", numerics=mode)
    parents, mask, depth = random_tree(5, seed=4)

    def run():
        cache = model.new_cache(32)
        first = model(torch.arange(9) % 64, torch.arange(9), cache).logits
        cache.length = 9
        return torch.cat([first, model(torch.arange(20, 25), 9 + depth, cache, mask).logits])

    on_device = run()
    monkeypatch.setattr(numerics, "on_kernel_device", lambda t: False)
    assert torch.equal(on_device, run())
    # negative control: the old rule (where the tensors live, whatever their dtype) is refused
    monkeypatch.setattr(numerics, "uses_kernels", lambda t, dtype=None: True)
    with pytest.raises(TypeError, match="Triton kernels take"):
        run()


def test_model_on_kernels_lookahead_equals_vanilla_bitwise(kernels_on_cpu):
    """batch_invariant through the kernels: a tree step's logits equal one-token forwards', bit
    for bit, so lookahead's greedy output is vanilla's."""
    model = specbench.random_model(vocab_size=64, num_layers=2, hidden_size=32, seed=3, dtype="bfloat16",
                                   numerics="batch_invariant")
    prompt = [5, 9, 3, 5, 9, 3, 7, 1]
    ref = specbench.generate(model, prompt, "vanilla", max_new_tokens=6)
    out = specbench.generate(model, prompt, "lookahead", max_new_tokens=6, W=3, N=3, G=3)
    assert out.token_ids == ref.token_ids
    # one tree step against one-token forwards over the same committed text
    parents, mask, depth = random_tree(6, seed=5)
    tokens = torch.tensor([11, 12, 13, 14, 15, 16])
    cache = model.new_cache(32)
    model(torch.tensor(prompt), torch.arange(8), cache, stop_layer=2)
    cache.length = 8
    tree_logits = model(tokens, 8 + depth, cache, mask).logits
    for i in range(6):
        path = [i]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        cache.length = 8
        for j in path[::-1]:
            logits = model(tokens[j:j + 1], torch.tensor([cache.length]), cache).logits
            cache.length += 1
        assert torch.equal(logits[0], tree_logits[i]), i


# ---- the folder's name ----------------------------------------------------------------------

def test_repository_root_does_not_shadow_the_pypi_kernels_package():
    """Run from the repository root (`python -m pytest`, `python -c`), `import kernels` must give the
    PyPI package that transformers imports while it loads GGUF files, not this folder: with the
    folder in its place transformers 5.x failed (`cannot import name 'CUDAProperties'`)."""
    import importlib.metadata
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the PyPI package kernels is not installed (transformers < 5 does not need it)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import kernels, os; print(os.path.abspath(kernels.__file__)); print(hasattr(kernels, 'get_kernel'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    path, has_api = out.stdout.split()
    assert not path.startswith(os.path.join(root, "kernels") + os.sep) and has_api == "True", out.stdout
