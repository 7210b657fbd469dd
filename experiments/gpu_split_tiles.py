"""K split among several programs for batch_invariant's fused products, measured on the GPU.

Why: batch_invariant's one-token step cost 1.43x the fast one on an H200 (issue 11 asks 1.3x). Its
products run on 16-row tensor-core tiles of 16 or 32 outputs, all of K in one program, so a product
of the default model has only 36-60 programs; the fast mode's one-row kernel has 240. Splitting K
among programs (`tiles_config`'s `split`, the partial sums added in a fixed order by the tile's last
program) multiplies the programs and keeps a row's bits independent of the row count.

Stages (run on the GPU machine, the checkout's kernels importable as `specbench_kernels`):

    python experiments/gpu_split_tiles.py OUT sweep   # each product x rows x tiles: time, error, invariance
    python experiments/gpu_split_tiles.py OUT step    # compiled decode step: fast, and batch_invariant's tiles

`sweep` writes sweep.csv (beside each product's cuBLAS time alone, which fast numerics runs over
several rows, without its norm and epilogue kernels) and choice.json (per product, the correct
configuration with the least time summed over 1, 4 and 16 rows). `step` writes step.csv: the
compiled, graph-replayed forward over 1 and 16 tokens of the default model's shape (random
weights, 200 tokens in a 512-slot cache) in fast numerics, and in batch_invariant numerics with
the tiles as shipped, with all of K in one program (the tiles before session 36), and with
choice.json's tiles if OUT holds one; for batch_invariant, whether every row of a 16-token chain
equals its one-token forward bit for bit.
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import torch

from specbench_kernels import gpu_check as g
from specbench_kernels import skinny

ROWS = (1, 4, 16, 64)
# (BLOCK_K, split asked), 4 warps, 16 outputs a program (also 32 for the gated product); the kernel
# takes whole K blocks per program, so the split it runs is `skinny.split_span`'s (sweep.csv's `split_run`)
SWEEP = [(bk, s) for bk in (64, 128, 256) for s in (2, 4, 8, 16)]

SWEEP_FIELDS = ["what", "config", "rows", "ok", "split_run", "rel_err", "equal_alone", "equal_again", "us", "error"]


def _products():
    hidden, heads, kv_heads, hd, inter, vocab = g.MODELS["smollm2-135m"]
    for what, (_, w), kwargs in g.skinny_cases(hidden, heads, kv_heads, hd, inter, vocab, torch.bfloat16, "cuda"):
        if skinny.small(*w.shape):
            yield what.replace("+residual", ""), w, {k: v for k, v in kwargs.items() if k != "residual"}


def _append(path: Path, row: dict, fields: list[str] | None = None) -> None:
    """One CSV row, the header first; `fields` fixes the columns (a missing value is left empty)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(row), restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(row, flush=True)


