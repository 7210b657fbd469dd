"""A compact decoder for the Llama family (Llama, SmolLM2, Qwen2, Mistral) that owns its KV cache.

One forward takes new tokens with explicit positions, a first cache slot and an attention mask
among them, on top of whatever the cache already holds. That single entry point serves prefill,
one-token decoding, chain and tree verification, early exit (`stop_layer`) and resuming from a
layer (`start_layer` + `hidden`). Its reductions run in the model's numerics mode
(specbench/numerics.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import numerics
from .errors import SpecbenchError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclass
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None          # Hugging Face rope parameters when not plain RoPE
    tie_word_embeddings: bool = False
    qkv_bias: bool = False                    # Qwen2 has biases on q, k and v
    max_position_embeddings: int = 2048
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def from_hf_config(cls, cfg) -> "ModelArgs":
        """Translate a transformers config; refuse architectures this core does not implement."""
        model_type = getattr(cfg, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise SpecbenchError(
                f"unsupported architecture {model_type!r}: specbench implements {', '.join(SUPPORTED_MODEL_TYPES)}")
        rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
        theta = rope.pop("rope_theta", None) or getattr(cfg, "rope_theta", None) or 10000.0
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        eos = getattr(cfg, "eos_token_id", None)
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        heads = cfg.num_attention_heads
        if getattr(cfg, "mlp_bias", False) or (model_type != "qwen2" and getattr(cfg, "attention_bias", False)):
            raise SpecbenchError("unsupported checkpoint: biases on o_proj or the MLP (attention_bias / mlp_bias) "
                                 "are not implemented")
        # no sliding-window attention here: cap the context at the window, where it is exact
        window = getattr(cfg, "sliding_window", None)
        if model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
            window = None
        context = min(cfg.max_position_embeddings, window) if window else cfg.max_position_embeddings
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_theta=float(theta),
            rope_scaling=None if rope_type == "default" else rope,
            tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2",
            max_position_embeddings=context,
            eos_token_ids=eos,
        )


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies, with Llama-3 or linear scaling when the config asks for it."""
    d = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    scaling = args.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    raise SpecbenchError(f"unsupported RoPE scaling {kind!r}: specbench implements default, linear and llama3")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()   # as transformers does, also for float64 models (the parity tests rely on it)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [n, heads, d]; cos/sin [n, 1, d/2]: rotate the two halves of each head (HF layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def tensor_key(t: torch.Tensor) -> tuple[int, int]:
    """A tensor's storage and version counter: changes when the tensor is replaced or written in
    place, so a copy derived from it (a packed weight, a drafter cast to another dtype) can tell it
    is stale. An inference tensor, made under torch.inference_mode, keeps no version counter: only
    its storage is compared."""
    return t.data_ptr(), -1 if t.is_inference() else t._version


