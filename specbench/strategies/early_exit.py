"""Early exit: the first layers of the target, with its shared final norm and LM head, as the draft.

mode="self_speculative" (lossless, as LayerSkip / Draft&Verify): draft `num_draft` tokens with the
first `exit_layer` layers; their K/V and residual streams stay, so verification resumes at
`exit_layer` instead of recomputing the early layers.
mode="confidence" (LOSSY, as CALM): each token leaves at the first candidate layer whose top
probability reaches that layer's threshold and is committed unverified; the layers it skipped get
K/V from its exit state (state propagation) so later tokens can attend to it.
"""
from __future__ import annotations

from typing import Literal

import torch

from ..engine import DecodeContext, Proposer
from ..errors import SpecbenchError
from ..model import Transformer, send
from ..options import PositiveInt, Probability
from ..sampling import draw, process_logits
from ..tree import DraftTree


class EarlyExit(Proposer):
    """The target's first exit_layer layers + its final norm and LM head; verification resumes there.

    mode="self_speculative" drafts num_draft tokens with the first exit_layer layers and verifies
    them; mode="confidence" commits each token unverified at the first of exit_layers whose top
    probability reaches its threshold.

    Options:
    exit_layer: None: 4/5 of the layers
    exit_layers: None: 1/4, 1/2, 3/4 of the layers
    thresholds: one for all exit layers or one each
    """

    def __init__(self, model: Transformer, mode: Literal["self_speculative", "confidence"] = "self_speculative",
                 exit_layer: PositiveInt | None = None, num_draft: PositiveInt = 3,
                 exit_layers: list[PositiveInt] | None = None,
                 thresholds: Probability | list[Probability] = 0.9):
        layers = model.args.num_layers
        self.mode, self.num_draft = mode, num_draft
        # default: 4/5 of the depth. Models not trained for early exit (SmolLM2) draft poorly from
        # shallow layers: on 10 MT-bench turns, 3 drafts, mean accepted 1.08 / 1.41 / 1.64 / 1.84
        # at exit layer 12 / 22 / 25 / 27 of 30 (README, "Choosing defaults")
        self.exit_layer = exit_layer if exit_layer is not None else max(1, (4 * layers) // 5)
        self.exit_layers = sorted(exit_layers) if exit_layers is not None else \
            sorted({max(1, layers * k // 4) for k in (1, 2, 3)})
        for layer in ([self.exit_layer] if mode == "self_speculative" else self.exit_layers):
            if not 1 <= layer <= layers - 1:
                raise SpecbenchError(f"exit layer {layer} is outside 1..{layers - 1}")
        if isinstance(thresholds, float):
            thresholds = [thresholds] * len(self.exit_layers)
        if len(thresholds) != len(self.exit_layers):
            raise SpecbenchError(f"thresholds must be one value or one per exit layer ({len(self.exit_layers)}), "
                                 f"got {len(thresholds)}")
        self.thresholds = list(thresholds)
        self.lossless = self.lossless_with({"mode": mode})
        self.max_nodes = num_draft if self.lossless else 0
        self.verify_start_layer = self.exit_layer if self.lossless else 0
        self.exits: list[int] = []

    @classmethod
    def lossless_with(cls, options: dict) -> bool:
        return options["mode"] == "self_speculative"

    def propose(self, ctx: DecodeContext) -> DraftTree:
        return self._draft(ctx) if self.lossless else self._confident_token(ctx)

    def _one_token(self, ctx: DecodeContext, token: torch.Tensor, offset: int, start_layer: int,
                   hidden: torch.Tensor | None, stop_layer: int) -> torch.Tensor:
        """Run one token at slot/position cache.length + offset through layers [start, stop)
        (`hidden` is its residual stream at `start_layer` when that is not 0)."""
        pos = send([ctx.cache.length + offset], ctx.model.device)
        return ctx.forward(token.view(1), pos, None, offset, start_layer, hidden, stop_layer).hidden

    def _draft(self, ctx: DecodeContext) -> DraftTree:
        model, k = ctx.model, self.exit_layer
        token = send(ctx.root, model.device)
        hidden, tokens, qs = [], [], []
        for i in range(self.num_draft + 1):      # the extra pass takes the last draft to layer k
            h = self._one_token(ctx, token, i, 0, None, k)
            hidden.append(h)
            if i == self.num_draft:
                break
            q = process_logits(model.logits_from(h)[0], ctx.params)
            token = draw(q, ctx.params, ctx.generator)
            tokens.append(token)
            qs.append(q)
        tree = DraftTree.chain(torch.stack(tokens), torch.stack(qs))
        tree.resume_layer, tree.resume_hidden = k, torch.cat(hidden)
        return tree

    def _confident_token(self, ctx: DecodeContext) -> DraftTree:
        model = ctx.model
        token = torch.tensor(ctx.root, device=model.device)
        h, layer = None, 0
        for stop, threshold in zip(self.exit_layers + [model.args.num_layers], self.thresholds + [0.0]):
            h = self._one_token(ctx, token, 0, layer, h, stop)
            layer = stop
            logits = model.logits_from(h)[0]
            if layer == model.args.num_layers or bool(torch.softmax(logits.float(), -1).max() >= threshold):
                break
        if layer < model.args.num_layers:
            pos = torch.tensor([ctx.cache.length], device=model.device)
            model.propagate_kv(h, pos, ctx.cache, pos, layer)
        self.exits.append(layer)
        q = process_logits(logits, ctx.params)
        nxt = draw(q, ctx.params, ctx.generator)
        tree = DraftTree.empty(model.device)
        tree.decided = int(nxt)
        return tree

    def stats(self) -> dict:
        if self.lossless:
            return {"exit_layer": self.exit_layer}
        return {"mean_exit_layer": sum(self.exits) / max(1, len(self.exits))}
