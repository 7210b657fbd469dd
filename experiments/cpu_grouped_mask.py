"""What copying the tree mask once per layer costs a CPU verification forward (session 33).

`numerics.sdpa` runs the query heads that share a kv head as one batch of rows, so the mask is
repeated for them. `Attention` now makes that copy once per forward; before, every layer made its
own. This times the attention of one verification forward of the default model (its 30 layers'
calls, fp32, 2 threads) over n new tokens at a 512-token cache both ways, alternating, in one
process, and prints the ratio:
    python experiments/cpu_grouped_mask.py
"""
import statistics
import time

import torch

import specbench
from specbench import numerics


def main(repeats: int = 15) -> None:
    torch.set_num_threads(2)
    model = specbench.load_model()
    a = model.args
    start = 512
    k_cache = torch.randn(a.num_kv_heads, start + 64, a.head_dim)
    v_cache = torch.randn_like(k_cache)
    print(f"default model: {len(model.layers)} layers, {a.num_heads} query heads over {a.num_kv_heads} kv heads")
    print("| new tokens | attention ms per forward, mask copied per layer | once per forward | ratio |")
    print("|---|---|---|---|")
    for n in (4, 6, 16, 64):
        mask = torch.ones(n, n, dtype=torch.bool).tril()
        positions = torch.arange(start, start + n)
        q = torch.randn(n, a.num_heads, a.head_dim)
        times = {"per layer": [], "once": []}
        for _ in range(repeats):
            for how in times:
                attend = numerics.Attention("fast", start, mask, positions)
                t = time.perf_counter()
                for _ in model.layers:
                    if how == "per layer":   # what every layer did before: sdpa repeats the [n, span] mask
                        numerics.sdpa(q, k_cache[:, :start + n], v_cache[:, :start + n], attend.full)
                    else:
                        attend(q, k_cache, v_cache)
                times[how].append((time.perf_counter() - t) * 1e3)
        before, after = statistics.median(times["per layer"]), statistics.median(times["once"])
        print(f"| {n} | {before:.2f} | {after:.2f} | {before / after:.2f}x |")


if __name__ == "__main__":
    main()
