"""`specbench profile` (API and CLI on the tiny shape), its bad input, the shapes' parameter counts,
the engine's phase timings and the CPU weight layout."""
from __future__ import annotations

import copy
import re
import time

import pandas as pd
import pytest
import torch

import specbench
from specbench import profile as prof
from specbench.cli import main
from specbench import model as core
from specbench.model import Transformer, cpu_bfloat16_native
from specbench.timing import PHASES, PhaseTimer


def test_profile_api_tiny_shape():
    df = prof.profile(shape="tiny", cache_lens=[0, 16], new_tokens=(1, 2, 4), repeats=2, decode_tokens=4, threads=1)
    assert len(df) == 6 and list(df["new_tokens"]) == [1, 2, 4] * 2
    assert list(df["cache_len"]) == [0] * 3 + [16] * 3
    assert (df["ms"] > 0).all() and df["device_ms"].isna().all()           # no device timing on CPU
    assert (df.loc[df["new_tokens"] == 1, "x_step"] == 1.0).all()
    assert (df["vanilla_tok_s"] > 0).all() and (df["threads"] == 1).all()
    assert (df["bfloat16_native"] == cpu_bfloat16_native()).all()
    native = "native" if cpu_bfloat16_native() else "not native"
    assert prof.table(df).splitlines()[0].startswith(f"tiny on {df['device_name'].iloc[0]}, 1 threads, bfloat16 {native}, float32")
    assert (df["label"] == "tiny").all() and (df["device"] == "cpu").all() and (df["dtype"] == "float32").all()
    model = prof.shape_model("tiny")
    assert df["weight_gb"].iloc[0] == pytest.approx(prof.weight_bytes(model) / 1e9)
    floor_ms = 1e3 * prof.weight_bytes(model) / (df["copy_gb_s"].iloc[0] * 1e9)
    assert df["floor_ms"].iloc[0] == pytest.approx(floor_ms)
    assert df["pct_of_floor"].tolist() == pytest.approx((100 * floor_ms * df["vanilla_tok_s"] / 1e3).tolist())


