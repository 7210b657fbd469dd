"""`specbench.generate`: prompt handling, validation and the choice of strategy around the engine."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import engine
from .checks import check_decoding
from .errors import SpecbenchError
from .model import ModelArgs, Transformer
from .strategies import make_proposer


@dataclass
class GenerationOutput:
    token_ids: list[int]
    text: str
    stats: dict = field(default_factory=dict)


def encode_prompt(model: Transformer, prompt, chat: bool = True) -> list[int]:
    """Token ids of a prompt: ids as given; text and chat messages through the tokenizer, with the
    chat template (and its generation prompt) unless chat=False. `model` may also be a
    `loading.ModelSource` (its tokenizer and args), so commands check prompts before loading weights."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise SpecbenchError("empty prompt")
        prompt_kind = "text"
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        prompt_kind = "messages"
    elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not prompt:
            raise SpecbenchError("empty prompt")
        bad = [t for t in prompt if not 0 <= t < model.args.vocab_size]
        if bad:
            raise SpecbenchError(f"prompt token id {bad[0]} is outside the vocabulary of {model.args.vocab_size}")
        return list(prompt)
    else:
        raise SpecbenchError("prompt must be a string, a list of token ids or a list of chat messages")
    tok = model.tokenizer
    if tok is None:
        raise SpecbenchError("this model has no tokenizer: pass the prompt as a list of token ids")
    if prompt_kind == "text" and not (chat and tok.chat_template):
        return tok.encode(prompt)
    messages = [{"role": "user", "content": prompt}] if prompt_kind == "text" else list(prompt)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def check_prompt_fits(n_tokens: int, args: ModelArgs) -> None:
    """A prompt must leave room for at least one new token in the model's context."""
    context = args.max_position_embeddings
    if n_tokens >= context:
        raise SpecbenchError(f"prompt of {n_tokens} tokens does not fit the model's context of {context} tokens")


def generate(model: Transformer, prompt, method: str = "vanilla", max_new_tokens: int = 128,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             chat: bool = True, **options) -> GenerationOutput:
    """Decode up to max_new_tokens new tokens with the named strategy (method options as kwargs)."""
    params, options = check_decoding(method, options, max_new_tokens, temperature, top_k, top_p)
    proposer = make_proposer(method, model, **options)
    ids = encode_prompt(model, prompt, chat)
    check_prompt_fits(len(ids), model.args)
    budget = min(max_new_tokens, model.args.max_position_embeddings - len(ids))
    eos = model.args.eos_token_ids
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        eos = tuple(sorted(set(eos) | {model.tokenizer.eos_token_id}))
    result = engine.run(model, proposer, ids, params, budget, seed, eos)
    result.stats.update(method=method, prompt_tokens=len(ids))
    text = model.tokenizer.decode(result.token_ids, skip_special_tokens=True) if model.tokenizer else ""
    return GenerationOutput(result.token_ids, text, result.stats)
