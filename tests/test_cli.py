"""Bad input that needs a model (prompts against its tokenizer and context, the hub offline):
`SpecbenchError` from the API, one `error: ...` line and exit 2 from the CLI; plus CLI runs end
to end (a tiny model saved to a tmp dir, and once the real default model). Bad input that needs
no model: tests/test_bad_input.py."""
from __future__ import annotations

import math
import re
import time

import pytest
import torch

import specbench
from specbench.cli import main

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WORDS = ["[UNK]", "</s>"] + ("the a cat dog sat on mat and ran to house red blue big small one two three "
                              "four five what is it i you we they see like").split()
CONTEXT = 12


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A local model dir the CLI can load in well under a second: a random 1-layer Llama
    (safetensors + config.json, context 12) and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    path = tmp_path_factory.mktemp("tiny")
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>").save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT,
                      eos_token_id=1, bos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return specbench.load_model(tiny_dir)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["generate", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_cli_error(capsys, argv, pattern: str) -> None:
    rc, out, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0], re.I), lines[0]
    assert out == ""


# ---- the Hugging Face hub, offline -----------------------------------------------------------------

def test_hub_id_offline_fails_fast_api(tmp_path, monkeypatch):
    """Here there is no network: a hub id must fail at once with a SpecbenchError naming the hub.
    (The cache is pointed at an empty dir so that a cached snapshot cannot make it pass.)"""
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(specbench.SpecbenchError, match=r"hub.*offline|offline.*hub") as info:
        specbench.load_model(HUB_ID)
    assert time.perf_counter() - start < 30
    assert HUB_ID in str(info.value)


def test_hub_id_offline_mode_cli(capsys, tmp_path, monkeypatch):
    """With HF_HUB_OFFLINE (set the way huggingface_hub reads it: at import), the same via the CLI."""
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    assert_cli_error(capsys, ["--model", HUB_ID, "--prompt", "hello"], r"hub.*offline|offline.*hub")
    assert time.perf_counter() - start < 30


# ---- prompts and generation options ----------------------------------------------------------------

def too_long_words(n: int = CONTEXT + 3) -> str:
    return " ".join(["cat"] * n)