def test_profile_cli_writes_csv_table_and_trace(tmp_path, capsys):
    rc = main(["profile", "--shape", "tiny", "--cache-len", "8", "--repeats", "2", "--decode-tokens", "4",
               "--threads", "1", "--out", str(tmp_path), "--trace"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    csv = tmp_path / "profile_tiny_cpu_float32.csv"
    df = pd.read_csv(csv)
    assert list(df["new_tokens"]) == list(prof.NEW_TOKENS) and (df["cache_len"] == 8).all()
    assert re.search(r"^\| 8 \| ms \|( [\d.]+ \|){9} [\d.]+ \| \d+% \|$", out, re.M), out
    assert f"wrote {csv}" in out
    trace = (tmp_path / "kernels_tiny_cpu_float32.txt").read_text()
    assert "1 new tokens on a cache of 8" in trace and "16 new tokens" in trace and "mkldnn::_linear_pointwise" in trace


def test_profile_model_object_keeps_its_device_and_dtype():
    model = specbench.random_model(vocab_size=32, num_layers=1, hidden_size=16, num_heads=2, num_kv_heads=1)
    df = prof.profile(model, cache_lens=[4], new_tokens=(1, 8), repeats=1, decode_tokens=2)
    assert list(df["new_tokens"]) == [1, 8] and (df["label"] == "model").all() and df["dtype"].iloc[0] == "float32"
    model.numerics = "batch_invariant"                       # profiled in the model's own mode
    assert (prof.profile(model, cache_lens=[4], new_tokens=(1,), repeats=1, decode_tokens=2)["numerics"]
            == "batch_invariant").all()


BAD_CLI = [
    (["--shape", "gpt5"], r"unknown shape 'gpt5': choose one of default, llama2-7b"),
    (["--shape", "tiny", "--cache-len", "abc"], r"cache length must be an integer >= 0, got 'abc'"),
    (["--shape", "tiny", "--cache-len", "16", "-5"], r"cache length must be an integer >= 0, got '-5'"),
    (["--shape", "tiny", "--cache-len", "5000"], r"cache length 5000 \+ 256 new tokens exceeds the model's context of 2048"),
    (["--shape", "tiny", "--model", "x.gguf"], r"either a model path or a shape"),
    (["--shape", "tiny", "--dtype", "float8"], r"unknown dtype 'float8'"),
    (["--shape", "tiny", "--device", "tpu"], r"device 'tpu'"),
    (["--shape", "tiny", "--repeats", "0"], r"repeats must be an integer >= 1"),
    (["--shape", "tiny", "--threads", "two"], r"threads must be an integer >= 1, got 'two'"),
    (["--shape", "tiny", "--numerics", "exact"], r"unknown numerics 'exact'"),
    (["--model", "missing.gguf"], r"model file not found: missing.gguf"),
    (["--shape", "tiny", "--out", "{file}"], r"--out is a file, not a folder"),
    (["--shape", "tiny", "--cache-len"], r"expected at least one argument"),
]


@pytest.mark.parametrize("argv, pattern", BAD_CLI, ids=[" ".join(a) for a, _ in BAD_CLI])
def test_profile_bad_input_is_one_line_before_any_work(capsys, monkeypatch, tmp_path, argv, pattern):
    def no_work(*args, **kwargs):
        raise AssertionError("bad input must be refused before building or loading a model")
    monkeypatch.setattr(prof, "shape_model", no_work)
    monkeypatch.setattr(prof, "load_with_status", no_work)
    (tmp_path / "file").write_text("")
    rc = main(["profile", *(a.format(file=tmp_path / "file") for a in argv)])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_profile_cuda_without_gpu(capsys):
    assert main(["profile", "--shape", "tiny", "--device", "cuda"]) == 2
    assert "device 'cuda' is not available" in capsys.readouterr().err


def params_by_formula(a) -> int:
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    layer = a.hidden_size * (q + 2 * kv) + q * a.hidden_size + 3 * a.hidden_size * a.intermediate_size \
        + 2 * a.hidden_size + (q + 2 * kv if a.qkv_bias else 0)
    return a.num_layers * layer + a.hidden_size + a.vocab_size * a.hidden_size * (1 if a.tie_word_embeddings else 2)


# published parameter counts (model cards), embedding table included
PUBLISHED = {"default": 134_515_008, "llama2-7b": 6_738_415_616, "llama3-8b": 8_030_261_248,
             "qwen2-7b": 7_615_616_512}


@pytest.mark.parametrize("shape", list(PUBLISHED))
def test_shapes_have_their_published_sizes(shape):
    args = prof.SHAPES[shape]
    with torch.device("meta"):
        model = Transformer(args).to(torch.bfloat16)
    assert params_by_formula(args) == PUBLISHED[shape]
    embed = 0 if args.tie_word_embeddings else args.vocab_size * args.hidden_size   # read one row a step
    assert prof.weight_bytes(model) == 2 * (PUBLISHED[shape] - embed)


# ---- phase timings ---------------------------------------------------------------------------------

def test_phase_timer_charges_each_lap_to_its_phase():
    timer = PhaseTimer(torch.device("cpu"))
    time.sleep(0.02)
    timer.lap("prefill")
    time.sleep(0.04)
    timer.lap("forward")
    timer.lap("verify")
    totals = timer.totals()
    assert set(totals) == set(PHASES)
    assert 0.02 <= totals["prefill"] < 0.04 and 0.04 <= totals["forward"] < 0.08
    assert totals["verify"] < 0.01 and totals["draft"] == totals["host"] == 0.0


@pytest.mark.parametrize("method, options", [("vanilla", {}), ("pld", {"num_draft": 3}), ("lookahead", {"W": 3, "N": 3}),
                                             ("early_exit", {"mode": "confidence", "exit_layers": [1]})])
def test_generation_stats_carry_phase_times_within_wall_time(method, options):
    model = specbench.random_model(vocab_size=16, num_layers=2, hidden_size=32)
    out = specbench.generate(model, [1, 2, 3, 1, 2, 3, 1, 2], method=method, max_new_tokens=12, **options)
    phases = out.stats["phase_time_s"]
    assert set(phases) == set(PHASES) and all(t >= 0 for t in phases.values())
    assert phases["forward"] > 0 or method == "early_exit"      # confidence exits decide without a forward
    assert phases["draft"] > 0 and phases["verify"] > 0 and phases["host"] > 0
    assert sum(phases.values()) <= out.stats["wall_time_s"]


# ---- core paths changed for speed ---------------------------------------------------------------

@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (6, 2), (8, 1)])
@pytest.mark.parametrize("start, n", [(0, 1), (8, 1), (0, 5), (7, 5), (0, 16)])
def test_fast_cpu_attention_paths_equal_the_reference(heads, kv_heads, start, n):
    """Fast mode's CPU attention (grouped query heads; causal without a mask on an empty cache) and
    numerics.sdpa with an [n, span] mask (EAGLE's draft) against the float64 reference."""
    from specbench import numerics
    from specbench_kernels.attention import attention_reference
    gen = torch.Generator().manual_seed(start * 100 + n)
    q = torch.randn(n, heads, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(kv_heads, 24, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    tree = (torch.rand(n, n, generator=gen) < 0.5).tril() | torch.eye(n, dtype=torch.bool)
    positions = torch.arange(start, start + n)
    for mask in (tree, None):
        attend = numerics.Attention("fast", start, mask, positions)
        assert attend.causal == (mask is None and start == 0 and n > 1)
        torch.testing.assert_close(attend(q, k, v), attention_reference(q, k, v, start, mask), rtol=0, atol=1e-12)
    full = torch.cat([torch.ones(n, start, dtype=torch.bool), tree], dim=1)
    torch.testing.assert_close(numerics.sdpa(q, k[:, :start + n], v[:, :start + n], full),
                               attention_reference(q, k, v, start, tree), rtol=0, atol=1e-12)


def test_packed_linear_is_used_only_while_valid():
    model = specbench.random_model(vocab_size=16, num_layers=1, hidden_size=32)
    lin = model.layers[0].w13
    x = torch.randn(3, 32)
    assert lin._packed is not None                           # CPU float32: packed at the cast
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        lin.weight.mul_(2)                                   # an in-place change makes the packed copy stale
    with torch.inference_mode():
        assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight))
    model.pack_weights()
    assert lin._packed[1] == lin._key()
    bf16 = model.to(torch.bfloat16).layers[0].w13
    if cpu_bfloat16_native():                                # oneDNN packs bfloat16 only where the CPU has it
        assert bf16._packed[0].dtype == torch.bfloat16
    else:
        assert bf16._packed is None
    assert model.to(torch.float64).layers[0].w13._packed is None          # oneDNN has no float64
    copied = copy.deepcopy(model)                            # the opaque packed tensor is not copied
    assert "_packed" not in copied.layers[0].w13.__dict__
    tied = prof.shape_model("default")                       # SmolLM2 ties its LM head to the embedding
    assert tied.lm_head.weight is tied.embed.weight and tied.lm_head._packed[1] == tied.lm_head._key()


