"""A draft model for `sps` distilled from its target: a few transformer layers of the target's
architecture that read tokens through the target's embedding and write logits through its LM head.

Why share them: the default model's (tied) embedding is 49,152 x 576 = 57 MB in fp16, over the 16 MB
a shipped file may hold, while one of its layers is 7 MB; and a draft trained to match the target's
token distributions loses nothing by using the target's own token tables. So the drafter (what
training updates, checkpoints and ships) is the layers plus a final norm, and `as_model(target)`
materialises an ordinary `Transformer` whose embedding and LM head ARE the target's tensors (no
copy). That Transformer is what `sps` runs, with its own KV cache.

Two folder forms:
- compact, `DraftLayers.save` (what `specbench train draft` writes and
  specbench/drafters/shipped/draft/ holds): config.json (format specbench-drafter, kind draft, the
  draft's `model_args`, the target signature, `target_model`) and fp16 layers + norm in shards of at
  most 16 MB. `load_draft(folder, target)` materialises it with a loaded target;
  `specbench.load_model(folder)` loads the target first (`target_model` when that path exists
  here, else the default model) and refuses a target whose signature differs.
- full, `specbench.save_model(draft, out)` (CLI `specbench export`): a Hugging Face folder with the
  embedding included (config.json, safetensors, tokenizer) that load_model and transformers read
  without the target.

`draft="target:K"` in `sps` is the undistilled draft: the target's own first K layers, final norm
and LM head (shared modules), which is also where `init="target"` training starts.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecbenchError
from ..model import Block, ModelArgs, RMSNorm, Transformer
from ..options import Check
from .base import FORMAT, Drafter, kept_copy, read_json, signature_mismatch, target_signature

INITS = ("target", "fresh")
DEFAULT_LAYERS = 4


def model_args_dict(args: ModelArgs) -> dict:
    d = dataclasses.asdict(args)
    d["eos_token_ids"] = list(d["eos_token_ids"])
    return d


def stacked(model: Transformer, layers: nn.ModuleList, norm: nn.Module) -> Transformer:
    """An ordinary Transformer over `layers` and `norm`, with `model`'s embedding, LM head, RoPE
    and tokenizer (shared, not copied: moving this model's dtype or device moves the target's)."""
    with torch.device("meta"):
        view = Transformer(dataclasses.replace(model.args, num_layers=len(layers)))
    view.embed, view.lm_head, view.layers, view.norm = model.embed, model.lm_head, layers, norm
    view.inv_freq = model.inv_freq
    view.tokenizer = model.tokenizer
    return view


def first_layers(model: Transformer, k: int) -> Transformer:
    """The undistilled draft: the target's first k layers with its final norm and LM head."""
    if not 1 <= k < model.args.num_layers:
        raise SpecbenchError(f"a draft of the target's first layers needs 1..{model.args.num_layers - 1} "
                             f"layers, got {k}")
    return stacked(model, nn.ModuleList(model.layers[:k]), model.norm)


