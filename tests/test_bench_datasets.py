"""Benchmark datasets: packaged sources, Spec-Bench JSONL parsing, selection, ShareGPT hold-out."""
import json
import re

import pytest

from specbench.bench import datasets
from specbench.errors import SpecbenchError


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_mt_bench_has_80_questions_of_two_turns():
    qs = datasets.load_dataset("mt_bench")
    assert len(qs) == 80
    assert all(len(q.turns) == 2 and all(isinstance(t, str) for t in q.turns) for q in qs)
    assert len({q.category for q in qs}) == 8
    assert datasets.mt_bench_path().name == "question.jsonl"


def test_humaneval_has_164_prompts():
    qs = datasets.load_dataset("humaneval")
    assert len(qs) == 164
    assert qs[0].question_id == "HumanEval/0" and qs[0].category == "humaneval"
    assert len(qs[0].turns) == 1 and "def " in qs[0].turns[0]


def test_jsonl_questions_text_and_ids(tmp_path):
    p = write(tmp_path / "q.jsonl", [
        json.dumps({"question_id": 1, "category": "a", "turns": ["hi", "more"], "reference": ["x"]}),
        "",
        json.dumps({"question_id": "two", "turns": [[1, 2, 3]]}),
    ])
    qs = datasets.load_dataset(str(p))
    assert [q.question_id for q in qs] == [1, "two"]
    assert qs[0].turns == ["hi", "more"] and qs[0].extra == {"reference": ["x"]}
    assert qs[1].category == "default" and qs[1].turns == [[1, 2, 3]]


@pytest.mark.parametrize("bad, why", [
    ('{"question_id": 3, "turns": ["x"]', "malformed JSON"),
    ('{"question_id": 3}', "missing 'turns'"),
    ('{"turns": ["x"]}', "missing 'question_id'"),
    ('{"question_id": 3, "turns": []}', "non-empty list"),
    ('{"question_id": 3, "turns": [1.5]}', "string or a non-empty list of token ids"),
    ('[1, 2]', "expected a JSON object"),
    ('{"question_id": 1, "turns": ["dup"]}', "duplicate question_id"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, why):
    p = write(tmp_path / "bad.jsonl", [json.dumps({"question_id": 1, "category": "c", "turns": ["ok"]}), "", bad])
    with pytest.raises(SpecbenchError) as e:
        datasets.load_dataset(str(p))
    assert f"{p}:3" in str(e.value) and why in str(e.value)


def test_missing_dataset_file():
    with pytest.raises(SpecbenchError, match="dataset file not found"):
        datasets.load_dataset("/no/such/questions.jsonl")


def test_selection_categories_limits_turns():
    qs = datasets.load_dataset("mt_bench")
    sel = datasets.select_questions(qs, limit_per_category=1, turns=1)
    assert len(sel) == 8 and len({q.category for q in sel}) == 8 and all(len(q.turns) == 1 for q in sel)
    sel = datasets.select_questions(qs, categories=["math", "coding"], limit=3)
    assert [q.category for q in sel] == ["math"] * 3
    with pytest.raises(SpecbenchError, match="unknown category 'poetry'"):
        datasets.select_questions(qs, categories=["poetry"])


def test_sharegpt_heldout_rule_is_stable_and_groups_pieces():
    assert datasets.sharegpt_base_id("abc_12") == "abc"
    ids = [f"conv{i}" for i in range(5000)]
    held = [i for i in ids if datasets.sharegpt_is_heldout(i)]
    assert 50 <= len(held) <= 150          # about 2 %
    for h in held[:5]:
        assert datasets.sharegpt_is_heldout(h + "_0") and datasets.sharegpt_is_heldout(h + "_7")


def test_sharegpt_bench_slice(monkeypatch, tmp_path):
    convs = []
    for i in range(400):
        convs.append({"id": f"c{i}_0", "conversations": [{"from": "human", "value": f"question {i}"},
                                                           {"from": "gpt", "value": "answer"}]})
    text = json.dumps(convs)[:-40]     # cut off mid-conversation, like the packaged file
    f = tmp_path / "data.json"
    f.write_text(text)
    monkeypatch.setattr(datasets, "sharegpt_path", lambda: f)
    datasets._sharegpt_conversations.cache_clear()
    try:
        qs = datasets.load_dataset("sharegpt")
        held = datasets.sharegpt_heldout_ids()
    finally:
        datasets._sharegpt_conversations.cache_clear()
    assert qs and all(datasets.sharegpt_is_heldout(q.question_id) for q in qs)
    assert {q.question_id for q in qs} <= held
    assert all(q.category == "sharegpt" and len(q.turns) == 1 for q in qs)


def test_packaged_sharegpt_slice():
    qs = datasets.load_dataset("sharegpt")
    held = datasets.sharegpt_heldout_ids()
    assert len(qs) >= 100 and len(held) >= len(qs)
    assert {q.question_id for q in qs} <= held
    assert all(0 < len(q.turns[0]) <= datasets.SHAREGPT_MAX_CHARS for q in qs)
    assert [q.question_id for q in qs] == [q.question_id for q in datasets.load_dataset("sharegpt")]


def test_sharegpt_long_summarization_and_rag(monkeypatch, tmp_path):
    reply = lambda i: f"reply {i} " + "word " * 400                    # ~2000 characters
    convs = [{"id": f"c{i}_0", "conversations": [
        {"from": "human", "value": f"question {i}?"}, {"from": "gpt", "value": reply(i)},
        {"from": "human", "value": "thanks"}, {"from": "gpt", "value": "short answer"}]} for i in range(600)]
    f = tmp_path / "data.json"
    f.write_text(json.dumps(convs))
    monkeypatch.setattr(datasets, "sharegpt_path", lambda: f)
    datasets._sharegpt_conversations.cache_clear()
    try:
        qs = datasets.load_dataset("sharegpt_long")
    finally:
        datasets._sharegpt_conversations.cache_clear()
    held = [c for c in convs if datasets.sharegpt_is_heldout(c["id"])]
    summ = [q for q in qs if q.category == "summarization"]
    rag = [q for q in qs if q.category == "rag"]
    assert len(summ) == len(rag) == len(held) >= 3       # one exchange per held-out conversation (short replies skipped)
    for q, conv in zip(summ, held):
        assert q.question_id == f"summarization-{conv['id']}:1"
        assert q.turns[0].startswith("Summarize") and conv["conversations"][1]["value"].strip() in q.turns[0]
    for i, (q, conv) in enumerate(zip(rag, held)):
        text = q.turns[0]
        assert text.endswith(f"Question: {conv['conversations'][0]['value']}")
        passages = re.findall(r"Passage \d:\n(reply \d+)", text)
        assert len(passages) == 3 and passages[i % 3] == f"reply {conv['id'][1:-2]}"


def test_packaged_sharegpt_long():
    qs = datasets.load_dataset("sharegpt_long")
    for category in ("summarization", "rag"):
        sub = [q for q in qs if q.category == category]
        assert len(sub) >= 100 and all(len(q.turns[0]) >= datasets.LONG_REPLY_CHARS[0] for q in sub)
