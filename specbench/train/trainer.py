"""One trainer for every learned drafter: the target stays frozen, an `Objective` turns the
target's features of a batch of training sequences into a loss, and this loop does the rest.

AdamW, linear warm-up then cosine decay, gradient clipping, bf16 autocast on CUDA (fp32 on CPU),
seeded data order, a checkpoint every `checkpoint_every` steps (and on Ctrl-C / SIGTERM) from
which a killed run resumes with the same result, a tqdm bar, per-step metrics as JSON lines and a
loss plot. The out folder ends up holding the drafter (model.safetensors + config.json),
metrics.jsonl, loss.png and card.md.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from ..drafters import Drafter
from ..errors import SpecbenchError
from ..generate import generate
from ..model import Transformer
from .data import TokenData

RUN_FILE = "train_config.json"
CHECKPOINT = "checkpoint.pt"


# training data when none is named, per drafter kind (README, "Medusa": the data ablation)
DEFAULT_DATA = {"medusa": "sharegpt", "eagle": "sharegpt"}


@dataclass
class TrainConfig:
    kind: str
    data: str | None = None           # sharegpt | self_distill | a token file; None: DEFAULT_DATA[kind]
    conversations: int = 2000
    max_len: int = 1024
    epochs: float = 1.0
    lr: float = 1e-3
    batch_size: int = 8               # sequences per optimizer step
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"            # the target's dtype; bf16 autocast on CUDA either way
    validation: int = 32              # conversations held back from training for the card's figures
    drafter: dict = field(default_factory=dict)   # the drafter's own hyperparameters
    objective: dict = field(default_factory=dict)  # loss options (medusa: labels; draft: divergence)

    def __post_init__(self) -> None:
        if self.data is None:
            self.data = DEFAULT_DATA.get(self.kind, "sharegpt")

    def identity(self) -> dict:
        """What must match for an out folder to resume (not where or how fast it runs)."""
        d = asdict(self)
        for k in ("device", "checkpoint_every"):
            d.pop(k)
        return d


class Sequence(NamedTuple):
    """One training conversation on the target's device: the frozen target's features
    [n, k * D] and logits [n, V] over its token ids [n], and the assistant mask [n]."""
    features: torch.Tensor
    logits: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor


class Objective(Protocol):
    """A drafter's training loss, given the frozen target's features of a batch of sequences."""
    drafter: Drafter
    feature_layers: tuple[int, ...]

    def loss(self, model: Transformer, batch: list[Sequence]) -> tuple[torch.Tensor, dict[str, float], int]:
        """(summed loss, summed metrics, number of predicted tokens) of the batch."""
        ...

    def evaluate(self, model: Transformer, data: TokenData, indices: list[int], eval_tokens: int) -> dict:
        """The trained drafter's figures on the held-back conversations `indices` (its own, then
        `greedy_acceptance`'s); stores on the drafter what decoding needs (Medusa's and EAGLE's
        measured rank accuracies shape their default trees)."""
        ...


def lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up to lr, then cosine decay to 10% of it at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def split(data: TokenData, validation: int) -> tuple[list[int], list[int]]:
    """Train and validation indices: the last `validation` conversations are never trained on."""
    n = len(data)
    v = min(validation, max(1, n // 10)) if n > 1 else 0
    return list(range(n - v)), list(range(n - v, n))


@torch.no_grad()
def target_pass(model: Transformer, ids: torch.Tensor, layers: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen target over one sequence: its logits [n, V] and feature layers [n, k * D]."""
    from ..engine import features
    cache = model.new_cache(len(ids))
    out = model(ids.to(model.device), torch.arange(len(ids), device=model.device), cache, output_layers=layers)
    return out.logits, features(out, layers)


def held_out(model: Transformer, objective: Objective, data: TokenData, indices: list[int]) -> Iterator[Sequence]:
    """The target over each held-back conversation, on its device."""
    for i in indices:
        ids, mask = data.item(i)
        logits, feats = target_pass(model, ids, objective.feature_layers)
        yield Sequence(feats, logits, ids.to(model.device), mask.to(model.device))


class PerSequence:
    """For objectives whose loss is a sum over sequences computed one at a time (`sequence_loss`);
    their backward runs once for the batch."""

    def loss(self, model: Transformer, batch: list[Sequence]) -> tuple[torch.Tensor, dict[str, float], int]:
        total, sums, count = None, {}, 0
        for s in batch:
            loss, metrics, n = self.sequence_loss(model, *s)
            if n:
                total = loss if total is None else total + loss
            count += n
            for key, v in metrics.items():
                sums[key] = sums.get(key, 0.0) + v
        return (total if total is not None else torch.zeros(())), sums, count


