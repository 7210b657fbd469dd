"""Whether fast numerics should run the fused products (`specbench_kernels.skinny`) on the tensor
cores for forwards over a few tokens: the default model's shape (random weights, bf16, a 512-token
cache), ms per forward over 1 to 64 new tokens through the engine's compiled CUDA graphs
(`specbench.profile.forward_curve`, 20 repeats), with the kernel taking up to MAX_ROWS rows (1: the
one-row kernel only, more rows on cuBLAS with the norm, gate and residual as their own kernels;
64: as shipped). One process per MAX_ROWS (the compiled graphs read it while tracing), and the
torch.profiler kernel table of the 4-token forward. On the GPU machine, from the repository root:
    for r in 64 1; do python3 experiments/gpu_fused_rows.py OUT_DIR $r; done
appends to OUT_DIR/fused_rows.csv (max_rows, new_tokens, ms, device_ms, x_step) and writes
OUT_DIR/kernels_n4_rows{MAX_ROWS}.txt. The kernel it needs is commit 9c7a008 (reverted since)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import specbench_kernels.skinny as skinny
from specbench.profile import forward_curve, kernel_table, shape_model

NEW_TOKENS = (1, 2, 4, 8, 16, 32, 64)


def main(out: str, max_rows: str) -> None:
    skinny.MAX_ROWS = int(max_rows)
    model = shape_model("default", "cuda", "bfloat16")
    rows = forward_curve(model, 512, new_tokens=NEW_TOKENS, repeats=20)
    path = Path(out) / "fused_rows.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["max_rows", "new_tokens", "ms", "device_ms", "x_step"])
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({"max_rows": skinny.MAX_ROWS, "new_tokens": r["new_tokens"], "ms": round(r["ms"], 4),
                        "device_ms": round(r["device_ms"], 4), "x_step": round(r["ms"] / rows[0]["ms"], 3)})
            print(skinny.MAX_ROWS, r, flush=True)
    (Path(out) / f"kernels_n4_rows{skinny.MAX_ROWS}.txt").write_text(kernel_table(model, 512, 4))


if __name__ == "__main__":
    main(*sys.argv[1:3])
