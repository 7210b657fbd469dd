"""What the notebooks compute: their experiments (run, or re-read from a committed results folder),
the theory they test, the numbers they compare with the papers', and their figures.

A notebook names an experiment config (`experiments/*.yaml`) and calls `run_experiment`, which at
the full size reads `docs/results/<name>/` when that folder holds a finished run (so every figure
regenerates without measuring again) and otherwise runs the config; at the small size (CI,
`SPECBENCH_NOTEBOOK_SIZE=small`) it runs a shrunken copy into `$SPECBENCH_NOTEBOOK_RESULTS`.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .bench import BenchResult, load_config, read_results, run_benchmark
from .bench import datasets as bench_datasets
from .bench.runner import build_prompt
from .bench.summary import ALL, markdown_table
from .errors import SpecbenchError
from .model import Transformer

SIZES = ("full", "small")
GPU_MODEL = "/root/specbench/SmolLM2-135M-Instruct.Q4_1.gguf"   # where ../shared/gpu/stage.sh puts it
GPU_DATASET = ".carry/mt_bench.jsonl"


def notebook_size() -> str:
    """`SPECBENCH_NOTEBOOK_SIZE`: "full" (the default) or "small" (CI)."""
    size = os.environ.get("SPECBENCH_NOTEBOOK_SIZE", "full")
    if size not in SIZES:
        raise SpecbenchError(f"SPECBENCH_NOTEBOOK_SIZE must be 'full' or 'small', not {size!r}")
    return size


def repo_root() -> Path:
    """The checkout holding experiments/ and docs/results/ (a notebook runs in notebooks/)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "experiments").is_dir() and (folder / "specbench").is_dir():
            return folder
    raise SpecbenchError(f"no specbench checkout (experiments/ beside specbench/) at or above {Path.cwd()}")


def committed_folder(name: str) -> Path:
    """docs/results/<name>/ of this checkout."""
    return repo_root() / "docs" / "results" / name


def committed_result(name: str) -> BenchResult | None:
    """The finished run committed under docs/results/<name>/, or None."""
    folder = committed_folder(name)
    return read_results(folder) if (folder / "summary.csv").is_file() else None


@dataclass
class Experiment:
    """A benchmark result and where it came from."""
    name: str
    result: BenchResult
    source: str
    command: str

    def describe(self) -> str:
        return f"`{self.name}`: {self.source}. Regenerate: `{self.command}`"


def bench_command(config_file: str, out: str, gpu: bool = False) -> str:
    """The shell command that runs a config into a folder (on the GPU machine: staged model and data)."""
    if gpu:
        return (f"python3 -m specbench.cli bench --config experiments/{config_file} --model {GPU_MODEL} "
                f"--dataset {GPU_DATASET} --out {out}")
    return f"specbench bench --config experiments/{config_file} --out {out}"


def run_experiment(config_file: str, small: dict | None = None, size: str | None = None,
                   model: Transformer | None = None, extra_methods: dict | None = None,
                   dataset: str | None = None) -> Experiment:
    """The results of `experiments/<config_file>`.

    full: the committed docs/results/<name>/ when finished (unless SPECBENCH_NOTEBOOK_RERUN=1),
    else a run into $SPECBENCH_NOTEBOOK_RESULTS (default results/)/<name>; small: the config with
    the keys of `small` replaced, run into <that folder>/<name>_small. A finished folder is re-read.
    extra_methods (label -> options) join the config's methods and its name (`<name>_with_<labels>`),
    so a method that lands later gets folders of its own; so does a `dataset` other than the
    config's (`<name>_<file stem>`).
    """
    size = size or notebook_size()
    root = repo_root()
    config = load_config(root / "experiments" / config_file)
    name = config["name"]
    command = bench_command(config_file, f"docs/results/{name}")
    if dataset is not None:
        name = config["name"] = f"{name}_{Path(dataset).stem}"
        config["dataset"] = dataset
        command = bench_command(config_file, f"docs/results/{name}") + f" --dataset {dataset}"
    if extra_methods:
        name = config["name"] = f"{name}_with_{'_'.join(extra_methods)}"
        config["methods"] = {**config["methods"], **extra_methods}
        command = (f"run this notebook (it adds {', '.join(extra_methods)} to experiments/{config_file}), "
                   f"then copy results/{name}/ to docs/results/{name}/")
    results = Path(os.environ.get("SPECBENCH_NOTEBOOK_RESULTS", root / "results"))
    if size == "small":
        config.update(small or {})
        if extra_methods:
            config["methods"] = {**config["methods"], **extra_methods}
        folder = results / f"{name}_small"
    else:
        committed = committed_result(name)
        if committed is not None and os.environ.get("SPECBENCH_NOTEBOOK_RERUN") != "1":
            return Experiment(name, committed, f"committed run read from docs/results/{name}/", command)
        folder = results / name
    result = run_benchmark(config, folder, model=model, progress=False)
    source = ("stored run re-read from " if result.already_finished else "measured now into ") + str(folder)
    return Experiment(name, result, source, command)