def cpu_bfloat16_native() -> bool:
    """Whether this CPU multiplies bfloat16 natively through oneDNN (AVX512-BF16, AVX-NE-CONVERT or
    AMX). Elsewhere (an AVX2-only CPU) oneDNN refuses to pack a bfloat16 weight, and PyTorch's own
    bfloat16 product is quick for one row (half the bytes) but slow for several
    (docs/results/cpu_profile_epyc_avx2)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@functools.cache
def pad_two_rows() -> bool:
    """Whether a packed float32 product over exactly 2 rows runs as one over 3 (a zero row added).

    On session 30's CPU (its instruction set was not recorded) the default model's forward over 2
    tokens took 41.2 ms as given and 36.2 ms padded (3 tokens: 35.3; docs/results/cpu_two_rows/).
    On session 37's AVX2-only EPYC padding lost: 44.6 ms as given against 47.8 padded (3 tokens:
    46.8-47.2; docs/results/cpu_two_rows_avx2/). Both from `python experiments/cpu_two_rows.py`. So
    CPUs whose best kernels are AVX2 (or older) multiply the 2 rows as given; the rest pad."""
    return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")


def device_kind(device: torch.device) -> str:
    """The key of the strategies' measured defaults: "cpu", "cpu-avx2" for a CPU whose 2-row
    products run as given (`pad_two_rows`: there a forward over 2-3 tokens costs 1.09-1.14x a step
    and smaller drafts win, docs/results/cpu_avx2_trees_24q/), and "cuda" for any other device."""
    if device.type != "cpu":
        return "cuda"
    return "cpu" if pad_two_rows() else "cpu-avx2"


class Linear(nn.Linear):
    """nn.Linear that on CPU multiplies by a copy of its weight packed in oneDNN's blocked layout.

    A batch-1 step streams every weight through a matrix product over a few rows. PyTorch's CPU
    float32 product (MKL) repacks the weight on every call with 2 or more rows, so a forward over
    11 tokens cost 2.9x a one-token step; the prepacked oneDNN product does not (the default
    model's layers, one thread of the development machine, 1 / 4 / 11 / 16 rows: 27 / 43 / 78 /
    102 ms unpacked, 21 / 30 / 30 / 53 ms packed; bfloat16, 1 row: 23 vs 13 ms). The packed copy
    costs a second copy of the weight in memory. It is used only without autograd and only while
    the weight is the unchanged tensor it was packed from; otherwise F.linear runs.
    """

    def pack(self) -> None:
        w = self.weight
        packable = w.device.type == "cpu" and torch.backends.mkldnn.is_available() and (
            w.dtype == torch.float32 or (w.dtype == torch.bfloat16 and cpu_bfloat16_native()))
        self._packed = (torch.ops.mkldnn._reorder_linear_weight(w.detach()), self._key()) if packable else None
        self.__dict__.pop("_float32", None)    # a move or cast leaves the float32 copy stale: drop it now

    def _key(self) -> tuple[int, int]:
        """What identifies the weight the packed copy was made from."""
        return tensor_key(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.__dict__.get("_packed")
        if packed is not None and not torch.is_grad_enabled() and packed[1] == self._key():
            if x.dim() == 2 and x.shape[0] == 2 and x.dtype == torch.float32 and pad_two_rows():
                x = torch.cat([x, x.new_zeros(1, x.shape[1])])
                return torch.ops.mkldnn._linear_pointwise(x, packed[0], self.bias, "none", [], "")[:2]
            return torch.ops.mkldnn._linear_pointwise(x, packed[0], self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def float32_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias in float32, kept while the weight is unchanged: batch_invariant numerics
        multiply a half-precision layer in float32 on CPU (`numerics.linear`)."""
        key, cached = self._key(), self.__dict__.get("_float32")
        if cached is None or cached[0] != key:
            bias = None if self.bias is None else self.bias.detach().float()
            cached = self.__dict__["_float32"] = (key, self.weight.detach().float(), bias)
        return cached[1], cached[2]

    def __getstate__(self):   # copies and pickles drop the packed weight (an opaque tensor) and the float32 one
        return {k: v for k, v in self.__dict__.items() if k not in ("_packed", "_float32")}


def pack_linears(module: nn.Module) -> None:
    """`Linear.pack` every Linear in `module` (the target model, a drafter) for its device and dtype."""
    for m in module.modules():
        if isinstance(m, Linear):
            m.pack()


