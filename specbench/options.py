"""Method options, read from each strategy's `__init__`: names, types, defaults, bounds, lossless.

A strategy declares its options only in its signature: a type hint per option
(`Annotated[int, AtLeast(1)]` adds a bound, `Annotated[str, Check(fn, "...")]` any other check
that needs no model) and a default (none: required).
`parse_options` checks and converts option values against those hints before any model is
loaded (strings from the command line are parsed to the declared type), and `methods_table`
renders the same declarations for `specbench methods` and the README. A new strategy in
`specbench.strategies.STRATEGIES` is validated and listed with no code here.

Conventions the parser follows for a hint:
- `int`, `float`, `bool`, `str`, `Literal[...]`, `list[X]`, `tuple[X, ...]`, unions, `None`;
  a string is parsed (numbers, true/false, null, JSON lists) when the hint asks for another type;
- `pathlib.Path`: a path that must exist;
- any class (`Transformer`, a drafter): an instance of it; no hint: any value.
"""
from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from .errors import SpecbenchError

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Bound:
    """A numeric bound on an option: low <= value (low < value when low_open) and value <= high."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low is None:
            return f"<= {_num(self.high)}"
        return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}]"


@dataclass(frozen=True)
class Check:
    """A check of a value that needs no model (in `Annotated`): `fn` returns the value to use or
    raises SpecbenchError; `reads` says what it accepts (errors and the methods table show it)."""
    fn: Callable[[Any], Any]
    reads: str


def AtLeast(low: float) -> Bound:
    return Bound(low=low)


PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]
Probability = Annotated[float, Bound(0, 1, low_open=True)]    # in (0, 1]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class _Mismatch(Exception):
    """A value that does not fit a hint (turned into one SpecbenchError line by parse_options)."""


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _is_model_type(tp) -> bool:
    from .model import Transformer
    return isinstance(tp, type) and issubclass(tp, Transformer)


def type_name(tp) -> str:
    """How a hint reads in errors and in the methods table: `int >= 1`, `float or list[float]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is REQUIRED:
        return "any"
    if tp is type(None):
        return "None"
    if origin is Annotated:
        checks = [m.reads for m in tp.__metadata__ if isinstance(m, Check)]
        bounds = [str(m) for m in tp.__metadata__ if isinstance(m, Bound)]
        return " ".join(checks or [type_name(args[0]), *bounds])
    if _is_union(tp):
        members = sorted(args, key=lambda a: a is type(None))     # None last
        return " or ".join(type_name(a) for a in members)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"list[{type_name(args[0]) if args else 'any'}]"
    if _is_model_type(tp):
        return "model"
    if isinstance(tp, type) and issubclass(tp, Path):
        return "path"
    return getattr(tp, "__name__", str(tp))


def _parse_text(text: str):
    """A command-line string read as JSON (numbers, lists, true/false, null), else itself; None,
    True and False are also read in Python's spelling."""
    word = text.strip().lower()
    if word in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[word]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _convert(tp, value):
    """`value` as hint `tp`, else _Mismatch. A string that does not fit as it is is read as JSON
    (so "8" fits int and "[1, 2]" a list, while a str option keeps "8")."""
    try:
        return _exact(tp, value)
    except _Mismatch:
        if not isinstance(value, str):
            raise
        parsed = _parse_text(value)
        if parsed is value:
            raise
        return _exact(tp, parsed)


def _exact(tp, value):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is REQUIRED:
        return value
    if origin is Annotated:
        out = _exact(args[0], value)
        for m in tp.__metadata__:
            if isinstance(m, Bound) and not m.holds(out):
                raise _Mismatch()
            if isinstance(m, Check):
                out = m.fn(out)
        return out
    if _is_union(tp):
        for member in args:
            try:
                return _exact(member, value)
            except _Mismatch:
                pass
        raise _Mismatch()
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch()
        return [_exact(args[0] if args else Any, v) for v in value]
    if tp is type(None):
        ok = value is None
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        ok = False
    elif isinstance(tp, type) and issubclass(tp, Path):
        if isinstance(value, (str, Path)):
            return Path(value).expanduser()
        ok = False
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:
        raise TypeError(f"option type {tp!r} is not supported by specbench.options")
    if not ok:
        raise _Mismatch()
    return value


@dataclass(frozen=True)
class OptionSpec:
    """One option of a method, as its strategy's signature declares it."""
    name: str
    hint: Any               # the resolved type hint; unannotated: the default's type, else REQUIRED (any value)
    default: Any            # REQUIRED when the option has no default

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        return type_name(self.hint)

    def parse(self, method: str, value):
        try:
            out = _convert(self.hint, value)
        except SpecbenchError as e:          # a Check's own line
            raise SpecbenchError(f"option {self.name} of method {method!r}: {e}") from None
        except _Mismatch:
            shown = value if isinstance(value, (str, int, float, bool, list, tuple, type(None))) \
                else type(value).__name__
            raise SpecbenchError(f"option {self.name} of method {method!r} must be {self.type_name}, "
                                 f"got {shown!r}") from None
        for path in _paths_in(out):
            if not path.exists():
                raise SpecbenchError(f"option {self.name} of method {method!r}: path not found: {path}")
        return out


def _paths_in(value) -> list[Path]:
    """Path values inside a converted value (they must exist)."""
    if isinstance(value, Path):
        return [value]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return []


def strategy(method: str):
    """The strategy class of a method name (one clear line for an unknown name)."""
    from .strategies import STRATEGIES
    if not isinstance(method, str) or method not in STRATEGIES:
        raise SpecbenchError(f"unknown method {method!r}: choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[method]


def method_options(method: str) -> dict[str, OptionSpec]:
    """The options a method accepts (its strategy's __init__ parameters but self and model)."""
    cls = strategy(method)
    init = cls.__init__
    hints = typing.get_type_hints(init, globalns=vars(sys.modules[cls.__module__]), include_extras=True)
    specs = {}
    for name, p in inspect.signature(init).parameters.items():
        if name in ("self", "model") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(name, REQUIRED)
        if hint is REQUIRED and p.default is not REQUIRED and p.default is not None:
            hint = type(p.default)         # unannotated: the default's type
        specs[name] = OptionSpec(name, hint, p.default)
    return specs


def parse_options(method: str, options: dict, specs: dict[str, OptionSpec] | None = None) -> dict:
    """Check a method's option names, presence and types; return the values converted to the
    declared types. specs: the options of a method that is not a strategy (the bench's Hugging
    Face baselines)."""
    specs = method_options(method) if specs is None else specs
    for name in options:
        if name not in specs:
            raise SpecbenchError(f"unknown option {name!r} for method {method!r} "
                                 f"(options: {', '.join(specs) or 'none'})")
    missing = [s.name for s in specs.values() if s.required and s.name not in options]
    if missing:
        spec = specs[missing[0]]
        raise SpecbenchError(f"method {method!r} needs the option {spec.name} ({spec.type_name})")
    return {name: specs[name].parse(method, value) for name, value in options.items()}


# ---- the methods table -------------------------------------------------------------------------

def _summary(cls) -> str:
    """The summary line of the strategy's class docstring (else of its module's)."""
    doc = cls.__doc__ or sys.modules[cls.__module__].__doc__ or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""


def _option_notes(cls) -> dict[str, str]:
    """`name: note` lines of the class docstring's "Options:" section (what a None default means)."""
    notes, inside = {}, False
    for line in (cls.__doc__ or "").splitlines():
        stripped = line.strip()
        if stripped == "Options:":
            inside = True
        elif inside and ":" in stripped and stripped.split(":")[0].isidentifier():
            name, note = stripped.split(":", 1)
            notes[name] = note.strip()
        elif inside and not stripped:
            inside = False
    return notes


def _fmt_default(value) -> str:
    return "required" if value is REQUIRED else repr(value)


def _lossless_cell(cls, specs: dict[str, OptionSpec]) -> str:
    """'yes', 'no (lossy)', plus the option values that flip it: the strategy's lossless_with over
    the values of its Literal and bool options (the only ones with a finite set of values)."""
    defaults = {n: s.default for n, s in specs.items() if not s.required}
    base = cls.lossless_with(defaults)
    flips = []
    for name, spec in specs.items():
        choices = typing.get_args(spec.hint) if typing.get_origin(spec.hint) is Literal else \
            ((True, False) if spec.hint is bool else ())
        for v in choices:
            if v != spec.default and cls.lossless_with({**defaults, name: v}) != base:
                flips.append(f"{name}={v!r}")
    cell = "yes" if base else "no (lossy)"
    if flips:
        cell += f"; {'no (lossy)' if base else 'yes'} with {', '.join(flips)}"
    return cell


def methods_table(markdown: bool = True) -> str:
    """Every method: what drafts, its options (type = default, and the strategy docstring's note)
    and whether it is lossless. `specbench methods` prints it (`--markdown`: the README's table,
    which a test keeps equal to this)."""
    from .strategies import STRATEGIES
    md = ["| method | what drafts | options: type = default | lossless |", "|---|---|---|---|"]
    text = []
    for method, cls in STRATEGIES.items():
        specs, notes = method_options(method), _option_notes(cls)
        options = [(s.name, f"{s.type_name} = {_fmt_default(s.default)}"
                    + (f" ({notes[s.name]})" if s.name in notes else "")) for s in specs.values()]
        lossless = _lossless_cell(cls, specs)
        md.append(f"| `{method}` | {_summary(cls)} | "
                  f"{'<br>'.join(f'`{n}`: {t}' for n, t in options) or '—'} | {lossless} |")
        text.append(f"{method}: {_summary(cls)}\n  lossless: {lossless}")
        text.extend(f"  {n}: {t}" for n, t in options)
    return "\n".join(md) if markdown else "\n".join(text)
