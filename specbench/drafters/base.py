"""What every learned drafter shares: its config, the target it was made for, and its files.

A drafter folder (our layout) holds `config.json` (`format: specbench-drafter`, `kind`, the
drafter's own hyperparameters, and `target`: the dimensions and an embedding probe of the model it
was trained on), `model.safetensors` (or `model-0000i-of-0000n.safetensors` shards when the weights
exceed MAX_FILE_BYTES: a shipped file may hold at most 16 MB), and, for trained ones, `card.md` and
`metrics.jsonl`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..checks import check_dtype
from ..errors import SpecbenchError
from ..model import Transformer, cpu_bfloat16_native, pack_linears, tensor_key

FORMAT = "specbench-drafter"
PROBE_ROWS = (0, 1, 2, 3, 5, 8, 13, 21)   # embedding rows whose first 8 values identify a target
MAX_FILE_BYTES = 16_000_000                # the most one shipped file may hold


def target_signature(model: Transformer) -> dict:
    """Dimensions plus a probe of the embedding: two models with the same shapes but other weights
    (another fine-tune) must not share a drafter silently."""
    a = model.args
    rows = [r for r in PROBE_ROWS if r < a.vocab_size]
    probe = model.embed.weight[rows, :8].detach().float().cpu()
    return {"name": getattr(model, "name", None), "hidden_size": a.hidden_size, "vocab_size": a.vocab_size,
            "num_layers": a.num_layers, "embed_probe": [round(x, 5) for x in probe.flatten().tolist()]}


def signature_mismatch(expected: dict, model: Transformer) -> str | None:
    """Why a drafter made for `expected` cannot serve `model`, or None when it can."""
    got = target_signature(model)
    for key in ("hidden_size", "vocab_size", "num_layers"):
        if key in expected and expected[key] != got[key]:
            return f"{key.replace('_', ' ')} {expected[key]} (this model: {got[key]})"
    probe = expected.get("embed_probe")
    if probe is not None:
        a, b = torch.tensor(probe), torch.tensor(got["embed_probe"])
        # loose enough for a bf16 or quantised copy of the same weights, far below a retrain's change
        if a.shape != b.shape or not torch.allclose(a, b, atol=2e-2 * max(1e-6, float(a.abs().max())), rtol=0.05):
            return "other weights (its embedding probe differs from this model's)"
    return None


class Drafter(nn.Module):
    """A learned drafter beside a frozen target. Subclasses set `kind` and implement `config()`."""
    kind: str = ""

    def __init__(self, target: dict):
        super().__init__()
        self.target = target

    def _apply(self, fn, *args, **kwargs):
        # every move or cast repacks the Linear layers for the new device and dtype (as the model's)
        super()._apply(fn, *args, **kwargs)
        pack_linears(self)
        return self

    @classmethod
    def for_target(cls, model: Transformer, **config) -> "Drafter":
        """A new, untrained drafter for `model`. Drafters that need more of the target than its
        signature (the draft model needs its layer shapes) override this."""
        return cls(target_signature(model), **config)

    def config(self) -> dict:
        """The drafter's own hyperparameters (constructor keyword arguments)."""
        raise NotImplementedError

    def init_from_data(self, counts: torch.Tensor) -> None:
        """Settle what the training data decides before training starts, given how often each
        token is a target there (EAGLE-3: its draft vocabulary). The others need nothing."""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype its weights are in, which is the one it runs in (`cast`)."""
        return next(self.parameters()).dtype

    def cast(self, dtype: torch.dtype) -> "Drafter":
        """This drafter with its weights in `dtype` (see `run_dtype`): itself when it already is,
        else a copy kept per dtype and device (with its own packed weights and draft steps) and
        made again once this drafter's tensors change (trained or loaded into in place)."""
        if self.dtype == dtype:
            return self
        device = next(self.parameters()).device

        def make() -> Drafter:
            copy = type(self)(self.target, **self.config())
            copy.load_state_dict(self.state_dict())
            return copy.to(device=device, dtype=dtype).eval().requires_grad_(False)

        return kept_copy(self, dtype, device, make)

    def check_target(self, model: Transformer) -> None:
        why = signature_mismatch(self.target, model)
        if why is not None:
            raise SpecbenchError(f"this {self.kind} drafter was made for another model: {why}")

    def save(self, folder: str | Path, dtype: torch.dtype = torch.float16, extra: dict | None = None) -> Path:
        """Write config.json and the weights (floating-point tensors cast to `dtype`) in shards of
        at most MAX_FILE_BYTES."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in self.state_dict().items()}
        write_shards(state, folder)
        config = {"format": FORMAT, "kind": self.kind, **self.config(), "target": self.target, **(extra or {})}
        (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        return folder


def kept_copy(module: nn.Module, dtype: torch.dtype, device: torch.device, make) -> nn.Module:
    """`make()`, a copy of `module` in `dtype` on `device`, kept on the module and made again only
    once one of the module's tensors is replaced or changed in place (`model.tensor_key`, as
    `model.Linear` keys its packed weight)."""
    key = tuple(tensor_key(t) for t in (*module.parameters(), *module.buffers()))
    copies = module.__dict__.setdefault("_casts", {})
    made = copies.get((dtype, device))
    if made is None or made[0] != key:
        made = copies[dtype, device] = (key, make())
    return made[1]


DraftDtype = Literal["float32", "bfloat16", "float16", "float64"]     # canonical names of checks.DTYPES


def run_dtype(model: Transformer, draft_dtype: str | None) -> torch.dtype:
    """The dtype a drafter runs in (the `draft_dtype` option of sps, medusa, eagle and eagle3): the one
    named, else bfloat16 for a float32 target on a CPU with native bfloat16 products (oneDNN on
    AVX512-BF16 or AMX), else the target's. A drafter only proposes: the target verifies in its
    own dtype, so the output stays the target's and only the drafts (and their cost) change. On a
    CPU a small draft's products stream its weights from memory, and bfloat16 halves the bytes:
    README, "Drafters in bfloat16 on the CPU", has the measurement."""
    if draft_dtype is not None:
        return check_dtype(draft_dtype)
    if model.device.type == "cpu" and model.dtype == torch.float32 and cpu_bfloat16_native():
        return torch.bfloat16
    return model.dtype


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16" for torch.bfloat16: how stats and the bench's answers record a drafter's dtype."""
    return str(dtype).removeprefix("torch.")


