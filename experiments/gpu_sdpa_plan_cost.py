"""Why the first EAGLE arm of each question paid ~50 ms more prefill on the H200 (docs/results/gpu_defaults_h200/):
SDPA timed on new and repeated masked shapes, prefill per arm, a profile of one new prompt length, then
the prefill with cuDNN attention enabled and disabled. Run on the GPU machine:
    python3 experiments/gpu_sdpa_plan_cost.py MODEL.gguf mt_bench.jsonl
It was run before `numerics.sdpa` stopped using cuDNN: on later code the generations' prefills show
the fix, while the plain SDPA timings at the top still show cuDNN's plan cost."""
import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import specbench

print("torch", torch.__version__, "cudnn sdp", torch.backends.cuda.cudnn_sdp_enabled(),
      "flash", torch.backends.cuda.flash_sdp_enabled(), "mem", torch.backends.cuda.mem_efficient_sdp_enabled())
# SDPA with a bool mask, new shapes first time vs again
for n in (57, 58, 91, 57):
    q = torch.randn(1, 3, 3 * n, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 3, n, 64, device="cuda", dtype=torch.bfloat16)
    m = torch.ones(3 * n, n, dtype=torch.bool, device="cuda").tril()
    torch.cuda.synchronize(); t = time.perf_counter()
    F.scaled_dot_product_attention(q, k, k, attn_mask=m); torch.cuda.synchronize()
    print("sdpa mask n", n, round((time.perf_counter() - t) * 1e3, 2), "ms")
model = specbench.load_model(sys.argv[1], device="cuda", dtype="bfloat16")
qs = [json.loads(l)["turns"][0] for l in open(sys.argv[2])][:6]
for i, q in enumerate(qs):
    for method, opts in (("eagle", {}), ("eagle", {"depth": 3}), ("medusa", {})):
        out = specbench.generate(model, q, method=method, max_new_tokens=16, **opts)
        print(i, method, opts, "prefill ms", round(out.stats["phase_time_s"]["prefill"] * 1e3, 1))
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    specbench.generate(model, qs[0] + " Please answer briefly and clearly.", method="eagle", max_new_tokens=4)
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=70))
qs = [json.loads(l)["turns"][0] for l in open(sys.argv[2])][6:12]
for flag in (True, False):
    torch.backends.cuda.enable_cudnn_sdp(flag)
    for i, q in enumerate(qs[:3] if flag else qs[3:]):
        for method, opts in (("eagle", {}), ("eagle", {"depth": 3})):
            out = specbench.generate(model, q, method=method, max_new_tokens=16, **opts)
            print("cudnn", flag, i, method, opts, "prefill ms", round(out.stats["phase_time_s"]["prefill"] * 1e3, 1))
