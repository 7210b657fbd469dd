"""`specbench train <kind>`: data, the shared trainer, and the card of a trained drafter.

    from specbench.train import TrainConfig, train_drafter
    folder = train_drafter(model, TrainConfig(kind="medusa", conversations=2000), "drafters/medusa")

The folder then loads with `specbench.load_drafter(folder, model)` (a `draft` folder also with
`specbench.load_draft(folder, model)` or `specbench.load_model(folder)`, and serves sps as draft=folder).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..drafters import DRAFTERS, Drafter, random_drafter
from ..errors import SpecbenchError
from ..model import Transformer
from ..weights_cache import cache_root
from .data import TokenData, self_distill, sharegpt_tokens
from ..drafters.draft import INITS
from .distill import DIVERGENCES, DistillObjective
from .eagle import EagleObjective
from .eagle3 import Eagle3Objective
from .medusa import MedusaObjective
from .trainer import DEFAULT_DATA, Stop, TrainConfig, split, train

OBJECTIVES = {"medusa": MedusaObjective, "draft": DistillObjective, "eagle": EagleObjective, "eagle3": Eagle3Objective}
DATA_SOURCES = ("sharegpt", "self_distill")


def check_config(config: TrainConfig) -> None:
    """Everything checkable before a model is loaded."""
    if config.kind not in OBJECTIVES:
        raise SpecbenchError(f"unknown drafter kind {config.kind!r}: choose one of {', '.join(OBJECTIVES)}")
    if config.data not in DATA_SOURCES and not Path(config.data).is_file():
        raise SpecbenchError(f"--data must be one of {', '.join(DATA_SOURCES)} or an existing token file, "
                             f"got {config.data!r}")
    for name in ("conversations", "max_len", "batch_size", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise SpecbenchError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.max_len < 8:
        raise SpecbenchError(f"max_len must be >= 8, got {config.max_len}")
    if config.objective.get("labels", "target") not in ("target", "data"):
        raise SpecbenchError(f"labels must be 'target' or 'data', got {config.objective['labels']!r}")
    if config.drafter.get("init", "target") not in INITS:
        raise SpecbenchError(f"init must be one of {', '.join(INITS)}, got {config.drafter['init']!r}")
    if config.objective.get("divergence", "fkl") not in DIVERGENCES:
        raise SpecbenchError(f"divergence must be one of {', '.join(DIVERGENCES)}, "
                             f"got {config.objective['divergence']!r}")
    for name, where in (("draft_vocab_size", config.drafter), ("ttt_steps", config.objective)):
        value = where.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecbenchError(f"{name.replace('_size', '').replace('_', '-')} must be an integer >= 1, got {value!r}")
    if not config.epochs > 0 or not config.lr > 0:
        raise SpecbenchError("epochs and lr must be > 0")


def training_data(model: Transformer, config: TrainConfig) -> TokenData:
    """The token file named by config.data, or ShareGPT (raw or self-distilled) cached by key."""
    if config.data not in DATA_SOURCES:
        data = TokenData.load(config.data)
        if len(data) > config.conversations:    # --conversations caps a token file too
            data = data.select(list(range(config.conversations)))
    else:
        name = getattr(model, "name", None) or f"model-{model.args.hidden_size}-{model.args.vocab_size}"
        path = cache_root() / "data" / f"{config.data}-{name}-{config.conversations}-{config.max_len}.npz"
        if path.is_file():
            data = TokenData.load(path)
        else:
            make = sharegpt_tokens if config.data == "sharegpt" else self_distill
            data = TokenData.load(make(model, config.conversations, config.max_len).save(path))
    data.check_vocab(model.args.vocab_size, str(config.data))
    if len(data) < 2:
        raise SpecbenchError(f"{config.data}: {len(data)} usable conversation(s); training needs at least 2")
    return data


def new_drafter(model: Transformer, config: TrainConfig, data: TokenData) -> Drafter:
    torch.manual_seed(config.seed)       # a random initialisation (EAGLE's) is the same on every run
    drafter = DRAFTERS[config.kind].for_target(model, **config.drafter)
    train_idx, _ = split(data, config.validation)
    drafter.init_from_data(data.assistant_counts(train_idx, model.args.vocab_size))
    drafter.init_from_target(model)
    return drafter


def train_drafter(model: Transformer, config: TrainConfig, out: str | os.PathLike, *,
                  data: TokenData | None = None, eval_tokens: int = 128, stop_after: int | None = None,
                  progress: bool = True, save_dtype: torch.dtype = torch.float16) -> Path:
    """Train a drafter of config.kind for `model` into `out` (resuming a run found there)."""
    check_config(config)
    out = Path(out)
    data = data if data is not None else training_data(model, config)
    drafter = new_drafter(model, config, data)
    objective = OBJECTIVES[config.kind](drafter, model, **config.objective)
    result = train(objective, model, data, config, out, stop_after=stop_after, progress=progress)
    _, val_idx = split(data, config.validation)
    start = time.perf_counter()
    evaluation = objective.evaluate(model, data, val_idx, eval_tokens)
    extra = {"training": {"data": data.meta.get("source", str(config.data)), "conversations": len(data),
                          "max_len": config.max_len, "steps": result["steps"], "epochs": config.epochs,
                          "lr": config.lr, "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
                          "seconds": round(result["seconds"], 1),
                          "eval_seconds": round(time.perf_counter() - start, 1),
                          "final": {k: round(v, 4) for k, v in result["final"].items()},
                          "evaluation": {k: v for k, v in evaluation.items() if k != "rank_accuracy"}}}
    drafter.save(out, dtype=save_dtype, extra=extra)
    plot_loss(out / "metrics.jsonl", out / "loss.png")
    write_card(out, config, extra["training"], evaluation)
    return out


def plot_loss(metrics: Path, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(r) for r in metrics.read_text().splitlines() if r.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r.get("loss", float("nan")) for r in rows], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss per predicted token")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def write_card(out: Path, config: TrainConfig, training: dict, evaluation: dict) -> None:
    final = training["final"]
    heads = sorted(k for k in final if k.startswith("agree_head"))
    measured = {k: v for k, v in evaluation.items()
                if k not in ("rank_accuracy", "eval_prompts", "eval_tokens", "mean_accepted")}
    lines = [
        f"# {config.kind} drafter",
        "",
        f"- Target: {json.loads((out / 'config.json').read_text())['target'].get('name')}",
        f"- Data: {training['data']} ({training['conversations']} conversations, max {config.max_len} tokens, "
        f"assistant tokens only; ShareGPT conversations held out by `specbench.bench.sharegpt_is_heldout` never read; "
        f"the last {min(config.validation, max(1, training['conversations'] // 10))} kept for evaluation)",
        f"- Training: {training['steps']} steps, {config.epochs} epoch(s), batch {config.batch_size} sequences, "
        f"AdamW lr {config.lr} (warm-up {config.warmup_steps}, cosine), clip {config.grad_clip}, seed {config.seed}",
        f"- Device: {training['device']}, target dtype {training['dtype']}; {training['seconds']} s of training "
        f"(every run of this folder, resumes included), {training['eval_seconds']} s of held-back evaluation",
        f"- Drafter: {json.dumps(config.drafter, sort_keys=True)}; objective options: "
        f"{json.dumps(config.objective, sort_keys=True)}",
        f"- Final loss (mean of the last 20 steps): {final.get('loss', float('nan')):.4f}",
        *(["- Agreement with the target's greedy token per head: " + ", ".join(f"{final[h]:.3f}" for h in heads)]
          if heads else []),
        f"- Mean accepted tokens per step, greedy, {evaluation['eval_prompts']} held-back prompts x "
        f"{evaluation['eval_tokens']} tokens: {evaluation['mean_accepted']:.3f}",
        *([f"- Held-back measurements: {json.dumps({k: round(v, 4) for k, v in measured.items()}, sort_keys=True)}"]
          if measured else []),
        "",
        "Files: model*.safetensors, config.json (hyperparameters, target signature, these figures), "
        "metrics.jsonl (per step), loss.png.",
        "",
    ]
    (out / "card.md").write_text("\n".join(lines))


__all__ = ["DEFAULT_DATA", "TrainConfig", "Stop", "train_drafter", "training_data", "check_config", "random_drafter"]