def frequent_tokens(counts: torch.Tensor, n: int) -> torch.Tensor:
    """The n tokens a drafter most often saw as targets in training (ties: the lower id), in id
    order: a draft vocabulary (FR-Spec; `draft_vocabulary`), and EAGLE-3's own."""
    return torch.sort(counts.neg(), stable=True).indices[:n].sort().values


def draft_vocabulary(size: int | None, counts: torch.Tensor | None, default: int | None, vocab_size: int,
                     ranks: int, kind: str) -> torch.Tensor | None:
    """The token ids a draft scores under the `draft_vocab` option of sps, medusa and eagle (FR-Spec),
    in id order, or None for the whole vocabulary. `size` None takes the device's `default` where
    the drafter counted its training tokens and the default holds the `ranks` choices drafted per
    node; a size at the vocabulary's is the whole one. The drafts stay picks or samples of the
    draft's own distribution (zero outside these ids), so decoding stays exact."""
    if size is not None and not 1 <= size <= vocab_size:
        raise SpecbenchError(f"draft_vocab must be a token count in 1..{vocab_size} or None, got {size!r}")
    counted = counts is not None and bool(counts.any())
    if size is None and counted and default is not None and default >= ranks:
        size = default
    if size is None or size >= vocab_size:
        return None
    if not counted:
        raise SpecbenchError(f"draft_vocab needs a drafter from `specbench train {kind}` (it counts the tokens "
                             f"of its training data to rank them)")
    if size < ranks:
        raise SpecbenchError(f"draft_vocab {size} is smaller than the {ranks} choices drafted per node")
    return frequent_tokens(counts, size)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecbenchError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(data, dict):
        raise SpecbenchError(f"{path}: expected a JSON object")
    return data


def read_weights(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The first of `names` present in `folder`: safetensors, or a torch file loaded with
    weights_only=True (never unpickling arbitrary objects)."""
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                return load_file(str(path))
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise SpecbenchError(f"cannot read weights {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    raise SpecbenchError(f"{folder} holds none of {', '.join(names)}")


def write_shards(state: dict[str, torch.Tensor], folder: Path, max_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """model.safetensors, or model-0000i-of-0000n.safetensors when the tensors exceed max_bytes
    (packed in order; a single tensor over the limit gets a shard of its own). Earlier shards in
    the folder are removed first, so a reader never mixes two saves."""
    from safetensors.torch import save_file
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if groups[-1] and size + nbytes > max_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = t
        size += nbytes
    for old in weight_files(folder):
        old.unlink()
    names = ["model.safetensors"] if len(groups) == 1 else \
        [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    for name, group in zip(names, groups):
        save_file(group, str(folder / name))
    return [folder / n for n in names]


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors and model-0000i-of-0000n.safetensors shards in folder."""
    return sorted(f for f in folder.glob("model*.safetensors")
                  if re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", f.name))


def read_shards(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors or of its shards."""
    files = weight_files(folder)
    if not files:
        raise SpecbenchError(f"{folder} holds no model.safetensors")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(read_weights(folder, (f.name,)))
    return state
