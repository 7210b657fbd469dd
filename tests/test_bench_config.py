"""Benchmark configs: files, defaults, validation, sweep expansion, CLI overrides."""
import argparse
from pathlib import Path

import pytest
from test_bench_fakes import install, write_questions

from specbench.bench import command, config
from specbench.errors import SpecbenchError
from specbench.loading import default_model_path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def qfile(tmp_path, monkeypatch):
    install(monkeypatch)
    return write_questions(tmp_path / "q.jsonl")


def test_sweep_expands_into_labelled_variants(qfile):
    raw = {"dataset": str(qfile), "methods": {
        "pld": {"max_ngram": 3, "sweep": {"num_draft": [2, 4, 6, 8, 10]}},
        "vanilla": {},
        "grid": {"method": "pld", "sweep": {"num_draft": [2, 4], "max_ngram": [1, 2]}}}}
    cfg = config.resolve_config(raw)
    labels = [m["label"] for m in cfg["methods"]]
    assert labels[0] == "vanilla"            # the reference runs first
    assert labels[1:6] == [f"pld_num_draft{n}" for n in (2, 4, 6, 8, 10)]
    assert all(m["options"] == {"max_ngram": 3, "num_draft": n} for m, n in zip(cfg["methods"][1:6], (2, 4, 6, 8, 10)))
    assert labels[6:] == ["grid_num_draft2_max_ngram1", "grid_num_draft2_max_ngram2",
                          "grid_num_draft4_max_ngram1", "grid_num_draft4_max_ngram2"]
    assert {m["method"] for m in cfg["methods"][6:]} == {"pld"}


def test_list_form_labels_and_defaults(qfile):
    cfg = config.resolve_config({"dataset": str(qfile), "methods": ["pld", {"fast": {"method": "pld", "num_draft": 2}}, "vanilla"]})
    assert [(m["label"], m["method"], m["options"]) for m in cfg["methods"]] == [
        ("vanilla", "vanilla", {}), ("pld", "pld", {}), ("fast", "pld", {"num_draft": 2})]
    assert cfg["max_new_tokens"] == 256 and cfg["turns"] == "all" and cfg["temperature"] == 0.0
    assert cfg["dataset_path"] == str(qfile.resolve())


@pytest.mark.parametrize("raw, msg", [
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"methods": {"x": {"method": "nope"}}}, "unknown method 'nope' (label 'x')"),
    ({"methods": {"pld": {"bogus": 1}}}, "unknown option 'bogus' for method 'pld'"),
    ({"methods": {"sps": {"draft": "no/such/draft"}}}, "option draft of method 'sps': model path not found"),
    ({"methods": ["sps"], "draft": "target:0"}, "option draft of method 'sps': model path not found: target:0"),
    ({"methods": ["vanilla"], "colour": "red"}, "unknown config key 'colour'"),
    ({"methods": ["vanilla"], "turns": "some"}, "turns must be"),
    ({"methods": ["vanilla"], "max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"methods": ["vanilla"], "top_p": 0}, "top_p must be in"),
    ({"methods": ["vanilla"], "dataset": "/no/file.jsonl"}, "dataset file not found"),
    ({"methods": ["vanilla"], "model": "./no/such/model.gguf"}, "model file not found"),
    ({"methods": ["vanilla"], "model": "./no/such/folder"}, "model path not found"),
    ({"methods": {"pld": {"sweep": {"num_draft": []}}}}, "has no values"),
])
def test_bad_configs_give_one_clear_error(qfile, raw, msg):
    raw = {"dataset": str(qfile), **raw}
    with pytest.raises(SpecbenchError) as e:
        config.resolve_config(raw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_sps_gets_draft_path(qfile):
    cfg = config.resolve_config({"dataset": str(qfile), "methods": ["sps"], "draft": "target"})
    assert cfg["methods"][0]["options"] == {"draft": "target"}
    cfg = config.resolve_config({"dataset": str(qfile), "methods": {"sps": {"draft": "target:4"}}})
    assert cfg["methods"][0]["options"] == {"draft": "target:4"}
    cfg = config.resolve_config({"dataset": str(qfile), "methods": ["sps"]})   # the shipped draft
    assert cfg["methods"][0]["options"] == {}
    gguf = default_model_path()
    cfg = config.resolve_config({"dataset": str(qfile), "methods": {"sps": {"draft": str(gguf)}}})
    assert cfg["methods"][0]["options"] == {"draft": str(gguf.resolve())}
    with pytest.raises(SpecbenchError, match=r"q\.jsonl is not a GGUF file"):     # checked, not just found
        config.resolve_config({"dataset": str(qfile), "methods": {"sps": {"draft": str(qfile)}}})


def test_missing_config_file():
    with pytest.raises(SpecbenchError, match="config file not found"):
        config.load_config("/no/such.yaml")


def test_cli_flags_override_config(qfile, tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text(f"dataset: {qfile}\nmax_new_tokens: 64\nlimit: 2\nmethods:\n  vanilla: {{}}\n"
                 "  pld: {num_draft: 3}\n  lossy: {}\n")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--config", str(f), "--max-new-tokens", "8", "--methods", "pld,vanilla",
                              "--turns", "1"])
    raw, names = command.build_config(args)
    cfg = config.resolve_config(raw, methods_filter=names)
    assert cfg["max_new_tokens"] == 8 and cfg["limit"] == 2 and cfg["turns"] == 1 and cfg["name"] == "exp"
    assert [(m["label"], m["options"]) for m in cfg["methods"]] == [("vanilla", {}), ("pld", {"num_draft": 3})]


@pytest.mark.parametrize("name", ["quick.yaml", "mt_bench_full.yaml"])
def test_shipped_experiments_load(name):
    raw = config.load_config(EXPERIMENTS / name)
    assert raw["dataset"] == "mt_bench" and raw["methods"]
    # checks keys and types against the real registry when the core is present
    cfg = config.resolve_config(raw)
    assert cfg["methods"][0]["method"] == "vanilla"
