"""Draft-model speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a smaller model
sharing the vocabulary samples a chain of `num_draft` tokens from its own processed distribution."""
from __future__ import annotations

import torch

from ..engine import DecodeContext, Proposer, StepResult
from ..errors import SpecbenchError
from ..model import Transformer
from ..sampling import draw, process_logits
from ..tree import DraftTree


class DraftModel(Proposer):
    def __init__(self, model: Transformer, draft: Transformer | None = None, num_draft: int = 5):
        if draft is None:
            raise SpecbenchError("method 'sps' needs a draft model: draft=<model sharing the vocabulary> (CLI: --draft PATH)")
        if num_draft < 1:
            raise SpecbenchError(f"num_draft must be >= 1, got {num_draft}")
        if draft.args.vocab_size != model.args.vocab_size:
            raise SpecbenchError(f"the draft's vocabulary ({draft.args.vocab_size}) differs from the target's "
                                 f"({model.args.vocab_size}): sps needs a shared vocabulary")
        self.draft, self.num_draft = draft, num_draft
        self.max_nodes = num_draft

    def begin(self, ctx: DecodeContext) -> None:
        # the draft's cache follows the target's convention: all committed tokens but the root
        self.cache = self.draft.new_cache(ctx.prompt_len + ctx.max_new_tokens + self.num_draft + 1)

    def propose(self, ctx: DecodeContext) -> DraftTree:
        device = self.draft.device
        pending = ctx.tokens[self.cache.length:]          # committed tokens the draft has not seen
        x = torch.tensor(pending, device=device)
        tokens, qs = [], []
        for i in range(self.num_draft):
            start = self.cache.length
            out = self.draft(x, torch.arange(start, start + len(x), device=device), self.cache, last_only=True)
            self.cache.length += len(x)
            q = process_logits(out.logits[-1], ctx.params)
            token = draw(q, ctx.params, ctx.generator)
            tokens.append(token)
            qs.append(q)
            x = token.view(1)
        self.cache.length -= self.num_draft                 # back to "all committed but the root"
        return DraftTree.chain(torch.stack(tokens).to(ctx.model.device), torch.stack(qs))

    def accept(self, ctx: DecodeContext, step: StepResult) -> None:
        # keep the root and the accepted drafts already in the draft cache (the last draft token
        # was never fed to the draft model)
        self.cache.length += 1 + min(len(step.accepted), self.num_draft - 1)
