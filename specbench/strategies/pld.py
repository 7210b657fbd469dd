"""Prompt lookup decoding (Saxena 2023): draft the tokens that followed the latest earlier
occurrence of the sequence's own last n-gram. No model; deterministic drafts."""
from __future__ import annotations

from ..engine import DecodeContext, Proposer
from ..model import send
from ..options import PositiveInt
from ..tree import DraftTree


def lookup_continuation(tokens: list[int], max_ngram: int, num_draft: int) -> list[int]:
    """Tokens after the most recent earlier match of the longest suffix n-gram (n <= max_ngram).

    The most recent match is preferred over the first: in chat and code the nearest repetition
    predicts best. Returns [] when no suffix n-gram of length >= 1 recurs.
    """
    n_tokens = len(tokens)
    for n in range(min(max_ngram, n_tokens - 1), 0, -1):
        suffix, last = tokens[n_tokens - n:], tokens[-1]
        # candidate starts run from the newest to the oldest, excluding the suffix itself
        for start in range(n_tokens - n - 1, -1, -1):
            if tokens[start + n - 1] == last and tokens[start:start + n] == suffix:
                follow = tokens[start + n:start + n + num_draft]
                if follow:
                    return follow
    return []


class PromptLookup(Proposer):
    """Prompt lookup: the tokens after the latest earlier match of the last n-gram (no model)."""

    def __init__(self, max_ngram: PositiveInt = 3, num_draft: PositiveInt = 10):
        self.max_ngram, self.num_draft = max_ngram, num_draft
        self.max_nodes = num_draft

    def propose(self, ctx: DecodeContext) -> DraftTree:
        draft = lookup_continuation(ctx.tokens, self.max_ngram, self.num_draft)
        return DraftTree.chain(send(draft, ctx.model.device))