def gpu_status(config_file: str, committed_name: str) -> tuple[BenchResult | None, str]:
    """The committed GPU run (None while pending) and a line saying where it is or how to make it."""
    result = committed_result(committed_name)
    if result is not None:
        return result, f"GPU run read from docs/results/{committed_name}/"
    command = bench_command(config_file, f"docs/results/{committed_name}", gpu=True)
    return None, (f"**GPU figure pending**: no `docs/results/{committed_name}/` yet. On the GPU machine "
                  f"(README, \"On the GPU machine\"): `{command}`, then commit the folder and rerun this notebook.")


def method_unavailable(method: str, model: Transformer) -> str | None:
    """None when specbench has `method` and its proposer builds on `model` with default options
    (a shipped drafter, say); else the one line saying why not."""
    from .strategies import STRATEGIES, make_proposer
    if method not in STRATEGIES:
        return f"`{method}` is not among specbench's methods"
    try:
        make_proposer(method, model)
    except SpecbenchError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------
# summaries

def overall(result: BenchResult) -> pd.DataFrame:
    """One row per method over all questions, its options as columns, plus the mean draft tokens
    and the milliseconds per target step (wall time over steps, prefill included)."""
    df = result.summary[result.summary["category"] == ALL].copy().reset_index(drop=True)
    options = [json.loads(o) for o in df["options"]]
    for key in sorted({k for o in options for k in o}):
        df[key] = [o.get(key) for o in options]
    per_step, drafted = {}, {}
    for label in df["method"]:
        rows = [a for a in result.answers if a["method"] == label]
        steps = sum(a["steps"] or 0 for a in rows)
        per_step[label] = 1e3 * sum(a["wall_time_s"] for a in rows) / steps if steps else math.nan
        drafts = [x for a in rows for x in (a.get("draft_tokens") or [])]
        drafted[label] = statistics.mean(drafts) if drafts else math.nan
    df["ms_per_step"] = df["method"].map(per_step)
    df["draft_per_step"] = df["method"].map(drafted)
    return df


def category_speedups(result: BenchResult) -> pd.DataFrame:
    """Speedup over vanilla per method (rows) and category (columns), "all" first."""
    table = result.summary.pivot(index="method", columns="category", values="speedup")
    order = [ALL] + [c for c in dict.fromkeys(result.summary["category"]) if c != ALL]
    methods = list(dict.fromkeys(result.summary["method"]))
    return table.loc[methods, order]


def answer_stat(result: BenchResult, key: str) -> pd.Series:
    """Per method, the mean over answers of a method statistic stored with each answer (`stats`)."""
    values: dict[str, list[float]] = {}
    for a in result.answers:
        if (a.get("stats") or {}).get(key) is not None:
            values.setdefault(a["method"], []).append(float(a["stats"][key]))
    return pd.Series({label: statistics.mean(v) for label, v in values.items()}, name=key, dtype=float)


