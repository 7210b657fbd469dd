"""The core against transformers' modeling code: the default model (GGUF, fp32) and random small
Llama / Qwen2 / Mistral configs (float64 to ~1e-9, float32 to 1e-4), logits and greedy decoding.

transformers computes RoPE in float32 whatever the model dtype, so in the float64 comparisons its
rotary embedding is switched to float64 (and our frequencies are checked against its own
separately): otherwise both sides would differ at ~1e-6 from the float32 angles alone.
"""
from __future__ import annotations

import types

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

import specbench
from specbench.model import ModelArgs, rope_inv_freq




PROMPTS = [
    "Explain in a few paragraphs why the sky is blue during the day and red at sunset. Mention "
    "Rayleigh scattering, the wavelength dependence of scattering, the path length of sunlight "
    "through the atmosphere at different times of day, and why clouds look white instead of blue.",
    "Write a short Python function that reads a CSV file with the columns name, age and city, keeps "
    "only the people older than thirty who live in Paris or Berlin, sorts them by age, and returns "
    "their names as a list. Then explain each step of the function to a beginner programmer.",
]


def _eos(model) -> list[int]:
    eos = set(model.args.eos_token_ids)
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        eos.add(model.tokenizer.eos_token_id)
    return sorted(eos)


def _hf_greedy(hf, ids: list[int], max_new_tokens: int, eos: list[int]) -> list[int]:
    inp = torch.tensor([ids])
    with torch.no_grad():
        out = hf.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False, num_beams=1,
                          max_new_tokens=max_new_tokens, eos_token_id=eos or None,
                          pad_token_id=eos[0] if eos else 0, temperature=None, top_p=None, top_k=None)
    return out[0, len(ids):].tolist()


def _full_logits(model, ids: list[int]) -> torch.Tensor:
    tokens = torch.tensor(ids)
    with torch.inference_mode():
        return model(tokens, torch.arange(len(ids)), model.new_cache(len(ids))).logits


# ---- the default model ---------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", PROMPTS, ids=["sky", "code"])
def test_default_model_logits_match_transformers(default_model, hf_default_model, prompt):
    ids = specbench.encode_prompt(default_model, prompt)
    assert len(ids) >= 64
    ours = _full_logits(default_model, ids)
    with torch.no_grad():
        ref = hf_default_model(torch.tensor([ids])).logits[0]
    assert ours.shape == ref.shape == (len(ids), default_model.args.vocab_size)
    err = (ours - ref).abs().max().item()
    assert err <= 1e-3, f"max |logit difference| {err:.2e} over {len(ids)} positions"


@pytest.mark.parametrize("prompt", PROMPTS, ids=["sky", "code"])
def test_default_model_greedy_matches_transformers(default_model, hf_default_model, prompt):
    ids = specbench.encode_prompt(default_model, prompt)
    out = specbench.generate(default_model, prompt, max_new_tokens=64)
    ref = _hf_greedy(hf_default_model, ids, 64, _eos(default_model))
    assert out.token_ids == ref
    assert out.stats["prompt_tokens"] == len(ids) and out.stats["new_tokens"] == len(ref)
    assert len(ref) >= 16 and out.text.strip()   # a real answer, not an immediate EOS


def test_default_model_args(default_model):
    a = default_model.args
    assert (a.num_layers, a.hidden_size, a.num_heads, a.num_kv_heads, a.vocab_size) == (30, 576, 9, 3, 49152)
    assert a.tie_word_embeddings and default_model.lm_head.weight is default_model.embed.weight
    assert default_model.dtype == torch.float32 and default_model.tokenizer is not None


