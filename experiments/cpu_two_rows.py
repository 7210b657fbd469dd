"""The default model's CPU forward over 2 and 3 new tokens with oneDNN's 2-row product and with 2
rows padded to 3 (`specbench.model.pad_two_rows` decides which a CPU gets), alternating 4 times, 7
timed forwards each at a 512-token cache, fp32, 2 threads; medians printed, with the CPU's
instruction set. Run from the repository root:

    python experiments/cpu_two_rows.py
"""
import statistics

import torch

import specbench
from specbench import model as core
from specbench.profile import forward_curve


def main() -> None:
    torch.set_num_threads(2)
    model = specbench.load_model(dtype="float32")
    chosen = core.pad_two_rows
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(4):
        for name, pad in (("2 rows as given", False), ("2 rows padded to 3", True)):
            core.pad_two_rows = lambda pad=pad: pad
            for row in forward_curve(model, 512, new_tokens=(2, 3), repeats=7):
                times.setdefault((name, row["new_tokens"]), []).append(row["ms"])
    core.pad_two_rows = chosen
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}; padded by default: {chosen()}")
    for (name, n), ms in sorted(times.items()):
        print(f"{name:>20}, {n} new tokens: median {statistics.median(ms):.2f} ms of {[round(t, 1) for t in ms]}")


if __name__ == "__main__":
    main()
