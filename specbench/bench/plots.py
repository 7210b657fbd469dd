"""Seaborn figures of a benchmark, written as PNG with matplotlib's Agg backend.

``speedup.png``           speedup over vanilla per method, for all questions and per category,
                          with its 95% interval as an error bar (tokens/s instead when the run
                          has no vanilla).
``accepted_lengths.png``  distribution of tokens committed per step, per method (methods whose
                          accepted lengths are unknown are left out).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .summary import ALL, display_label


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _empty(path: Path, message: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def speedup_plot(summary: pd.DataFrame, path: Path) -> Path:
    import seaborn as sns
    plt = _plt()
    path = Path(path)
    df = summary.copy()
    if df.empty:
        return _empty(path, "no answers")
    df["label"] = [display_label(m, l) for m, l in zip(df["method"], df["lossless"])]
    metric = "speedup" if df["speedup"].notna().any() else "tokens_per_s"
    df = df[df[metric].notna()]
    if df.empty:
        return _empty(path, "no timing data")
    order = [ALL] + [c for c in dict.fromkeys(df["category"]) if c != ALL]
    n_methods = df["label"].nunique()
    width = min(20.0, max(6.0, 0.22 * len(order) * max(1, n_methods) + 3))
    fig, ax = plt.subplots(figsize=(width, 4.5))
    colors = sns.color_palette(n_colors=n_methods)
    bar = 0.8 / n_methods
    for i, label in enumerate(dict.fromkeys(df["label"])):
        rows = df[df["label"] == label].set_index("category")
        xs = [k for k, c in enumerate(order) if c in rows.index]
        values = rows.loc[[order[k] for k in xs]]
        centers = [x - 0.4 + (i + 0.5) * bar for x in xs]
        ax.bar(centers, values[metric], bar, label=label, color=colors[i])
        if metric == "speedup":
            low, high = values["speedup_low"], values["speedup_high"]
            known = low.notna().to_numpy()
            # the interval covers the units both answered, the speedup all of each: the whiskers stop at the bar
            errors = [(values[metric] - low)[known].clip(lower=0), (high - values[metric])[known].clip(lower=0)]
            ax.errorbar([c for c, k in zip(centers, known) if k], values[metric][known], yerr=errors,
                        fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    ax.set_xticks(range(len(order)), order)
    if metric == "speedup":
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel("speedup over vanilla (mean tokens/s ratio)")
    else:
        ax.set_ylabel("tokens/s")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(title="method", fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accepted_lengths_plot(answers: list[dict], path: Path, lossless: dict | None = None) -> Path:
    import seaborn as sns
    plt = _plt()
    path = Path(path)
    lossless = lossless or {}
    rows = [{"method": display_label(a["method"], lossless.get(a["method"])), "accepted": int(x)}
            for a in answers if a.get("accepted_lengths") for x in a["accepted_lengths"]]
    if not rows:
        return _empty(path, "no accepted-length data")
    df = pd.DataFrame(rows)
    methods = list(dict.fromkeys(df["method"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(methods) + 3), 4.5))
    sns.histplot(data=df, x="accepted", hue="method", hue_order=methods, discrete=True, multiple="dodge",
                 stat="probability", common_norm=False, shrink=0.8, ax=ax)
    ax.set_xlabel("tokens committed per step (bonus included)")
    ax.set_ylabel("share of steps")
    top = int(df["accepted"].max())
    ax.set_xticks(range(1, top + 1, max(1, math.ceil(top / 16))))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
