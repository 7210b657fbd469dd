"""Per-method and per-method x category statistics, the way Spec-Bench's speed.py computes them.

* The unit is one question of one repeat: its tokens/s is the sum of its answers' new tokens over
  the sum of their wall times (all turns, as speed.py sums ``new_tokens`` and ``wall_time`` over
  a question's turns).
* ``tokens_per_s`` of a method is the mean over units of that figure; ``speedup`` is it divided by
  the same mean of the reference vanilla (within the category for the category rows). Without a
  vanilla in the run, speedup is null.
* ``speedup_low`` / ``speedup_high``: the speedup's 95% confidence interval, paired by unit
  (`speedup_interval`). Null with fewer than 2 units shared with the reference.
* ``mean_accepted`` is the mean of all accepted lengths of the method pooled (tokens committed per
  step, bonus included: 1.0 for vanilla), null where unknown.
* ``acceptance_rate`` is accepted draft tokens over drafted tokens, pooled: the sum over steps of
  (accepted length - 1, the bonus token excluded) over the sum of draft tokens; null where nothing
  was drafted (vanilla) or unknown. For tree drafts every node counts as drafted.
* ``exact_match`` is the share of answers token-identical to the answer of the vanilla of the
  same numerics mode to the same question, turn and repeat (null without one).
* ``lossless`` is false when any answer's stats said the method is not lossless; lossy methods
  carry " [lossy]" after their label in every printed table and plot.
* ``<phase>_ms`` (draft, forward, verify, host: `specbench.timing.PHASES`) is the time of that
  phase per decoding step, summed over answers and divided by their steps; ``prefill_ms`` is per
  answer. Null unless every answer carries the engine's ``phase_time_s`` (the hf* methods do not).
"""
from __future__ import annotations

import functools
import json
import math
from collections import Counter

import numpy as np
import pandas as pd

from specbench.timing import PHASES

PHASE_COLUMNS = [f"{p}_ms" for p in PHASES]
COLUMNS = ["method", "base_method", "options", "lossless", "category", "questions", "answers",
           "new_tokens_mean", "wall_time_s", "tokens_per_s", "speedup", "speedup_low", "speedup_high",
           "mean_accepted", "acceptance_rate",
           "exact_match", *PHASE_COLUMNS]
ALL = "all"
CONFIDENCE = 0.95


def is_lossy(lossless) -> bool:
    """True only for a definite False (None/NaN: unknown)."""
    if lossless is None or (isinstance(lossless, float) and math.isnan(lossless)):
        return False
    return not bool(lossless)


def display_label(label: str, lossless) -> str:
    return f"{label} [lossy]" if is_lossy(lossless) else label


def _units(rows: list[dict]) -> dict:
    """(question_id, repeat) -> [tokens, seconds, category]."""
    units: dict = {}
    for a in rows:
        key = (json.dumps(a["question_id"]), int(a.get("repeat", 0)))
        u = units.setdefault(key, [0, 0.0, a["category"]])
        u[0] += int(a["new_tokens"])
        u[1] += float(a["wall_time_s"])
    return units


def _unit_speeds(rows: list[dict]) -> dict:
    """(question_id, repeat) -> tokens/s of that unit (units without time left out)."""
    return {key: tok / sec for key, (tok, sec, _) in _units(rows).items() if sec > 0}


def _tps(rows: list[dict]) -> float:
    speeds = list(_unit_speeds(rows).values())
    return float(np.mean(speeds)) if speeds else math.nan


