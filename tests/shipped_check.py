"""What every drafter shipped for the default model must pass (used by the sps and EAGLE-3 tests)."""
from __future__ import annotations

from pathlib import Path

import specbench
from specbench.drafters.base import MAX_FILE_BYTES

PROMPTS = ["What is speculative decoding?", "Write a haiku about rain.",
           "List three prime numbers and explain why they are prime."]


def check_shipped_folder(folder: Path) -> None:
    """config.json, safetensors weights, and no file over the 16 MB a shipped file may hold."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert (folder / "config.json").is_file() and list(folder.glob("model*.safetensors"))
    assert all(f.stat().st_size <= MAX_FILE_BYTES for f in files), "a shipped file exceeds 16 MB"


def greedy_mean_accepted(model, method: str, max_new_tokens: int = 64, **options) -> float:
    """Greedy `method` (its shipped drafter unless `options` name another) equals vanilla on PROMPTS;
    its mean tokens per step."""
    accepted = []
    for prompt in PROMPTS:
        vanilla = specbench.generate(model, prompt, max_new_tokens=max_new_tokens)
        out = specbench.generate(model, prompt, method=method, max_new_tokens=max_new_tokens, **options)
        assert out.token_ids == vanilla.token_ids, prompt
        accepted += out.stats["accepted_lengths"]
    return sum(accepted) / len(accepted)
