"""EAGLE-1/2 draft network (Li et al. 2024): one decoder layer that extrapolates the target's
features, autoregressively, one token ahead.

Row t of the draft reads [embedding of token t + 1, feature at t] through fc (2D -> D, with a
bias), then one Llama decoder layer with its own KV cache, and predicts the feature at t + 1; the
target's frozen LM head turns a predicted feature into next-token logits.

Feature convention (as the official code, read in SafeAILab/EAGLE `eagle/model/ea_model.py` and
`eagle/model/cnets1.py`, formerly `cnets.py`): the feature is the hidden state the LM head reads,
i.e. the target's final residual stream AFTER its final norm (`base_model.model(...)[0]`), and the
draft's output goes to the LM head directly, without the final norm again (the draft regresses a
normed feature, so norming it again would rescale it). The concatenation puts the embedding first.
The decoder layer has no input norm (the official layer 0 skips `input_layernorm`; fc's output goes
straight into attention) but keeps `post_attention_layernorm`. The embedding and the LM head are
the target's own: used, never copied into our files (the official layout carries a copy of the
embedding, `embed_tokens.weight`, which we check against the target on import and write on export).

Official checkpoint names: `fc.weight`, `fc.bias`, `layers.0.self_attn.{q,k,v,o}_proj.weight`,
`layers.0.mlp.{gate,up,down}_proj.weight`, `layers.0.post_attention_layernorm.weight`,
`embed_tokens.weight`; config.json is a Llama config with `num_hidden_layers: 1` and `bias` (fc's).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import numerics
from ..errors import SpecbenchError
from ..model import Block, KVCache, Linear, ModelArgs, Transformer
from .base import PROBE_ROWS, Drafter, read_json, read_weights, signature_mismatch, target_signature

OFFICIAL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
RANKS = 10   # ranks of the draft's choices whose acceptance is measured (the static tree's input)


def prior_accuracy(ranks: int = RANKS) -> list[float]:
    """A stand-in for measured per-rank acceptance when a drafter carries none (random or official
    drafts): the i-th choice is right with probability 0.7 * 0.3^i. Only a static tree's shape
    depends on it."""
    return [round(0.7 * 0.3 ** i, 6) for i in range(ranks)]


def span_mask(mask: torch.Tensor | None, n: int, span: int, device) -> torch.Tensor | None:
    """[n, span] boolean mask of n new rows that are the last n of `span` slots: `mask` as given when
    it is [n, span]; [n, n] among the new rows (None: causal) with every earlier slot visible."""
    if mask is None:
        if n == 1:
            return None
        mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    if mask.shape[-1] == span:
        return mask
    return torch.cat([torch.ones(n, span - n, dtype=torch.bool, device=device), mask], dim=1)


def cached_layer(layer: Block, attn_in: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor,
                 cache: KVCache, mask: torch.Tensor | None, model: Transformer, slots: torch.Tensor | None,
                 span: int | None) -> torch.Tensor:
    """A draft's decoder layer over new rows: q, k, v of `attn_in` at `positions` (the target's RoPE),
    K/V written to the draft cache at `slots` (default: after its committed entries), attention over
    its first `span` slots through `mask`, then the residual `residual` plus attention and the MLP."""
    n = attn_in.shape[0]
    if slots is None:
        slots = torch.arange(cache.length, cache.length + n, device=attn_in.device)
    if span is None:
        span = cache.length + n
    cos, sin = model.rope(positions)
    q, k, v = layer.kv(attn_in, cos.to(attn_in.dtype), sin.to(attn_in.dtype))
    cache.write(0, slots, k, v)
    attended = numerics.sdpa(q, cache.k[0][:, :span], cache.v[0][:, :span], span_mask(mask, n, span, attn_in.device))
    return layer.after_attention(residual, attended, "fast")


def official_draft_shape(folder: Path, config: dict, kind: str) -> tuple[int, int, int, int, int, int]:
    """hidden size, heads, kv heads, head dim, intermediate size and vocabulary of an official
    one-layer draft's config.json (EAGLE-1/2 and EAGLE-3 name them alike); one line if malformed."""
    try:
        dim, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or dim // heads)
        inter, layers = int(config["intermediate_size"]), int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise SpecbenchError(f"{folder / 'config.json'}: needs integer hidden_size, intermediate_size, "
                             f"num_attention_heads, num_hidden_layers and vocab_size") from e
    if layers != 1:
        raise SpecbenchError(f"{folder}: specbench reads {kind} drafts of one decoder layer, this config has {layers}")
    return dim, heads, kv_heads, head_dim, inter, vocab


