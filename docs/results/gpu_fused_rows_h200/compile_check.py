# Diagnostic run for docs/results/gpu_fused_rows_h200 (see NOTE.md): python3 compile_check.py VARIANT SECONDS
# VARIANT: bi_new (batch_invariant with the fused kernel, commit be05084), bi_old (at 04eef89: batch_invariant
# on the tiled kernels), fast. It needs skinny.handles with a mode argument (commits be05084 and 04eef89).
import faulthandler, sys, time, torch
faulthandler.dump_traceback_later(int(sys.argv[2]), exit=True)
import specbench_kernels.skinny as s
from specbench.profile import shape_model
from specbench.cuda_graph import graphed_model
from specbench.engine import DecodeContext
from specbench.sampling import SamplingParams
variant = sys.argv[1]
if variant == "bi_old":
    orig = s.handles
    s.handles = lambda r, n, k, mode="fast": orig(r, n, k, "fast")
model = shape_model("default", "cuda", "bfloat16")
model.numerics = "fast" if variant == "fast" else "batch_invariant"
t0 = time.perf_counter()
graphed = graphed_model(model, 600)
cache = graphed.cache
gen = torch.Generator(device="cuda").manual_seed(0)
ctx = DecodeContext(model, cache, [0] * 513, 513, SamplingParams(), gen, 0, graphed)
print(variant, "setup", round(time.perf_counter() - t0, 1), flush=True)
with torch.inference_mode():
    for n in (1, 4, 16, 64):
        cache.length = 512
        tok = torch.randint(1000, (n,), device="cuda", generator=gen)
        pos = torch.arange(512, 512 + n, device="cuda")
        t0 = time.perf_counter(); ctx.forward(tok, pos); torch.cuda.synchronize()
        first = time.perf_counter() - t0
        for _ in range(3): ctx.forward(tok, pos)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(20): ctx.forward(tok, pos)
        torch.cuda.synchronize()
        print(variant, "n", n, "first_s", round(first, 1), "ms", round((time.perf_counter() - t0) / 20 * 1e3, 3), flush=True)
