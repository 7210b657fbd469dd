"""Spec-Bench-style speed benchmark of decoding methods (`specbench bench`).

    from specbench.bench import run_benchmark
    result = run_benchmark("experiments/quick.yaml", "results/quick")
    result.summary        # pandas DataFrame: one row per method (category "all") and per method x category
    result.answers        # list of answer dicts (as in answers.jsonl)
    result.plots          # {"speedup": Path, "accepted_lengths": Path}

Modules: `datasets` (questions), `config` (configs and sweeps), `runner` (the loop),
`store` (the resumable out folder), `summary`, `plots`, `specbench_format` (Spec-Bench's answer
layout), `hf_baselines` (transformers generate as methods), `command` (the CLI subcommand).
"""
from .config import DEFAULTS, load_config, resolve_config
from .datasets import (Question, load_dataset, select_questions, sharegpt_heldout_ids,
                       sharegpt_is_heldout)
from .runner import BenchResult, read_results, run_benchmark

__all__ = ["BenchResult", "DEFAULTS", "Question", "load_config", "load_dataset", "read_results", "resolve_config",
           "run_benchmark", "select_questions", "sharegpt_heldout_ids", "sharegpt_is_heldout"]