def sweep(out: Path) -> None:
    times: dict[str, dict[str, float]] = {}     # correct at every row count: us summed over 1, 4, 16 rows
    for what, w, kwargs in _products():
        gated = kwargs.get("gated", False)
        n, k = (w.shape[0] // 2 if gated else w.shape[0]), w.shape[1]
        shipped = skinny.tiles_config(n, k, gated, torch.bfloat16)
        configs = {"shipped": shipped}
        configs.update({f"{bn}x{bk}w4s{s}": (16, bn, bk, 4, s) for bn in ((16, 32) if gated else (16,))
                        for bk, s in SWEEP})
        x = 3 * g._randn(max(ROWS), k, dtype=torch.bfloat16, device="cuda", seed=21)
        for rows in ROWS:       # what fast numerics runs over several rows: cuBLAS's product alone
            xr = x[:rows]
            us = g._cold_graph_microseconds(lambda wc: torch.nn.functional.linear(xr, wc, kwargs.get("bias")), w)
            _append(out / "sweep.csv", {"what": what, "config": "cublas product alone", "rows": rows,
                                        "us": round(us, 2)}, SWEEP_FIELDS)
        for name, block in configs.items():
            total = 0.0
            for rows in ROWS:
                xr = x[:rows]
                ref = skinny.skinny_linear_reference(xr, w, **kwargs)
                try:
                    got = skinny.invariant_linear(xr, w, block=block, **kwargs)
                except Exception as e:      # a tile past the shared memory: recorded, not chosen
                    _append(out / "sweep.csv", {"what": what, "config": name, "rows": rows, "ok": False,
                                                "error": type(e).__name__}, SWEEP_FIELDS)
                    break
                alone = all(torch.equal(skinny.invariant_linear(x[i:i + 1], w, block=block, **kwargs), got[i:i + 1])
                            for i in {0, rows - 1})
                again = torch.equal(skinny.invariant_linear(xr, w, block=block, **kwargs), got)
                err = g.rel_err(got, ref)
                us = g._cold_graph_microseconds(lambda wc: skinny.invariant_linear(xr, wc, block=block, **kwargs), w)
                ok = err < g.TOL[torch.bfloat16] and alone and again
                _append(out / "sweep.csv", {"what": what, "config": name, "rows": rows, "ok": ok,
                                            "split_run": skinny.split_span(k, block[2], block[4])[1],
                                            "rel_err": err, "equal_alone": alone,
                                            "equal_again": again, "us": round(us, 2)}, SWEEP_FIELDS)
                if not ok:
                    break
                total += us if rows in (1, 4, 16) else 0.0
            else:
                times.setdefault(what, {})[name] = total
    choice = {}
    for what, by_config in times.items():
        best = min(by_config, key=by_config.get)
        choice[what] = {"config": best, "block": None if best == "shipped" else _block(best),
                        "us_1_4_16": round(by_config[best], 2),
                        "shipped_us_1_4_16": round(by_config.get("shipped", float("nan")), 2)}
    (out / "choice.json").write_text(json.dumps(choice, indent=2) + "\n")
    print(json.dumps(choice, indent=2))


def _block(name: str) -> list[int]:
    bn, rest = name.split("x")
    bk, rest = rest.split("w")
    wp, s = rest.split("s")
    return [16, int(bn), int(bk), int(wp), int(s)]


def _use(choice: dict | str | None) -> None:
    """tiles_config as shipped (None), with all of K in one program ("unsplit": the tiles before
    session 36), or returning choice.json's blocks, by the product's shape."""
    if not hasattr(skinny, "_shipped_tiles_config"):
        skinny._shipped_tiles_config = skinny.tiles_config
    shipped = skinny._shipped_tiles_config
    if choice is None:
        skinny.tiles_config = shipped
        return
    if choice == "unsplit":
        def unsplit(n, k, gated=False, dtype=torch.bfloat16):
            config = shipped(n, k, gated, dtype)
            return config if config[4] == 1 else (16, 16, min(skinny.pad(k), 2048), 4, 1)
        skinny.tiles_config = unsplit
        return
    hidden, heads, kv_heads, hd, inter, _ = g.MODELS["smollm2-135m"]
    by_shape = {"qkv+norm+bias": ((heads + 2 * kv_heads) * hd, hidden, False), "o": (hidden, heads * hd, False),
                "gate_up+norm+silu": (inter, hidden, True), "down": (hidden, inter, False)}
    table = {by_shape[what]: tuple(c["block"]) for what, c in choice.items() if c["block"] and what in by_shape}

    def chosen(n, k, gated=False, dtype=torch.bfloat16):
        return table.get((n, k, gated), shipped(n, k, gated, dtype)) if dtype == torch.bfloat16 else shipped(n, k, gated, dtype)
    skinny.tiles_config = chosen


def step(out: Path) -> None:
    variants = [("fast", "fast", None), ("batch_invariant, tiles as shipped", "batch_invariant", None),
                ("batch_invariant, all of K in one program", "batch_invariant", "unsplit")]
    if (out / "choice.json").exists():
        variants.append(("batch_invariant, tiles of choice.json", "batch_invariant",
                         json.loads((out / "choice.json").read_text())))
    length = 200
    chain = [-1] + list(range(15))
    for variant, numerics, tiles in variants:
        _use(tiles)
        model = g.default_shaped_model(numerics)
        t0 = time.perf_counter()
        graphed = g._graphed(model, 512, compile=True)
        g._prefill(model, graphed.cache, length)
        ms = {}
        for n in (1, 16):
            tokens = torch.full((n,), 5, device="cuda")
            positions = torch.arange(length, length + n, device="cuda")
            ms[n] = g._microseconds(lambda: graphed.forward(tokens, positions, None), "cuda") / 1000
        differ = ""
        if numerics == "batch_invariant":
            tokens = torch.randint(0, model.args.vocab_size, (16,), device="cuda",
                                   generator=torch.Generator(device="cuda").manual_seed(16))
            differ = g.rows_unlike_alone(lambda *a: graphed.forward(*a).logits, chain, tokens, length)
        _append(out / "step.csv", {"variant": variant, "device": torch.cuda.get_device_name(),
                                   "ms_1_token": round(ms[1], 4), "ms_16_tokens": round(ms[16], 4),
                                   "x_step_16": round(ms[16] / ms[1], 3), "chain16_rows_differing": differ,
                                   "seconds": round(time.perf_counter() - t0, 1)})
        del model, graphed
        torch.cuda.empty_cache()
    _use(None)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    {"sweep": sweep, "step": step}[sys.argv[2]](out)
