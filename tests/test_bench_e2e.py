"""End to end on the real specbench.generate: a tiny random model and token-id questions."""
import json

import pytest
import torch

import specbench
from specbench.bench import run_benchmark



@pytest.fixture
def qfile(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(json.dumps(q) for q in [
        {"question_id": 1, "category": "a", "turns": [[1, 2, 3, 4, 1, 2, 3], [5, 6]]},
        {"question_id": 2, "category": "b", "turns": [[7, 8, 9, 7, 8], [3]], "ignored": True},
    ]) + "\n")
    return p


def test_random_model_all_methods(tmp_path, qfile):
    model = specbench.random_model(vocab_size=16, num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2, seed=0)
    cfg = {"dataset": str(qfile), "max_new_tokens": 8, "warmup_tokens": 2, "draft": "target",
           "methods": {"vanilla": {}, "pld": {"max_ngram": 2, "num_draft": 4}, "sps": {"num_draft": 2},
                       "early_exit": {"exit_layer": 1}, "calm": {"method": "early_exit", "mode": "confidence"},
                       "lookahead": {"W": 3, "N": 3}}}
    res = run_benchmark(cfg, tmp_path / "res", model=model, progress=False)
    assert len(res.answers) == 2 * 2 * 6
    for a in res.answers:
        assert a["new_tokens"] == len(a["token_ids"]) and sum(a["accepted_lengths"]) == a["new_tokens"]
        if a["method"] != "calm":
            assert a["lossless"] is True and a["matches_vanilla"] is True, a["method"]
    overall = res.summary[res.summary.category == "all"].set_index("method")
    assert overall.loc["calm", "lossless"] is False
    assert overall.loc["vanilla", "speedup"] == pytest.approx(1.0)
    assert "calm [lossy]" in res.table()
    assert (tmp_path / "res" / "specbench_format" / "lookahead.jsonl").is_file()


def test_hf_baselines_match_vanilla(tmp_path, qfile):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=0, eos_token_id=15, pad_token_id=15, initializer_range=0.5,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "tiny")
    model = specbench.load_model(tmp_path / "tiny")
    assert model.hf_source and model.tokenizer is None
    bench = {"dataset": str(qfile), "max_new_tokens": 8, "warmup_tokens": 2, "turns": 1,
             "methods": {"vanilla": {}, "hf": {}, "hf_pld": {"prompt_lookup_num_tokens": 3},
                         "hf_early_exit": {"assistant_early_exit": 1}}}
    res = run_benchmark(bench, tmp_path / "res", model=model, progress=False)
    for a in res.answers:
        assert a["matches_vanilla"] is True, (a["method"], a["token_ids"])
        assert a["accepted_lengths"] is not None and sum(a["accepted_lengths"]) == a["new_tokens"]
