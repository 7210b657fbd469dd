"""Draft-model speculative sampling (Leviathan et al. 2023; Chen et al. 2023): a smaller model
sharing the vocabulary samples a chain of `num_draft` tokens from its own processed distribution.

`draft=None` is the draft distilled from the default model and shipped with specbench (`specbench
train draft`; README, "A distilled draft for sps"); `specbench.drafters.draft.resolve_draft` lists
the other forms. On CUDA the draft's decoding forwards replay CUDA graphs as the target's do: a
few-layer draft is launch-bound too, and an eager one would cost as much as the target.

`draft_vocab=N` (a frequency-ranked draft vocabulary, as FR-Spec, Zhao et al. 2025) lets the draft's
LM head score only the N tokens most often predicted in its training data: on a CPU the head is most
of a small draft's cost (49,152 x 576 on the default model, as much as 8 of its layers). The draft
distribution is zero elsewhere; the verifier sees that q, so decoding stays exact.

`draft_stop=p` ends the chain early once the draft's own probability (at temperature 1) of the
token it just drew falls below p: an unconfident draft token is rarely accepted, and the tokens
after it even less, so their draft forwards are saved (SpecDec++, Huang et al. 2024, learns the
stop; a fixed threshold is its simplest form). `num_draft` is then the chain's longest length.

`siblings=k` turns the chain into a tree: beside the chain's first token, the draft's next k - 1
most likely tokens at that position (ranks 2..k of its logits) are verified in the same target
forward, at no draft cost (SpecInfer, Miao et al. 2024 and Sequoia, Chen et al. 2024 verify such
trees of draft-model tokens). The shipped draft's first choice is the target's next greedy token
28% of the time and its second choice 12% more (teacher-forced on 10 MT-bench vanilla answers,
`python experiments/sps_draft_ranks.py`). A sibling is a fixed pick, a one-hot q to the verifier,
chosen from the draft's logits alone (not from the chain's draw), so sampled decoding stays exact.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F

from ..cuda_graph import BUCKETS, graphed_model
from ..drafters.base import DraftDtype, draft_vocabulary, dtype_name, run_dtype
from ..drafters.draft import DraftLayers, DraftRef, draft_in, resolve_draft
from ..engine import DecodeContext, Proposer, StepResult
from ..errors import SpecbenchError
from ..model import Transformer, device_kind, fixed_linear, send
from ..options import Bound, PositiveInt
from ..sampling import draw, process_logits
from ..tree import DraftTree

GRAPHED_TOKENS = BUCKETS[1]   # the draft's decoding forwards (1 or 2 new tokens); prefill runs eager

# draft tokens per step by device kind (`model.device_kind`): on a CPU that pads 2-row products to 3,
# 2 was the fastest of 2..5 with the shipped draft (0.68x vanilla against 0.45x at 5;
# experiments/cpu_draft.yaml, docs/results/cpu_draft/), and of 1..3 with the 4,096-token draft
# vocabulary (1.05x against 0.98x; experiments/cpu_sps_num_draft.yaml). With draft_stop 0.5 a chain
# of up to 3 pays: 1.045x the unstopped chain of 2, paired (95% interval 1.003-1.087) on session
# 40's AVX-512 EPYC (experiments/cpu_sps_draft_stop_24q.yaml, docs/results/cpu_sps_draft_stop_24q/),
# 1.012x (0.998-1.026) over all 80 MT-bench first turns (docs/results/cpu_sps_stop_mt_bench/).
# On an AVX2 CPU, where 2 rows cost about what 1 does, 1: 1.01x against 0.91x for 2 on session 37's
# EPYC (experiments/cpu_avx2_trees.yaml, docs/results/cpu_avx2_trees/); the CUDA value is the
# common setting
DEFAULT_NUM_DRAFT = {"cpu": 3, "cpu-avx2": 1, "cuda": 5}

# draft_stop by device: 0.5 on the CPU (above: 0.3 / 0.5 / 0.7 gave 1.01x / 1.02x / 1.03x the
# unstopped chain of 2, and it lets a chain of 3 pay); off where one token is drafted, and on CUDA,
# where reading the draft's probability back would add a host synchronisation to every draft token
DEFAULT_DRAFT_STOP = {"cpu": 0.5, "cpu-avx2": 0.0, "cuda": 0.0}

StopProbability = Annotated[float, Bound(0, 1)]

# candidates for the first drafted position by device kind. On session 41's AVX-512 Xeon (24
# MT-bench first turns x 128 tokens) 1 / 2 / 3 ran at 1.08x / 1.17x / 1.19x vanilla with 1.36 /
# 1.45 / 1.51 tokens per step and no dearer a target forward (experiments/cpu_sps_siblings_24q.yaml,
# docs/results/cpu_sps_siblings_24q/); 4 tied 3 and 6 lost 6%, as a forward over 8 tokens costs
# more there (experiments/cpu_sps_siblings_wide_24q.yaml); on all 80 MT-bench first turns 3 ran
# at 1.18x against the chain's 1.08x (docs/results/cpu_sps_siblings_mt_bench/), on session 42's
# Zen 5 EPYC at 1.15x against 1.03x (docs/results/cpu_sps_siblings_mt_bench_zen5/), where chains
# of 1 / 2 / 3 tokens beside 3 candidates tied (docs/results/cpu_sps_chain_len_24q/). Not measured
# on an AVX2 CPU, where 3 rows cost 1.19x one, nor on CUDA, where a wider verification costs more
# on this model: both keep a chain
DEFAULT_SIBLINGS = {"cpu": 3, "cpu-avx2": 1, "cuda": 1}


# draft vocabulary by device: on the CPU 4,096 tokens, the head's rows packed, cut the shipped
# draft's step from 17.2 to 9.9 ms with the same 1.35 tokens per step (1.06x against 0.90x vanilla;
# 16,384: 1.01x; experiments/cpu_sps_vocab.yaml, docs/results/cpu_sps_vocab/); CUDA, not measured:
# the whole vocabulary. The default applies to drafts that counted their training tokens.
DEFAULT_DRAFT_VOCAB = {"cpu": 4096, "cpu-avx2": 4096, "cuda": None}


class DraftModel(Proposer):
    """A draft model sharing the vocabulary samples a chain, its runner-up first tokens beside it (own cache).

    Options:
    draft: None: the draft shipped for the default model
    num_draft: None: by device (CPU 3, AVX2 CPU 1, CUDA 5)
    draft_vocab: None: by device (CPU 4096 where the draft counted its training tokens, else the whole vocabulary)
    draft_dtype: None: bfloat16 for a float32 target on a CPU with native bfloat16, else the target's
    draft_stop: None: by device (CPU 0.5, else 0: never stop early)
    siblings: None: by device (CPU 3, else 1: a chain); candidates for the first drafted position
    """

    def __init__(self, model: Transformer, draft: DraftRef | Transformer | DraftLayers | None = None,
                 num_draft: PositiveInt | None = None, draft_vocab: PositiveInt | None = None,
                 draft_dtype: DraftDtype | None = None, draft_stop: StopProbability | None = None,
                 siblings: PositiveInt | None = None):
        vocab = model.args.vocab_size
        dtype = run_dtype(model, draft_dtype)
        draft = resolve_draft(draft, model)
        if draft.args.vocab_size != vocab:
            raise SpecbenchError(f"the draft's vocabulary ({draft.args.vocab_size}) differs from the target's "
                                 f"({vocab}): sps needs a shared vocabulary")
        if draft.device != model.device:
            raise SpecbenchError(f"the draft is on {draft.device} and the target on {model.device}: load both on one device")
        if num_draft is None:
            num_draft = DEFAULT_NUM_DRAFT[device_kind(model.device)]
        if draft_stop is None:
            draft_stop = DEFAULT_DRAFT_STOP[device_kind(model.device)]
        if siblings is None:
            siblings = DEFAULT_SIBLINGS[device_kind(model.device)]
        self.draft, self.num_draft, self.draft_stop = draft_in(draft, dtype), num_draft, draft_stop
        self.siblings = siblings
        self.drafted = 0                                    # the chain's length in the last step
        self.max_nodes = num_draft + siblings - 1
        ids = draft_vocabulary(draft_vocab, getattr(draft, "token_counts", None),
                               DEFAULT_DRAFT_VOCAB[device_kind(model.device)], vocab, siblings, "draft")
        # the head scores the draft vocabulary's tokens: those rows of the LM head
        self.vocab = None if ids is None else ids.to(draft.device)
        self.head = None if ids is None else fixed_linear(self.draft.lm_head.weight.detach()[self.vocab])

    def begin(self, ctx: DecodeContext) -> None:
        # the draft's cache follows the target's convention: all committed tokens but the root
        max_len = ctx.prompt_len + ctx.max_new_tokens + self.num_draft + 1
        # draft="target" must not share the target's own graphs and cache
        self.graphed = graphed_model(self.draft, max_len) \
            if ctx.graphed is not None and self.draft is not ctx.model else None
        if self.graphed is not None:
            stop = None if self.vocab is None else self.draft.args.num_layers
            for n in (1, GRAPHED_TOKENS):   # capture both shapes now, not inside a timed step
                self.graphed.prepare(n, stop_layer=stop)
        self.cache = self.graphed.cache if self.graphed is not None else self.draft.new_cache(max_len)

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The draft's next-token logits [V] after new tokens x, written past its cache (-inf
        outside draft_vocab's tokens), and the scores they were spread from (those of the tokens
        `self.vocab`; the logits themselves without a draft vocabulary): the siblings' top-k and
        the stop's log-sum-exp then read 4,096 scores, not 49,152 mostly -inf logits."""
        start = self.cache.length
        positions = torch.arange(start, start + len(x), device=x.device)
        stop = None if self.vocab is None else self.draft.args.num_layers     # then the head is ours
        if self.graphed is not None and len(x) <= GRAPHED_TOKENS:
            out = self.graphed.forward(x, positions, None, stop_layer=stop)
        else:
            out = self.draft(x, positions, self.cache, last_only=True, stop_layer=stop)
        self.cache.length += len(x)
        if self.vocab is None:
            logits = widened(out.logits[-1])
            return logits, logits
        scores = widened(self.head(self.draft.norm(out.hidden[-1:]))[0])
        logits = scores.new_full((self.draft.args.vocab_size,), float("-inf")).index_copy_(0, self.vocab, scores)
        return logits, scores

    def propose(self, ctx: DecodeContext) -> DraftTree:
        pending = ctx.tokens[self.cache.length:]          # committed tokens the draft has not seen
        x = send(pending, self.draft.device)
        tokens, qs, picks = [], [], None
        while len(tokens) < self.num_draft:
            logits, scores = self._logits(x)
            q = process_logits(logits, ctx.params)
            token = draw(q, ctx.params, ctx.generator)
            tokens.append(token)
            qs.append(q)
            if picks is None and self.siblings > 1:
                picks = scores.topk(self.siblings).indices[1:]    # ranks 2..k, whatever was drawn
                picks = picks if self.vocab is None else self.vocab[picks]
            # a stop that depends only on the draft's own tokens keeps the chain a valid proposal:
            # the verifier's rule is exact for a chain of any length (SpecDec++, Huang et al. 2024).
            # The confidence is the draft's probability at temperature 1 (greedy's q is one-hot).
            if len(tokens) < self.num_draft and self.draft_stop > 0 \
                    and float(logits[token] - scores.logsumexp(-1)) < math.log(self.draft_stop):
                break
            x = token.view(1)
        self.drafted = len(tokens)
        self.cache.length -= self.drafted                   # back to "all committed but the root"
        chain = DraftTree.chain(torch.stack(tokens).to(ctx.model.device), torch.stack(qs))
        return chain if picks is None else with_siblings(chain, picks.to(ctx.model.device))

    def accept(self, ctx: DecodeContext, step: StepResult) -> None:
        # keep the root and the accepted chain tokens already in the draft cache (the last draft
        # token was never fed to the draft model); a path through a sibling leaves only the root
        on_chain = not step.accepted or step.accepted[0] == 0
        self.cache.length += 1 + (min(len(step.accepted), self.drafted - 1) if on_chain else 0)

    def stats(self) -> dict:
        return {"draft_dtype": dtype_name(self.draft.dtype)}


def with_siblings(chain: DraftTree, picks: torch.Tensor) -> DraftTree:
    """The chain's first node, then `picks` as its siblings (fixed picks: one-hot q), then the
    rest of the chain below the first node: topological order, siblings by priority."""
    s, n = len(picks), chain.size
    tokens = torch.cat([chain.tokens[:1], picks, chain.tokens[1:]])
    parents = torch.tensor([-1] * (1 + s) + [0 if j == 1 else j - 1 + s for j in range(1, n)])
    one_hot = F.one_hot(picks.to(chain.q.device), chain.q.shape[-1]).to(chain.q.dtype)
    return DraftTree(tokens=tokens, parents=parents, q=torch.cat([chain.q[:1], one_hot, chain.q[1:]]))


def widened(logits: torch.Tensor) -> torch.Tensor:
    """A bfloat16 or float16 draft's logits in float32: its distribution q is computed and drawn
    from at the precision the verifier compares it in."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
