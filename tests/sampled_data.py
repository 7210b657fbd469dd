"""Training data for tests: a tiny model's own sampled continuations (on-policy data, as
self-distillation gives), so that drafters trained on it in seconds have a signal to learn."""
from __future__ import annotations

from collections.abc import Callable

import specbench
from specbench.train.data import TokenData


def default_prompt(s: int) -> list[int]:
    return [(s * 7 + i) % 16 for i in range(4)]


def own_samples(model, conversations: int = 20, new_tokens: int = 30, temperature: float = 1.0,
                prompt: Callable[[int], list[int]] = default_prompt) -> TokenData:
    """`conversations` prompts of 4 tokens, each followed by the model's sampled answer (the loss mask)."""
    tokens, masks = [], []
    for s in range(conversations):
        p = prompt(s)
        out = specbench.generate(model, p, max_new_tokens=new_tokens, temperature=temperature, seed=s).token_ids
        tokens.append(p + out)
        masks.append([False] * len(p) + [True] * len(out))
    return TokenData.from_lists(tokens, masks, {"source": "test", "vocab_size": model.args.vocab_size})