# (generate kwargs, CLI args, message pattern)
OPTION_CASES = {
    "empty-prompt": ({"prompt": ""}, ["--prompt", ""], r"empty prompt"),
    "blank-prompt": ({"prompt": "  \n "}, ["--prompt", "  \n "], r"empty prompt"),
    "prompt-too-long": ({"prompt": too_long_words()}, ["--prompt", too_long_words(), "--no-chat"],
                        r"does not fit .*context of 12"),
    "prompt-fills-context": ({"prompt": too_long_words(CONTEXT)}, ["--prompt", too_long_words(CONTEXT)],
                             r"does not fit"),
    "temperature<0": ({"temperature": -0.5}, ["--temperature=-0.5"], r"temperature"),
    "temperature-nan": ({"temperature": math.nan}, ["--temperature", "nan"], r"temperature"),
    "top_p=0": ({"top_p": 0.0}, ["--top-p", "0"], r"top_p"),
    "top_p=1.5": ({"top_p": 1.5}, ["--top-p", "1.5"], r"top_p"),
    "top_k<0": ({"top_k": -1}, ["--top-k=-1"], r"top_k"),
    "max_new_tokens=0": ({"max_new_tokens": 0}, ["--max-new-tokens", "0"], r"max_new_tokens"),
    "max_new_tokens<0": ({"max_new_tokens": -3}, ["--max-new-tokens=-3"], r"max_new_tokens"),
    "unknown-method": ({"method": "beam_of_light"}, ["--method", "beam_of_light"], r"unknown method 'beam_of_light'"),
    "unknown-option": ({"bogus_option": 3}, ["--option", "bogus_option=3"], r"unknown option 'bogus_option'"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_options_api(tiny_model, case):
    kwargs, _, pattern = OPTION_CASES[case]
    kwargs = {"prompt": "the cat sat", **kwargs}
    with pytest.raises(specbench.SpecbenchError, match=pattern):
        specbench.generate(tiny_model, kwargs.pop("prompt"), **kwargs)


# the prompt cases need the tokenizer, which the CLI reads before the weights: still one line
PROMPT_CASES = ["empty-prompt", "blank-prompt", "prompt-too-long", "prompt-fills-context"]


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_bad_prompt_cli(capsys, tiny_dir, case):
    _, argv, pattern = OPTION_CASES[case]
    assert_cli_error(capsys, ["--model", tiny_dir, *argv], pattern)


def test_token_id_prompts_api():
    """Token-id prompts: the context bound (a prompt must leave room for one new token), empty and
    out-of-vocabulary prompts, and a model without tokenizer refusing text."""
    model = specbench.random_model(vocab_size=16, max_position_embeddings=8)
    with pytest.raises(specbench.SpecbenchError, match=r"prompt of 8 tokens does not fit .*context of 8"):
        specbench.generate(model, list(range(8)))
    with pytest.raises(specbench.SpecbenchError, match=r"does not fit"):
        specbench.generate(model, [1] * 20)
    out = specbench.generate(model, list(range(7)), max_new_tokens=5)
    assert len(out.token_ids) == 1            # the context leaves room for one token
    out = specbench.generate(model, [3, 4], max_new_tokens=50)
    assert len(out.token_ids) == 6
    with pytest.raises(specbench.SpecbenchError, match="empty prompt"):
        specbench.generate(model, [])
    with pytest.raises(specbench.SpecbenchError, match="outside the vocabulary"):
        specbench.generate(model, [1, 16])
    with pytest.raises(specbench.SpecbenchError, match="outside the vocabulary"):
        specbench.generate(model, [-1])
    with pytest.raises(specbench.SpecbenchError, match="no tokenizer"):
        specbench.generate(model, "hello")
    with pytest.raises(specbench.SpecbenchError, match="prompt must be"):
        specbench.generate(model, 42)


def test_good_options_are_accepted(tiny_model):
    """The boundaries themselves are valid: temperature 0, top_p 1, top_k 0, max_new_tokens 1."""
    for kwargs in ({"temperature": 0.0}, {"top_p": 1.0, "temperature": 1.0}, {"top_k": 0, "temperature": 0.7},
                   {"max_new_tokens": 1}, {"top_p": 1e-6, "temperature": 1.0}):
        out = specbench.generate(tiny_model, "the cat", chat=False, **{"max_new_tokens": 3, **kwargs})
        assert 1 <= len(out.token_ids) <= 3


# ---- the CLI end to end ----------------------------------------------------------------------------

def test_cli_generate_tiny_model(capsys, tiny_dir, tiny_model):
    rc, out, err = run_cli(capsys, "--model", tiny_dir, "--prompt", "the cat sat on", "--max-new-tokens", "4",
                           "--no-chat")
    assert rc == 0, err
    ids = specbench.encode_prompt(tiny_model, "the cat sat on", chat=False)
    expect = specbench.generate(tiny_model, ids, max_new_tokens=4)
    assert out.strip() == tiny_model.tokenizer.decode(expect.token_ids, skip_special_tokens=True).strip()
    loading, stats = [line for line in err.splitlines() if line.strip()]   # no progress bars, no warnings
    assert re.fullmatch(rf"loading {tiny_dir.name} \.\.\. done in [\d.]+ s", loading), err
    assert re.search(rf"\[vanilla\] {len(expect.token_ids)} tokens in [\d.]+ s = [\d.]+ tok/s", stats), err


def test_cli_generate_default_model(capsys):
    """One real end-to-end run on the default model (it loads the model again: ~25 s)."""
    rc, out, err = run_cli(capsys, "--prompt", "Write one sentence about the sea.", "--max-new-tokens", "8")
    assert rc == 0, err
    assert re.search(r"[A-Za-z]{2,}", out), out
    loading, stats = [line for line in err.splitlines() if line.strip()]
    assert re.match(r"loading SmolLM2-135M-Instruct \.\.\. done in [\d.]+ s", loading), err
    m = re.search(r"\[vanilla\] (\d+) tokens in [\d.]+ s = ([\d.]+) tok/s", stats)
    assert m, err
    assert 1 <= int(m.group(1)) <= 8 and float(m.group(2)) > 0
