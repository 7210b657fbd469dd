"""How often the bench's 95% speedup interval holds the true speedup, on the simulated runs of
tests/test_bench_summary.py (8 questions shaped like the main job's, true speedup 1.3), over 10
seeds x 2,000 runs; beside it the two broken intervals the test rejects (unpaired; the normal
quantile in place of Student's t) and a paired percentile bootstrap (2,000 draws), the design
`speedup_interval` did not take. Run from the repository root (about 20 s on 2 cores):

    python experiments/speedup_interval_coverage.py
"""
import sys

import numpy as np

sys.path.insert(0, "tests")
from test_bench_summary import coverage, unpaired_interval  # noqa: E402

from specbench.bench import summary  # noqa: E402

SEEDS, RUNS = range(10), 2000


def normal_interval(rows, ref_rows):
    """speedup_interval with the normal quantile (1.96) in place of Student's t."""
    t_quantile = summary.t_quantile
    summary.t_quantile = lambda p, df: 1.959963984540054
    try:
        return summary.speedup_interval(rows, ref_rows)
    finally:
        summary.t_quantile = t_quantile


def bootstrap_interval(rows, ref_rows, draws: int = 2000):
    """Paired percentile bootstrap: questions drawn with replacement, the ratio of means per draw."""
    a = np.array([r["new_tokens"] / r["wall_time_s"] for r in rows])
    b = np.array([r["new_tokens"] / r["wall_time_s"] for r in ref_rows])
    picks = np.random.default_rng(0).integers(0, len(a), (draws, len(a)))
    return tuple(np.quantile(a[picks].mean(axis=1) / b[picks].mean(axis=1), [0.025, 0.975]))


def main() -> None:
    for name, interval in (("speedup_interval (delta method, t)", summary.speedup_interval),
                           ("unpaired", unpaired_interval), ("normal quantile", normal_interval),
                           ("paired percentile bootstrap", bootstrap_interval)):
        per_seed = [coverage(interval, RUNS, seed) for seed in SEEDS]
        print(f"{name}: coverage {np.mean(per_seed):.3f} (seeds {min(per_seed):.3f}-{max(per_seed):.3f})", flush=True)


if __name__ == "__main__":
    main()
