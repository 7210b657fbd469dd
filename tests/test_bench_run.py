"""The benchmark loop on a fake generate: outputs, resume after interruption, folder safety, CLI."""
import argparse
import json
import os

import pytest
from test_bench_fakes import FakeGenerate, base_config, fake_model, install, write_questions

import torch

from specbench.bench import command, run_benchmark, runner, store
from specbench.errors import SpecbenchError
from specbench.timing import machine


@pytest.fixture
def qfile(tmp_path):
    return write_questions(tmp_path / "q.jsonl", n=3, turns=2)


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_full_run_writes_everything(monkeypatch, tmp_path, qfile):
    gen = install(monkeypatch)
    out = tmp_path / "res"
    res = run_benchmark(base_config(qfile), out, model=fake_model(), progress=False)
    answers = read_lines(out / "answers.jsonl")
    assert len(answers) == 3 * 2 * 3 == len(res.answers)
    # questions outer, methods inner, turns innermost; vanilla first
    order = [(a["question_id"], a["method"], a["turn"]) for a in answers]
    assert order[:6] == [(1, "vanilla", 1), (1, "vanilla", 2), (1, "pld", 1), (1, "pld", 2), (1, "lossy", 1), (1, "lossy", 2)]
    a = answers[2]
    for k in ("question_id", "category", "turn", "method", "options", "new_tokens", "wall_time_s", "steps",
              "accepted_lengths", "token_ids", "text", "matches_vanilla"):
        assert k in a
    assert a["options"] == {"num_draft": 4} and a["stats"] == {"extra_stat": 7}
    assert {a["method"]: a["matches_vanilla"] for a in answers} == {"vanilla": True, "pld": True, "lossy": False}
    # turn 2 feeds back the method's own turn-1 answer (token-id turns are concatenated)
    t1, t2 = answers[0], answers[1]
    assert t2["prompt_tokens"] == 3 + len(t1["token_ids"]) + 3
    # warm-up: one short untimed call per method before the first timed one
    assert [c[2] for c in gen.calls[:3]] == [2, 2, 2] and all(c[2] == 6 for c in gen.calls[3:])
    for name in ("config.json", "summary.csv", "summary.md", "speedup.png", "accepted_lengths.png"):
        assert (out / name).is_file(), name
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert set(res.plots) == {"speedup", "accepted_lengths"}
    md = (out / "summary.md").read_text()
    assert "lossy [lossy]" in md and "| a " in md
    # every answer names the machine that timed it, and the report says which
    here = machine(torch.device("cpu"))
    assert {a["machine"] for a in answers} == {here} and f"- machine: {here}\n" in md
    # Spec-Bench layout: one line per question, per-turn lists
    sb = read_lines(out / "specbench_format" / "pld.jsonl")
    assert len(sb) == 3 and sb[0]["question_id"] == 1
    ch = sb[0]["choices"][0]
    assert len(ch["turns"]) == len(ch["new_tokens"]) == len(ch["wall_time"]) == 2
    assert ch["accept_lengths"] == [2, 2, 2, 2, 2, 2]
    row = res.summary[(res.summary.method == "pld") & (res.summary.category == "all")].iloc[0]
    assert row.mean_accepted == 2.0 and row.exact_match == 1.0 and row.questions == 3


def test_warm_up_runs_on_the_longest_first_turn(monkeypatch, tmp_path):
    """On CUDA the longest prompt's captured graphs serve every shorter one, so the warm-up takes
    the longest first turn (the first question's would leave a longer prompt to capture in a timed
    answer)."""
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"question_id": i, "category": "a", "turns": [list(range(1, n))]}) + "\n"
                             for i, n in ((1, 3), (2, 9), (3, 5))))
    gen = install(monkeypatch)
    run_benchmark(base_config(qfile), tmp_path / "res", model=fake_model(), progress=False)
    assert [c[1] for c in gen.calls[:3]] == [list(range(1, 9))] * 3


def test_resume_after_interrupt_has_no_duplicates(monkeypatch, tmp_path, qfile):
    out = tmp_path / "res"
    cfg = base_config(qfile)
    install(monkeypatch, FakeGenerate(raise_after=7))
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, out, model=fake_model(), progress=False)
    assert len(read_lines(out / "answers.jsonl")) == 7
    assert not (out / "summary.csv").exists()
    # a kill -9 mid-write leaves a cut-off line: it is dropped and redone
    with open(out / "answers.jsonl", "ab") as f:
        f.write(b'{"question_id": 2, "category": "b", "tur')
    gen = install(monkeypatch, FakeGenerate())
    res = run_benchmark(cfg, out, model=fake_model(), progress=False)
    answers = read_lines(out / "answers.jsonl")
    keys = [store.answer_key(a) for a in answers]
    assert len(keys) == len(set(keys)) == 18 == len(res.answers)
    timed = [c for c in gen.calls if c[2] == 6]
    assert len(timed) == 18 - 7
    # answer 8 was question 2, vanilla, turn 1... the lossy answers still compare with vanilla
    assert all(a["matches_vanilla"] is (a["method"] != "lossy") for a in answers)


def test_the_run_says_which_machine_times_it(monkeypatch, tmp_path, qfile, capsys):
    install(monkeypatch)
    run_benchmark(base_config(qfile), tmp_path / "res", model=fake_model(), progress=True)
    assert f"timing on: {machine(torch.device('cpu'))}\n" in capsys.readouterr().err