def speedup_interval(rows: list[dict], ref_rows: list[dict],
                     confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A confidence interval of the speedup, paired by unit: the delta method's interval of a ratio
    of two means, with Student's t quantile for n - 1 degrees of freedom.

    Why: the same config on the same idle 2-core CPU gave EAGLE 1.34x, 1.27x and 1.10x in three
    runs of 8 questions (README, "Measured figures"); a point estimate alone hides that. Over the n
    units both the method (speeds a) and the reference (b) answered, R = mean(a) / mean(b) and its
    standard error is sd(a - R b) / (sqrt(n) mean(b)). Pairing keeps what a question shares between
    methods (its length and difficulty, the machine's state while the methods ran it one after the
    other) out of the error. Coverage of the 95% interval on simulated runs of 8 questions: 0.93;
    a paired percentile bootstrap covered 0.88 there (`python experiments/speedup_interval_coverage.py`,
    the simulation of tests/test_bench_summary.py).
    """
    mine, ref = _unit_speeds(rows), _unit_speeds(ref_rows)
    keys = sorted(mine.keys() & ref.keys())
    if len(keys) < 2:
        return math.nan, math.nan
    a, b = np.array([mine[k] for k in keys]), np.array([ref[k] for k in keys])
    ratio = a.mean() / b.mean()
    error = np.sqrt(((a - ratio * b) ** 2).sum() / (len(keys) - 1) / len(keys)) / b.mean()
    half = t_quantile((1 + confidence) / 2, len(keys) - 1) * error
    return float(ratio - half), float(ratio + half)


@functools.cache
def t_quantile(p: float, df: int) -> float:
    """Student's t quantile for p in [0.5, 1), by bisection on its CDF (Simpson's rule over the
    density): the bench needs no scipy at run time (tests compare it with scipy's)."""
    scale = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(q: float) -> float:
        y = scale * (1 + np.linspace(0.0, q, 2001) ** 2 / df) ** (-(df + 1) / 2)
        return 0.5 + q / 6000 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def _phases(rows: list[dict]) -> dict:
    """Mean ms per step of each decoding phase and mean ms of prefill per answer."""
    times = [(a.get("stats") or {}).get("phase_time_s") for a in rows]
    steps = sum(int(a.get("steps") or 0) for a in rows)
    if not rows or any(t is None for t in times) or steps == 0:
        return dict.fromkeys(PHASE_COLUMNS, math.nan)
    out = {f"{p}_ms": 1e3 * sum(t[p] for t in times) / steps for p in PHASES}
    out["prefill_ms"] = 1e3 * sum(t["prefill"] for t in times) / len(rows)
    return out


def _stats(rows: list[dict], ref_rows: list[dict] | None) -> dict:
    tps = _tps(rows)
    ref = _tps(ref_rows) if ref_rows else math.nan
    acc = [x for a in rows if a.get("accepted_lengths") is not None for x in a["accepted_lengths"]]
    known_acc = all(a.get("accepted_lengths") is not None for a in rows)
    matches = [bool(a["matches_vanilla"]) for a in rows if a.get("matches_vanilla") is not None]
    known_drafts = known_acc and all(a.get("draft_tokens") is not None for a in rows)
    drafted = sum(x for a in rows for x in a["draft_tokens"]) if known_drafts else 0
    low, high = speedup_interval(rows, ref_rows) if ref_rows else (math.nan, math.nan)
    return {
        "questions": len(_units(rows)),
        "answers": len(rows),
        "new_tokens_mean": float(np.mean([a["new_tokens"] for a in rows])) if rows else math.nan,
        "wall_time_s": float(sum(a["wall_time_s"] for a in rows)),
        "tokens_per_s": tps,
        "speedup": tps / ref if ref and not math.isnan(ref) and ref > 0 else math.nan,
        "speedup_low": low,
        "speedup_high": high,
        "mean_accepted": float(np.mean(acc)) if acc and known_acc else math.nan,
        "acceptance_rate": sum(x - 1 for x in acc) / drafted if drafted else math.nan,
        "exact_match": float(np.mean(matches)) if matches else math.nan,
        **_phases(rows),
    }


def summarize(answers: list[dict], methods: list[dict], reference: str | None) -> pd.DataFrame:
    """One row per method label with category "all", then one per (label, category)."""
    by_label: dict[str, list[dict]] = {m["label"]: [] for m in methods}
    for a in answers:
        by_label.setdefault(a["method"], []).append(a)
    categories = list(dict.fromkeys(a["category"] for a in answers))
    ref_rows = by_label.get(reference) if reference else None
    meta = {m["label"]: m for m in methods}
    records = []
    for category in [ALL] + categories:
        for label, rows in by_label.items():
            rows_c = rows if category == ALL else [a for a in rows if a["category"] == category]
            if not rows_c:
                continue
            refs_c = None
            if ref_rows:
                refs_c = ref_rows if category == ALL else [a for a in ref_rows if a["category"] == category]
            flags = [a.get("lossless") for a in rows]
            lossless = False if any(f is False for f in flags) else (True if flags and all(f is True for f in flags) else None)
            m = meta.get(label, {"method": rows[0].get("base_method", label), "options": rows[0].get("options", {})})
            records.append({"method": label, "base_method": m["method"],
                            "options": json.dumps(m["options"], sort_keys=True), "lossless": lossless,
                            "category": category, **_stats(rows_c, refs_c)})
    df = pd.DataFrame.from_records(records, columns=COLUMNS)
    df["lossless"] = pd.Series([r["lossless"] for r in records], dtype=object, index=df.index)
    return df


# ---------------------------------------------------------------------------------------------
# tables

def _fmt(v, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "x":
        return f"{v:.2f}x"
    if kind == "pct":
        return f"{100 * v:.0f}%"
    if kind == "f2":
        return f"{v:.2f}"
    if kind == "f1":
        return f"{v:.1f}"
    if kind == "bool":
        return "LOSSY" if is_lossy(v) else ("yes" if v is not None else "-")
    return str(v)


TABLE_COLUMNS = [("method", "method", None), ("tok/s", "tokens_per_s", "f1"), ("speedup", "speedup", "x"),
                 ("95% interval", "speedup_interval", "interval"),
                 ("mean acc.", "mean_accepted", "f2"), ("acc. rate", "acceptance_rate", "pct"),
                 ("exact match", "exact_match", "pct"),
                 ("lossless", "lossless", "bool"), ("answers", "answers", None), ("new tok.", "new_tokens_mean", "f1")]


def _table_rows(df: pd.DataFrame, with_category: bool) -> tuple[list[str], list[list[str]]]:
    header = (["category"] if with_category else []) + [h for h, _, _ in TABLE_COLUMNS]
    rows = []
    for rec in df.to_dict("records"):
        cells = [rec["category"]] if with_category else []
        for _, key, kind in TABLE_COLUMNS:
            if key == "method":
                cells.append(display_label(rec["method"], rec["lossless"]))
            elif kind == "interval":
                cells.append("-" if math.isnan(rec["speedup_low"]) else
                             f"{rec['speedup_low']:.2f}-{rec['speedup_high']:.2f}x")
            else:
                cells.append(_fmt(rec[key], kind))
        rows.append(cells)
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def overall_table(df: pd.DataFrame) -> str:
    return markdown_table(*_table_rows(df[df["category"] == ALL], False))


def category_table(df: pd.DataFrame) -> str:
    sub = df[df["category"] != ALL]
    return markdown_table(*_table_rows(sub, True))


def phase_table(df: pd.DataFrame) -> str:
    """Per method (all questions): prefill ms per answer and ms per step of each decoding phase."""
    sub = df[(df["category"] == ALL) & df["forward_ms"].notna()]
    step_phases = [p for p in PHASES if p != "prefill"]
    header = ["method", "prefill ms/answer"] + [f"{p} ms/step" for p in step_phases] + ["sum ms/step"]
    rows = [[display_label(r["method"], r["lossless"]), _fmt(r["prefill_ms"], "f1")]
            + [_fmt(r[f"{p}_ms"], "f2") for p in step_phases]
            + [_fmt(sum(r[f"{p}_ms"] for p in step_phases), "f2")] for r in sub.to_dict("records")]
    return markdown_table(header, rows) if rows else ""


def machines(answers: list[dict]) -> dict[str, int]:
    """How many answers each machine timed (answers written before the bench recorded it count for none)."""
    return dict(Counter(a["machine"] for a in answers if a.get("machine")))


def machine_line(counts: dict[str, int]) -> list[str]:
    """The report's machine line; several machines (a run resumed elsewhere) get a warning."""
    if len(counts) == 1:
        return [f"- machine: {next(iter(counts))}"]
    if counts:
        listed = "; ".join(f"{name} ({n} answer{'' if n == 1 else 's'})" for name, n in counts.items())
        return [f"- machines: {listed}. **The timings come from different machines**: compare only "
                "answers of one machine (resume a run where it started)"]
    return []


def markdown_report(df: pd.DataFrame, cfg: dict, reference: str | None,
                    machine_counts: dict[str, int] | None = None) -> str:
    model = cfg.get("model") or "default (SmolLM2-135M-Instruct GGUF)"
    lines = [f"# Benchmark {cfg.get('name') or ''}".rstrip(), "",
             f"- model: {model}, device {cfg['device']}, dtype {cfg['dtype']}",
             *machine_line(machine_counts or {}),
             f"- dataset: {cfg['dataset']} (turns {cfg['turns']}, "
             f"categories {', '.join(cfg['categories']) if cfg.get('categories') else 'all'}"
             + (f", at most {cfg['limit_per_category']} per category" if cfg.get("limit_per_category") else "")
             + (f", at most {cfg['limit']} questions" if cfg.get("limit") else "") + ")",
             f"- max_new_tokens {cfg['max_new_tokens']}, temperature {cfg['temperature']}, top_k {cfg['top_k']}, "
             f"top_p {cfg['top_p']}, seed {cfg['seed']}, repeats {cfg['repeats']}",
             f"- speedup: mean over questions of tokens/s, divided by the same for `{reference}`; "
             f"{CONFIDENCE:.0%} interval: paired by question (delta method, Student's t)"
             if reference else "- speedup: no vanilla in this run", "",
             "## All questions", "", overall_table(df), ""]
    phases = phase_table(df)
    if phases:
        lines += ["## Time by phase", "", "Engine phases (`specbench.timing`): draft = propose, forward = the "
                  "target forward, verify = logits processing + verification + cache commit, host = the rest "
                  "of the step.", "", phases, ""]
    if (df["category"] != ALL).any() and df[df["category"] != ALL]["category"].nunique() > 0:
        lines += ["## Per category", "", category_table(df), ""]
    lines += ["## Method options", ""]
    for m in cfg["methods"]:
        mode = f", numerics {m['numerics']}" if m.get("numerics") else ""
        lines.append(f"- `{m['label']}`: {m['method']} {json.dumps(m['options'], sort_keys=True)}{mode}")
    lines.append("")
    return "\n".join(lines)
