"""Host synchronisations per speculative step on CUDA, by method and engine phase (the speed
issue: a step synchronises at most once). Greedy decoding of one chat prompt, bf16, the default
model with its shipped drafters. On the GPU machine, from the repository root:
    SPECBENCH_COMPILE=0 python3 experiments/gpu_syncs.py MODEL.gguf OUT_DIR
prints the table and writes OUT_DIR/syncs.csv (one row per method: syncs per step in each phase,
prefill's per generation)."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

import specbench
from specbench.timing import PHASES, counting_syncs


METHODS = {"vanilla": ("vanilla", {}), "pld": ("pld", {}), "lookahead": ("lookahead", {}),
           "early_exit": ("early_exit", {}), "sps": ("sps", {}), "medusa": ("medusa", {}),
           "eagle_static": ("eagle", {"tree": "static"}), "eagle": ("eagle", {}), "eagle3": ("eagle3", {})}
PROMPT = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences."


def main(model_path: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = specbench.load_model(model_path, device="cuda", dtype="bfloat16")
    rows = []
    for label, (method, options) in METHODS.items():
        specbench.generate(model, PROMPT, method=method, max_new_tokens=16, **options)   # capture graphs
        with counting_syncs():
            stats = specbench.generate(model, PROMPT, method=method, max_new_tokens=128, **options).stats
        steps, syncs = stats["steps"], stats["host_syncs"]
        row = {"method": label, "steps": steps, "mean_accepted": round(stats["mean_accepted"], 2),
               "prefill_per_generation": syncs["prefill"]}
        row.update({f"{phase}_per_step": round(syncs[phase] / steps, 2) for phase in PHASES if phase != "prefill"})
        row["step_total_per_step"] = round(sum(syncs[p] for p in PHASES if p != "prefill") / steps, 2)
        rows.append(row)
        print(row, flush=True)
    with open(out / "syncs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{torch.cuda.get_device_name()}: host synchronisations per step (greedy, default model, bf16)")
    print("| method | draft | forward | verify | host | per step |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['draft_per_step']} | {r['forward_per_step']} | {r['verify_per_step']} | "
              f"{r['host_per_step']} | {r['step_total_per_step']} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python3 experiments/gpu_syncs.py MODEL OUT_DIR")
    main(sys.argv[1], Path(sys.argv[2]))