def check_official_target(folder: Path, label: str, model: Transformer, dims: tuple[tuple[str, int, int], ...],
                          rope_theta: float, embed: torch.Tensor | None) -> None:
    """One line when an official draft folder was made for another model: dimensions (name, the
    draft's, the model's), RoPE base, or an embedding whose probe is not the model's."""
    t = model.args
    for name, ours, theirs in dims:
        if ours != theirs:
            raise SpecbenchError(f"{folder}: the {label} draft was made for another model: {name} {ours} "
                                 f"(this model: {theirs})")
    if abs(rope_theta - t.rope_theta) > 1e-6 * t.rope_theta:
        raise SpecbenchError(f"{folder}: the {label} draft's rope_theta {rope_theta:g} differs from this model's "
                             f"{t.rope_theta:g}")
    if embed is not None:
        rows = [r for r in PROBE_ROWS if r < embed.shape[0]]
        expected = {"hidden_size": embed.shape[1], "vocab_size": embed.shape[0],
                    "embed_probe": [round(x, 5) for x in embed[rows, :8].float().flatten().tolist()]}
        why = signature_mismatch(expected, model)
        if why is not None:
            raise SpecbenchError(f"{folder}: the {label} draft was made for another model: {why}")


def official_layer_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A Hugging Face Llama decoder layer's weights under `prefix` as our Block's (q/k/v and
    gate/up fused; the attention input norm is the caller's business)."""
    return {"layer.wqkv.weight": torch.cat([state[prefix + f"self_attn.{x}_proj.weight"] for x in "qkv"]),
            "layer.wo.weight": state[prefix + "self_attn.o_proj.weight"],
            "layer.w13.weight": torch.cat([state[prefix + "mlp.gate_proj.weight"], state[prefix + "mlp.up_proj.weight"]]),
            "layer.w2.weight": state[prefix + "mlp.down_proj.weight"],
            "layer.ffn_norm.weight": state[prefix + "post_attention_layernorm.weight"]}


class EagleDraft(Drafter):
    kind = "eagle"

    def __init__(self, target: dict, intermediate_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 rms_norm_eps: float = 1e-5, qkv_bias: bool = False, fc_bias: bool = True,
                 rank_accuracy: list[float] | None = None):
        super().__init__(target)
        dim = target["hidden_size"]
        self.args = ModelArgs(vocab_size=target["vocab_size"], hidden_size=dim, intermediate_size=intermediate_size,
                              num_layers=1, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                              rms_norm_eps=rms_norm_eps, qkv_bias=qkv_bias)
        self.fc_bias = fc_bias
        # P(the target's token is the draft's i-th choice), measured on held-out data after
        # training; the default static tree is built from it
        self.rank_accuracy = rank_accuracy or prior_accuracy()
        self.fc = Linear(2 * dim, dim, bias=fc_bias)
        self.layer = Block(self.args)
        self.layer.attn_norm = nn.Identity()
        # how often each token was a training target (the `draft_vocab` option ranks tokens by it)
        self.register_buffer("token_counts", torch.zeros(self.args.vocab_size, dtype=torch.long))

    @classmethod
    def for_target(cls, model: Transformer, **config) -> "EagleDraft":
        """The decoder layer is shaped like one of the target's (as the official drafts are)."""
        a = model.args
        layer = {"intermediate_size": a.intermediate_size, "num_heads": a.num_heads, "num_kv_heads": a.num_kv_heads,
                 "head_dim": a.head_dim, "rms_norm_eps": a.rms_norm_eps, "qkv_bias": a.qkv_bias}
        return cls(target_signature(model), **{**layer, **config})

    def config(self) -> dict:
        a = self.args
        return {"intermediate_size": a.intermediate_size, "num_heads": a.num_heads, "num_kv_heads": a.num_kv_heads,
                "head_dim": a.head_dim, "rms_norm_eps": a.rms_norm_eps, "qkv_bias": a.qkv_bias,
                "fc_bias": self.fc_bias, "rank_accuracy": self.rank_accuracy}

    def check_target(self, model: Transformer) -> None:
        super().check_target(model)
        if self.args.head_dim != model.args.head_dim:   # the layer uses the target's RoPE tables
            raise SpecbenchError(f"this eagle drafter was made for another model: head dim {self.args.head_dim} "
                                 f"(this model: {model.args.head_dim})")

    @staticmethod
    def feature(hidden: torch.Tensor, model: Transformer) -> torch.Tensor:
        """The EAGLE feature of the target's final residual stream: what its LM head reads."""
        return model.norm(hidden)

    def new_cache(self, max_len: int, device, dtype) -> KVCache:
        return KVCache(self.args, max_len, device, dtype)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                mask: torch.Tensor | None, model: Transformer, slots: torch.Tensor | None = None,
                span: int | None = None) -> torch.Tensor:
        """Rows (features [n, D], tokens [n]) at `positions`, written to the draft cache at `slots`
        (default: after its committed entries) and seeing its first `span` slots through `mask`
        ([n, span] or [n, n] among the new rows; None: causal): the predicted features [n, D]."""
        x = self.fc(torch.cat([model.embed(tokens).to(features.dtype), features], dim=-1))
        return cached_layer(self.layer, x, x, positions, cache, mask, model, slots, span)

    def feature_layers(self, model: Transformer) -> tuple[int, ...]:
        """The target layers whose outputs the draft reads: the last (the LM head's input)."""
        return (model.args.num_layers,)

    def draft_input(self, raw: torch.Tensor, model: Transformer) -> torch.Tensor:
        """The draft's row input from the target's raw feature layers: the normed final stream (in
        the drafter's dtype, which may differ from the target's)."""
        return self.feature(raw, model).to(self.dtype)

    def draft_logits(self, h: torch.Tensor, model: Transformer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of the draft's output h and the target ids of their columns (None: all, in order):
        EAGLE-1/2 read the target's own LM head (in the target's dtype)."""
        return model.lm_head(h.to(model.dtype)), None

    def init_from_target(self, model: Transformer) -> None:
        """Training starts from PyTorch's default initialisation, as the official training does
        (the target's embedding and LM head are used frozen, not copied)."""

    # ---- the official SafeAILab layout ------------------------------------------------------------
    def official_state(self, model: Transformer) -> dict[str, torch.Tensor]:
        a = self.args
        q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        wq, wk, wv = self.layer.wqkv.weight.split([q, kv, kv])
        gate, up = self.layer.w13.weight.chunk(2)
        state = {"embed_tokens.weight": model.embed.weight, "fc.weight": self.fc.weight,
                 "layers.0.self_attn.q_proj.weight": wq, "layers.0.self_attn.k_proj.weight": wk,
                 "layers.0.self_attn.v_proj.weight": wv, "layers.0.self_attn.o_proj.weight": self.layer.wo.weight,
                 "layers.0.mlp.gate_proj.weight": gate, "layers.0.mlp.up_proj.weight": up,
                 "layers.0.mlp.down_proj.weight": self.layer.w2.weight,
                 "layers.0.post_attention_layernorm.weight": self.layer.ffn_norm.weight}
        if self.fc_bias:
            state["fc.bias"] = self.fc.bias
        if a.qkv_bias:
            bq, bk, bv = self.layer.wqkv.bias.split([q, kv, kv])
            state.update({"layers.0.self_attn.q_proj.bias": bq, "layers.0.self_attn.k_proj.bias": bk,
                          "layers.0.self_attn.v_proj.bias": bv})
        return state

    def export_official(self, folder: str | Path, model: Transformer, dtype: torch.dtype = torch.float16,
                        weights: str = "pytorch_model.bin") -> Path:
        """Write config.json and `weights` (pytorch_model.bin, which the official EaModel loads, or
        model.safetensors) in the SafeAILab EAGLE layout."""
        if weights not in OFFICIAL_WEIGHTS:
            raise SpecbenchError(f"weights must be one of {', '.join(OFFICIAL_WEIGHTS)}, got {weights!r}")
        self.check_target(model)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype).clone().contiguous() for k, v in self.official_state(model).items()}
        if weights == "model.safetensors":
            from safetensors.torch import save_file
            save_file(state, str(folder / weights))
        else:
            torch.save(state, folder / weights)
        a, t = self.args, model.args
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "bias": self.fc_bias,
                  "hidden_size": a.hidden_size, "intermediate_size": a.intermediate_size,
                  "num_attention_heads": a.num_heads, "num_key_value_heads": a.num_kv_heads, "head_dim": a.head_dim,
                  "num_hidden_layers": 1, "vocab_size": a.vocab_size, "rms_norm_eps": a.rms_norm_eps,
                  "rope_theta": t.rope_theta, "max_position_embeddings": t.max_position_embeddings,
                  "hidden_act": "silu", "torch_dtype": str(dtype).replace("torch.", ""),
                  "base_model_name_or_path": self.target.get("name") or ""}
        if a.qkv_bias:
            config["qkv_bias"] = True
        (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        return folder

    @staticmethod
    def is_official(config: dict) -> bool:
        return "num_hidden_layers" in config and "hidden_size" in config and "format" not in config

    @classmethod
    def from_official(cls, folder: Path, model: Transformer) -> "EagleDraft":
        """Read a SafeAILab EAGLE / EAGLE-2 draft folder; refuse one made for another model."""
        config = read_json(folder / "config.json")
        if "draft_vocab_size" in config:
            raise SpecbenchError(f"{folder} holds an EAGLE-3 draft (draft_vocab_size): load it with load_drafter "
                                 f"for method eagle3")
        dim, heads, kv_heads, head_dim, inter, vocab = official_draft_shape(folder, config, "EAGLE-1/2")
        t = model.args
        state = read_weights(folder, OFFICIAL_WEIGHTS)
        check_official_target(folder, "EAGLE", model, (("hidden size", dim, t.hidden_size),
                              ("vocabulary", vocab, t.vocab_size), ("head dim", head_dim, t.head_dim)),
                              float(config.get("rope_theta", 10000.0)), state.pop("embed_tokens.weight", None))
        qkv_bias = "layers.0.self_attn.q_proj.bias" in state
        drafter = cls(target_signature(model), inter, heads, kv_heads, head_dim,
                      rms_norm_eps=float(config.get("rms_norm_eps", t.rms_norm_eps)), qkv_bias=qkv_bias,
                      fc_bias=bool(config.get("bias", True)))
        expected_keys = set(drafter.official_state(model)) - {"embed_tokens.weight"}
        extra = sorted(set(state) - expected_keys)
        missing = sorted(expected_keys - set(state))
        if extra or missing:
            what = f"lack {missing[0]!r}" if missing else f"hold an unexpected {extra[0]!r}"
            raise SpecbenchError(f"{folder}: EAGLE weights {what}")
        p = "layers.0."
        ours = {"fc.weight": state["fc.weight"], **official_layer_state(state, p)}
        if drafter.fc_bias:
            ours["fc.bias"] = state["fc.bias"]
        if qkv_bias:
            ours["layer.wqkv.bias"] = torch.cat([state[p + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        ours = {k: v.float() for k, v in ours.items()}
        ours["token_counts"] = drafter.token_counts    # the official layout keeps no counts
        try:
            drafter.load_state_dict(ours, strict=True)
        except RuntimeError as e:
            raise SpecbenchError(f"{folder}: EAGLE weights do not fit its config.json: {str(e).splitlines()[0]}") from e
        return drafter