def fixed_linear(weight: torch.Tensor) -> Linear:
    """A bias-free Linear over an existing weight tensor [out, in], packed for its device: y = x W^T
    as the model's own layers compute it (on CPU a product over a few rows then skips MKL's
    repacking of the weight on every call)."""
    layer = Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.pack()
    return layer


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        q, kv = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        self.attn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.wqkv = Linear(args.hidden_size, q + 2 * kv, bias=args.qkv_bias)   # fused q, k, v
        self.wo = Linear(q, args.hidden_size, bias=False)
        self.ffn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.w13 = Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)  # gate, up
        self.w2 = Linear(args.intermediate_size, args.hidden_size, bias=False)

    def kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mode: str = "fast"):
        """q, k, v of x [n, D], with RoPE applied to q and k (`mode`: the numerics mode)."""
        a = self.args
        qkv = numerics.fused_linear(x, self.wqkv, mode, norm=self.attn_norm)
        q, k, v = qkv.split([a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim,
                             a.num_kv_heads * a.head_dim], dim=-1)
        q = apply_rope(q.view(-1, a.num_heads, a.head_dim), cos, sin)
        k = apply_rope(k.view(-1, a.num_kv_heads, a.head_dim), cos, sin)
        return q, k, v.view(-1, a.num_kv_heads, a.head_dim)

    def forward(self, x, cos, sin, cache: KVCache, layer: int, slots, attend: numerics.Attention, mode: str):
        """Write this block's K/V of x at `slots` of `cache` (layer `layer`), attend, then the rest."""
        q, k, v = self.kv(x, cos, sin, mode)
        cache.write(layer, slots, k, v)
        return self.after_attention(x, attend(q, cache.k[layer], cache.v[layer]), mode)

    def mix(self, x, q, k, v, mask):
        """The block after its K/V are known, without a cache: PyTorch's (differentiable) attention
        of q [n, heads, d] over k, v [kv_heads, span, d], then the rest of the block in fast
        numerics. Training a draft calls it (autograd must not see K/V written in place)."""
        return self.after_attention(x, numerics.sdpa(q, k, v, mask), "fast")

    def after_attention(self, x, attended, mode: str):
        """The output projection of attention's result [n, heads, d] and the MLP, with residuals."""
        x = numerics.fused_linear(attended.reshape(x.shape[0], -1), self.wo, mode, residual=x)
        gated = numerics.fused_linear(x, self.w13, mode, norm=self.ffn_norm, gated=True)
        return numerics.fused_linear(gated, self.w2, mode, residual=x)


def send(values, device: torch.device | str) -> torch.Tensor:
    """Host integers (an int or a list) as a long tensor on `device`, copied without waiting for
    the device: a blocking copy synchronises with the host, and a CUDA step keeps one (README,
    "Speed")."""
    return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)


