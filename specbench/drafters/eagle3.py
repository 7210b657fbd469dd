"""EAGLE-3 draft network (Li et al. 2025): one decoder layer on a fusion of low, middle and high
target features, with its own small vocabulary, trained on its own predictions (training-time test).

Row t of the draft reads token t + 1 and a hidden state x_t at position t. For rows the target has
produced, x_t = fc([f_low, f_mid, f_high] at t) (fc: 3D -> D, no bias), the target's residual stream
at the inputs of layers 2, L // 2 and L - 3; for tree rows, x is the draft's own output for the
parent row (the "hidden state fed back"). The decoder layer's attention reads
[input_norm(embedding), hidden_norm(x)] (2D wide: q, k, v take 2D inputs), its residual is x, and
its MLP follows as in Llama; the output h (before the final norm) is what deeper rows read, and
lm_head(norm(h)) scores the draft vocabulary: the `draft_vocab_size` tokens most frequent in the
training data's assistant turns, whose target ids `draft_ids` maps back to (the official d2t holds
`draft_ids - arange`, t2d marks them in the target vocabulary).

The serving layout, read in (names and config keys only):
- vllm-project/vllm `vllm/model_executor/models/llama_eagle3.py`: Eagle3LlamaForCausalLM loads
  `midlayer.*` as `layers.0.*`, `fc.weight` (input 3 * target_hidden_size, no bias), `norm.weight`,
  `lm_head.weight` [draft_vocab_size, D], `d2t` as draft_id_to_target_id (target = draft + d2t),
  skips `t2d`, and takes `embed_tokens` from the target when the folder has none; the decoder layer
  normalises the embedding with `input_layernorm` and the hidden state with `hidden_norm`, the
  embedding first in the concatenation; its `vllm/model_executor/models/registry.py` maps the
  architecture `LlamaForCausalLMEagle3` to that class.
- sgl-project/sglang `python/sglang/srt/models/llama_eagle3.py`: LlamaForCausalLMEagle3, the same
  names (`midlayer`, `fc` with bias only when config `bias`), `hot_token_id = d2t + arange`, and an
  LM head tied to the embedding when `tie_word_embeddings` is true (so we write false).
- sgl-project/SpecForge `specforge/modeling/draft/llama3_eagle.py`: the trainer's module, buffers
  `t2d` (bool [vocab_size]) and `d2t` (int64 [draft_vocab_size]); configs name the architecture
  `LlamaForCausalLMEagle3` with `draft_vocab_size`.
- Both engines capture the target's features at the inputs of layers (2, L // 2, L - 3) unless told
  otherwise (`set_eagle3_layers_to_capture` in SGLang's models, `get_eagle3_aux_hidden_state_layers`
  in vLLM's llama.py); our layer i is the stream after i blocks, the same thing.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpecbenchError
from ..model import Block, KVCache, Linear, ModelArgs, RMSNorm, Transformer
from .base import Drafter, frequent_tokens, read_json, read_weights, target_signature
from .eagle import (cached_layer, check_official_target, official_draft_shape, official_layer_state,
                    prior_accuracy)

ARCHITECTURE = "LlamaForCausalLMEagle3"
DEFAULT_DRAFT_VOCAB = 8192     # the default model's head: 8192 x 576 in fp16 = 9.4 MB (a file holds 16 MB)
OFFICIAL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def fused_layers(num_layers: int) -> tuple[int, ...]:
    """The low, middle and high feature layers SGLang and vLLM capture by default (clamped to
    1..L for tiny test models: layer 0, the embedding, is no block's output)."""
    return (min(2, num_layers), max(1, num_layers // 2), max(1, num_layers - 3))


class Eagle3Draft(Drafter):
    kind = "eagle3"

    def __init__(self, target: dict, intermediate_size: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 draft_vocab_size: int, feature_layers: list[int], rms_norm_eps: float = 1e-5,
                 rank_accuracy: list[float] | None = None):
        super().__init__(target)
        dim, vocab = target["hidden_size"], target["vocab_size"]
        if not 1 <= draft_vocab_size <= vocab:
            raise SpecbenchError(f"draft_vocab_size must be in 1..{vocab} (the target's vocabulary), "
                                 f"got {draft_vocab_size}")
        layers = [int(i) for i in feature_layers]
        if not layers or any(not 1 <= i <= target["num_layers"] for i in layers):
            raise SpecbenchError(f"feature_layers must be target layers in 1..{target['num_layers']}, got {layers}")
        self.args = ModelArgs(vocab_size=vocab, hidden_size=dim, intermediate_size=intermediate_size, num_layers=1,
                              num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                              rms_norm_eps=rms_norm_eps)
        self.target_layers = tuple(layers)
        self.rank_accuracy = rank_accuracy or prior_accuracy()
        self.fc = Linear(len(layers) * dim, dim, bias=False)
        self.input_norm = RMSNorm(dim, rms_norm_eps)      # the official input_layernorm (of the embedding)
        self.hidden_norm = RMSNorm(dim, rms_norm_eps)
        self.layer = Block(self.args)
        self.layer.attn_norm = nn.Identity()               # the two norms above replace it
        q, kv = num_heads * head_dim, num_kv_heads * head_dim
        self.layer.wqkv = Linear(2 * dim, q + 2 * kv, bias=False)
        self.norm = RMSNorm(dim, rms_norm_eps)
        self.lm_head = Linear(dim, draft_vocab_size, bias=False)
        # the target id of each draft-vocabulary entry, ascending (set from the training data)
        self.register_buffer("draft_ids", torch.arange(draft_vocab_size))

    @classmethod
    def for_target(cls, model: Transformer, draft_vocab_size: int = DEFAULT_DRAFT_VOCAB,
                   feature_layers: list[int] | None = None, **config) -> "Eagle3Draft":
        """The decoder layer is shaped like one of the target's; the draft vocabulary is capped at
        the target's; feature_layers None: the fused low, middle and high layers."""
        a = model.args
        layer = {"intermediate_size": a.intermediate_size, "num_heads": a.num_heads, "num_kv_heads": a.num_kv_heads,
                 "head_dim": a.head_dim, "rms_norm_eps": a.rms_norm_eps}
        layers = list(fused_layers(a.num_layers) if feature_layers is None else feature_layers)
        return cls(target_signature(model), **{**layer, **config}, draft_vocab_size=min(draft_vocab_size, a.vocab_size),
                   feature_layers=layers)

    def config(self) -> dict:
        a = self.args
        return {"intermediate_size": a.intermediate_size, "num_heads": a.num_heads, "num_kv_heads": a.num_kv_heads,
                "head_dim": a.head_dim, "rms_norm_eps": a.rms_norm_eps, "draft_vocab_size": self.lm_head.out_features,
                "feature_layers": list(self.target_layers), "rank_accuracy": self.rank_accuracy}

    def check_target(self, model: Transformer) -> None:
        super().check_target(model)
        if self.args.head_dim != model.args.head_dim:   # the layer uses the target's RoPE tables
            raise SpecbenchError(f"this eagle3 drafter was made for another model: head dim {self.args.head_dim} "
                                 f"(this model: {model.args.head_dim})")

    def init_from_data(self, counts: torch.Tensor) -> None:
        """The draft vocabulary: the most frequent targets of the training data (ties: lower id)."""
        self.draft_ids.copy_(frequent_tokens(counts, self.lm_head.out_features).to(self.draft_ids.device))

    def init_from_target(self, model: Transformer) -> None:
        """The head starts as the target's LM head rows of the draft vocabulary and the final norm as
        the target's (its other weights keep PyTorch's initialisation): a warm start, so that a short
        training already drafts the target's likely tokens."""
        with torch.no_grad():
            self.lm_head.weight.copy_(model.lm_head.weight[self.draft_ids.to(model.device)].to(self.lm_head.weight))
            self.norm.weight.copy_(model.norm.weight.to(self.norm.weight))

    def new_cache(self, max_len: int, device, dtype) -> KVCache:
        return KVCache(self.args, max_len, device, dtype)

    def feature_layers(self, model: Transformer) -> tuple[int, ...]:
        return self.target_layers

    def draft_input(self, raw: torch.Tensor, model: Transformer) -> torch.Tensor:
        """x of rows the target produced: fc over its feature layers side by side [n, k * D]."""
        return self.fc(raw.to(self.fc.weight.dtype))

    def attention_input(self, x: torch.Tensor, tokens: torch.Tensor, model: Transformer) -> torch.Tensor:
        return torch.cat([self.input_norm(model.embed(tokens).to(x.dtype)), self.hidden_norm(x)], dim=-1)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                mask: torch.Tensor | None, model: Transformer, slots: torch.Tensor | None = None,
                span: int | None = None) -> torch.Tensor:
        """Rows (x [n, D], tokens [n]) at `positions` on the draft cache (as EagleDraft.forward):
        the outputs h [n, D] before the final norm, which deeper rows read as their x."""
        return cached_layer(self.layer, self.attention_input(x, tokens, model), x, positions, cache, mask, model,
                            slots, span)

    def draft_logits(self, h: torch.Tensor, model: Transformer) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the draft vocabulary [n, N] and the target ids of their columns."""
        return self.lm_head(self.norm(h)), self.draft_ids

    def unroll(self, raw: torch.Tensor, ids: torch.Tensor, steps: int, model: Transformer) -> list[torch.Tensor]:
        """Training-time test over a batch of sequences padded at their ends to one length (raw
        [B, L, k * D], ids [B, L]), without a cache (differentiable): step 0 is the teacher-forced
        pass (row t: token t + 1, fc of the target's features at t, position t); step k feeds each
        row its own step k - 1 output with token t + 1 + k at position t + k, and row t attends to
        the step-0 rows 0..t plus its own rows of steps 1..k: exactly what a tree node k levels below
        the root sees at decode time. No real row sees padding, which only follows it. One batch
        is one pass per step whatever its size (the trainer is bound by kernel launches otherwise).
        Returns h of every step ([B, L - 1 - k, D])."""
        b, n = ids.shape[0], ids.shape[1] - 1
        x = self.draft_input(raw[:, :n].reshape(b * n, -1), model).view(b, n, -1)
        keys, values, outs = [], [], []
        for k in range(min(steps, n)):
            m = n - k
            cos, sin = (t.repeat(b, 1, 1).to(x.dtype) for t in model.rope(torch.arange(k, k + m, device=ids.device)))
            rows = x[:, :m].reshape(b * m, -1)
            q, key, value = self.layer.kv(self.attention_input(rows, ids[:, 1 + k: 1 + k + m].reshape(-1), model),
                                          cos, sin)
            keys.append(key.view(b, m, *key.shape[1:]))
            values.append(value.view(b, m, *value.shape[1:]))
            attended = chain_attention(q.view(b, m, *q.shape[1:]), keys, values)
            x = self.layer.after_attention(rows, attended.reshape(b * m, *q.shape[1:]), "fast").view(b, m, -1)
            outs.append(x)
        return outs

    # ---- the serving layout (SGLang / SpecForge / vLLM) -----------------------------------------
    def official_state(self) -> dict[str, torch.Tensor]:
        a = self.args
        q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
        wq, wk, wv = self.layer.wqkv.weight.split([q, kv, kv])
        gate, up = self.layer.w13.weight.chunk(2)
        p = "midlayer."
        t2d = torch.zeros(a.vocab_size, dtype=torch.bool, device=self.draft_ids.device)
        t2d[self.draft_ids] = True
        return {"fc.weight": self.fc.weight, p + "hidden_norm.weight": self.hidden_norm.weight,
                p + "input_layernorm.weight": self.input_norm.weight,
                p + "self_attn.q_proj.weight": wq, p + "self_attn.k_proj.weight": wk,
                p + "self_attn.v_proj.weight": wv, p + "self_attn.o_proj.weight": self.layer.wo.weight,
                p + "post_attention_layernorm.weight": self.layer.ffn_norm.weight,
                p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
                p + "mlp.down_proj.weight": self.layer.w2.weight, "norm.weight": self.norm.weight,
                "lm_head.weight": self.lm_head.weight,
                "d2t": self.draft_ids - torch.arange(len(self.draft_ids), device=self.draft_ids.device), "t2d": t2d}

    def export_official(self, folder: str | Path, model: Transformer, dtype: torch.dtype = torch.bfloat16) -> Path:
        """Write config.json and model.safetensors as SpecForge does, for SGLang and vLLM; the
        embedding is left out (both engines take the target's)."""
        self.check_target(model)
        if self.target_layers != fused_layers(model.args.num_layers):
            raise SpecbenchError(f"the serving layout needs the default fused feature layers "
                                 f"{list(fused_layers(model.args.num_layers))} (the ones SGLang and vLLM capture); "
                                 f"this drafter reads {list(self.target_layers)}")
        from safetensors.torch import save_file
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).clone().contiguous()
                 for k, v in self.official_state().items()}
        save_file(state, str(folder / "model.safetensors"))
        a, t = self.args, model.args
        config = {"architectures": [ARCHITECTURE], "model_type": "llama", "hidden_size": a.hidden_size,
                  "target_hidden_size": t.hidden_size, "intermediate_size": a.intermediate_size,
                  "num_attention_heads": a.num_heads, "num_key_value_heads": a.num_kv_heads, "head_dim": a.head_dim,
                  "num_hidden_layers": 1, "vocab_size": a.vocab_size, "draft_vocab_size": self.lm_head.out_features,
                  "rms_norm_eps": a.rms_norm_eps, "rope_theta": t.rope_theta,
                  "max_position_embeddings": t.max_position_embeddings, "hidden_act": "silu",
                  "attention_bias": False, "tie_word_embeddings": False,
                  "torch_dtype": str(dtype).replace("torch.", ""), "base_model_name_or_path": self.target.get("name") or ""}
        if t.rope_scaling:
            config["rope_scaling"] = t.rope_scaling
        (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        return folder

    @staticmethod
    def is_official(config: dict) -> bool:
        return "format" not in config and ("draft_vocab_size" in config or
                                           any("Eagle3" in str(a) for a in config.get("architectures") or []))

    @classmethod
    def from_official(cls, folder: Path, model: Transformer) -> "Eagle3Draft":
        """Read a SpecForge / SGLang / vLLM EAGLE-3 folder; refuse one made for another model."""
        config = read_json(folder / "config.json")
        dim, heads, kv_heads, head_dim, inter, vocab = official_draft_shape(folder, config, "EAGLE-3")
        try:
            draft_vocab = int(config.get("draft_vocab_size") or vocab)
            target_dim = int(config.get("target_hidden_size") or dim)
        except (TypeError, ValueError) as e:
            raise SpecbenchError(f"{folder / 'config.json'}: draft_vocab_size and target_hidden_size must be "
                                 f"integers") from e
        t = model.args
        dims = (("hidden size", dim, t.hidden_size), ("target hidden size", target_dim, t.hidden_size),
                ("vocabulary", vocab, t.vocab_size), ("head dim", head_dim, t.head_dim))
        if config.get("bias") or config.get("attention_bias"):
            raise SpecbenchError(f"{folder}: EAGLE-3 drafts with fc or attention biases are not supported")
        state = read_weights(folder, OFFICIAL_WEIGHTS)
        check_official_target(folder, "EAGLE-3", model, dims, float(config.get("rope_theta", 10000.0)),
                              state.pop("embed_tokens.weight", None))
        drafter = cls(target_signature(model), inter, heads, kv_heads, head_dim, draft_vocab,
                      list(fused_layers(t.num_layers)), rms_norm_eps=float(config.get("rms_norm_eps", t.rms_norm_eps)))
        if "d2t" not in state and draft_vocab == vocab:     # a full-vocabulary draft may omit the maps
            state["d2t"] = torch.zeros(vocab, dtype=torch.long)
        state.pop("t2d", None)                              # implied by d2t (the engines skip it too)
        expected_keys = set(drafter.official_state()) - {"t2d"}
        extra, missing = sorted(set(state) - expected_keys), sorted(expected_keys - set(state))
        if extra or missing:
            what = f"lack {missing[0]!r}" if missing else f"hold an unexpected {extra[0]!r}"
            raise SpecbenchError(f"{folder}: EAGLE-3 weights {what}")
        draft_ids = state["d2t"].long() + torch.arange(draft_vocab)
        if draft_ids.shape != (draft_vocab,) or not bool((draft_ids.diff() > 0).all()) or \
                int(draft_ids[0]) < 0 or int(draft_ids[-1]) >= vocab:
            raise SpecbenchError(f"{folder}: d2t does not map the draft vocabulary to distinct ascending target ids")
        p = "midlayer."
        ours = {"fc.weight": state["fc.weight"], "input_norm.weight": state[p + "input_layernorm.weight"],
                "hidden_norm.weight": state[p + "hidden_norm.weight"], **official_layer_state(state, p),
                "norm.weight": state["norm.weight"], "lm_head.weight": state["lm_head.weight"]}
        ours = {k: v.float() for k, v in ours.items()}
        ours["draft_ids"] = draft_ids
        try:
            drafter.load_state_dict(ours, strict=True)
        except RuntimeError as e:
            raise SpecbenchError(f"{folder}: EAGLE-3 weights do not fit its config.json: {str(e).splitlines()[0]}") from e
        return drafter


def chain_attention(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Attention of step-k rows q [B, m, H, d]: keys[0] / values[0] [B, >= m, Hkv, d] are the
    step-0 rows, seen causally (row t sees rows 0..t); keys[j] for j >= 1 are the row's own step-j
    entries (one each, at the same row). Returns [B, m, H, d]."""
    b, m, heads, d = q.shape
    group = heads // keys[0].shape[2]
    k0 = keys[0][:, :m].repeat_interleave(group, dim=2)
    v0 = values[0][:, :m].repeat_interleave(group, dim=2)
    scale = d ** -0.5
    causal = torch.ones(m, m, dtype=torch.bool, device=q.device).tril()
    scores = [torch.einsum("bthd,bshd->bhts", q, k0).masked_fill(~causal, float("-inf"))]
    own = [(q * kj[:, :m].repeat_interleave(group, dim=2)).sum(-1).transpose(1, 2)[..., None] for kj in keys[1:]]
    weights = F.softmax(torch.cat(scores + own, dim=-1) * scale, dim=-1)     # [B, H, m, m + k]
    out = torch.einsum("bhts,bshd->bthd", weights[..., :m], v0)
    for j, vj in enumerate(values[1:]):
        out = out + weights[..., m + j].transpose(1, 2)[..., None] * vj[:, :m].repeat_interleave(group, dim=2)
    return out
