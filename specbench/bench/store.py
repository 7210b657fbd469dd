"""The out folder: config.json, the append-only answers.jsonl, and the finished marker.

Durability: every answer is one line written with a single os.write on an O_APPEND descriptor,
then fsync'ed, so an interrupted run (Ctrl-C, kill -9, power loss) keeps every answer it had
finished. At most the last line can be cut short; `read_answers` drops such a line (and truncates
the file to the last complete line) so that the answer is redone. An answer is identified by
(question_id, turn, repeat, method label); a duplicate key (impossible unless two processes share
a folder) is ignored on reading. ``summary.csv`` is written last, atomically: its presence marks
a finished folder, which is never rewritten.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from specbench.errors import SpecbenchError

from . import config as config_mod

CONFIG_FILE = "config.json"
ANSWERS_FILE = "answers.jsonl"
FINISHED_MARKER = "summary.csv"


def answer_key(a: dict) -> tuple:
    return (json.dumps(a["question_id"]), int(a["turn"]), int(a.get("repeat", 0)), a["method"])


def atomic_write(path: Path, data: str | bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_answers(path: Path, repair: bool = True) -> list[dict]:
    """Answers in file order, without duplicates and without a cut-off last line (which an
    interrupted write leaves behind: with repair=True the file is truncated to drop it, so the
    answer is redone). A bad line anywhere else raises SpecbenchError."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    chunks = data.split(b"\n")
    out, seen = [], set()
    offset = good_end = 0
    needs_newline = False
    for i, chunk in enumerate(chunks):
        complete = i < len(chunks) - 1          # followed by a newline
        end = offset + len(chunk) + (1 if complete else 0)
        if chunk.strip():
            try:
                obj = json.loads(chunk.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
                key = answer_key(obj)
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                if any(c.strip() for c in chunks[i + 1:]):
                    raise SpecbenchError(f"{path}:{i + 1}: corrupt answer line (not the last one, so not "
                                         "from an interrupted run): move the file away to start over") from None
                break
            if key not in seen:
                seen.add(key)
                out.append(obj)
            needs_newline = not complete
        offset = good_end = end
    if repair and (good_end != len(data) or needs_newline):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            if needs_newline:
                f.seek(good_end)
                f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
    return out


class AnswerWriter:
    """Appends answers durably, one line each."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, answer: dict) -> None:
        line = (json.dumps(answer, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def prepare_folder(out: Path, cfg: dict) -> tuple[bool, list[dict]]:
    """Check the out folder against the resolved config; return (finished, stored answers).

    Raises SpecbenchError when the folder holds answers (or a summary) of another config.
    Writes config.json when the folder has none (or has one but no answers).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpecbenchError(f"out folder {out} is a file")
    cfg_json = config_mod.jsonable(cfg)
    cfg_path, answers_path = out / CONFIG_FILE, out / ANSWERS_FILE
    stored_cfg = None
    if cfg_path.is_file():
        try:
            stored_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored_cfg = None
    answers = read_answers(answers_path, repair=False) if answers_path.is_file() else []
    finished = (out / FINISHED_MARKER).is_file()
    if (answers or finished) and stored_cfg is None:
        raise SpecbenchError(f"{out} holds benchmark results without a readable {CONFIG_FILE}: use another --out folder")
    if stored_cfg is not None and (answers or finished):
        diff = config_mod.differences(stored_cfg, cfg_json)
        if diff:
            raise SpecbenchError(f"{out} holds answers of a different config (differs in {', '.join(diff)}): "
                                 "use another --out folder, or rerun with the config stored in it")
        if finished:
            return True, answers
        return False, read_answers(answers_path, repair=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(cfg_path, json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    return False, answers