def test_a_run_resumed_on_another_machine_is_flagged(monkeypatch, tmp_path, qfile):
    """Ratios are only fair within one machine: a folder whose answers two machines timed says so."""
    out = tmp_path / "res"
    cfg = base_config(qfile)
    monkeypatch.setattr(runner, "machine_of", lambda device: "CPU A")
    install(monkeypatch, FakeGenerate(raise_after=7))
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, out, model=fake_model(), progress=False)
    monkeypatch.setattr(runner, "machine_of", lambda device: "CPU B")
    install(monkeypatch, FakeGenerate())
    run_benchmark(cfg, out, model=fake_model(), progress=False)
    md = (out / "summary.md").read_text()
    assert "- machines: CPU A (7 answers); CPU B (11 answers)." in md
    assert "different machines" in md and "- machine:" not in md


def test_resume_mid_conversation_reuses_stored_turn(monkeypatch, tmp_path, qfile):
    out = tmp_path / "res"
    cfg = base_config(qfile)
    install(monkeypatch, FakeGenerate(raise_after=3))   # stops after pld turn 1 of question 1
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, out, model=fake_model(), progress=False)
    install(monkeypatch, FakeGenerate())
    run_benchmark(cfg, out, model=fake_model(), progress=False)
    answers = read_lines(out / "answers.jsonl")
    pld = [a for a in answers if a["method"] == "pld" and a["question_id"] == 1]
    assert [a["turn"] for a in pld] == [1, 2]
    assert pld[1]["prompt_tokens"] == 3 + len(pld[0]["token_ids"]) + 3


def test_other_config_in_used_folder_is_refused(monkeypatch, tmp_path, qfile):
    out = tmp_path / "res"
    install(monkeypatch, FakeGenerate(raise_after=2))
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(base_config(qfile), out, model=fake_model(), progress=False)
    install(monkeypatch)
    with pytest.raises(SpecbenchError) as e:
        run_benchmark(base_config(qfile, max_new_tokens=7), out, model=fake_model(), progress=False)
    msg = str(e.value)
    assert "different config" in msg and "max_new_tokens" in msg and "\n" not in msg
    # the cosmetic name does not count
    run_benchmark(base_config(qfile, name="renamed"), out, model=fake_model(), progress=False)


def test_finished_folder_is_not_rewritten(monkeypatch, tmp_path, qfile):
    out = tmp_path / "res"
    install(monkeypatch)
    first = run_benchmark(base_config(qfile), out, model=fake_model(), progress=False)
    stamps = {p: os.stat(out / p).st_mtime_ns for p in ("answers.jsonl", "summary.csv", "summary.md", "speedup.png")}
    gen = install(monkeypatch)
    again = run_benchmark(base_config(qfile), out, model=fake_model(), progress=False)
    assert again.already_finished and not gen.calls
    assert {p: os.stat(out / p).st_mtime_ns for p in stamps} == stamps
    assert again.table() == first.table()
    with pytest.raises(SpecbenchError, match="different config"):
        run_benchmark(base_config(qfile, limit=1), out, model=fake_model(), progress=False)


def test_without_vanilla_matches_and_speedup_are_null(monkeypatch, tmp_path, qfile):
    install(monkeypatch)
    cfg = base_config(qfile, methods=["pld", "lossy"], turns=1)
    res = run_benchmark(cfg, tmp_path / "res", model=fake_model(), progress=False)
    assert all(a["matches_vanilla"] is None for a in res.answers)
    assert res.summary["speedup"].isna().all()
    assert "-" in res.table()


def test_malformed_dataset_stops_before_anything(monkeypatch, tmp_path):
    gen = install(monkeypatch)
    q = tmp_path / "q.jsonl"
    q.write_text('{"question_id": 1, "turns": [[1, 2]]}\n{"question_id": 2, "turns": [[1, 2]\n')
    with pytest.raises(SpecbenchError, match=f"{q}:2"):
        run_benchmark(base_config(q), tmp_path / "res", model=fake_model(), progress=False)
    assert not gen.calls and not (tmp_path / "res").exists()


def test_text_turns_need_a_tokenizer(monkeypatch, tmp_path):
    install(monkeypatch)
    q = tmp_path / "q.jsonl"
    q.write_text('{"question_id": 1, "turns": ["hello"]}\n')
    with pytest.raises(SpecbenchError, match="no tokenizer"):
        run_benchmark(base_config(q), tmp_path / "res", model=fake_model(), progress=False)


def test_cli_run_and_errors(monkeypatch, tmp_path, qfile, capsys):
    install(monkeypatch)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "cli"
    f = tmp_path / "exp.yaml"
    f.write_text(f"dataset: {qfile}\nmax_new_tokens: 5\nwarmup_tokens: 2\nmethods: [vanilla, pld]\n")
    argv = ["--config", str(f), "--out", str(out), "--turns", "1", "--no-progress"]
    assert command.run(parser.parse_args(argv)) == 0
    first = capsys.readouterr().out
    assert "speedup" in first and "pld" in first
    assert command.run(parser.parse_args(argv)) == 0
    assert "already finished" in capsys.readouterr().out
    assert command.main(argv + ["--methods", "vanilla,warp"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown method 'warp'")
    assert command.main(argv + ["--max-new-tokens", "9"]) == 2
    assert "different config" in capsys.readouterr().err
