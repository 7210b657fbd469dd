"""The benchmark loop: every method in one process, questions outer and methods inner.

Protocol (Spec-Bench's, made stricter):

1. Resolve and validate the config, load and select the questions (a bad dataset line stops the
   run here), check the out folder (`store.prepare_folder`): all before any model is loaded.
2. Load the model (and drafts, and the Hugging Face twin for hf* methods) once.
3. Warm up: one short untimed generation per method (``warmup_tokens`` tokens on the longest
   first turn, whose CUDA graphs then serve every shorter prompt), every time the process starts work.
4. For each repeat, for each question, for each method (reference vanilla first), for each turn:
   build the prompt token ids (chat template over the conversation so far, with this method's own
   earlier answers as assistant messages; token-id turns are concatenated instead), then time
   ``generate`` between two device synchronisations (torch.cuda.synchronize on CUDA) and append
   the answer durably to answers.jsonl. Interleaving methods inside each question exposes them
   all alike to thermal or background drift.
5. When every answer exists: Spec-Bench-format files, plots, summary.md and, last, summary.csv.

Prompts are encoded once by the bench (`specbench.generate.encode_prompt` with the chat template)
and the *same* token ids go to every method, the HF baselines included; specbench methods get
them as a list of ids.

Answer lines (answers.jsonl) hold: question_id, category, turn (1-based), repeat (0-based),
method (the label), base_method, options, numerics (the mode the target ran in; null for the HF
baselines), new_tokens, wall_time_s (the bench's synchronised timing of the whole generate call),
steps, accepted_lengths, draft_tokens, lossless, prompt_tokens, token_ids, text, matches_vanilla
(token-exact equality with the answer of the reference vanilla of the same numerics mode to the
same question/turn/repeat; null without one), inner_wall_time_s (the method's own timing, from its
stats), stats (any further method statistics) and machine (`specbench.timing.machine`: the device's
name, and on a CPU the thread count and whether bfloat16 is native; a resumed run may have moved).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from specbench.checks import check_device
from specbench.errors import SpecbenchError
from specbench.strategies import STRATEGIES, make_proposer
from specbench.timing import machine as machine_of

from . import config as config_mod
from . import datasets, plots, specbench_format, store, summary
from .hf_baselines import HF_METHODS, HFBaselines

STANDARD_STATS = ("new_tokens", "steps", "accepted_lengths", "draft_tokens", "wall_time_s", "lossless",
                  "method", "prompt_tokens", "tokens_per_s", "mean_accepted")


# ---------------------------------------------------------------------------------------------
# the core, behind names that tests replace with fakes

def core_generate(model, prompt, **kwargs):
    import specbench
    return specbench.generate(model, prompt, **kwargs)


def core_load_model(path, device: str, dtype: str, verbose: bool = False, announce: bool = False):
    """A model, with the commands' one `loading ...` line on stderr when announce."""
    from specbench.loading import load_with_status, locate_model
    source = locate_model(path, verbose)
    return load_with_status(source, device, dtype) if announce else source.load(device, dtype)


def encode_messages(model, messages: list[dict]) -> list[int]:
    """Chat-templated prompt ids, exactly as specbench.generate would encode these messages."""
    try:
        from specbench.generate import encode_prompt
    except ImportError:
        encode_prompt = None
    if encode_prompt is not None:
        return list(encode_prompt(model, messages, True))
    tok = model.tokenizer
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


# ---------------------------------------------------------------------------------------------

@dataclass
class BenchResult:
    out: Path
    config: dict
    answers: list[dict]
    summary: pd.DataFrame
    plots: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    already_finished: bool = False
    reference: str | None = None

    def table(self, per_category: bool = False) -> str:
        text = summary.overall_table(self.summary)
        phases = summary.phase_table(self.summary)
        if phases:
            text += "\n\nTime by phase:\n" + phases
        if per_category and (self.summary["category"] != summary.ALL).any():
            text += "\n\n" + summary.category_table(self.summary)
        return text


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _device(model) -> torch.device:
    return torch.device(str(getattr(model, "device", "cpu")))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    try:
        return v.item()   # numpy scalars
    except Exception:
        return str(v)


def build_prompt(model, question: datasets.Question, turn: int, history: list[dict]) -> list[int]:
    """Prompt ids for turn `turn` (0-based) given this method's answers to the earlier turns."""
    turns = question.turns
    if isinstance(turns[0], list):
        ids: list[int] = []
        for j in range(turn):
            ids += list(turns[j]) + list(history[j]["token_ids"])
        return ids + list(turns[turn])
    if getattr(model, "tokenizer", None) is None:
        raise SpecbenchError(f"question {question.question_id!r} has text turns but the model has no tokenizer: "
                             "give turns as lists of token ids")
    messages = []
    for j in range(turn):
        messages += [{"role": "user", "content": turns[j]}, {"role": "assistant", "content": history[j]["text"]}]
    messages.append({"role": "user", "content": turns[turn]})
    return encode_messages(model, messages)


