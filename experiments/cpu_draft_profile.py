"""What EAGLE's drafting step costs on the CPU, and in which operators: one greedy generation of 64
tokens with the default model and its shipped EAGLE head (fp32, 2 threads, one MT-bench-style
prompt), the wall time of each drafting step (`DraftStep.compute`) averaged, and torch.profiler's
operator table of the generation. Session 29 ran it before and after the drafters' weights were
packed for oneDNN (commits 4ba081d and 7ac8e40, two runs each on this repository's 2-core machine):
11.7-12.4 ms a draft step before (15 `aten::mm` calls a step at 0.49-0.51 ms each), 6.0-6.3 after.
Those drafts ran in float32; since session 32 the draft runs in bfloat16 on a CPU with native
bfloat16 (`draft_dtype`), and this script profiles that default. From the repository root:
    python experiments/cpu_draft_profile.py"""
from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

import specbench
from specbench.strategies import eagle

PROMPT = ("Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
          "experiences and must-see attractions.")


def main() -> None:
    torch.set_num_threads(2)
    model = specbench.load_model()
    specbench.generate(model, PROMPT, method="eagle", max_new_tokens=16)      # warm-up
    compute, spent = eagle.DraftStep.compute, []

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = compute(self, *args, **kwargs)
        spent.append(time.perf_counter() - t0)
        return out

    eagle.DraftStep.compute = timed
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        specbench.generate(model, PROMPT, method="eagle", max_new_tokens=64)
    eagle.DraftStep.compute = compute
    print(f"draft ms/step {1e3 * sum(spent) / len(spent):.1f} over {len(spent)} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
