"""Whether fast numerics should run the fused products (`specbench_kernels.skinny`) for forwards
over a few tokens, not one: the default model's shape (random weights, bf16, a 512-token cache),
ms per forward over 1, 2, 4, 8 and 16 new tokens through the engine's compiled CUDA graphs
(`specbench.profile.forward_curve`), with the kernel taking up to MAX_ROWS rows (1: as shipped
before; more rows go to cuBLAS with separate norm, gate and residual kernels). One process per
MAX_ROWS (the compiled graphs read it while tracing). It needs the kernel of commit 04eef89 (reverted
since; its copy in this results folder). On the GPU machine, from the repository root at 04eef89:
    for r in 1 4; do python3 experiments/gpu_fused_rows.py OUT_DIR $r; done
appends to OUT_DIR/fused_rows.csv (max_rows, new_tokens, ms, device_ms, x_step)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import specbench_kernels.skinny as skinny
from specbench.profile import forward_curve, shape_model

NEW_TOKENS = (1, 2, 4, 8, 16)


def main(out: str, max_rows: str) -> None:
    skinny.MAX_ROWS = int(max_rows)
    rows = forward_curve(shape_model("default", "cuda", "bfloat16"), 512, new_tokens=NEW_TOKENS, repeats=20)
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


if __name__ == "__main__":
    main(*sys.argv[1:3])
