"""`specbench bench`: the command-line face of `run_benchmark`.

Flags given explicitly override the config file's values; flags left out keep them (every flag
defaults to None here, and `overrides` only copies what was set).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from specbench.checks import check_output_dir
from specbench.cli import ArgumentParser, add_verbose, report_errors
from specbench.errors import SpecbenchError

from . import config as config_mod
from .runner import run_benchmark

# flag dest -> config key
_OVERRIDES = {
    "model": "model", "draft": "draft", "device": "device", "dtype": "dtype", "dataset": "dataset",
    "categories": "categories", "limit": "limit", "limit_per_category": "limit_per_category",
    "turns": "turns", "max_new_tokens": "max_new_tokens", "temperature": "temperature",
    "top_k": "top_k", "top_p": "top_p", "seed": "seed", "repeats": "repeats", "warmup_tokens": "warmup_tokens", "threads": "threads",
    "numerics": "numerics",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Spec-Bench-style speed benchmark: every method in one process, questions "
                          "outer and methods inner, resumable; writes answers.jsonl, summary.csv/.md, "
                          "plots and Spec-Bench-format answer files into --out.")
    g = parser.add_argument_group("what to run")
    g.add_argument("--config", metavar="FILE", help="YAML/JSON config (experiments/*.yaml); flags override it")
    g.add_argument("--methods", metavar="A,B,...",
                   help="method labels to run (config labels, sweep names, or methods with default options: "
                        "vanilla, pld, sps, early_exit, lookahead, hf, hf_pld, hf_early_exit)")
    g.add_argument("--dataset", metavar="NAME|FILE",
                   help="mt_bench, humaneval, sharegpt, or a Spec-Bench question JSONL (default mt_bench)")
    g.add_argument("--categories", metavar="A,B,...", help="keep only these categories")
    g.add_argument("--limit", type=int, metavar="N", help="at most N questions")
    g.add_argument("--limit-per-category", type=int, metavar="N", help="at most N questions per category")
    g.add_argument("--turns", metavar="1|all", help="turns per question (default all)")
    g.add_argument("--repeats", type=int, metavar="N", help="run every question x method N times (default 1)")
    g = parser.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, metavar="N", help="default 256")
    g.add_argument("--temperature", type=float, help="default 0 (greedy)")
    g.add_argument("--top-k", type=int, help="default 0 (off)")
    g.add_argument("--top-p", type=float, help="default 1 (off)")
    g.add_argument("--seed", type=int, help="default 0")
    g.add_argument("--warmup-tokens", type=int, metavar="N", help="untimed warm-up length per method (default 16)")
    g = parser.add_argument_group("model")
    g.add_argument("--model", metavar="PATH", help="model path (default: SmolLM2-135M-Instruct GGUF)")
    g.add_argument("--draft", metavar="PATH", help="draft model for sps ('target' reuses the target)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default cpu)")
    g.add_argument("--dtype", help="float32, bfloat16, float16 (default float32)")
    g.add_argument("--threads", type=int, metavar="N", help="torch CPU threads during the run (default: torch's)")
    g.add_argument("--numerics", help="fast or batch_invariant, for methods that set none (default fast)")
    g = parser.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="results folder (default results/<config name>)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar or log lines")
    add_verbose(g)


def overrides(args: argparse.Namespace) -> dict:
    out = {}
    for dest, key in _OVERRIDES.items():
        v = getattr(args, dest, None)
        if v is not None:
            out[key] = v
    return out


def build_config(args: argparse.Namespace) -> tuple[dict, list[str] | None]:
    raw = config_mod.load_config(args.config) if getattr(args, "config", None) else {}
    raw.update(overrides(args))
    names = None
    if getattr(args, "methods", None):
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not names:
            raise SpecbenchError("--methods is empty")
        if "methods" not in raw:
            raw["methods"] = names
    return raw, names


def run(args: argparse.Namespace) -> int:
    raw, names = build_config(args)
    out = str(check_output_dir(getattr(args, "out", None) or Path("results") / (raw.get("name") or "bench"),
                               "the results folder"))
    progress = not getattr(args, "no_progress", False)
    try:
        result = run_benchmark(raw, out, progress=progress, methods=names, verbose=getattr(args, "verbose", False))
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished answers are kept in {out}; rerun the same command to continue",
              file=sys.stderr)
        return 130
    if result.already_finished:
        print(f"{out} is already finished; its summary:")
    print(result.table(per_category=True))
    print(f"\nresults in {out}: answers.jsonl, summary.csv, summary.md, speedup.png, accepted_lengths.png, "
          "specbench_format/")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (python -m specbench.bench.command); the specbench CLI wires its own."""
    parser = ArgumentParser(prog="specbench bench")
    add_arguments(parser)
    return report_errors(lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