def greedy_acceptance(model: Transformer, data: TokenData, indices: list[int], eval_tokens: int,
                      **method) -> dict:
    """Greedy decoding with `method` (generate's method and options) from the first prompt of each
    held-back conversation (its tokens before the first assistant token): the card's figures."""
    steps = tokens = drafted = accepted = prompts = 0
    for i in indices:
        ids, mask = data.item(i)
        first = int(mask.nonzero()[0]) if mask.any() else len(ids)
        if not 1 < first < model.args.max_position_embeddings - eval_tokens:
            continue
        out = generate(model, ids[:first].tolist(), max_new_tokens=eval_tokens, **method)
        prompts += 1
        steps += out.stats["steps"]
        tokens += out.stats["new_tokens"]
        drafted += sum(out.stats["draft_tokens"])
        accepted += sum(a - 1 for a in out.stats["accepted_lengths"])
    return {"eval_prompts": prompts, "eval_tokens": eval_tokens, "mean_accepted": tokens / max(1, steps),
            "acceptance_rate": accepted / max(1, drafted)}


class Stop(Exception):
    """Raised inside the loop to stop after a checkpoint (tests simulate a kill with it)."""


def prepare_out(out: Path, config: TrainConfig) -> bool:
    """Create the out folder, or check that it holds this very run. True when a run is there."""
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            old = json.loads(run_file.read_text())
        except json.JSONDecodeError as e:
            raise SpecbenchError(f"{run_file} is damaged: remove the folder or choose another --out") from e
        if old != config.identity():
            diff = sorted(k for k in set(old) | set(config.identity()) if old.get(k) != config.identity().get(k))
            raise SpecbenchError(f"{out} holds another training run (differs in: {', '.join(diff)}): "
                                 f"choose another --out")
        return True
    if any(out.iterdir()):
        raise SpecbenchError(f"{out} is not empty and holds no training run: choose another --out")
    run_file.write_text(json.dumps(config.identity(), indent=1) + "\n")
    return False


def train(objective: Objective, model: Transformer, data: TokenData, config: TrainConfig, out: str | Path,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Train `objective.drafter` on `data`, resuming from `out`'s checkpoint when there is one.
    Returns the final metrics; `stop_after` stops after that many steps (a simulated kill)."""
    out = Path(out)
    prepare_out(out, config)
    drafter = objective.drafter
    device = model.device
    drafter.to(device=device, dtype=torch.float32).train()
    train_idx, _ = split(data, config.validation)
    if not train_idx:
        raise SpecbenchError("no training conversations: raise --conversations")
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    total = max(1, round(config.epochs * steps_per_epoch))
    params = [p for p in drafter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    step, earlier_seconds = 0, 0.0      # seconds of the steps that earlier runs of this folder kept
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        drafter.load_state_dict(state["drafter"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        earlier_seconds = float(state.get("seconds", 0.0))
    metrics_file = out / "metrics.jsonl"
    _truncate_metrics(metrics_file, step)

    def save_checkpoint() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"drafter": drafter.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "seconds": earlier_seconds + time.perf_counter() - start}, tmp)
        os.replace(tmp, ckpt)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    interrupted = []
    old_handler = signal.signal(signal.SIGTERM, lambda *_: interrupted.append(True)) \
        if _main_thread() else None
    bar = _bar(total, step, progress)
    start = time.perf_counter()
    try:
        with metrics_file.open("a") as log:
            while step < total:
                epoch, k = divmod(step, steps_per_epoch)
                order = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(config.seed + epoch))
                batch = [train_idx[int(i)] for i in order[k * config.batch_size:(k + 1) * config.batch_size]]
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, config.warmup_steps, config.lr)
                opt.zero_grad(set_to_none=True)
                torch.manual_seed(config.seed * 1_000_003 + step)   # noise (EAGLE) is the same after a resume
                sequences = []
                for i in batch:
                    ids, mask = data.item(i)
                    logits, feats = target_pass(model, ids, objective.feature_layers)
                    sequences.append(Sequence(feats, logits, ids.to(device), mask.to(device)))
                with autocast:
                    loss, sums, count = objective.loss(model, sequences)
                del sequences
                if count:
                    loss.backward()
                    for p in params:
                        if p.grad is not None:
                            p.grad.div_(count)
                    norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
                    opt.step()
                else:
                    norm = 0.0
                row = {"step": step + 1, "lr": opt.param_groups[0]["lr"], "tokens": count, "grad_norm": norm,
                       **{key: v / max(1, count) for key, v in sums.items()}}
                step += 1
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{row.get('loss', 0):.3f}")
                if step % config.checkpoint_every == 0 or step == total:
                    save_checkpoint()
                if interrupted or (stop_after is not None and step >= stop_after and step < total):
                    save_checkpoint()
                    raise Stop(f"stopped after step {step}")
    except KeyboardInterrupt:
        save_checkpoint()
        raise
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    drafter.eval()
    return {"steps": step, "seconds": earlier_seconds + time.perf_counter() - start,
            "final": _last_metrics(metrics_file)}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows past the checkpoint's step (they are recomputed), keeping no duplicates."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if json.loads(r)["step"] <= step]
    path.write_text("".join(r + "\n" for r in keep))


def _last_metrics(path: Path, window: int = 20) -> dict:
    """Means of the last `window` steps' metrics (one step's loss is noisy)."""
    rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()][-window:]
    keys = [k for k in rows[-1] if k not in ("step", "lr")] if rows else []
    return {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in keys}


def _bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step")


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()

