"""What one drafting step of each learned drafter costs on CUDA, and in which kernels: the step's
captured graph replayed on its own (no target forward), timed by CUDA events and traced by
torch.profiler, once with torch's topk and once with `specbench.tree.two_pass_top_k` for every
row (the drafters' `top_k_rows` takes it on CUDA for draft vocabularies only, where this measured
it faster). The default model, bf16, its shipped drafters, greedy. On the GPU
machine, from the repository root:
    python3 experiments/gpu_draft_trace.py MODEL.gguf OUT_DIR [TOP_K ...]
(TOP_K: torch_topk and/or two_pass, both by default)
writes OUT_DIR/draft_steps.csv (per method and top-k: device ms and wall ms per replay, kernels
per step) and OUT_DIR/draft_kernels.txt (each one's kernel table, 20 replays)."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import specbench
from specbench.drafters import resolve_drafter
from specbench.strategies import eagle, medusa
from specbench.tree import two_pass_top_k

METHODS = {"eagle": ("eagle", {}), "eagle_vocab8192": ("eagle", {"draft_vocab": 8192}),
           "eagle_15": ("eagle", {"total_tokens": 15}), "eagle3": ("eagle3", {}), "medusa": ("medusa", {})}
PROMPT = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences."
REPLAYS = 200
TOP_K = {"torch_topk": lambda x, k: x.topk(k), "two_pass": two_pass_top_k}


def draft_call(model, method: str, options: dict):
    """The drafter's captured step after one generation, with inputs like a step's (one committed row)."""
    drafter = resolve_drafter(None, model, method)
    for cache in ("_steps", "_graphed"):      # capture anew with the top-k in force
        drafter.__dict__.pop(cache, None)
    specbench.generate(model, PROMPT, method=method, max_new_tokens=32, drafter=drafter, **options)
    device = model.device
    if method == "medusa":
        graphed = list(drafter.__dict__["_graphed"].values())[-1]
        hidden = torch.zeros(1, model.args.hidden_size, dtype=model.dtype, device=device)
        return lambda: graphed(hidden)
    step = list(drafter.__dict__["_steps"].values())[-1]
    width = step.raw.shape[1]
    tokens = torch.tensor([5], device=device)
    raw = torch.zeros(1, width, dtype=model.dtype, device=device)
    return lambda: step(tokens, raw, 100)


def main(model_path: str, out: Path, top_ks: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = specbench.load_model(model_path, device="cuda", dtype="bfloat16")
    rows, tables = [], []
    for (label, (method, options)), (top_name, top) in [(m, t) for t in TOP_K.items() if t[0] in top_ks
                                                                    for m in METHODS.items()]:
        eagle.top_k_rows = medusa.top_k_rows = top
        call = draft_call(model, method, options)
        for _ in range(20):
            call()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        for _ in range(REPLAYS):
            call()
        end.record()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1000 / REPLAYS
        row = {"method": label, "top_k": top_name, "device_ms": round(start.elapsed_time(end) / REPLAYS, 4), "wall_ms": round(wall, 4)}
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(20):
                call()
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        row["kernels_per_step"] = round(sum(e.count for e in events) / 20, 1)
        rows.append(row)
        print(row, flush=True)
        tables.append(f"{label} ({method} {options}), {top_name}, 20 replays:\n"
                      + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))
    (out / "draft_kernels.txt").write_text("\n\n".join(tables) + "\n")
    with open(out / "draft_steps.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{torch.cuda.get_device_name()}: one drafting step, bf16, default model, shipped drafters")


if __name__ == "__main__":
    with torch.inference_mode():      # as generate runs: the captured graphs' buffers are inference tensors
        main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:] or list(TOP_K))
