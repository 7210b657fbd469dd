"""Learned drafters (Medusa heads, EAGLE-1/2 and EAGLE-3 drafts, distilled draft models for sps): loading, random
ones for tests, shipped ones.

    d = specbench.load_drafter(path, model)             # our layout or an official one
    d = specbench.random_drafter(model, "medusa", seed=0)
    specbench.generate(model, prompt, method="medusa", drafter=None | path | d)

`drafter=None` takes the drafter shipped for the default model (`specbench/drafters/shipped/`);
for any other model it is an error naming the command that trains one.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch

from ..errors import SpecbenchError
from ..model import Transformer
from .base import FORMAT, Drafter, read_json, read_shards, signature_mismatch, target_signature
from .draft import DraftLayers, load_draft
from .eagle import EagleDraft
from .eagle3 import Eagle3Draft
from .medusa import MedusaHeads

DRAFTERS: dict[str, type[Drafter]] = {"medusa": MedusaHeads, "draft": DraftLayers, "eagle": EagleDraft,
                                     "eagle3": Eagle3Draft}
SHIPPED = Path(__file__).parent / "shipped"


def _check_kind(kind: str) -> type[Drafter]:
    if kind not in DRAFTERS:
        raise SpecbenchError(f"unknown drafter kind {kind!r}: choose one of {', '.join(DRAFTERS)}")
    return DRAFTERS[kind]


def _place(drafter: Drafter, model: Transformer) -> Drafter:
    return drafter.to(device=model.device, dtype=model.dtype).eval().requires_grad_(False)


def random_drafter(model: Transformer, kind: str, seed: int = 0, **config) -> Drafter:
    """Random weights for tests, drawn large enough that draft distributions are peaked (a
    distribution test needs drafts that are often right and often wrong)."""
    cls = _check_kind(kind)
    gen = torch.Generator().manual_seed(seed)
    drafter = cls.for_target(model, **config)
    with torch.no_grad():
        for name, param in drafter.named_parameters():
            scale = 0.1 if param.dim() == 1 else 2.0 / param.shape[-1] ** 0.5
            noise = scale * torch.randn(param.shape, generator=gen, dtype=torch.float64)
            param.copy_((1 + noise if name.endswith("norm.weight") else noise).to(param.dtype))
    return _place(drafter, model)


def load_drafter(path: str | os.PathLike, model: Transformer, kind: str | None = None) -> Drafter:
    """A drafter folder for `model`: our layout (config.json with format specbench-drafter) or an
    official one (FasterDecoding Medusa, SafeAILab EAGLE-1/2, SpecForge / SGLang / vLLM EAGLE-3).
    Refuses one made for another model."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SpecbenchError(f"drafter folder not found: {path}")
    if not (folder / "config.json").is_file():
        raise SpecbenchError(f"{folder} is not a drafter folder: it has no config.json")
    config = read_json(folder / "config.json")
    if config.get("format") == FORMAT:
        cls = _check_kind(str(config.get("kind")))
        target = config.get("target") or {}
        why = signature_mismatch(target, model)
        if why is not None:
            raise SpecbenchError(f"the {cls.kind} drafter in {folder} was made for another model: {why}")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "target"}
        params = {k: v for k, v in config.items() if k in accepted}
        drafter = cls(target, **params)
        state = read_shards(folder)
        try:
            drafter.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                                    strict=True)
        except RuntimeError as e:
            raise SpecbenchError(f"{folder}: weights do not match config.json: {str(e).splitlines()[0]}") from e
    elif "medusa_num_heads" in config:
        drafter = MedusaHeads.from_official(folder, model)
    elif Eagle3Draft.is_official(config):
        drafter = Eagle3Draft.from_official(folder, model)
    elif EagleDraft.is_official(config):
        drafter = EagleDraft.from_official(folder, model)
    else:
        raise SpecbenchError(f"{folder / 'config.json'} is neither a specbench drafter nor an official "
                             f"Medusa, EAGLE or EAGLE-3 layout")
    if kind is not None and drafter.kind != kind:
        raise SpecbenchError(f"{folder} holds a {drafter.kind} drafter, not a {kind} one")
    return _place(drafter, model)


def shipped_drafter(model: Transformer, kind: str) -> Drafter:
    """The drafter of `kind` committed for this model, or one line naming the training command."""
    folder = SHIPPED / kind
    if not (folder / "config.json").is_file():
        raise SpecbenchError(f"no {kind} drafter ships with specbench yet: train one with "
                             f"`specbench train {kind} --out DIR` and pass drafter=DIR")
    target = read_json(folder / "config.json").get("target") or {}
    if signature_mismatch(target, model) is None:
        return load_drafter(folder, model, kind)
    raise SpecbenchError(f"no {kind} drafter ships for this model (only for the default SmolLM2-135M-Instruct): "
                         f"train one with `specbench train {kind} --model PATH --out DIR` and pass drafter=DIR")


def resolve_drafter(drafter, model: Transformer, kind: str) -> Drafter:
    """The `drafter=` argument: None (shipped), a folder path, or a Drafter object."""
    if drafter is None or isinstance(drafter, (str, os.PathLike)):
        # loaded once per model and folder: a benchmark calls generate per question
        folder = SHIPPED / kind if drafter is None else Path(drafter).expanduser().resolve()
        stamp = (folder / "config.json").stat().st_mtime_ns if (folder / "config.json").is_file() else None
        key = (kind, str(folder), stamp, model.dtype, str(model.device))
        loaded = model.__dict__.setdefault("_drafters", {})
        if key not in loaded:
            loaded[key] = shipped_drafter(model, kind) if drafter is None else load_drafter(drafter, model, kind)
        return loaded[key]
    if isinstance(drafter, Drafter):
        if drafter.kind != kind:
            raise SpecbenchError(f"drafter= holds a {drafter.kind} drafter; method {kind!r} needs a {kind} one")
        drafter.check_target(model)
        return drafter if drafter.dtype == model.dtype else _place(drafter, model)
    raise SpecbenchError(f"drafter= must be None, a folder path or a drafter from load_drafter, "
                         f"got {type(drafter).__name__}")


__all__ = ["DRAFTERS", "Drafter", "DraftLayers", "Eagle3Draft", "EagleDraft", "MedusaHeads", "load_draft", "load_drafter", "random_drafter",
           "resolve_drafter", "shipped_drafter", "target_signature"]
