"""A block of 8 rows (`numerics.CPU_ROWS`) through `F.linear` in bfloat16 against float32, at the
default model's product shapes and those of the tests' random bf16 model: what batch_invariant
numerics pay per product on CPU, before and after session 35 moved half-precision products to a
float32 copy of the weight (`numerics.linear`). 200 timed calls per shape and dtype, after 5
untimed, alternating 3 times; medians printed with their ratio and whether this CPU has native
bfloat16. Run from the repository root:

    python experiments/cpu_half_rows.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

from specbench.model import cpu_bfloat16_native

SHAPES = {"default model": [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)],
          "tests' random model": [(768, 256), (256, 256), (1536, 256), (256, 768), (2048, 256)]}


def us_per_call(x: torch.Tensor, w: torch.Tensor, calls: int = 200) -> float:
    for _ in range(5):
        F.linear(x, w)
    start = time.perf_counter()
    for _ in range(calls):
        F.linear(x, w)
    return 1e6 * (time.perf_counter() - start) / calls


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bfloat16 native: {cpu_bfloat16_native()}")
    for model, shapes in SHAPES.items():
        print(f"\n{model}: out x in | bfloat16 us | float32 us | ratio")
        for out_features, in_features in shapes:
            w, x = torch.randn(out_features, in_features), torch.randn(8, in_features)
            times: dict[torch.dtype, list[float]] = {torch.bfloat16: [], torch.float32: []}
            for _ in range(3):
                for dtype in times:
                    times[dtype].append(us_per_call(x.to(dtype), w.to(dtype)))
            half, full = (statistics.median(times[d]) for d in (torch.bfloat16, torch.float32))
            print(f"{out_features} x {in_features} | {half:.0f} | {full:.0f} | {half / full:.2f}x")


if __name__ == "__main__":
    main()
