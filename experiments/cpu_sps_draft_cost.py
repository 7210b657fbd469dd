"""Where sps's drafting time goes on the CPU: each draft forward of a greedy generation timed, the
step's first one (fed the tokens the target accepted, after a target forward has streamed its
weights through the caches) apart from the chain's later ones. The default model, its shipped
draft at the CPU defaults, 2 threads, MT-bench first turns (every 8th question). From the
repository root:
    python experiments/cpu_sps_draft_cost.py [--questions 4] [--tokens 128]"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import specbench
from specbench.bench.datasets import load_dataset
from specbench.strategies.sps import DraftModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = specbench.load_model()
    prompts = [q.turns[0] for q in load_dataset("mt_bench")[::8][:args.questions]]
    specbench.generate(model, prompts[0], method="sps", max_new_tokens=16)     # warm-up
    propose, logits = DraftModel.propose, DraftModel._logits
    first, later, steps, in_step = [], [], [], []

    def timed_propose(self, ctx):
        in_step.clear()
        t0 = time.perf_counter()
        out = propose(self, ctx)
        steps.append(time.perf_counter() - t0)
        return out

    def timed_logits(self, x):
        t0 = time.perf_counter()
        out = logits(self, x)
        (later if in_step else first).append(time.perf_counter() - t0)
        in_step.append(True)
        return out

    DraftModel.propose, DraftModel._logits = timed_propose, timed_logits
    try:
        for prompt in prompts:
            specbench.generate(model, prompt, method="sps", max_new_tokens=args.tokens)
    finally:
        DraftModel.propose, DraftModel._logits = propose, logits
    ms = lambda xs: 1e3 * statistics.mean(xs) if xs else float("nan")   # noqa: E731
    print(f"{len(steps)} steps, {(len(first) + len(later)) / len(steps):.2f} draft forwards a step")
    print(f"propose (the whole drafting step): {ms(steps):.2f} ms")
    print(f"first draft forward of a step:     {ms(first):.2f} ms (median {1e3 * statistics.median(first):.2f})")
    print(f"later draft forwards:              {ms(later):.2f} ms (median {1e3 * statistics.median(later):.2f}, {len(later)} of them)")
    rest = (sum(steps) - sum(first) - sum(later)) / len(steps)
    print(f"the rest (sampling, stop, siblings, the tree): {1e3 * rest:.2f} ms a step")


if __name__ == "__main__":
    main()
