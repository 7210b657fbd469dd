"""Draft-model speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a smaller model
sharing the vocabulary samples a chain of `num_draft` tokens from its own processed distribution.

`draft=None` is the draft distilled from the default model and shipped with specbench (`specbench
train draft`; README, "A distilled draft for sps"); `specbench.drafters.draft.resolve_draft` lists
the other forms. On CUDA the draft's decoding forwards replay CUDA graphs as the target's do: a
few-layer draft is launch-bound too, and an eager one would cost as much as the target.
"""
from __future__ import annotations

import torch

from ..cuda_graph import BUCKETS, graphed_model
from ..drafters.draft import resolve_draft
from ..engine import DecodeContext, Proposer, StepResult
from ..errors import SpecbenchError
from ..model import Transformer
from ..sampling import draw, process_logits
from ..tree import DraftTree

GRAPHED_TOKENS = BUCKETS[1]   # the draft's decoding forwards (1 or 2 new tokens); prefill runs eager


class DraftModel(Proposer):
    def __init__(self, model: Transformer, draft=None, num_draft: int = 5):
        if isinstance(num_draft, bool) or not isinstance(num_draft, int) or num_draft < 1:
            raise SpecbenchError(f"num_draft must be an integer >= 1, got {num_draft!r}")
        draft = resolve_draft(draft, model)
        if draft.args.vocab_size != model.args.vocab_size:
            raise SpecbenchError(f"the draft's vocabulary ({draft.args.vocab_size}) differs from the target's "
                                 f"({model.args.vocab_size}): sps needs a shared vocabulary")
        if draft.device != model.device:
            raise SpecbenchError(f"the draft is on {draft.device} and the target on {model.device}: load both on one device")
        self.draft, self.num_draft = draft, num_draft
        self.max_nodes = num_draft

    def begin(self, ctx: DecodeContext) -> None:
        # the draft's cache follows the target's convention: all committed tokens but the root
        max_len = ctx.prompt_len + ctx.max_new_tokens + self.num_draft + 1
        # draft="target" must not share the target's own graphs and cache
        self.graphed = graphed_model(self.draft, max_len) \
            if ctx.graphed is not None and self.draft is not ctx.model else None
        if self.graphed is not None:
            for n in (1, GRAPHED_TOKENS):   # capture both shapes now, not inside a timed step
                self.graphed.prepare(n)
        self.cache = self.graphed.cache if self.graphed is not None else self.draft.new_cache(max_len)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The draft's next-token logits after new tokens x, written past its cache."""
        start = self.cache.length
        positions = torch.arange(start, start + len(x), device=x.device)
        if self.graphed is not None and len(x) <= GRAPHED_TOKENS:
            out = self.graphed.forward(x, positions, None)
        else:
            out = self.draft(x, positions, self.cache, last_only=True)
        self.cache.length += len(x)
        return out.logits[-1]

    def propose(self, ctx: DecodeContext) -> DraftTree:
        pending = ctx.tokens[self.cache.length:]          # committed tokens the draft has not seen
        x = torch.tensor(pending, device=self.draft.device)
        tokens, qs = [], []
        for _ in range(self.num_draft):
            q = process_logits(self._logits(x), ctx.params)
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
