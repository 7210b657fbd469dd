"""One method's speed against another's in a finished benchmark, paired by question: the ratio of
their mean tokens/s over the questions both answered, with the bench's 95% interval of it
(`specbench.bench.summary.speedup_interval`, the one the summaries give against vanilla). For
comparing a setting with its method's default inside one run. Run from the repository root:

    python experiments/paired_speedup.py docs/results/cpu_avx2_trees_24q medusa_tree2:medusa eagle_3:eagle
"""
import sys

from specbench.bench import read_results
from specbench.bench.summary import speedup_interval


def main(folder: str, pairs: list[str]) -> None:
    answers = read_results(folder).answers
    by_method: dict[str, list[dict]] = {}
    for a in answers:
        by_method.setdefault(a["method"], []).append(a)
    for pair in pairs:
        mine, ref = pair.split(":")
        low, high = speedup_interval(by_method[mine], by_method[ref])
        ratio = (low + high) / 2          # the interval is symmetric about the ratio
        print(f"{mine} / {ref}: {ratio:.3f} (95% interval {low:.3f}-{high:.3f}), {len(by_method[mine])} questions")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
