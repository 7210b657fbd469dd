"""GPU validation of the kernels: `python -m specbench_kernels.gpu_check OUTDIR [STAGE ...]`.

Stages (all by default; each writes its CSV into OUTDIR, and summary.json sums them up):

* ``kernels`` (kernels.csv): every compiled kernel against its float64 reference (relative error:
  float32 1e-5, bfloat16 1e-2) at the default model's shapes (SmolLM2-135M: hidden 576, 9 heads,
  3 kv heads, head_dim 64) and a 7B model's (hidden 4096, 32 heads, 32 or 8 kv heads, head_dim
  128); batch invariance (a row's bits alone vs in a call of up to 256 rows; a tree token's
  attention vs the token alone); dead cache slots filled with NaN, so reading one shows; and the
  time of each kernel beside torch's own op.
* ``model`` (model.csv): whole forwards of a random model of the default model's shapes (30
  layers, bf16) replayed from CUDA graphs as the engine does: rows of a 16-token chain and of a
  48-node tree against one-token forwards along each node's path, bit for bit; batch_invariant
  compiled and uncompiled, fast (uncompiled) as the control.
* ``timing`` (timing.csv): a decode step (one token, live length 200) in a 512-slot and a
  4,096-slot cache, both numerics modes, compiled graphs (goal: within 10%); the attention kernel
  alone at the same lengths, beside SDPA over the whole masked cache (the path it replaced).
* ``skinny`` (skinny.csv): the fused one-row products of fast numerics (`skinny_linear`:
  each of a layer's products with its RMSNorm, SiLU gate or residual add) against their reference
  at the three models' shapes, and their graph-replayed time with the weights read from memory
  beside cuBLAS's product alone, for the chosen tiles and a sweep of others (`config` and
  `handles` are chosen from it).
* ``invariant`` (invariant.csv): batch_invariant's fused products (`invariant_linear`) at the
  default model's shapes over 1-256 rows: error against the reference, rows' bits against the
  same rows alone, and their time beside the unfused batch-invariant kernels they replaced.
* ``splits`` (splits.csv): `tree_attention` with each split size (slots per program) at 1..64 new
  tokens and several live lengths, 50 calls captured in one CUDA graph so launch overhead does not
  hide the kernels' own time; the fast path's split size is chosen from it.

`model` and `timing` compile CUDA graphs (~20-40 s a shape); where a command's time is limited,
run the stages as separate commands.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from .attention import attention_reference, invariant_attention, tree_attention
from .matmul import matmul, matmul_reference
from .rmsnorm import rms_norm, rms_norm_reference
from .skinny import config as skinny_config
from .skinny import handles as skinny_handles
from .skinny import invariant_linear, tiles_config
from .skinny import small as skinny_small
from .skinny import skinny_linear, skinny_linear_reference

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}

# name -> (hidden, heads, kv_heads, head_dim, intermediate, vocab)
MODELS = {
    "smollm2-135m": (576, 9, 3, 64, 1536, 49152),
    "7b-mha": (4096, 32, 32, 128, 11008, 32000),
    "7b-gqa8": (4096, 32, 8, 128, 14336, 128256),
}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def _randn(*shape, dtype, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)


def _microseconds(fn, device) -> float | None:
    """Median over 5 runs of 20 calls, on CUDA only."""
    if device != "cuda":
        return None
    for _ in range(3):
        fn()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / 20)
    return statistics.median(times)


def tree(n: int, seed: int, device):
    """A random token tree of n nodes, deep-ish (a node's parent is one of the 4 before it):
    (parents, ancestor-or-self mask [n, n], depths [n])."""
    gen = torch.Generator().manual_seed(seed)
    parents = [-1] + [max(-1, i - 1 - int(torch.randint(0, 4, (1,), generator=gen))) for i in range(1, n)]
    mask = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] |= mask[p]
    return parents, mask.to(device), (mask.sum(1) - 1).to(device)


def path_to(parents: list[int], i: int) -> list[int]:
    """Node i's ancestors from depth 0, then i."""
    path = [i]
    while parents[path[-1]] >= 0:
        path.append(parents[path[-1]])
    return path[::-1]


def key_table(start: int, mask: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    from specbench.numerics import key_table as table
    return table(start, mask, start + depth)


# ---- stage "kernels" --------------------------------------------------------------------------

def kernel_checks(models: dict, device: str, rows=(1, 7, 64, 256), starts=(0, 200, 1000, 3800),
                  news=(1, 16, 64, 256), slots: int = 4096, dtypes=(torch.bfloat16, torch.float32)) -> list[dict]:
    """One record per (kernel, model, dtype, size): relative error, batch invariance, times."""
    out = []
    big = max(rows)
    for name, (hidden, heads, kv_heads, hd, inter, vocab) in models.items():
        for dtype in dtypes:
            if dtype == torch.float32 and name != next(iter(models)):
                continue                        # float32 on the first (small) model only
            linears = {"qkv": (hidden, (heads + 2 * kv_heads) * hd), "o": (heads * hd, hidden),
                       "gate_up": (hidden, 2 * inter), "down": (inter, hidden), "lm_head": (hidden, vocab)}
            for i, (lname, (k, n)) in enumerate(linears.items()):
                w = _randn(n, k, dtype=dtype, device=device, seed=i) / k ** 0.5
                b = _randn(n, dtype=dtype, device=device, seed=99) if lname == "qkv" else None
                x = _randn(big, k, dtype=dtype, device=device, seed=i + 10)
                full = matmul(x, w, b)
                err = rel_err(full, matmul_reference(x, w, b))
                invariant = all(torch.equal(matmul(x[:m], w, b), full[:m]) for m in rows) and all(
                    torch.equal(matmul(x[j:j + 1], w, b), full[j:j + 1]) for j in (big // 3, big - 1))
                out.append({"stage": "kernels", "kernel": "matmul", "model": name, "what": lname,
                            "dtype": str(dtype), "shape": f"{k}x{n}", "rows": big, "start": "",
                            "rel_err": err, "tol": TOL[dtype], "ok": err < TOL[dtype] and invariant,
                            "invariant": invariant,
                            "us_kernel_1row": _microseconds(lambda: matmul(x[:1], w, b), device),
                            "us_torch_1row": _microseconds(lambda: torch.nn.functional.linear(x[:1], w, b), device),
                            "us_kernel_64rows": _microseconds(lambda: matmul(x[:64], w, b), device),
                            "us_torch_64rows": _microseconds(lambda: torch.nn.functional.linear(x[:64], w, b), device)})
            wn = 1 + 0.1 * _randn(hidden, dtype=dtype, device=device, seed=5)
            x = 3 * _randn(big, hidden, dtype=dtype, device=device, seed=6)
            full = rms_norm(x, wn, 1e-5)
            err = rel_err(full, rms_norm_reference(x, wn, 1e-5))
            invariant = all(torch.equal(rms_norm(x[:m], wn, 1e-5), full[:m]) for m in rows)
            out.append({"stage": "kernels", "kernel": "rms_norm", "model": name, "what": "norm",
                        "dtype": str(dtype), "shape": str(hidden), "rows": big, "start": "", "rel_err": err,
                        "tol": TOL[dtype], "ok": err < TOL[dtype] and invariant, "invariant": invariant})
            out += attention_checks(name, heads, kv_heads, hd, dtype, device, starts, news, slots)
    return out


def attention_checks(name, heads, kv_heads, hd, dtype, device, starts, news, slots) -> list[dict]:
    out = []
    k = _randn(kv_heads, slots, hd, dtype=dtype, device=device, seed=1)
    v = _randn(kv_heads, slots, hd, dtype=dtype, device=device, seed=2)
    for start in starts:
        for n in news:
            if start + n > slots:
                continue
            q = _randn(n, heads, hd, dtype=dtype, device=device, seed=3)
            kd, vd = k.clone(), v.clone()
            kd[:, start + n:], vd[:, start + n:] = float("nan"), float("nan")   # dead slots
            parents, mask, depth = tree(n, seed=start + n, device=device)
            st = torch.tensor([start], device=device)
            ref = attention_reference(q, kd, vd, start, mask)
            table = key_table(start, mask, depth)
            positions = start + depth
            fast = tree_attention(q, kd, vd, st, mask)
            inv = invariant_attention(q, kd, vd, st, table, positions)
            invariant = True
            for i in sorted({0, n // 2, n - 1}):       # tree rows against the token alone
                path = path_to(parents, i)
                k1, v1 = kd.clone(), vd.clone()
                k1[:, start:], v1[:, start:] = float("nan"), float("nan")
                k1[:, start:start + len(path)] = kd[:, [start + j for j in path]]
                v1[:, start:start + len(path)] = vd[:, [start + j for j in path]]
                p = start + len(path) - 1
                alone = invariant_attention(q[i:i + 1], k1, v1, torch.tensor([p], device=device),
                                            torch.zeros(1, 1, dtype=torch.int32, device=device), positions[i:i + 1])
                invariant &= torch.equal(alone, inv[i:i + 1])
            common = {"stage": "kernels", "model": name, "dtype": str(dtype), "shape": f"{heads}/{kv_heads}x{hd}",
                      "rows": n, "start": start, "tol": TOL[dtype]}
            e_fast, e_inv = rel_err(fast, ref), rel_err(inv, ref)
            out.append({**common, "kernel": "tree_attention", "what": "tree", "rel_err": e_fast,
                        "ok": e_fast < TOL[dtype], "invariant": "",
                        "us_kernel": _microseconds(lambda: tree_attention(q, k, v, st, mask), device)})
            out.append({**common, "kernel": "invariant_attention", "what": "tree", "rel_err": e_inv,
                        "ok": e_inv < TOL[dtype] and invariant, "invariant": invariant,
                        "us_kernel": _microseconds(lambda: invariant_attention(q, k, v, st, table, positions), device)})
    return out


# ---- stage "model" ----------------------------------------------------------------------------

def rows_unlike_alone(forward, parents: list[int], tokens: torch.Tensor, length: int) -> int:
    """Rows of one forward over a token tree at committed length `length` whose logits differ in
    any bit from one-token forwards along the node's path. forward(tokens, positions, mask,
    offset) writes at slot length + offset and returns logits (DecodeContext.forward's contract)."""
    n, device = len(parents), tokens.device
    mask = torch.eye(n, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] |= mask[p]
    depth = mask.sum(1) - 1
    together = forward(tokens, (length + depth).to(device), mask.to(device), 0)
    differ = 0
    for i in range(n):
        for e, j in enumerate(path_to(parents, i)):
            alone = forward(tokens[j:j + 1], torch.tensor([length + e], device=device), None, e)
        differ += not torch.equal(alone[0], together[i])
    return differ


def default_shaped_model(numerics: str, device: str = "cuda"):
    import specbench
    hidden, heads, kv_heads, _, inter, vocab = MODELS["smollm2-135m"]
    model = specbench.random_model(vocab_size=vocab, num_layers=30, hidden_size=hidden, num_heads=heads,
                                   num_kv_heads=kv_heads, intermediate_size=inter, max_position_embeddings=8192,
                                   dtype="bfloat16", logit_scale=1.0).to(device)
    model.numerics = numerics
    return model


def _graphed(model, size: int, compile: bool):
    from specbench.cuda_graph import GraphedModel
    before = os.environ.get("SPECBENCH_COMPILE")
    os.environ["SPECBENCH_COMPILE"] = "1" if compile else "0"
    try:
        return GraphedModel(model, size)
    finally:
        if before is None:
            del os.environ["SPECBENCH_COMPILE"]
        else:
            os.environ["SPECBENCH_COMPILE"] = before


def _prefill(model, cache, length: int) -> None:
    prefix = torch.randint(0, model.args.vocab_size, (length,), device=model.device,
                           generator=torch.Generator(device=model.device).manual_seed(0))
    model(prefix, torch.arange(length, device=model.device), cache, stop_layer=model.args.num_layers)
    cache.length = length


def model_checks() -> list[dict]:
    out = []
    chain = [-1] + list(range(15))
    lookahead_like = tree(48, seed=1, device="cpu")[0]
    for numerics, compile in (("batch_invariant", True), ("batch_invariant", False), ("fast", False)):
        model = default_shaped_model(numerics)
        graphed = _graphed(model, 1024, compile)
        _prefill(model, graphed.cache, 200)
        for name, parents in (("chain16", chain), ("tree48", lookahead_like)):
            tokens = torch.randint(0, model.args.vocab_size, (len(parents),), device="cuda",
                                   generator=torch.Generator(device="cuda").manual_seed(len(parents)))
            t0 = time.perf_counter()
            differ = rows_unlike_alone(lambda *a: graphed.forward(*a).logits, parents, tokens, 200)
            out.append({"stage": "model", "numerics": numerics, "compiled": compile, "layout": name,
                        "rows": len(parents), "rows_differing": differ,
                        "ok": differ == 0 if numerics == "batch_invariant" else "",
                        "seconds": round(time.perf_counter() - t0, 1)})
            print(out[-1], flush=True)
        del model, graphed
        torch.cuda.empty_cache()
    return out


# ---- stage "timing" ---------------------------------------------------------------------------

def timing_checks(length: int = 200, sizes=(512, 4096)) -> list[dict]:
    out = []
    token = torch.tensor([5], device="cuda")
    position = torch.tensor([length], device="cuda")
    for numerics in ("fast", "batch_invariant"):
        model = default_shaped_model(numerics)
        ms = {}
        for size in sizes:
            graphed = _graphed(model, size, compile=True)
            _prefill(model, graphed.cache, length)
            ms[size] = _microseconds(lambda: graphed.forward(token, position, None), "cuda") / 1000
            del graphed
        ratio = ms[sizes[-1]] / ms[sizes[0]]
        for size in sizes:
            out.append({"stage": "timing", "what": "decode step (graph replay + copies)", "numerics": numerics,
                        "model": "smollm2-135m shapes", "live_length": length, "cache_slots": size,
                        "ms": round(ms[size], 4), "ratio_to_smallest": round(ms[size] / ms[sizes[0]], 3),
                        "ok": ratio < 1.10})
            print(out[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    for name in ("smollm2-135m", "7b-gqa8"):
        _, heads, kv_heads, hd, _, _ = MODELS[name]
        q = _randn(1, heads, hd, dtype=torch.bfloat16, device="cuda", seed=0)
        st = torch.tensor([length], device="cuda")
        for size in sizes:
            k = _randn(kv_heads, size, hd, dtype=torch.bfloat16, device="cuda", seed=1)
            v = _randn(kv_heads, size, hd, dtype=torch.bfloat16, device="cuda", seed=2)
            full_mask = (torch.arange(size, device="cuda") <= length)[None, :]
            runs = {
                "tree_attention (live slots)": lambda: tree_attention(q, k, v, st, None),
                "SDPA over the whole cache, masked": lambda: torch.nn.functional.scaled_dot_product_attention(
                    q.transpose(0, 1), k, v, attn_mask=full_mask, enable_gqa=heads != kv_heads),
            }
            for what, fn in runs.items():
                out.append({"stage": "timing", "what": what, "numerics": "", "model": name, "live_length": length,
                            "cache_slots": size, "ms": round(_microseconds(fn, "cuda") / 1000, 5),
                            "ratio_to_smallest": "", "ok": ""})
                print(out[-1], flush=True)
    return out


def _graph_microseconds(fn, calls: int = 50) -> float:
    """Median over 5 replays of one CUDA graph holding `calls` calls of fn: a kernel's own time at
    batch 1, as a replayed model step sees it (no launch overhead from the host)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return statistics.median(times)


def split_checks(splits=(32, 64, 128, 256), news=(1, 4, 16, 64), lengths=(200, 500, 1500),
                 slots: int = 2048) -> list[dict]:
    out = []
    for name in ("smollm2-135m", "7b-mha", "7b-gqa8"):
        _, heads, kv_heads, hd, _, _ = MODELS[name]
        k = _randn(kv_heads, slots, hd, dtype=torch.bfloat16, device="cuda", seed=1)
        v = _randn(kv_heads, slots, hd, dtype=torch.bfloat16, device="cuda", seed=2)
        for n in news:
            q = _randn(n, heads, hd, dtype=torch.bfloat16, device="cuda", seed=0)
            for length in lengths:
                st = torch.tensor([length], device="cuda")
                for split in splits:
                    us = _graph_microseconds(lambda: tree_attention(q, k, v, st, None, split=split))
                    out.append({"stage": "splits", "model": name, "new_tokens": n, "live_length": length,
                                "cache_slots": slots, "split": split, "us": round(us, 2)})
                print(out[-4:], flush=True)
    return out


# ---- stage "skinny" ---------------------------------------------------------------------------

SKINNY_SWEEP = [(bn, bk, w) for bn in (4, 8, 16) for bk in (512, 1024, 2048) for w in (4, 8)]


def skinny_cases(hidden, heads, kv_heads, hd, inter, vocab, dtype, device):
    """(name, (x, weight), kwargs) of every fused product of a layer and the LM head, for one row."""
    def t(*shape, seed, scale=1.0):
        return _randn(*shape, dtype=dtype, device=device, seed=seed) * scale
    q = (heads + 2 * kv_heads) * hd
    norm = 1 + 0.1 * t(hidden, seed=5)
    return [
        ("qkv+norm+bias", (3 * t(1, hidden, seed=1), t(q, hidden, seed=2, scale=hidden ** -0.5)),
         {"bias": t(q, seed=3), "norm_weight": norm, "eps": 1e-5}),
        ("o+residual", (t(1, heads * hd, seed=4), t(hidden, heads * hd, seed=6, scale=(heads * hd) ** -0.5)),
         {"residual": t(1, hidden, seed=7)}),
        ("gate_up+norm+silu", (3 * t(1, hidden, seed=8), t(2 * inter, hidden, seed=9, scale=hidden ** -0.5)),
         {"norm_weight": norm, "eps": 1e-5, "gated": True}),
        ("down+residual", (t(1, inter, seed=10), t(hidden, inter, seed=11, scale=inter ** -0.5)),
         {"residual": t(1, hidden, seed=12)}),
        ("lm_head+norm", (3 * t(1, hidden, seed=13), t(vocab, hidden, seed=14, scale=hidden ** -0.5)),
         {"norm_weight": norm, "eps": 1e-5}),
    ]


def _cold_graph_microseconds(call, weight: torch.Tensor, calls: int = 60) -> float:
    """`_graph_microseconds` of call(w) over copies of `weight` that together exceed the L2 cache
    (~50 MB on an H200) several times, taken in turn: the weight comes from memory, as in a
    forward, where every layer's weights are read once (measured in session 21: a product over
    L2-resident weights looks 30-40% faster than it runs inside the model)."""
    count = max(2, min(calls, (256 << 20) // (weight.numel() * weight.element_size())))
    copies = itertools.cycle([weight.clone() for _ in range(count)])
    return _graph_microseconds(lambda: call(next(copies)), calls)


def skinny_checks(models: dict = MODELS, device: str = "cuda", dtypes=(torch.bfloat16, torch.float32),
                  sweep: bool = True) -> list[dict]:
    """The fused products of a layer, including those `handles` leaves to cuBLAS (for the record)."""
    out = []
    for name, shape in models.items():
        for dtype in dtypes:
            if dtype == torch.float32 and name != next(iter(models)):
                continue
            for what, (x, w), kwargs in skinny_cases(*shape, dtype, device):
                got = skinny_linear(x, w, **kwargs)
                err = rel_err(got, skinny_linear_reference(x, w, **kwargs))
                n, k = got.shape[1], w.shape[1]
                row = {"stage": "skinny", "model": name, "what": what, "dtype": str(dtype),
                       "shape": f"{k}x{w.shape[0]}", "rel_err": err, "tol": TOL[dtype], "ok": err < TOL[dtype],
                       "used_by_model": skinny_handles(1, w.shape[0], k),
                       "config": "x".join(map(str, skinny_config(n, k, kwargs.get("gated", False))))}
                if device == "cuda" and dtype == torch.bfloat16:
                    row["us_fused"] = round(_cold_graph_microseconds(lambda wc: skinny_linear(x, wc, **kwargs), w), 2)
                    row["us_cublas_product_alone"] = round(_cold_graph_microseconds(
                        lambda wc: torch.nn.functional.linear(x, wc, kwargs.get("bias")), w), 2)
                    if sweep:
                        row["sweep_us"] = {f"{bn}x{bk}w{wp}": round(_cold_graph_microseconds(
                            lambda wc: skinny_linear(x, wc, **kwargs, block=(bn, bk, wp)), w), 2)
                            for bn, bk, wp in SKINNY_SWEEP if bk <= 2 * max(512, k)}
                out.append(row)
                print(row, flush=True)
    return out


# ---- stage "invariant" ------------------------------------------------------------------------

def _unfused_invariant(x, w, bias=None, norm_weight=None, eps=0.0, gated=False):
    """What batch_invariant numerics ran before `invariant_linear`: the RMSNorm kernel, the tiled
    matmul, torch's SiLU gate."""
    if norm_weight is not None:
        x = rms_norm(x, norm_weight, eps)
    y = matmul(x, w, bias)
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    return y


def invariant_checks(models: dict = MODELS, device: str = "cuda", dtypes=(torch.bfloat16, torch.float32),
                     row_counts=(1, 4, 16, 64, 256)) -> list[dict]:
    """`invariant_linear` (batch_invariant's fused products, residual add outside) at the shapes
    where the model uses it: error against the float64 reference at each row count, the first and
    last rows' bits against the same rows computed alone, and (bf16, CUDA) the graph-replayed time
    with weights read from memory beside the unfused batch-invariant kernels."""
    out = []
    name, shape = next(iter(models.items()))     # the default model: larger weights take the unfused kernels
    for dtype in dtypes:
        for what, (_, w), kwargs in skinny_cases(*shape, dtype, device):
            if not skinny_small(*w.shape):
                continue
            kwargs = {k: v for k, v in kwargs.items() if k != "residual"}
            x = 3 * _randn(max(row_counts), w.shape[1], dtype=dtype, device=device, seed=21)
            for rows in row_counts:
                ref = skinny_linear_reference(x[:rows], w, **kwargs)
                got = invariant_linear(x[:rows], w, **kwargs)
                err = rel_err(got, ref)
                alone = all(torch.equal(invariant_linear(x[i:i + 1], w, **kwargs), got[i:i + 1])
                            for i in {0, rows - 1})
                by_rows = skinny_linear(x[:rows], w, **kwargs)     # the row-loop kernel, no residual
                err_rows = rel_err(by_rows, ref)
                alone_rows = all(torch.equal(skinny_linear(x[i:i + 1], w, **kwargs), by_rows[i:i + 1])
                                 for i in {0, rows - 1})
                row = {"stage": "invariant", "model": name, "what": what.replace("+residual", ""),
                       "dtype": str(dtype), "rows": rows, "rel_err": err, "tol": TOL[dtype],
                       "rows_equal_alone": alone, "rel_err_row_loop": err_rows, "row_loop_equal_alone": alone_rows,
                       "ok": err < TOL[dtype] and alone and err_rows < TOL[dtype] and alone_rows,
                       "config": "x".join(map(str, tiles_config(got.shape[1], w.shape[1],
                                                                kwargs.get("gated", False), dtype)))}
                if device == "cuda" and dtype == torch.bfloat16:
                    xr = x[:rows]
                    row["us_fused"] = round(_cold_graph_microseconds(
                        lambda wc: invariant_linear(xr, wc, **kwargs), w), 2)
                    row["us_unfused_invariant"] = round(_cold_graph_microseconds(
                        lambda wc: _unfused_invariant(xr, wc, **kwargs), w), 2)
                    row["us_row_loop"] = round(_cold_graph_microseconds(
                        lambda wc: skinny_linear(xr, wc, **kwargs), w), 2)
                out.append(row)
                print(row, flush=True)
    return out


# ---- driver -----------------------------------------------------------------------------------

def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stages = {"kernels": lambda: kernel_checks(MODELS, "cuda"), "model": model_checks, "timing": timing_checks,
              "splits": split_checks, "skinny": skinny_checks, "invariant": invariant_checks}
    if not argv or any(s not in stages for s in argv[1:]):
        print(f"usage: python -m specbench_kernels.gpu_check OUTDIR [{'|'.join(stages)} ...]", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: no CUDA device: this check runs the compiled kernels on a GPU", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import triton
    summary["triton"] = triton.__version__
    for stage in argv[1:] or list(stages):
        t0 = time.perf_counter()
        rows = stages[stage]()
        write_csv(out / f"{stage}.csv", rows)
        failed = [r for r in rows if r.get("ok") is False]
        summary[stage] = {"rows": len(rows), "failed": len(failed), "seconds": round(time.perf_counter() - t0, 1),
                          "first_failures": failed[:5]}
        print(f"{stage}: {len(rows)} checks, {len(failed)} failed, {summary[stage]['seconds']} s", flush=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 0 if all(summary[s]["failed"] == 0 for s in stages if s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
