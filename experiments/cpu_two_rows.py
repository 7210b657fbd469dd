"""The default model's CPU forward over 2 and 3 new tokens with oneDNN's 2-row product and with 2
rows padded to 3 (what `specbench.model.Linear` does since session 30), alternating 4 times, 7 timed
forwards each at a 512-token cache, fp32, 2 threads; medians printed. Run from the repository root:

    python experiments/cpu_two_rows.py
"""
import statistics

import torch

import specbench
from specbench import model as core
from specbench.profile import forward_curve


def unpadded(self: core.Linear, x: torch.Tensor) -> torch.Tensor:
    """`Linear.forward` without the padding: oneDNN's product over the rows as given."""
    packed = self.__dict__.get("_packed")
    if packed is not None and not torch.is_grad_enabled() and packed[1] == self._key():
        return torch.ops.mkldnn._linear_pointwise(x, packed[0], self.bias, "none", [], "")
    return torch.nn.functional.linear(x, self.weight, self.bias)


def main() -> None:
    torch.set_num_threads(2)
    model = specbench.load_model(dtype="float32")
    padded = core.Linear.forward
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(4):
        for name, forward in (("2 rows as given", unpadded), ("2 rows padded to 3", padded)):
            core.Linear.forward = forward
            for row in forward_curve(model, 512, new_tokens=(2, 3), repeats=7):
                times.setdefault((name, row["new_tokens"]), []).append(row["ms"])
    core.Linear.forward = padded
    for (name, n), ms in sorted(times.items()):
        print(f"{name:>20}, {n} new tokens: median {statistics.median(ms):.2f} ms of {[round(t, 1) for t in ms]}")


if __name__ == "__main__":
    main()