def training_conversations(drafter_folder: str | Path) -> int:
    """How many conversations a trained drafter saw (its config.json, written by `specbench train`)."""
    return int(json.loads((Path(drafter_folder) / "config.json").read_text())["training"]["conversations"])


def gain_per_doubling(result: BenchResult, before: str, after: str, data_before: int, data_after: int) -> float:
    """Relative gain in mean accepted tokens per doubling of the training data, between two arms
    of one run whose drafters differ in data only: (after / before) ** (1 / log2(data ratio)) - 1,
    the log-linear form in which the EAGLE-3 paper plots its scaling."""
    table = overall(result).set_index("method")
    ratio = table.loc[after, "mean_accepted"] / table.loc[before, "mean_accepted"]
    return ratio ** (1.0 / math.log2(data_after / data_before)) - 1.0


def show_columns(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The named columns, rounded for display."""
    return df[columns].round(3)


# ---------------------------------------------------------------------------------------------
# Leviathan et al.'s model of speculative sampling

def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens per target step with gamma drafts each accepted with probability alpha (i.i.d.):
    (1 - alpha^(gamma+1)) / (1 - alpha)."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, gamma: int, c: float, verify_cost: float = 1.0) -> float:
    """Expected speedup over vanilla: tokens per step over the step's cost in target steps, gamma
    draft forwards at c each plus one verification over gamma + 1 tokens at `verify_cost` (1 in
    Leviathan et al.'s model, where a forward over a few tokens costs what one token costs)."""
    return expected_tokens(alpha, gamma) / (gamma * c + verify_cost)


def acceptance_mle(result: BenchResult, label: str) -> float:
    """Per-token acceptance probability alpha of a chain method, by maximum likelihood over every
    step: accepted drafts / (accepted drafts + steps that rejected one)."""
    accepted = rejections = 0
    for a in result.answers:
        if a["method"] != label:
            continue
        for length, drafted in zip(a["accepted_lengths"], a["draft_tokens"]):
            accepted += length - 1
            rejections += length - 1 < drafted
    return accepted / (accepted + rejections) if accepted + rejections else math.nan


def _profile_curve(profile_csv: Path, cache_len: int) -> pd.DataFrame:
    """A `specbench profile` CSV's rows at one cache length, by new tokens."""
    df = pd.read_csv(profile_csv)
    return df[df["cache_len"] == cache_len].sort_values("new_tokens")


def profile_step_ms(profile_csv: Path, cache_len: int = 512) -> float:
    """From a `specbench profile` CSV: milliseconds of a forward over one new token."""
    df = _profile_curve(profile_csv, cache_len)
    return float(df[df["new_tokens"] == 1]["ms"].iloc[0])


def profile_verify_costs(profile_csv: Path, sizes: list[int], cache_len: int = 512) -> dict:
    """From a `specbench profile` CSV: the cost of a target forward over k new tokens in one-token
    forwards, for each k in sizes. On CUDA a forward is padded to a graph bucket, so k costs what
    the smallest profiled n >= k does (the profiled n include the buckets); on a CPU the cost is
    interpolated linearly between the profiled n around k."""
    df = _profile_curve(profile_csv, cache_len)
    ns, xs = df["new_tokens"].tolist(), df["x_step"].tolist()
    padded = (df["device"] == "cuda").all()
    costs = {}
    for k in sizes:
        i = next(i for i, n in enumerate(ns) if n >= k)
        if padded or ns[i] == k:
            costs[str(k)] = float(xs[i])
        else:
            share = (k - ns[i - 1]) / (ns[i] - ns[i - 1])
            costs[str(k)] = float(xs[i - 1] + share * (xs[i] - xs[i - 1]))
    return costs


def sweep_draft_cost(result: BenchResult) -> float:
    """c for sps from a num_draft sweep's phase times: the slope of draft milliseconds per step
    over num_draft (one more draft token's cost; the catching-up forward every step pays falls
    into the intercept) over vanilla's target-forward milliseconds per step."""
    df = overall(result)
    sps = df[df["base_method"] == "sps"]
    slope = statistics.linear_regression(sps["num_draft"].astype(float).tolist(),
                                         sps["draft_ms"].astype(float).tolist()).slope
    return slope / float(df.loc[df["base_method"] == "vanilla", "forward_ms"].iloc[0])


def sps_theory(result: BenchResult, alpha: float, c: float | None = None,
               verify_costs: dict | None = None) -> pd.DataFrame:
    """Per draft length gamma of the sps runs: measured tokens per step and speedup beside the
    model's predictions (verification at cost 1, and at the measured cost of gamma + 1 tokens;
    NaN without c), and a step's cost in vanilla steps, measured (bench wall time per step) and
    as the model charges it (gamma c + verification)."""
    df = overall(result)
    vanilla_step = df.loc[df["base_method"] == "vanilla", "ms_per_step"].iloc[0]
    rows = []
    for rec in df[df["base_method"] == "sps"].to_dict("records"):
        gamma = int(rec["num_draft"])
        rows.append({"gamma": gamma, "alpha_mle": acceptance_mle(result, rec["method"]),
                     "tokens_measured": rec["mean_accepted"], "tokens_predicted": expected_tokens(alpha, gamma),
                     "speedup_measured": rec["speedup"],
                     "speedup_leviathan": math.nan if c is None else predicted_speedup(alpha, gamma, c),
                     "speedup_with_verify_cost": math.nan if c is None else
                     predicted_speedup(alpha, gamma, c, verify_costs[str(gamma + 1)]),
                     "step_cost_measured": rec["ms_per_step"] / vanilla_step,
                     "step_cost_model": math.nan if c is None else gamma * c + verify_costs[str(gamma + 1)]})
    return pd.DataFrame(rows).sort_values("gamma").reset_index(drop=True)


def monotone_share(frame: pd.DataFrame, along: str, within: str | list[str], column: str,
                   tolerance: float = 0.02) -> float:
    """Share of neighbouring pairs along `along` (at each fixed value of `within`, one column or
    several) whose `column` does not fall by more than `tolerance`; NaN when there is no pair."""
    pairs = []
    for _, part in frame.groupby(within):
        values = part.sort_values(along)[column].tolist()
        pairs += [b >= a - tolerance for a, b in zip(values, values[1:])]
    return sum(pairs) / len(pairs) if pairs else math.nan


def chain_fit(result: BenchResult, labels: list[str]) -> pd.DataFrame:
    """For chain methods (one draft per depth: pld, sps, self-speculative early exit), alpha by
    maximum likelihood and what the i.i.d. model then predicts for the steps' own draft lengths:
    tokens per step (matched by the fit where every step drafts alike) and the distribution of
    accepted drafts per step, a truncated geometric, whose total-variation distance from the
    measured one (`tv_distance`) is the test of the model."""
    rows = []
    for label in labels:
        steps = [(length - 1, drafted) for a in result.answers if a["method"] == label
                 for length, drafted in zip(a["accepted_lengths"], a["draft_tokens"])]
        alpha = acceptance_mle(result, label)
        longest = max(d for _, d in steps)
        predicted, measured = [0.0] * (longest + 1), [0.0] * (longest + 1)
        for accepted, drafted in steps:
            measured[accepted] += 1 / len(steps)
            for k in range(drafted + 1):
                predicted[k] += (alpha ** k * ((1 - alpha) if k < drafted else 1.0)) / len(steps)
        rows.append({"method": label, "alpha_mle": alpha,
                     "drafts_per_step": statistics.mean(d for _, d in steps),
                     "tokens_measured": 1 + statistics.mean(k for k, _ in steps),
                     "tokens_predicted": statistics.mean(expected_tokens(alpha, d) for _, d in steps),
                     "tv_distance": 0.5 * sum(abs(p - m) for p, m in zip(predicted, measured))})
    return pd.DataFrame(rows)


def relative_error(measured, predicted) -> float:
    """Largest |predicted / measured - 1| over paired values."""
    return max(abs(p / m - 1.0) for m, p in zip(measured, predicted))


def exact_match_by_setting(results: dict[str, BenchResult]) -> pd.DataFrame:
    """Exact match with vanilla of every lossless method of each named run, with the run's device,
    dtype and each method's numerics mode (Hugging Face baselines left out)."""
    rows = []
    for setting, result in results.items():
        modes = {m["label"]: m.get("numerics") or result.config.get("numerics", "fast")
                 for m in result.config["methods"]}
        for rec in overall(result).to_dict("records"):
            if rec["base_method"] == "vanilla" or rec["base_method"].startswith("hf") or rec["lossless"] is False:
                continue
            rows.append({"run": setting, "device": result.config["device"], "dtype": result.config["dtype"],
                         "numerics": modes[rec["method"]], "method": rec["method"],
                         "exact_match": rec["exact_match"], "answers": rec["answers"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# per-answer analyses with the target

def _prompts(model: Transformer, result: BenchResult) -> dict:
    """question_id (as JSON) -> first-turn prompt ids, as the run built them."""
    questions = bench_datasets.load_dataset(result.config["dataset"])
    return {json.dumps(q.question_id): build_prompt(model, q, 0, []) for q in questions}


@torch.inference_mode()
def _logits(model: Transformer, ids: list[int]) -> torch.Tensor:
    cache = model.new_cache(len(ids))
    tokens = torch.tensor(ids, device=model.device)
    return model(tokens, torch.arange(len(ids), device=model.device), cache).logits.float()


def answer_logprobs(model: Transformer, result: BenchResult) -> pd.DataFrame:
    """A quality proxy per first-turn answer: the target's mean log-probability (temperature 1) of
    the answer's tokens given the prompt, and per method the mean over answers."""
    prompts = _prompts(model, result)
    rows = []
    for a in result.answers:
        if a["turn"] != 1 or not a["token_ids"]:
            continue
        prompt = prompts[json.dumps(a["question_id"])]
        logp = torch.log_softmax(_logits(model, prompt + a["token_ids"]), dim=-1)
        rows_idx = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(a["token_ids"]))
        token_logp = logp[rows_idx, torch.tensor(a["token_ids"])]
        rows.append({"method": a["method"], "question_id": a["question_id"],
                     "mean_logprob": float(token_logp.mean())})
    return pd.DataFrame(rows)


def _decoded_logits(model: Transformer, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """The logits vanilla decoding computed for each token of its `answer`, rebuilt as the engine
    makes them (all but the last prompt token prefilled, then one token per forward), so each row
    carries the bits vanilla's choice was made on; a single forward over the whole text rounds
    otherwise and can misstate a near-tie's margin."""
    device = model.device
    cache = model.new_cache(len(prompt) + len(answer))
    if len(prompt) > 1:
        model(torch.tensor(prompt[:-1], device=device), torch.arange(len(prompt) - 1, device=device), cache,
              stop_layer=model.args.num_layers)
        cache.length = len(prompt) - 1
    rows = []
    for token in [prompt[-1]] + answer[:-1]:
        out = model(torch.tensor([token], device=device), torch.tensor([cache.length], device=device), cache)
        rows.append(out.logits[-1].float())
        cache.length += 1
    return torch.stack(rows)


def divergence_margins(model: Transformer, result: BenchResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Where each answer first differs from its numerics mode's vanilla answer: the target's logit
    margin (top-1 minus top-2) at that position, as vanilla's own decoding computed it (model in
    the run's dtype, numerics of the answer's mode). Also the margins at every position of the
    vanilla answers, the baseline to compare them with."""
    prompts = _prompts(model, result)
    cfg = result.config
    refs = {}
    for m in cfg["methods"]:
        if m["method"] == "vanilla":
            refs.setdefault(m["numerics"], m["label"])
    by_key = {(json.dumps(a["question_id"]), a["turn"], a.get("repeat", 0), a["method"]): a for a in result.answers}
    divergences, baseline = [], []
    mode_before = model.numerics
    try:
        for mode, ref_label in refs.items():
            model.numerics = mode
            decoded = {}   # (question, repeat) -> vanilla's logits, one row per answer token
            for a in result.answers:
                if a["turn"] != 1 or a.get("numerics") != mode:
                    continue
                key = (json.dumps(a["question_id"]), a.get("repeat", 0))
                ref = by_key[(key[0], 1, key[1], ref_label)]
                if key not in decoded:
                    decoded[key] = _decoded_logits(model, prompts[key[0]], ref["token_ids"])
                    top2 = decoded[key].topk(2, dim=-1).values
                    baseline += [{"numerics": mode, "margin": float(g)} for g in top2[:, 0] - top2[:, 1]]
                mine, theirs = a["token_ids"], ref["token_ids"]
                i = next((j for j, (x, y) in enumerate(zip(mine, theirs)) if x != y), None)
                if i is None:   # vanilla itself, or an answer equal to it
                    continue
                row = decoded[key][i]
                top2 = row.topk(2).values
                divergences.append({"method": a["method"], "numerics": mode, "question_id": a["question_id"],
                                    "position": i, "margin": float(top2[0] - top2[1]),
                                    "method_token_rank": int((row > row[mine[i]]).sum())})
    finally:
        model.numerics = mode_before
    return pd.DataFrame(divergences), pd.DataFrame(baseline)


# ---------------------------------------------------------------------------------------------
# figures and verdicts

def sweep_plot(df: pd.DataFrame, x: str, hue: str | list[str] | None = None, panels=("mean_accepted", "speedup"),
               title: str = "", logx: bool = False):
    """Line plots of each panel's column against x (one line per value of hue, or per combination
    of several hue columns); a dashed line at 1 where the panel is a speedup. Returns the figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    hues = [hue] if isinstance(hue, str) else list(hue or [])
    groups = [(None, df)] if not hues else [
        (", ".join(f"{h}={v:g}" if isinstance(v, float) else f"{h}={v}" for h, v in zip(hues, key)), part)
        for key, part in df.groupby(hues, sort=True)]
    for ax, column in zip(axes[0], panels):
        for key, part in groups:
            part = part.sort_values(x)
            ax.plot(part[x], part[column], marker="o", label=key)
        if column == "speedup":
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(x)
        ax.set_ylabel(column.replace("_", " "))
        if hues:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def theory_plot(theory: pd.DataFrame, title: str = ""):
    """Measured vs predicted tokens per step and speedup over the draft length."""
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(theory["gamma"], theory["tokens_measured"], "o-", label="measured")
    left.plot(theory["gamma"], theory["tokens_predicted"], "s--", label="(1 - a^(g+1)) / (1 - a)")
    left.set_xlabel("draft length gamma")
    left.set_ylabel("tokens per target step")
    left.legend(fontsize="small")
    right.plot(theory["gamma"], theory["speedup_measured"], "o-", label="measured")
    right.plot(theory["gamma"], theory["speedup_leviathan"], "s--", label="model, verification cost 1")
    right.plot(theory["gamma"], theory["speedup_with_verify_cost"], "^:", label="model, measured verification cost")
    right.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    right.set_xlabel("draft length gamma")
    right.set_ylabel("speedup over vanilla")
    right.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def margin_plot(divergences: pd.DataFrame, baseline: pd.DataFrame):
    """Histogram of the target's top-1 minus top-2 logit margins at every vanilla position, with a
    line at each first divergence's margin."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.hist(baseline["margin"], bins=40, color="lightgray", label="every vanilla position")
    for value in divergences.get("margin", []):
        ax.axvline(value, color="crimson", linewidth=1)
    ax.plot([], [], color="crimson", label="first divergences")
    ax.set_xlabel("target logit margin, top-1 minus top-2")
    ax.set_ylabel("positions")
    ax.legend()
    fig.tight_layout()
    return fig


def verdict(rows: list[dict]) -> str:
    """A markdown table of claims: each row has `claim`, `paper`, `ours` and `agrees` (bool)."""
    body = [[r["claim"], r["paper"], r["ours"], "yes" if r["agrees"] else "no"] for r in rows]
    return markdown_table(["claim", "paper", "ours", "agrees"], body)