class DraftLayers(Drafter):
    kind = "draft"

    def __init__(self, target: dict, model_args: dict, init: str = "target", target_model: str | None = None):
        super().__init__(target)
        if init not in INITS:
            raise SpecbenchError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.model_args, self.init = dict(model_args), init
        self.target_model = target_model     # the target's file or folder, for load_model
        args = self.args
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        # how often each token was a training target (sps's draft_vocab ranks tokens by it)
        self.register_buffer("token_counts", torch.zeros(args.vocab_size, dtype=torch.long))

    @property
    def args(self) -> ModelArgs:
        d = dict(self.model_args)
        return ModelArgs(**{**d, "eos_token_ids": tuple(d.get("eos_token_ids") or ())})

    @classmethod
    def for_target(cls, model: Transformer, num_layers: int = DEFAULT_LAYERS, init: str = "target") -> "DraftLayers":
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers < model.args.num_layers:
            raise SpecbenchError(f"a draft needs 1..{model.args.num_layers - 1} layers "
                                 f"(fewer than its target's), got {num_layers!r}")
        args = dataclasses.replace(model.args, num_layers=num_layers)
        source = model.hf_source or {}
        path = source.get("pretrained_model_name_or_path")
        if path is not None and source.get("gguf_file"):
            path = str(Path(path) / source["gguf_file"])
        return cls(target_signature(model), model_args_dict(args), init, path)

    def config(self) -> dict:
        return {"model_args": self.model_args, "init": self.init, "target_model": self.target_model}

    @torch.no_grad()
    def init_from_target(self, model: Transformer) -> None:
        """`target`: the target's first layers; `fresh`: Llama's initialisation (normal, std 0.02;
        unit norms), seeded. Both take the target's final norm, the partner of the shared LM head."""
        self.norm.load_state_dict(model.norm.state_dict())
        if self.init == "target":
            for mine, theirs in zip(self.layers, model.layers):
                mine.load_state_dict(theirs.state_dict())
            return
        gen = torch.Generator().manual_seed(0)
        for name, param in self.layers.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif param.dim() == 1:
                param.zero_()
            else:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))

    def forward(self, ids: torch.Tensor, model: Transformer, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [n, V] over one whole sequence (causal), for training; only at `rows` (a boolean
        [n]) when given, as the LM head is most of the work. K/V go straight into attention (no
        cache), and everything runs in this drafter's dtype whatever the target's."""
        dtype = self.norm.weight.dtype
        n = len(ids)
        positions = torch.arange(n, device=ids.device)
        cos, sin = (t.to(dtype) for t in model.rope(positions))
        mask = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        x = model.embed(ids).to(dtype)
        for block in self.layers:
            q, k, v = block.kv(x, cos, sin)
            x = block.mix(x, q, k.transpose(0, 1), v.transpose(0, 1), mask)
        return F.linear(self.norm(x if rows is None else x[rows]), model.lm_head.weight.to(dtype))

    def as_model(self, model: Transformer) -> Transformer:
        """This draft as an ordinary Transformer on `model`'s embedding and LM head (place the
        drafter on the target's device and dtype first)."""
        self.check_target(model)
        view = stacked(model, self.layers, self.norm)
        view.token_counts = self.token_counts
        return view


def draft_in(draft: Transformer, dtype: torch.dtype) -> Transformer:
    """`draft` with its weights in `dtype` (sps's `draft_dtype`): itself when it already is, else a
    copy kept on it per dtype and device (`kept_copy`), embedding and LM head included: a bfloat16
    draft on a float32 target reads no float32 weight. The copy shares the tokenizer and RoPE
    frequencies."""
    if draft.dtype == dtype:
        return draft

    def make() -> Transformer:
        with torch.device("meta"):
            copy = Transformer(draft.args)
        copy.to_empty(device=draft.device)          # tied embedding and LM head stay one Parameter
        copy.load_state_dict(draft.state_dict())
        copy.inv_freq = draft.inv_freq
        copy.to(dtype).eval().requires_grad_(False)
        copy.tokenizer, copy.name, copy.numerics = draft.tokenizer, draft.name, draft.numerics
        return copy

    return kept_copy(draft, dtype, draft.device, make)


def load_draft(folder: str | os.PathLike, model: Transformer) -> Transformer:
    """A compact draft folder as an ordinary Transformer for `model` (its target)."""
    from . import load_drafter
    return load_drafter(folder, model, "draft").as_model(model)


def standalone_target(folder: Path) -> str | None:
    """The target a compact draft folder loads on as a model: its `target_model` when that path
    exists here, else None (the default model). Checked without loading anything."""
    config = read_json(folder / "config.json")
    if config.get("kind") != "draft":
        raise SpecbenchError(f"{folder} holds a {config.get('kind')} drafter, not a model: pass it as drafter=")
    target_path = config.get("target_model")
    return target_path if target_path and Path(target_path).exists() else None


def load_standalone(folder: Path, device, dtype) -> Transformer:
    """`load_model` on a compact draft folder: its target comes first (`standalone_target`), then
    the draft on it."""
    from ..loading import load_model
    config = read_json(folder / "config.json")
    use = standalone_target(folder)
    target = load_model(use, device=device, dtype=dtype)
    why = signature_mismatch(config.get("target") or {}, target)
    if why is not None:
        raise SpecbenchError(f"{folder} is a draft that shares its target's embedding, and "
                             f"{use or 'the default model'} is not that target ({why}): load it with "
                             f"specbench.load_draft(folder, target)")
    return load_draft(folder, target)


TARGET_LAYERS = re.compile(r"target:(\d+)")


def draft_reference(value: str | os.PathLike) -> str:
    """sps's draft= given as text, checked without loading anything: "target", "target:K" (K >= 1),
    or a model path (its files checked by locate_model, made absolute) or hub id."""
    from ..loading import locate_model
    value = str(value)
    if value == "target" or re.fullmatch(r"target:[1-9]\d*", value):
        return value
    return locate_model(value).location


DraftRef = Annotated[str | Path, Check(draft_reference, "'target', 'target:K' or a model path")]


def resolve_draft(draft, model: Transformer) -> Transformer:
    """The `draft=` argument of sps as a model on `model`'s device and dtype: None (the draft
    shipped for this target), "target" (the target itself), "target:K" (its first K layers: the
    undistilled draft), a path (a compact draft folder, or anything load_model reads), a
    DraftLayers drafter, or a Transformer. Built once per target and argument (a benchmark calls
    generate per question, and on CUDA each draft model keeps its captured graphs)."""
    from . import SHIPPED, _place
    if isinstance(draft, Transformer):
        return draft
    if isinstance(draft, DraftLayers):
        view, own = draft.__dict__.get("_view"), draft.norm.weight
        if view is None or view.embed is not model.embed or (own.dtype, own.device) != (model.dtype, model.device):
            draft.check_target(model)
            view = draft.__dict__["_view"] = _place(draft, model).as_model(model)
        return view
    if draft is not None and not isinstance(draft, (str, os.PathLike)):
        raise SpecbenchError(f"draft= must be None, 'target', 'target:K', a path or a model, "
                             f"got {type(draft).__name__}")
    if draft == "target":
        return model
    loaded = model.__dict__.setdefault("_drafters", {})
    match = TARGET_LAYERS.fullmatch(str(draft)) if draft is not None else None
    if match:
        key = ("sps", draft)
        if key not in loaded:
            loaded[key] = first_layers(model, int(match.group(1)))
        return loaded[key]
    folder = SHIPPED / "draft" if draft is None else Path(draft).expanduser().resolve()
    stamp = (folder / "config.json").stat().st_mtime_ns if (folder / "config.json").is_file() else None
    key = ("sps", str(folder), stamp, model.dtype, str(model.device))
    if key not in loaded:
        if draft is None:
            loaded[key] = shipped_draft(model)
        elif is_compact(folder):
            loaded[key] = load_draft(folder, model)
        else:
            from ..loading import load_model
            loaded[key] = load_model(folder if folder.exists() else draft, device=str(model.device),
                                     dtype=model.dtype)
    return loaded[key]


def shipped_draft(model: Transformer) -> Transformer:
    """The draft committed for the default model, or one line naming the training command."""
    from . import SHIPPED
    folder = SHIPPED / "draft"
    if not (folder / "config.json").is_file():
        raise SpecbenchError("sps has no draft: none is shipped with this installation; train one with "
                             "`specbench train draft --out DIR` and pass draft=DIR (CLI: --draft DIR)")
    if signature_mismatch(read_json(folder / "config.json").get("target") or {}, model) is not None:
        raise SpecbenchError("sps has no draft for this model (one ships only for the default "
                             "SmolLM2-135M-Instruct): train one with `specbench train draft --model PATH "
                             "--out DIR` and pass draft=DIR (CLI: --draft DIR)")
    return load_draft(folder, model)


def is_compact(folder: Path) -> bool:
    """A folder in our compact draft layout (config.json with format specbench-drafter)."""
    return (folder / "config.json").is_file() and read_json(folder / "config.json").get("format") == FORMAT