class KVCache:
    """A static cache allocated once per generation: [layers, kv_heads, max_len, head_dim].

    `length` counts the committed entries (slots 0..length-1). Forwards write new entries at
    explicit slots past it; the engine then keeps what was accepted with `compact` or `truncate`.
    """

    def __init__(self, args: ModelArgs, max_len: int, device, dtype):
        shape = (args.num_layers, args.num_kv_heads, max_len, args.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0
        # the index tensors of write(), made once so that a write copies nothing from the host
        self._layer_ids = torch.arange(args.num_layers, device=device)
        self._head_ids = torch.arange(args.num_kv_heads, device=device)[:, None]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one layer's k, v [n, kv_heads, d] at `slots`.

        One index_put_ on the whole cache tensor, not a write into the layer's view: torch.compile
        rebuilds a write into a view of a graph input out of place, copying the whole cache at every
        layer (compiled on CPU, default model, 2048 slots: 732 ms per forward against 122 ms).
        """
        index = (self._layer_ids[layer], self._head_ids, slots[None, :])
        self.k.index_put_(index, k.transpose(0, 1))
        self.v.index_put_(index, v.transpose(0, 1))

    def truncate(self, length: int) -> None:
        """Discard everything from slot `length` on (rollback)."""
        if not 0 <= length <= self.max_len:
            raise ValueError(f"cannot truncate a cache of {self.max_len} slots to {length}")
        self.length = length

    def compact(self, keep: list[int] | torch.Tensor) -> None:
        """Commit the new entries at offsets `keep` (ascending, relative to `length`) in order.

        The accepted path of a token tree moves into the slots right after the committed ones; a
        chain whose accepted prefix is already in place costs no copy. A device tensor of offsets
        is used as it is, without reading it (the engine's greedy CUDA step: it passes every new
        row, path first, and truncates to the path once it has read the path's length).
        """
        start = self.length
        if isinstance(keep, torch.Tensor):
            src = keep + start
        elif keep != list(range(len(keep))):
            src = send(keep, self.k.device) + start
        else:
            src = None
        if src is not None:
            dst = slice(start, start + len(keep))
            self.k[:, :, dst] = self.k[:, :, src]
            self.v[:, :, dst] = self.v[:, :, src]
        self.length = start + len(keep)


@dataclass
class ForwardOut:
    logits: torch.Tensor | None          # [n, V] (or [1, V] with last_only), None when stopped early
    hidden: torch.Tensor | None           # [n, D] residual stream where the forward stopped
    layer_hidden: dict[int, torch.Tensor]  # requested layers' outputs (layer i = after i blocks)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("inv_freq", rope_inv_freq(args).float(), persistent=False)
        self.tokenizer = None        # a Hugging Face tokenizer, when the model came with one
        self.hf_source: dict | None = None   # from_pretrained kwargs that load the same weights in HF
        self.name = "unnamed"   # short and stable (a GGUF: its file name without the quantisation suffix)
        self.numerics = "fast"

    @property
    def numerics(self) -> str:
        """"fast" or "batch_invariant" (specbench/numerics.py): how every forward rounds."""
        return self._numerics

    @numerics.setter
    def numerics(self, mode: str) -> None:
        numerics.check_numerics(mode)
        if mode == "batch_invariant" and self.device.type == "cuda" and self.dtype == torch.float64:
            raise SpecbenchError("numerics 'batch_invariant' on CUDA runs Triton kernels for float32, "
                                 "bfloat16 and float16, not float64")
        self._numerics = mode

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def _apply(self, fn, *args, **kwargs):
        # .to(bfloat16 / float16) would round the RoPE frequencies, and rope() the positions with
        # them (bfloat16 holds integers exactly only up to 256): keep them in float32 or wider
        inv_freq = self.inv_freq
        super()._apply(fn, *args, **kwargs)
        if self.inv_freq.dtype not in (torch.float32, torch.float64):
            self.inv_freq = inv_freq.to(device=self.inv_freq.device)
        self.pack_weights()
        return self

    def pack_weights(self) -> None:
        """Remake every Linear's packed weight for the device and dtype the model now has (see
        `Linear`); every move or cast runs it, call it again after changing weights in place."""
        pack_linears(self)

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache(self.args, max_len, self.device, self.dtype)

    def logits_from(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shared final norm and LM head, on any layer's residual stream (early exit)."""
        mode = self.numerics
        return numerics.fused_linear(hidden, self.lm_head, mode, norm=self.norm)

    def rope(self, positions: torch.Tensor):
        freqs = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]
        return freqs.cos().to(self.dtype)[:, None, :], freqs.sin().to(self.dtype)[:, None, :]

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        mask: torch.Tensor | None = None,
        *,
        start: int | torch.Tensor | None = None,
        start_layer: int = 0,
        hidden: torch.Tensor | None = None,
        stop_layer: int | None = None,
        output_layers: tuple[int, ...] = (),
        last_only: bool = False,
    ) -> ForwardOut:
        """Run new tokens [n] at `positions` [n] over the cache.

        They are written at slots start .. start+n-1 (default start: the committed length) and see
        every slot below `start` and each other through `mask` [n, n] (None: causal). `start` may
        be a one-element device tensor (a CUDA graph's, set before each replay). `start_layer`
        with `hidden` [n, D] resumes a forward that `stop_layer` cut short.
        """
        n = tokens.shape[0]
        if mask is not None and mask.shape != (n, n):
            raise ValueError(f"mask must be [{n}, {n}], got {list(mask.shape)}")
        start = cache.length if start is None else start
        slots = start + torch.arange(n, device=tokens.device)
        attend = numerics.Attention(self.numerics, start, mask, positions, self.dtype)
        cos, sin = self.rope(positions)
        x = self.embed(tokens) if start_layer == 0 else hidden
        stop = self.args.num_layers if stop_layer is None else stop_layer
        layer_hidden = {}
        for i in range(start_layer, stop):
            x = self.layers[i](x, cos, sin, cache, i, slots, attend, self.numerics)
            if i + 1 in output_layers:
                layer_hidden[i + 1] = x
        if stop_layer is not None:   # early exit or prefill: the caller needs no logits
            return ForwardOut(None, x, layer_hidden)
        logits = self.logits_from(x[-1:] if last_only else x)
        return ForwardOut(logits, x, layer_hidden)

    def propagate_kv(self, hidden: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                     slots: torch.Tensor, from_layer: int) -> None:
        """Fill layers >= from_layer with K/V computed from an exited token's hidden state.

        Confidence early exit skips the upper layers for a token; later tokens still attend to it
        there, so its state is copied up (as in CALM) at the price of the K/V projections only.
        """
        cos, sin = self.rope(positions)
        for i in range(from_layer, self.args.num_layers):
            _, k, v = self.layers[i].kv(hidden, cos, sin, self.numerics)
            cache.write(i, slots, k, v)
