"""Benchmark configs: YAML/JSON files or dicts, CLI overrides, method variants and sweeps.

A config file (see ``experiments/*.yaml``) holds any of these keys (defaults in `DEFAULTS`)::

    name: quick                 # cosmetic; also the default out folder results/<name>
    model: null                 # model path (null: the default SmolLM2-135M-Instruct GGUF)
    draft: null                 # default of every method's draft= (sps: a path, "target", "target:K")
    device: cpu
    dtype: float32
    dataset: mt_bench           # mt_bench | humaneval | sharegpt | path/to/questions.jsonl
    categories: null            # list of categories to keep (dataset order is kept)
    limit_per_category: null    # at most this many questions per category
    limit: null                 # at most this many questions in all (after the two above)
    turns: all                  # 1, 2, ... or all (later turns feed back the method's own answers)
    max_new_tokens: 256
    temperature: 0.0
    top_k: 0
    top_p: 1.0
    seed: 0
    repeats: 1                  # every (question, method) this many times, same seed
    warmup_tokens: 16           # length of the untimed warm-up generation of every method
    threads: null               # torch CPU threads during the run (null: torch's default)
    numerics: fast              # fast | batch_invariant (specbench/numerics.py); per method too
    methods:                    # a list of labels, or a mapping label -> options
      vanilla: {}
      pld: {max_ngram: 3, num_draft: 10}
      lookahead_w7: {method: lookahead, W: 7}          # a label with its method
      pld_bi: {method: pld, numerics: batch_invariant}  # this method in the other numerics mode
      pld_sweep:                                       # one variant per value (a grid over keys)
        method: pld
        max_ngram: 3
        sweep: {num_draft: [2, 4, 6, 8, 10]}           # -> pld_sweep_num_draft2, ...

In a list, an item is a label (the method of that name with default options) or a one-key
mapping ``{label: options}``. Inside options, ``method`` (default: the label), ``sweep`` and
``numerics`` (default: the config's) are reserved; ``numerics`` may also be swept. A sweep expands
into labels ``<label>_<key><value>`` (keys joined by ``_`` for grids).

Resolution (`resolve_config`) validates every key, expands sweeps into a flat list
``methods: [{label, method, options, numerics}, ...]`` with the reference vanillas first, and
records the dataset's absolute file path; the resolved dict is what ``config.json`` in the out
folder stores and what decides whether a folder's answers belong to a config (`identity`).

Exact match is a comparison within one numerics mode: each method's answers are compared with the
reference vanilla of its own mode (`reference_for`), so a run needs a vanilla in every mode it
uses. Speedups are all relative to the reference vanilla of the config's mode, so the price of the
other mode shows in its vanilla's speedup. The Hugging Face baselines run transformers' own
kernels: numerics does not apply to them (recorded as null, compared with the main reference).
"""
from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

from specbench.checks import check_dtype
from specbench.errors import SpecbenchError
from specbench.loading import locate_model
from specbench.numerics import check_numerics
from specbench.options import OptionSpec, method_options, parse_options

from . import datasets
from .hf_baselines import HF_METHODS

COSMETIC_KEYS = ("name",)

DEFAULTS: dict = {
    "name": None,
    "model": None,
    "draft": None,
    "device": "cpu",
    "dtype": "float32",
    "dataset": "mt_bench",
    "categories": None,
    "limit_per_category": None,
    "limit": None,
    "turns": "all",
    "max_new_tokens": 256,
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "seed": 0,
    "repeats": 1,
    "warmup_tokens": 16,
    "threads": None,
    "numerics": "fast",
    "methods": ["vanilla"],
}

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def known_methods() -> dict[str, dict[str, OptionSpec]]:
    """Method name -> its options (types, defaults): the strategies' and the HF baselines'."""
    from specbench.strategies import STRATEGIES

    from . import hf_baselines
    out = {name: method_options(name) for name in STRATEGIES}
    out.update(hf_baselines.HF_OPTIONS)
    return out