def test_bfloat16_linear_is_not_packed_on_a_cpu_without_native_bfloat16(monkeypatch):
    """On an AVX2-only CPU oneDNN refuses to pack a bfloat16 weight (it raised, and every bfloat16
    model on such a CPU with it): there the product stays F.linear's."""
    monkeypatch.setattr(core, "cpu_bfloat16_native", lambda: False)
    model = specbench.random_model(vocab_size=16, num_layers=1, hidden_size=32, dtype=torch.bfloat16)
    lin = model.layers[0].w13
    assert lin._packed is None
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(lin(x), torch.nn.functional.linear(x, lin.weight))


@pytest.mark.parametrize("pad", [True, False])
def test_packed_linear_over_two_rows(monkeypatch, pad):
    """A float32 product over exactly 2 rows runs as one over 3 where `pad_two_rows` says so (a
    zero row added: its rows equal those of the 3-row call bit for bit), else as given; both equal
    F.linear within rounding."""
    monkeypatch.setattr(core, "pad_two_rows", lambda: pad)
    model = specbench.random_model(vocab_size=16, num_layers=1, hidden_size=32)
    lin = model.layers[0].w13
    x = torch.randn(2, 32)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda x, *a: calls.append(x.shape[0]) or real(x, *a))
    with torch.inference_mode():
        two = lin(x)
        assert calls == [3 if pad else 2]
        assert two.shape == (2, lin.out_features)
        if pad:
            assert torch.equal(two, lin(torch.cat([x, torch.zeros(1, 32)]))[:2])
        torch.testing.assert_close(two, torch.nn.functional.linear(x, lin.weight), rtol=1e-5, atol=1e-5)
