"""The propose -> verify -> commit loop that every decoding strategy runs on.

Cache convention: the target cache holds the K/V of every committed token except the last one, the
*root*. Each step runs ONE target forward over [root, draft nodes, aux nodes]; the verifier picks
the accepted path and the next token; the cache keeps root + accepted path; the next token becomes
the new root. Vanilla decoding is the case of an empty draft.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .cuda_graph import BUCKETS, GraphedModel, graphed_model, step_buckets
from .model import ForwardOut, KVCache, Transformer, send
from .sampling import SamplingParams, process_logits
from .timing import PhaseTimer
from .tree import DraftTree, ancestor_mask, depths
from .verify import TorchRandom, verify_greedy, verify_tree, verify_typical


@dataclass
class DecodeContext:
    """What a proposer may read: the committed sequence and the shared model state."""
    model: Transformer
    cache: KVCache                  # the target's cache
    tokens: list[int]               # prompt + committed new tokens; tokens[-1] is the root
    prompt_len: int
    params: SamplingParams
    generator: torch.Generator
    max_new_tokens: int
    graphed: GraphedModel | None = None   # captured forwards over `cache`, on CUDA
    # the proposer's feature_layers of the target at the row that produced the root (the last
    # prefill token, then the last accepted row of each step): [1, len(feature_layers) * D]
    root_features: torch.Tensor | None = None
    prefill_features: torch.Tensor | None = None   # the same for every prefilled token [n - 1, .]

    @property
    def root(self) -> int:
        return self.tokens[-1]

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
                offset: int = 0, start_layer: int = 0, hidden: torch.Tensor | None = None,
                stop_layer: int | None = None, feature_layers: tuple[int, ...] = ()) -> ForwardOut:
        """A target forward over new tokens written from slot cache.length + offset on, seeing all
        slots before them and each other through `mask` [n, n] (None: causal): logits [n, V] (None
        when `stop_layer` cuts it short), the residual stream [n, D] where it stopped, and the
        outputs of `feature_layers`. Replays a CUDA graph on GPU."""
        n = tokens.shape[0]
        if self.graphed is not None and n <= BUCKETS[-1]:
            return self.graphed.forward(tokens, positions, mask, offset, start_layer, hidden, stop_layer,
                                        feature_layers)
        return self.model(tokens, positions, self.cache, mask, start=self.cache.length + offset,
                          start_layer=start_layer, hidden=hidden, stop_layer=stop_layer,
                          output_layers=feature_layers)


@dataclass
class StepResult:
    """What the proposer hears after each step (as HF's update_candidate_strategy)."""
    accepted: list[int]             # accepted draft node indices, root side first
    tokens: list[int]               # tokens committed by this step; the last one is the new root
    logits: torch.Tensor | None     # raw target logits of the forward, rows (root, nodes, aux)
    features: torch.Tensor | None = None   # the proposer's feature_layers at those rows, concatenated
    # the target's argmax at every row of the forward, read with the step's one transfer (lookahead's
    # window update needs it, and reading it again would add a host synchronisation)
    argmax: list[int] = field(default_factory=list)


class Proposer:
    """A decoding strategy: drafts token trees and hears what was accepted; never verifies."""
    lossless: bool = True
    max_nodes: int = 0              # most draft + aux nodes one step can add to the target forward
    verify_start_layer: int = 0     # the layer a step's target forward starts at (early exit resumes)
    # target layers (layer i = the residual stream after i blocks) whose outputs at the root's
    # producing row the engine keeps in ctx.root_features (Medusa, EAGLE read them)
    feature_layers: tuple[int, ...] = ()
    # (threshold, alpha) selects Medusa's typical acceptance (lossy) for sampled decoding
    typical: tuple[float, float] | None = None

    @classmethod
    def lossless_with(cls, options: dict) -> bool:
        """Whether these options (all of them, defaults filled in) keep the target's output
        distribution; the methods table asks before any instance exists."""
        return cls.lossless

    def begin(self, ctx: DecodeContext) -> None:
        """Per-generation setup (own caches, n-gram pools), after the prompt is prefilled."""

    def propose(self, ctx: DecodeContext) -> DraftTree:
        raise NotImplementedError

    def accept(self, ctx: DecodeContext, step: StepResult) -> None:
        """Update own state after a step."""

    def stats(self) -> dict:
        """Method-specific statistics for GenerationOutput.stats."""
        return {}


@dataclass
class EngineResult:
    token_ids: list[int]
    stats: dict = field(default_factory=dict)


def step_inputs(root: int, tree: DraftTree, length: int, device):
    """Tokens, positions and the [N, N] mask (None: root alone) of one forward over (root, nodes,
    aux). Built on the host from the tree's shape and sent without waiting for the device."""
    n = tree.size
    root = send([root], device)
    if tree.ancestors is not None:   # shaped on the device: mask and depths from its ancestors
        anc = tree.ancestors.to(device)
        mask = torch.zeros(1 + n, 1 + n, dtype=torch.bool, device=device)
        mask[:, 0] = True
        mask[1:, 1:] = anc
        depth = torch.cat([anc.new_zeros(1, dtype=torch.long), anc.sum(-1)])
        return torch.cat([root, tree.tokens.to(device)]), length + depth, mask
    if n == 0 and tree.aux_tokens is None:
        return root, send([length], device), None
    tokens = [root, tree.tokens.to(device, non_blocking=True)]
    positions = [length + torch.cat([torch.zeros(1, dtype=torch.long), depths(tree.parents)])]
    mask = ancestor_mask(tree.parents)
    if tree.aux_tokens is not None:
        m = int(tree.aux_tokens.numel())
        full = torch.zeros(1 + n + m, 1 + n + m, dtype=torch.bool)
        full[: 1 + n, : 1 + n] = mask
        full[1 + n:, 0] = tree.aux_mask[:, 0]
        full[1 + n:, 1 + n:] = tree.aux_mask[:, 1:]
        mask = full
        tokens.append(tree.aux_tokens.to(device, non_blocking=True))
        positions.append(tree.aux_positions.cpu())
    return torch.cat(tokens), torch.cat(positions).to(device, non_blocking=True), \
        mask.to(device, non_blocking=True)


def step_forward(ctx: DecodeContext, tree: DraftTree, layers: tuple[int, ...]
                 ) -> tuple[ForwardOut, torch.Tensor | None]:
    """A step's one target forward over (root, nodes, aux), and the nodes' [n, n] ancestor-or-self
    mask on the device (None without nodes), which greedy verification reads. On CUDA a tree
    without aux nodes (lookahead has them) goes straight into the captured forward's buffers
    (`GraphedModel.tree_forward`)."""
    n, device = tree.size, ctx.model.device
    if ctx.graphed is not None and tree.aux_tokens is None and 1 + n <= BUCKETS[-1]:
        anc = tree.ancestors_on(device) if n else None
        return ctx.graphed.tree_forward(ctx.root, tree.tokens, anc, tree.resume_layer, tree.resume_hidden,
                                        layers), anc
    tokens, positions, mask = step_inputs(ctx.root, tree, ctx.cache.length, device)
    out = ctx.forward(tokens, positions, mask, start_layer=tree.resume_layer, hidden=tree.resume_hidden,
                      feature_layers=layers)
    return out, mask[1:1 + n, 1:1 + n] if mask is not None else None


def prefill(ctx: DecodeContext, prefix: list[int], layers: tuple[int, ...]) -> torch.Tensor | None:
    """Write the K/V of `prefix` (the prompt but its root) into the target cache; returns the
    outputs of `layers` at every row. On CUDA it runs through the captured forwards, in chunks of
    the largest bucket: an eager forward of the default model launches about a thousand kernels,
    and took 31.7 ms per answer on an H200 (vanilla's prefill in docs/results/gpu_defaults_h200/),
    13% of its time."""
    model, cache = ctx.model, ctx.cache
    tokens = torch.tensor(prefix, device=model.device)
    if ctx.graphed is None:
        out = model(tokens, torch.arange(len(prefix), device=model.device), cache,
                    stop_layer=model.args.num_layers, output_layers=layers)
        cache.length = len(prefix)
        return features(out, layers)
    parts = []
    for chunk in tokens.split(BUCKETS[-1]):
        positions = torch.arange(cache.length, cache.length + len(chunk), device=model.device)
        parts.append(features(ctx.forward(chunk, positions, None, feature_layers=layers), layers))
        cache.length += len(chunk)
    return torch.cat(parts) if layers else None


def features(out: ForwardOut, layers: tuple[int, ...]) -> torch.Tensor | None:
    """The outputs of `layers` side by side, [n, len(layers) * D] (None when no layer is asked)."""
    return torch.cat([out.layer_hidden[i] for i in layers], dim=-1) if layers else None


def _commit_greedy(tree: DraftTree, logits: torch.Tensor, anc: torch.Tensor | None, cache: KVCache
                   ) -> tuple[list[int], list[int], list[int]]:
    """Greedy verification and the cache commit on the logits' device, then ONE host read: the
    step's only synchronisation on CUDA. anc: the nodes' ancestor-or-self mask. Returns the
    accepted node indices, the committed tokens (the last one is the new root) and the argmax of
    every forward row."""
    n = tree.size
    argmax = logits.argmax(-1)   # = process_logits' greedy one-hot, without building it
    order, count, next_token = verify_greedy(tree, argmax[: 1 + n], anc)
    start = cache.length
    if n:   # move every new row, path first; the length below keeps only root + path
        cache.compact(torch.cat([order.new_zeros(1), 1 + order]))
    tokens = tree.tokens.to(argmax.device, non_blocking=True).index_select(0, order)
    packed = torch.cat([count.view(1), next_token.view(1), order, tokens, argmax]).tolist()
    k = packed[0]
    cache.length = start + 1 + k
    return packed[2:2 + k], packed[2 + n:2 + n + k] + [packed[1]], packed[2 + 2 * n:]


@torch.inference_mode()
def run(model: Transformer, proposer: Proposer, prompt_ids: list[int], params: SamplingParams,
        max_new_tokens: int, seed: int, eos_ids: tuple[int, ...]) -> EngineResult:
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    rng = TorchRandom(generator)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    timer = PhaseTimer(device)

    max_len = len(prompt_ids) + max_new_tokens + proposer.max_nodes + 1
    graphed = graphed_model(model, max_len) if device.type == "cuda" else None
    layers = proposer.feature_layers
    if graphed is not None:   # capture every step and prefill shape now, not when one first needs it
        for b in step_buckets(proposer.max_nodes):
            graphed.prepare(b, start_layer=proposer.verify_start_layer, feature_layers=layers)
        chunk = min(len(prompt_ids) - 1, BUCKETS[-1])     # prefill's longest chunk (see `prefill`)
        for b in step_buckets(chunk - 1) if chunk else ():
            graphed.prepare(b, feature_layers=layers)
    cache = graphed.cache if graphed is not None else model.new_cache(max_len)
    ctx = DecodeContext(model, cache, list(prompt_ids), len(prompt_ids), params, generator,
                        max_new_tokens, graphed)
    if len(prompt_ids) > 1:   # prefill all but the root
        ctx.prefill_features = prefill(ctx, prompt_ids[:-1], layers)
        ctx.root_features = ctx.prefill_features[-1:] if layers else None
    proposer.begin(ctx)
    timer.lap("prefill")

    new: list[int] = []
    accepted_lengths: list[int] = []
    draft_tokens: list[int] = []
    eos = set(eos_ids)
    while len(new) < max_new_tokens and not (new and new[-1] in eos):
        tree = proposer.propose(ctx)
        timer.lap("draft")
        if tree.decided is not None:     # a lossy proposer committed the root itself
            assert not proposer.lossless, "only lossy proposers may skip verification"
            cache.length += 1
            accepted, committed, logits, step_features, argmax = [], [tree.decided], None, None, []
        else:
            out, anc = step_forward(ctx, tree, layers)
            timer.lap("forward")
            logits = out.logits
            step_features = features(out, layers)
            if params.greedy:
                accepted, committed, argmax = _commit_greedy(tree, logits, anc, cache)
            else:
                probs = process_logits(logits[: 1 + tree.size], params)
                # the tree's tokens and the target's argmax (lookahead's window reads it), read in
                # the verifier's one transfer: the step's only synchronisation on CUDA
                along = torch.cat([tree.tokens.to(device), logits.argmax(-1)])
                if proposer.typical is not None:
                    result = verify_typical(tree, probs, *proposer.typical, rng, along)
                else:
                    result = verify_tree(tree, probs, False, rng, along)
                cache.compact([0] + [1 + i for i in result.accepted])
                accepted = result.accepted
                committed = [result.read_along[i] for i in accepted] + [result.next_token]
                argmax = result.read_along[tree.size:]
            if layers:
                row = 1 + accepted[-1] if accepted else 0
                ctx.root_features = step_features[row:row + 1]
        timer.lap("verify")
        draft_tokens.append(tree.size)
        # stop at EOS or at the budget; tokens past them are dropped (a prefix of a lossless
        # continuation is still lossless)
        take = len(committed)
        for j, t in enumerate(committed):
            if t in eos:
                take = j + 1
                break
        take = min(take, max_new_tokens - len(new))
        if take < len(committed):   # keep the cache invariant: committed tokens but the root
            cache.truncate(cache.length - (len(committed) - take))
        new.extend(committed[:take])
        ctx.tokens.extend(committed[:take])
        accepted_lengths.append(take)
        proposer.accept(ctx, StepResult(accepted, committed, logits, step_features, argmax))
        timer.lap("host")
    sync()
    wall = time.perf_counter() - start
    stats = {
        "new_tokens": len(new),
        "steps": len(accepted_lengths),
        "accepted_lengths": accepted_lengths,
        "draft_tokens": draft_tokens,
        "mean_accepted": sum(accepted_lengths) / max(1, len(accepted_lengths)),
        "wall_time_s": wall,
        "tokens_per_s": len(new) / wall if wall > 0 else 0.0,
        "lossless": proposer.lossless,
        "phase_time_s": timer.totals(),   # see specbench.timing.PHASES
    }
    if timer.syncs is not None:           # inside specbench.timing.counting_syncs()
        stats["host_syncs"] = timer.syncs
    stats.update(proposer.stats())
    return EngineResult(new, stats)