def load_config_file(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise SpecbenchError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:   # yaml.YAMLError, json.JSONDecodeError
        msg = str(e).replace("\n", " ")
        raise SpecbenchError(f"{path}: cannot parse config: {msg}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecbenchError(f"{path}: a config must be a mapping of keys to values")
    data = dict(data)
    if data.get("name") is None:
        data["name"] = path.stem
    return data


def load_config(config: dict | str | Path | None) -> dict:
    """A raw (unresolved) config dict from a dict, a YAML/JSON file, or None (all defaults)."""
    if config is None:
        return {}
    if isinstance(config, (str, Path)):
        return load_config_file(config)
    if isinstance(config, dict):
        return copy.deepcopy(config)
    raise SpecbenchError(f"config must be a dict or a file path, not {type(config).__name__}")


# ---------------------------------------------------------------------------------------------

def _entries(methods) -> list[tuple[str, dict]]:
    """Normalise the `methods` value into [(label, body)]."""
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if isinstance(methods, dict):
        items = list(methods.items())
    elif isinstance(methods, list):
        items = []
        for item in methods:
            if isinstance(item, str):
                items.append((item, {}))
            elif isinstance(item, dict) and len(item) == 1:
                items.append(next(iter(item.items())))
            else:
                raise SpecbenchError(f"methods: each list item must be a label or a one-key mapping "
                                     f"{{label: options}}, got {item!r}")
    else:
        raise SpecbenchError("methods must be a list of labels or a mapping label -> options")
    out = []
    for label, body in items:
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise SpecbenchError(f"methods: options of {label!r} must be a mapping, got {body!r}")
        out.append((str(label), dict(body)))
    if not out:
        raise SpecbenchError("no methods given")
    return out


def _fmt_value(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return re.sub(r"[^A-Za-z0-9.+-]", "-", str(v))


def expand_methods(methods) -> list[dict]:
    """[{label, method, options}] with sweeps expanded (no validation of names here)."""
    out = []
    for label, body in _entries(methods):
        method = body.pop("method", label)
        sweep = body.pop("sweep", None)
        if sweep is None:
            out.append({"label": label, "method": str(method), "options": body, "family": label})
            continue
        if not isinstance(sweep, dict) or not sweep:
            raise SpecbenchError(f"methods: sweep of {label!r} must map option names to lists of values")
        keys = list(sweep)
        grids = []
        for k in keys:
            values = sweep[k] if isinstance(sweep[k], list) else [sweep[k]]
            if not values:
                raise SpecbenchError(f"methods: sweep of {label!r} has no values for {k!r}")
            grids.append(values)
        for combo in itertools.product(*grids):
            opts = dict(body)
            opts.update(zip(keys, combo))
            sub = "_".join(f"{k}{_fmt_value(v)}" for k, v in zip(keys, combo))
            out.append({"label": f"{label}_{sub}", "method": str(method), "options": opts, "family": label})
    return out


def select_methods(expanded: list[dict], names: list[str]) -> list[dict]:
    """--methods: keep the named labels (a sweep's label names all its variants) in the given
    order; a name that no entry has is a method with default options."""
    out = []
    for name in names:
        hits = [m for m in expanded if m["label"] == name] or [m for m in expanded if m["family"] == name]
        out.extend(hits if hits else [{"label": name, "method": name, "options": {}, "family": name}])
    return out


def _check_int(cfg, key, lo=None, allow_none=False):
    v = cfg[key]
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
        raise SpecbenchError(f"{key} must be an integer{f' >= {lo}' if lo is not None else ''}, got {v!r}")


def _check_float(cfg, key):
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecbenchError(f"{key} must be a number, got {v!r}")
    cfg[key] = float(v)


def _model_path(value) -> str | None:
    """The model: None (the default) or a path checked now (its files' headers, without loading)
    and stored absolute, or a hub id."""
    if value is None:
        return None
    if not isinstance(value, (str, Path)):
        raise SpecbenchError(f"model must be a model path, got {value!r}")
    return locate_model(value).location


def _plain(value):
    """Parsed option values as the resolved config stores them (JSON: paths as strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def resolve_config(raw: dict, methods_filter: list[str] | None = None) -> dict:
    """Validate and complete a raw config; expand sweeps; raise SpecbenchError on any bad value."""
    unknown = [k for k in raw if k not in DEFAULTS]
    if unknown:
        raise SpecbenchError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))} (known: {', '.join(DEFAULTS)})")
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if v is not None})

    for key in ("limit", "limit_per_category", "threads"):
        _check_int(cfg, key, lo=1, allow_none=True)
    for key, lo in (("max_new_tokens", 1), ("top_k", 0), ("seed", None), ("repeats", 1), ("warmup_tokens", 0)):
        _check_int(cfg, key, lo=lo)
    for key in ("temperature", "top_p"):
        _check_float(cfg, key)
    if cfg["temperature"] < 0:
        raise SpecbenchError(f"temperature must be >= 0, got {cfg['temperature']}")
    if not 0 < cfg["top_p"] <= 1:
        raise SpecbenchError(f"top_p must be in (0, 1], got {cfg['top_p']}")
    turns = cfg["turns"]
    if isinstance(turns, str) and turns.strip().isdigit():
        turns = int(turns)
    if not (turns == "all" or (isinstance(turns, int) and not isinstance(turns, bool) and turns >= 1)):
        raise SpecbenchError(f"turns must be a positive integer or 'all', got {cfg['turns']!r}")
    cfg["turns"] = turns
    cats = cfg["categories"]
    if isinstance(cats, str):
        cats = [c.strip() for c in cats.split(",") if c.strip()]
    if cats is not None and (not isinstance(cats, list) or not all(isinstance(c, str) for c in cats)):
        raise SpecbenchError(f"categories must be a list of names, got {cats!r}")
    cfg["categories"] = cats or None
    check_numerics(cfg["numerics"])
    for key in ("device", "dtype"):
        if not isinstance(cfg[key], str) or not cfg[key]:
            raise SpecbenchError(f"{key} must be a string, got {cfg[key]!r}")
    check_dtype(cfg["dtype"])      # the device is checked when a run needs it (run_benchmark)
    if cfg["name"] is not None:
        cfg["name"] = str(cfg["name"])

    # files: dataset, model, draft (checked here, so a typo fails before any loading)
    if not isinstance(cfg["dataset"], (str, Path)):
        raise SpecbenchError(f"dataset must be a name or a path, got {cfg['dataset']!r}")
    cfg["dataset"] = str(cfg["dataset"])
    cfg["dataset_path"] = datasets.dataset_source(cfg["dataset"])
    cfg["model"] = _model_path(cfg["model"])

    # methods
    expanded = expand_methods(cfg["methods"])
    if methods_filter:
        expanded = select_methods(expanded, methods_filter)
    registry = known_methods()
    seen = set()
    resolved = []
    for m in expanded:
        label, method, options = m["label"], m["method"], dict(m["options"])
        numerics = options.pop("numerics", None)
        if not _LABEL.match(label):
            raise SpecbenchError(f"bad method label {label!r}: use letters, digits, _ . + -")
        if label in seen:
            raise SpecbenchError(f"method label {label!r} appears twice")
        seen.add(label)
        if method not in registry:
            raise SpecbenchError(f"unknown method {method!r}" + (f" (label {label!r})" if label != method else "")
                                 + f": choose one of {', '.join(registry)}")
        specs = registry[method]
        # the config's `draft` is the default draft= of every method that has one (sps)
        if "draft" in specs and "draft" not in options and cfg["draft"] is not None:
            options = dict(options, draft=cfg["draft"])
        try:
            options = _plain(parse_options(method, options, specs=specs))
        except SpecbenchError as e:
            raise SpecbenchError(f"{e} (label {label!r})" if label != method else str(e)) from None
        if method in HF_METHODS:
            if numerics is not None:
                raise SpecbenchError(f"method {label!r} ({method}) runs transformers' own kernels: "
                                     "numerics does not apply to it")
        else:
            numerics = check_numerics(cfg["numerics"] if numerics is None else numerics)
        resolved.append({"label": label, "method": method, "options": options, "numerics": numerics})
    # the reference vanillas run first: the config's mode's, then the other mode's
    modes = dict.fromkeys([cfg["numerics"]] + [m["numerics"] for m in resolved if m["numerics"]])
    refs = [r for r in (reference_label([m for m in resolved if m["numerics"] == mode]) for mode in modes)
            if r is not None]
    resolved = [m for r in refs for m in resolved if m["label"] == r] + [m for m in resolved if m["label"] not in refs]
    cfg["methods"] = resolved
    return cfg


def main_reference(cfg: dict) -> str | None:
    """The vanilla run that speedups refer to: the reference of the config's numerics mode."""
    return reference_label([m for m in cfg["methods"] if m["numerics"] == cfg["numerics"]])


def reference_for(cfg: dict, label: str) -> str | None:
    """The vanilla run whose answers `label`'s exact match is measured against: the reference of
    its own numerics mode (the main reference for the HF baselines, which have none)."""
    mode = next(m["numerics"] for m in cfg["methods"] if m["label"] == label)
    return reference_label([m for m in cfg["methods"] if m["numerics"] == (mode or cfg["numerics"])])


def reference_label(methods: list[dict]) -> str | None:
    """The reference among runs of one numerics mode."""
    for m in methods:
        if m["label"] == "vanilla" and m["method"] == "vanilla":
            return m["label"]
    for m in methods:
        if m["method"] == "vanilla" and not m["options"]:
            return m["label"]
    for m in methods:
        if m["method"] == "vanilla":
            return m["label"]
    return None


def identity(cfg: dict) -> dict:
    """The part of a resolved config that decides whether stored answers belong to it."""
    return {k: v for k, v in cfg.items() if k not in COSMETIC_KEYS}


def differences(a: dict, b: dict) -> list[str]:
    ia, ib = identity(a), identity(b)
    return sorted(k for k in set(ia) | set(ib) if ia.get(k) != ib.get(k))


def jsonable(cfg: dict) -> dict:
    """Round-trip through JSON, so a resolved config compares equal to its stored copy."""
    return json.loads(json.dumps(cfg, sort_keys=True))