class _Methods:
    """Callables (prompt_ids, max_new_tokens) -> output for every method label of the run."""

    def __init__(self, model, cfg: dict, verbose: bool):
        self.model, self.cfg = model, cfg
        self.hf = HFBaselines(model, verbose)
        self.calls = {}
        for m in cfg["methods"]:
            self.calls[m["label"]] = self._make(m)

    def _make(self, m: dict):
        cfg = self.cfg
        sampling = dict(temperature=cfg["temperature"], top_k=cfg["top_k"], top_p=cfg["top_p"], seed=cfg["seed"])
        if m["method"] in HF_METHODS:
            self.hf.options(m["method"], m["options"])    # validate now, loading the HF model
            return lambda ids, n: self.hf.generate(m["method"], ids, max_new_tokens=n, **sampling, **m["options"])
        opts = dict(m["options"])
        if m["method"] in STRATEGIES:
            # built once now: loads its draft or drafter (kept per target) outside the timed calls,
            # and checks the options that need the model (an exit layer beyond its depth)
            make_proposer(m["method"], self.model, **opts)

        def call(ids, n):
            self.model.numerics = m["numerics"]      # the mode of this method's target forwards
            return core_generate(self.model, ids, method=m["method"], max_new_tokens=n, chat=False,
                                 **sampling, **opts)
        return call


def _answer(q, turn, repeat, m, ids, out, wall, matches, machine) -> dict:
    stats = dict(getattr(out, "stats", None) or {})
    token_ids = [int(t) for t in out.token_ids]
    return {
        "question_id": q.question_id, "category": q.category, "turn": turn + 1, "repeat": repeat,
        "method": m["label"], "base_method": m["method"], "options": m["options"], "numerics": m["numerics"],
        "new_tokens": len(token_ids), "wall_time_s": wall,
        "steps": _jsonable(stats.get("steps")), "accepted_lengths": _jsonable(stats.get("accepted_lengths")),
        "draft_tokens": _jsonable(stats.get("draft_tokens")), "lossless": stats.get("lossless"),
        "prompt_tokens": len(ids), "token_ids": token_ids, "text": out.text,
        "matches_vanilla": matches, "inner_wall_time_s": _jsonable(stats.get("wall_time_s")),
        "stats": {k: _jsonable(v) for k, v in stats.items() if k not in STANDARD_STATS},
        "machine": machine,
    }


def finalize(out: Path, cfg: dict, answers: list[dict], write: bool = True) -> BenchResult:
    out = Path(out)
    ref = config_mod.main_reference(cfg)
    df = summary.summarize(answers, cfg["methods"], ref)
    files = {"config": out / store.CONFIG_FILE, "answers": out / store.ANSWERS_FILE,
             "summary_csv": out / "summary.csv", "summary_md": out / "summary.md"}
    plot_paths = {"speedup": out / "speedup.png", "accepted_lengths": out / "accepted_lengths.png"}
    labels = [m["label"] for m in cfg["methods"]]
    if write:
        sb = specbench_format.write_specbench_files(answers, labels, out / "specbench_format")
        files.update({f"specbench_format/{k}": v for k, v in sb.items()})
        overall = df[df["category"] == summary.ALL]
        lossless = dict(zip(overall["method"], overall["lossless"]))
        plots.speedup_plot(df, plot_paths["speedup"])
        plots.accepted_lengths_plot(answers, plot_paths["accepted_lengths"], lossless)
        store.atomic_write(files["summary_md"], summary.markdown_report(df, cfg, ref, summary.machines(answers)))
        store.atomic_write(files["summary_csv"], df.to_csv(index=False))     # last: marks the folder finished
    else:
        for label in labels:
            files[f"specbench_format/{label}"] = out / "specbench_format" / f"{label}.jsonl"
    return BenchResult(out=out, config=cfg, answers=answers, summary=df, plots=plot_paths, files=files,
                       already_finished=not write, reference=ref)


def read_results(folder: str | Path) -> BenchResult:
    """A finished results folder as it is, with no config to match and no model: its stored
    config.json and answers, summarised again (a committed docs/results/<name>/ folder, say)."""
    folder = Path(folder)
    if not (folder / store.FINISHED_MARKER).is_file():
        raise SpecbenchError(f"{folder} holds no finished benchmark ({store.FINISHED_MARKER} is missing)")
    cfg = json.loads((folder / store.CONFIG_FILE).read_text(encoding="utf-8"))
    cfg.setdefault("numerics", "fast")          # folders written before the numerics modes
    for m in cfg["methods"]:
        m.setdefault("numerics", None if m["method"] in HF_METHODS else cfg["numerics"])
    return finalize(folder, cfg, store.read_answers(folder / store.ANSWERS_FILE, repair=False), write=False)


