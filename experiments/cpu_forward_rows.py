"""The default model's CPU forward over 1-16 new tokens at a 512-token cache, fp32, 2 threads, 7
timed forwards each (median, ms): where the cost jumps decides the CPU tree sizes
(docs/results/cpu_small_trees/). Run from the repository root:

    python experiments/cpu_forward_rows.py
"""
import torch

import specbench
from specbench.profile import forward_curve


def main() -> None:
    torch.set_num_threads(2)
    model = specbench.load_model(dtype="float32")
    for row in forward_curve(model, 512, new_tokens=(1, 2, 3, 4, 5, 6, 8, 11, 12, 16), repeats=7):
        print(f"{row['new_tokens']:>2} new tokens: {row['ms']:.2f} ms")


if __name__ == "__main__":
    main()
