"""The converted-weights cache: a GGUF is converted once, later loads read the entry and give the
same model; a damaged entry is detected and rebuilt, never used; the key is cheap and follows the
content. On a tiny GGUF (converted in a few seconds) and, once, the default model."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from gguf_files import write_tiny_gguf

import specbench
from specbench import loading, weights_cache


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SPECBENCH_CACHE", str(root))
    return root


@pytest.fixture
def conversions(monkeypatch):
    """Counts GGUF conversions (the slow path)."""
    calls = []
    convert = loading._convert_gguf

    def counting(*args, **kwargs):
        calls.append(args[0])
        return convert(*args, **kwargs)

    monkeypatch.setattr(loading, "_convert_gguf", counting)
    return calls


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "Tiny-Test.Q8_0.gguf")


def same_model(a, b) -> None:
    assert a.args == b.args and a.name == b.name and a.hf_source == b.hf_source
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    messages = [{"role": "user", "content": "the cat and the hat"}]
    assert a.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True) == \
        b.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert a.tokenizer.eos_token_id == b.tokenizer.eos_token_id


def test_first_load_converts_later_loads_read_the_entry(cache, conversions, tiny_gguf):
    first = specbench.load_model(tiny_gguf)
    assert len(conversions) == 1
    entry = weights_cache.entry_dir(tiny_gguf)
    assert entry.parent.parent == cache and (entry / weights_cache.ENTRY_FILE).is_file()
    assert first.name == "Tiny-Test"
    assert first.hf_source == {"pretrained_model_name_or_path": str(tiny_gguf.parent), "gguf_file": tiny_gguf.name}
    second = specbench.load_model(str(tiny_gguf), dtype="float64")
    assert len(conversions) == 1                     # read from the entry
    assert second.dtype == torch.float64
    same_model(first, specbench.load_model(tiny_gguf))
    assert len(conversions) == 1


def test_entry_equals_transformers_conversion(cache, tiny_gguf):
    """What the entry holds is exactly what converting the GGUF through transformers gives."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    reference = specbench.from_hf(hf, tok)
    reference.name, reference.hf_source = "Tiny-Test", {"pretrained_model_name_or_path": str(tiny_gguf.parent),
                                                        "gguf_file": tiny_gguf.name}
    same_model(specbench.load_model(tiny_gguf), reference)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) - 10] ^= 0xFF            # inside the tensor data: the header still parses
    path.write_bytes(bytes(data))


DAMAGE = {
    "weights-truncated": ("model.safetensors", _truncate),
    "weights-one-byte-flipped": ("model.safetensors", _flip_byte),   # found by the CRC as it is read
    "entry-json-garbage": ("entry.json", lambda p: p.write_text("{ garbage")),
    "tokenizer-missing": ("tokenizer.json", lambda p: p.unlink()),
    "args-changed": ("args.json", lambda p: p.write_text(p.read_text().replace('"num_layers": 1', '"num_layers": 2'))),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_rebuilt(cache, conversions, tiny_gguf, damage):
    good = specbench.load_model(tiny_gguf)
    name, spoil = DAMAGE[damage]
    spoil(weights_cache.entry_dir(tiny_gguf) / name)
    again = specbench.load_model(tiny_gguf)
    assert len(conversions) == 2, "the damaged entry was used instead of rebuilt"
    same_model(good, again)
    weights_cache.check_entry(weights_cache.entry_dir(tiny_gguf))     # the rebuilt entry is sound


def test_key_follows_content_not_path(tmp_path, tiny_gguf):
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    assert weights_cache.fingerprint(copy) == weights_cache.fingerprint(tiny_gguf)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1                        # a sampled block (the file is smaller than 1 MiB)
    copy.write_bytes(bytes(data))
    assert weights_cache.fingerprint(copy) != weights_cache.fingerprint(tiny_gguf)
    copy.write_bytes(tiny_gguf.read_bytes() + b"\0")
    assert weights_cache.fingerprint(copy) != weights_cache.fingerprint(tiny_gguf)


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECBENCH_CACHE", str(tmp_path / "a"))
    assert weights_cache.cache_root() == tmp_path / "a"
    monkeypatch.delenv("SPECBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_cache.cache_root() == tmp_path / "xdg" / "specbench"


def test_unwritable_cache_is_one_line(tmp_path, monkeypatch, tiny_gguf):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SPECBENCH_CACHE", str(blocker / "cache"))
    with pytest.raises(specbench.SpecbenchError, match=r"cannot write the weights cache .* set SPECBENCH_CACHE") as e:
        specbench.load_model(tiny_gguf)
    assert "\n" not in str(e.value)


def test_default_model_cached_load(default_model):
    """The default model loads again from its entry: same weights, a stable name, quickly. The
    fixture converted it or found its entry; on this 2-core machine a second load measures ~1.5 s
    (README); the bound here leaves room for a busy CI machine."""
    entry = weights_cache.entry_dir(loading.default_model_path())
    weights_cache.check_entry(entry)
    start = time.perf_counter()
    again = specbench.load_model()
    elapsed = time.perf_counter() - start
    assert default_model.name == again.name == "SmolLM2-135M-Instruct"
    assert again.hf_source == default_model.hf_source
    for (k, a), b in zip(default_model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert elapsed < 6.0, f"second load took {elapsed:.1f} s"
    record = json.loads((entry / weights_cache.ENTRY_FILE).read_text())
    # the entry is keyed by the file's content: another checkout's copy of the same file may have written it
    assert Path(record["source"]).name == loading.default_model_path().name