def run_benchmark(config: dict | str | Path | None, out: str | Path, model=None, progress: bool = True,
                  methods: list[str] | None = None, verbose: bool = False) -> BenchResult:
    """Run (or resume, or just re-read) a benchmark into the folder `out`.

    config: a dict (keys as in `specbench.bench.config.DEFAULTS`), a YAML/JSON file, or None.
    model: an already loaded specbench model to use instead of loading ``config["model"]`` (the
    config still decides what the folder records). methods: keep only these labels (or add these
    methods with default options), as ``--methods`` does. verbose: show transformers' output
    while loading. Everything is checked (config, options, model files, dataset, out folder,
    device) before any model is loaded.
    """
    raw = config_mod.load_config(config)
    cfg = config_mod.resolve_config(raw, methods_filter=methods)
    questions = datasets.select_questions(
        datasets.load_dataset(cfg["dataset"]), categories=cfg["categories"], limit=cfg["limit"],
        limit_per_category=cfg["limit_per_category"], turns=cfg["turns"])
    if not questions:
        raise SpecbenchError("no questions selected")
    out = Path(out)
    if not (out / store.FINISHED_MARKER).is_file():     # a finished folder is only re-read
        check_device(cfg["device"])
    finished, stored = store.prepare_folder(out, cfg)
    cfg = config_mod.jsonable(cfg)
    if finished:
        return finalize(out, cfg, stored, write=False)

    methods_cfg = cfg["methods"]
    refs = {m["label"]: config_mod.reference_for(cfg, m["label"]) for m in methods_cfg}
    done = {store.answer_key(a): a for a in stored}
    units = [(r, q, m) for r in range(cfg["repeats"]) for q in questions for m in methods_cfg]

    def key(q, turn, r, label):
        return (json.dumps(q.question_id), turn + 1, r, label)

    def unit_done(r, q, m):
        return all(key(q, t, r, m["label"]) in done for t in range(len(q.turns)))

    remaining = [u for u in units if not unit_done(*u)]
    answers = list(stored)
    threads_before = torch.get_num_threads()
    if remaining and cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    try:
        if remaining:
            _run_units(cfg, out, questions, remaining, len(units), done, answers, model, progress, refs, key,
                       verbose)
    finally:
        torch.set_num_threads(threads_before)
    # the answers in the order of the run (stored ones first, in file order)
    return finalize(out, cfg, answers, write=True)


def _run_units(cfg, out, questions, remaining, total, done, answers, model, progress, refs, key, verbose) -> None:
    """Load what the run needs, warm up, then time and store every remaining answer."""
    if model is None:
        model = core_load_model(cfg["model"], cfg["device"], cfg["dtype"], verbose, announce=progress)
    device = _device(model)
    machine = machine_of(device)            # torch's threads are set by now
    _log(progress, f"timing on: {machine}")
    calls = _Methods(model, cfg, verbose).calls
    # every first turn is built before timing starts, so a bad question fails early
    first_turns = [build_prompt(model, q, 0, []) for q in questions]
    if cfg["warmup_tokens"] > 0:
        _log(progress, f"warm-up: {len(calls)} methods x {cfg['warmup_tokens']} tokens (untimed)")
        # the longest first turn: on CUDA its cache size serves every shorter prompt (cuda_graph.graphed_model)
        warm_ids = max(first_turns, key=len)
        for label, call in calls.items():
            with torch.no_grad():
                call(warm_ids, min(cfg["warmup_tokens"], cfg["max_new_tokens"]))
        _sync(device)
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=total - len(remaining), disable=not progress,
               desc=f"bench {cfg.get('name') or out.name}", unit="q*m", dynamic_ncols=True)
    with store.AnswerWriter(out / store.ANSWERS_FILE) as writer:
        try:
            for r, q, m in remaining:
                bar.set_postfix_str(f"q={q.question_id} {m['label']}", refresh=False)
                history = []
                for t in range(len(q.turns)):
                    k = key(q, t, r, m["label"])
                    if k in done:
                        history.append(done[k])
                        continue
                    ids = build_prompt(model, q, t, history)
                    _sync(device)
                    start = time.perf_counter()
                    with torch.no_grad():
                        result = calls[m["label"]](ids, cfg["max_new_tokens"])
                    _sync(device)
                    wall = time.perf_counter() - start
                    matches, ref = None, refs[m["label"]]
                    if ref is not None:
                        if m["label"] == ref:
                            matches = True
                        elif key(q, t, r, ref) in done:
                            matches = [int(x) for x in result.token_ids] == done[key(q, t, r, ref)]["token_ids"]
                    a = _answer(q, t, r, m, ids, result, wall, matches, machine)
                    writer.write(a)
                    done[k] = a
                    answers.append(a)
                    history.append(a)
                bar.update(1)
        finally:
            bar.close()
