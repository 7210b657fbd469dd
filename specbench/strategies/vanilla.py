"""Vanilla decoding: the empty draft, so every step commits exactly the target's own token."""
from __future__ import annotations

from ..engine import DecodeContext, Proposer
from ..tree import DraftTree


class Vanilla(Proposer):
    """Nothing: one token per target forward."""

    def propose(self, ctx: DecodeContext) -> DraftTree:
        return DraftTree.empty(ctx.model.device)