# ---- random small configs against transformers ---------------------------------------------------

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 512}
BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=1024, eos_token_id=None, bos_token_id=None, pad_token_id=None)
CONFIGS = {
    "llama-gqa-untied": (LlamaForCausalLM, LlamaConfig(**BASE, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-mha-tied": (LlamaForCausalLM, LlamaConfig(**BASE, num_key_value_heads=4, tie_word_embeddings=True)),
    "llama3-rope-gqa": (LlamaForCausalLM, LlamaConfig(**BASE, num_key_value_heads=1, tie_word_embeddings=True,
                                                      rope_parameters=dict(LLAMA3_ROPE))),
    "qwen2-bias-gqa-untied": (Qwen2ForCausalLM, Qwen2Config(**BASE, num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2-bias-tied": (Qwen2ForCausalLM, Qwen2Config(**BASE, num_key_value_heads=4, tie_word_embeddings=True)),
    # head_dim 32: the attention width (128) differs from hidden_size
    "mistral-gqa-headdim": (MistralForCausalLM, MistralConfig(**BASE, num_key_value_heads=2, head_dim=32,
                                                              sliding_window=None, tie_word_embeddings=False)),
}


def randomize(hf, seed: int = 0):
    """O(1) weights (HF's init is std 0.02: near-uniform outputs, a weak comparison) and a final
    norm scaled up so next-token distributions are peaked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        hf.model.norm.weight.mul_(4.0)
    return hf


def _rotary_float64(self, x, position_ids):
    freqs = position_ids[..., None].double() * self.inv_freq.double()
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def make_pair(name: str, dtype: torch.dtype, seed: int = 0):
    """(HF model, our copy of it) for a named config."""
    cls, cfg = CONFIGS[name]
    torch.manual_seed(seed)
    hf = randomize(cls(cfg.__class__.from_dict(cfg.to_dict())), seed).to(dtype).eval().requires_grad_(False)
    ours = specbench.from_hf(hf)
    rotary = hf.model.rotary_emb
    # our frequencies (llama3 scaling included) agree with transformers' to float32 precision
    torch.testing.assert_close(ours.inv_freq.double(), rotary.inv_freq.double(), rtol=1e-6, atol=0)
    if dtype == torch.float64:
        rotary.forward = types.MethodType(_rotary_float64, rotary)
        ours.inv_freq = rotary.inv_freq.to(torch.float64).clone()
    return hf, ours


TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_random_config_logits_match_transformers(name, dtype):
    hf, ours = make_pair(name, dtype)
    assert ours.dtype == dtype
    a = ours.args
    cfg = hf.config
    assert a.tie_word_embeddings == cfg.tie_word_embeddings
    assert (ours.lm_head.weight is ours.embed.weight) == cfg.tie_word_embeddings
    assert a.qkv_bias == (name.startswith("qwen2"))
    assert a.num_kv_heads == cfg.num_key_value_heads
    assert (a.rope_scaling is not None) == name.startswith("llama3")
    n = 120
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    assert ref.dtype == dtype
    # the test has power: outputs are far from uniform
    ent = -(ref.double().softmax(-1) * ref.double().log_softmax(-1)).sum(-1).mean().item()
    assert ent < 0.8 * torch.log(torch.tensor(float(cfg.vocab_size))).item()

    # one forward over everything
    with torch.inference_mode():
        full = ours(ids, torch.arange(n), ours.new_cache(n)).logits
    err = (full - ref).abs().max().item()
    assert err <= TOL[dtype], f"full forward: {err:.2e}"

    # prefill without logits, then chunks of 1..7 tokens on the cache (what decoding does)
    cache = ours.new_cache(n)
    with torch.inference_mode():
        ours(ids[:70], torch.arange(70), cache, stop_layer=a.num_layers)
        cache.length = 70
        bounds = [70, 71, 72, 75, 76, 83, 90, 91, n]
        rows = []
        for lo, hi in zip(bounds, bounds[1:]):
            out = ours(ids[lo:hi], torch.arange(lo, hi), cache, last_only=(hi - lo == 3))
            rows.append((lo, hi, out.logits))
            cache.compact(list(range(hi - lo)))
    assert cache.length == n
    for lo, hi, logits in rows:
        expect = ref[hi - 1:hi] if hi - lo == 3 else ref[lo:hi]
        err = (logits - expect).abs().max().item()
        assert err <= TOL[dtype], f"chunk {lo}:{hi}: {err:.2e}"


@pytest.mark.parametrize("name", ["llama-gqa-untied", "llama3-rope-gqa", "qwen2-bias-tied", "mistral-gqa-headdim"])
def test_random_config_greedy_matches_transformers(name):
    hf, ours = make_pair(name, torch.float64, seed=3)
    prompt = torch.randint(0, 97, (9,), generator=torch.Generator().manual_seed(2)).tolist()
    out = specbench.generate(ours, prompt, max_new_tokens=40)
    assert out.token_ids == _hf_greedy(hf, prompt, 40, [])
    assert len(out.token_ids) == 40 and len(set(out.token_ids)) > 3


def test_llama3_rope_scaling_matters():
    """The llama3 config's positions 0..120 really exercise the scaled and the interpolated bands."""
    _, cfg = CONFIGS["llama3-rope-gqa"]
    args = ModelArgs.from_hf_config(cfg)
    assert args.rope_scaling["rope_type"] == "llama3" and args.rope_theta == 500000.0
    scaled = rope_inv_freq(args)
    plain = rope_inv_freq(ModelArgs(**{**args.__dict__, "rope_scaling": None}))
    ratio = plain / scaled
    assert (ratio == 1).any() and (ratio == 8).any() and ((ratio > 1.01) & (ratio < 7.99)).any()
    # the transformers-4 spelling (rope_scaling + rope_theta, as in Llama-3.1's config.json) and the
    # older "type" key read the same
    legacy = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    for scaling in (legacy, {("type" if k == "rope_type" else k): v for k, v in legacy.items()}):
        d = {**BASE, "num_key_value_heads": 1, "rope_scaling": dict(scaling), "rope_theta": 500000.0}
        other = ModelArgs.from_hf_config(LlamaConfig.from_dict(d))
        assert other.rope_theta == 500000.0
        torch.testing.assert_close(rope_inv_freq(other), scaled, rtol=0, atol=0)


def test_rope_keeps_float32_in_low_precision():
    """bf16 holds integers exactly only up to 256: positions and frequencies must stay float32."""
    ref = specbench.random_model(max_position_embeddings=8192)
    pos = torch.tensor([0, 255, 257, 1001, 4099, 8191])
    cos32, sin32 = ref.rope(pos)
    for dt in (torch.bfloat16, torch.float16):
        for m in (specbench.random_model(max_position_embeddings=8192, dtype=dt),
                  specbench.random_model(max_position_embeddings=8192).to(dt)):
            cos, sin = m.rope(pos)
            assert cos.dtype == dt
            torch.testing.assert_close(cos, cos32.to(dt), rtol=0, atol=0)
            torch.testing.assert_close(sin, sin32.to(dt), rtol=0, atol=0)


def test_sliding_window_caps_the_context():
    """The core has no sliding-window attention: a config with a window shorter than its context
    must not silently attend further than the window (its context is capped to it)."""
    cfg = MistralConfig(**{**BASE, "max_position_embeddings": 256}, num_key_value_heads=2, sliding_window=16)
    hf = randomize(MistralForCausalLM(cfg)).to(torch.float64).eval()
    ours = specbench.from_hf(hf)
    assert ours.args.max_position_embeddings == 16
    with pytest.raises(specbench.SpecbenchError, match="context"):
        specbench.generate(ours, list(range(16)), max_new_tokens=4)
    out = specbench.generate(ours, list(range(10)), max_new_tokens=50)
    assert len(out.token_ids) == 6      # the budget stops at the window
    qcfg = Qwen2Config(**BASE, num_key_value_heads=2, use_sliding_window=True, sliding_window=32, max_window_layers=1)
    assert ModelArgs.from_hf_config(qcfg).max_position_embeddings == 32
    assert ModelArgs.from_hf_config(Qwen2Config(**BASE, num_key_value_heads=2)).max_position_embeddings == 1024


@pytest.mark.parametrize("extra", [{"attention_bias": True}, {"mlp_bias": True}])
def test_llama_biases_the_core_lacks_are_refused(extra):
    """Llama's attention_bias also puts a bias on o_proj, and mlp_bias on the MLP: refuse rather than
    silently drop them."""
    cfg = LlamaConfig(**BASE, num_key_value_heads=2, **extra)
    with pytest.raises(specbench.SpecbenchError, match="bias"):
        specbench.from_hf(LlamaForCausalLM(cfg))


class HostReadForbidden(torch.Tensor):
    """A tensor whose value may not reach the host: what a CUDA graph's capture forbids."""

    def _refuse(self, *args):
        raise AssertionError("the committed length was read on the host")

    __int__ = __index__ = __bool__ = __float__ = item = tolist = _refuse


@pytest.mark.parametrize("tree", [False, True])
def test_fast_attention_takes_a_device_start_without_reading_it(tree, monkeypatch):
    """Inside a CUDA graph the committed length is a device tensor. Where the kernels do not run (a
    float64 model on CUDA) fast attention must mask the whole cache on the device instead of reading
    the length: same logits as with the length as an int, and no host read (the negative control, a
    forward that converts it, is refused)."""
    model = specbench.random_model(vocab_size=64, num_layers=2, hidden_size=32, seed=3, dtype="float64")
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool) if tree else None
    positions = 7 + (torch.tensor([0, 1, 1, 2]) if tree else torch.arange(4))

    def run(start):
        cache = model.new_cache(24)
        model(torch.arange(7) % 64, torch.arange(7), cache)
        return model(torch.tensor([3, 9, 4, 1]), positions, cache, mask, start=start).logits

    device_start = torch.tensor([7]).as_subclass(HostReadForbidden)
    assert torch.equal(run(device_start).as_subclass(torch.Tensor), run(7))
    # negative control: attention that takes the length as an int (before session 37) reads it
    from specbench import numerics
    takes_int = numerics.Attention.__init__
    monkeypatch.setattr(numerics.Attention, "__init__", lambda self, mode, start, *a: takes_int(
        self, mode, int(start) if isinstance(start, torch.Tensor) else start, *a))
    with pytest.raises(AssertionError, match="read on the host"):
        run(device_start)
