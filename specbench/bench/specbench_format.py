"""Answers in Spec-Bench's model_answer layout, so its ``evaluation/speed.py`` can read them.

Spec-Bench (hemingkx/Spec-Bench, evaluation/eval.py) writes one JSON line per question::

    {"question_id", "category", "answer_id", "model_id", "tstamp",
     "choices": [{"index", "turns": [text per turn], "decoding_steps": [per turn],
                  "new_tokens": [per turn], "wall_time": [seconds per turn],
                  "accept_lengths": [tokens per step, all turns concatenated]}]}

and ``speed.py --file-path <method>.jsonl --base-path <vanilla>.jsonl --tokenizer-path <model>``
reads ``choices[0]``: a question's speed is sum(new_tokens) / sum(wall_time), the method's
tokens/s the mean over questions, the speedup the ratio to the baseline file's mean, and the mean
accepted tokens the mean of all accept_lengths. (For the *baseline* it recounts tokens from the
``turns`` text as len(tokenizer(text).input_ids) - 1, which can differ slightly from new_tokens;
and it selects questions by Spec-Bench's category names, so for MT-bench use ``task="mt_bench"``.)

Mapping from specbench's answers.jsonl (one line per question x turn x repeat x method):
``specbench_format/<label>.jsonl`` gets one line per question; ``choices[r]`` is repeat r
(speed.py reads only repeat 0); per-turn lists are in turn order; ``model_id`` is the method
label; ``answer_id`` is ``<label>-<question_id>``; ``tstamp`` the file's writing time;
unknown steps are null and unknown accepted lengths an empty list.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def to_specbench(answers: list[dict], label: str) -> list[dict]:
    by_q: dict = {}
    order = []
    for a in answers:
        if a["method"] != label:
            continue
        qkey = json.dumps(a["question_id"])
        if qkey not in by_q:
            by_q[qkey] = {"question_id": a["question_id"], "category": a["category"], "repeats": {}}
            order.append(qkey)
        by_q[qkey]["repeats"].setdefault(int(a.get("repeat", 0)), []).append(a)
    now = time.time()
    out = []
    for qkey in order:
        q = by_q[qkey]
        choices = []
        for r in sorted(q["repeats"]):
            turns = sorted(q["repeats"][r], key=lambda a: a["turn"])
            choices.append({
                "index": r,
                "turns": [a["text"] for a in turns],
                "decoding_steps": [a.get("steps") for a in turns],
                "new_tokens": [a["new_tokens"] for a in turns],
                "wall_time": [a["wall_time_s"] for a in turns],
                "accept_lengths": [x for a in turns for x in (a.get("accepted_lengths") or [])],
            })
        out.append({"question_id": q["question_id"], "category": q["category"],
                    "answer_id": f"{label}-{q['question_id']}", "model_id": label,
                    "choices": choices, "tstamp": now})
    return out


def write_specbench_files(answers: list[dict], labels: list[str], folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label in labels:
        path = folder / f"{label}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for line in to_specbench(answers, label):
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        paths[label] = path
    return paths
