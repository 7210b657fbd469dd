"""EAGLE-1 and EAGLE-2 (Li et al. 2024), and EAGLE-3 (Li et al. 2025): a one-layer draft on the
target's features drafts a token tree, verified in one target forward. EAGLE-3 (`Eagle3`) runs the
same trees and draft cache with its own drafter (`specbench/drafters/eagle3.py`): rows the target
produced read fc of its fused feature layers, tree rows read the draft's own output for their
parent, and its own LM head scores its draft vocabulary.

Each tree level is ONE draft forward over the level's rows, with a tree mask over the draft's own
cache (committed rows, plus each row's ancestors among the tree rows):
- `tree="static"` (EAGLE-1): a fixed tree of top-k choices (index paths such as [0], [1], [0, 0]:
  the draft's best token after the root, its second best, then the best after the best). The
  default static tree holds the `total_tokens` paths of highest estimated acceptance (at most
  `depth` deep, ranks below `draft_top_k`), estimated from the drafter's measured per-rank
  acceptance; a list of index paths gives the tree explicitly (EAGLE-1's "tree choices").
- `tree="dynamic"` (EAGLE-2): the root's k = `draft_top_k` best children form the first beam; each
  further level runs the beam through the draft, scores every child by its cumulative draft
  log-probability and keeps the best k of the k^2 children as the next beam; at the end the
  `total_tokens` best of all drafted nodes (by cumulative log-probability) form the tree. A child
  never scores above its parent, so the kept nodes include their parents (ties go to the earlier,
  parent, node).
`depth` is the deepest drafted level = draft forwards per step (the official `depth=5` is our 6).
`draft_top_k` is the papers' top-k, named apart from generate's sampling `top_k`.

Draft cache: row j holds token j + 1 with the target's feature at j (row j is written at slot j,
position j). Between steps it holds the committed tokens up to the previous root; the next step's
first forward writes the newly committed tokens with the target's features from the verification
forward (`StepResult.features`), the new root last, so tree rows (built on the draft's own
predicted features) never stay in the cache.

Drafts are deterministic top-k picks, so `verify_tree` treats them as one-hot q: exact at any
temperature. On CUDA the whole draft step (pending rows and every tree level) is one captured CUDA
graph; nothing in it synchronises with the host, and the dynamic tree's parent indices come back
with one transfer per step.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..cuda_graph import BUCKETS, capture, compiling
from ..drafters import Drafter, resolve_drafter
from ..drafters.base import DraftDtype, draft_vocabulary, dtype_name, run_dtype
from ..drafters.eagle import EagleDraft
from ..drafters.eagle3 import Eagle3Draft
from ..drafters.medusa import check_tree, medusa_tree, tree_arrays
from ..engine import DecodeContext, Proposer, StepResult
from ..errors import SpecbenchError
from ..model import Transformer, device_kind, fixed_linear, send
from ..options import PositiveInt
from ..tree import DraftTree, depths, top_k_rows

# default settings per device: a CPU pays per draft level (above all the LM head) and per verified
# token, a GPU much less. CPU: the fastest dynamic tree of experiments/cpu_eagle_sweep.yaml
# (docs/results/cpu_eagle_sweep/: 0.83x vanilla against 0.70x for depth 4). CUDA: the grid
# experiments/gpu_eagle_grid.yaml (docs/results/gpu_eagle_grid_h200/) found depth 4, top-k 10, 60
# tokens fastest (0.94x against 0.85x for the official EAGLE-2 depth 6: each level costs a draft
# forward, 0.16 ms on the H200, and deeper levels are rarely accepted); experiments/gpu_defaults.yaml
# then measured depth 3 faster still (0.98x against 0.94x, docs/results/gpu_defaults_h200/), and
# experiments/gpu_draft_step.yaml a draft vocabulary of 4,096 tokens faster than the whole one
# (1.04x against 0.93x with 2.31 against 2.36 tokens per step, docs/results/gpu_draft_step_h200/),
# as did experiments/cpu_eagle_vocab.yaml on the CPU (1.08x against 0.99x, a draft step of 12.5
# against 20.3 ms; docs/results/cpu_eagle_vocab/). A default draft_vocab applies to drafters that
# counted their training tokens; others draft over the whole vocabulary. CPU trees of 5 tokens since
# session 30: the CPU's forward over 6 rows costs what one over 1 does, over 7 or more about 15%
# more (oneDNN), and experiments/cpu_small_trees.yaml measured 1.47x against 1.27x for 10 tokens
# (docs/results/cpu_small_trees/).
# On an AVX2 CPU (`model.device_kind`: a forward over 2-4 rows costs 1.1-1.25x a step, over 6
# rows 1.3x) smaller trees won on 24 questions (experiments/cpu_avx2_trees_24q.yaml,
# docs/results/cpu_avx2_trees_24q/paired.txt, paired 95% intervals): EAGLE at depth 2 with 3 tokens
# 1.025x (1.003-1.047x) as fast as the CPU default, EAGLE-3 with 1 token 1.037x (1.010-1.063x).
DEFAULTS = {"cpu": {"depth": 3, "draft_top_k": 4, "total_tokens": 5, "draft_vocab": 4096},
            "cpu-avx2": {"depth": 2, "draft_top_k": 4, "total_tokens": 3, "draft_vocab": 4096},
            "cuda": {"depth": 3, "draft_top_k": 10, "total_tokens": 60, "draft_vocab": 4096}}
EAGLE3_DEFAULTS = {**DEFAULTS, "cpu-avx2": {"depth": 1, "draft_top_k": 4, "total_tokens": 1, "draft_vocab": 4096}}
MAX_NODES = BUCKETS[-1] - 1     # the root and the tree must fit the largest target forward


def _count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecbenchError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class DynamicTree:
    """EAGLE-2's context-dependent tree (see the module docstring)."""

    def __init__(self, depth: int, top_k: int, total_tokens: int):
        self.depth, self.top_k = depth, top_k
        self.size = min(total_tokens, top_k + (depth - 1) * top_k * top_k)
        self.tree_rows = (depth - 1) * top_k          # draft cache rows the beam levels write
        self.key = ("dynamic", depth, top_k, self.size)

    def to(self, device) -> "DynamicTree":
        return self

    def draft(self, step: "DraftStep", h_root: torch.Tensor, committed: torch.Tensor, cols: torch.Tensor):
        k, device = self.top_k, h_root.device
        scores, tokens = step.top(h_root, k)
        scores, tokens = scores[0], tokens[0]
        all_tokens, all_scores = [tokens], [scores]
        all_parents = [torch.full((k,), -1, dtype=torch.long, device=device)]
        beam_ids, beam_tokens, beam_scores = torch.arange(k, device=device), tokens, scores
        feats = h_root.expand(k, -1)
        anc = torch.eye(k, dtype=torch.bool, device=device)   # beam rows' ancestors among tree rows
        first_id = k
        for d in range(1, self.depth):
            slots = committed + (d - 1) * k + torch.arange(k, device=device)
            positions = (committed + d - 1).expand(k)
            h = step.rows(feats, beam_tokens, positions, slots, step.tree_mask(cols, committed, anc))
            values, top_tokens = step.top(h, k)                            # [k, k]
            cum = (beam_scores[:, None] + values).flatten()
            tok = top_tokens.flatten()
            all_tokens.append(tok)
            all_scores.append(cum)
            all_parents.append(beam_ids[:, None].expand(k, k).flatten())
            if d + 1 < self.depth:
                best = cum.topk(k).indices
                src = best // k
                beam_ids, beam_tokens, beam_scores, feats = first_id + best, tok[best], cum[best], h[src]
                anc = torch.cat([anc[src], torch.eye(k, dtype=torch.bool, device=device)], dim=1)
            first_id += k * k
        # stable: on equal scores the earlier node (a parent before its children) wins
        order = torch.cat(all_scores).sort(descending=True, stable=True).indices
        keep = order[: self.size].sort().values                            # topological order
        parent_ids = torch.cat(all_parents)[keep]
        parents = torch.where(parent_ids < 0, -1, torch.searchsorted(keep, parent_ids.clamp_min(0)))
        return torch.cat(all_tokens)[keep], parents, self.ancestors(parents)

    def ancestors(self, parents: torch.Tensor) -> torch.Tensor:
        """[T, T] ancestor-or-self mask of the kept nodes, on the device (inside the captured draft
        step), so the engine never reads the tree's shape back: one walk up per level below the
        first, with column T standing for the root."""
        t = parents.shape[0]
        up = torch.cat([parents, parents.new_full((1,), -1)])          # up[T] = -1: above the root
        anc = torch.eye(t, t + 1, dtype=torch.bool, device=parents.device)
        node = torch.where(parents < 0, t, parents)
        for _ in range(self.depth - 1):
            anc.scatter_(1, node[:, None], True)
            node = torch.where(up[node] < 0, t, up[node])
        return anc[:, :t]


class StaticTree:
    """EAGLE-1's fixed tree of index paths; per level, the nodes with children run through the draft."""

    def __init__(self, paths: list[tuple[int, ...]]):
        self.paths = paths
        self.size = len(paths)
        parents, _, ranks = tree_arrays(paths)
        self.parents_cpu = parents
        self.depth = max(len(p) for p in paths)
        level = depths(parents)
        has_children = torch.zeros(self.size, dtype=torch.bool)
        has_children[parents[parents >= 0]] = True
        # per level d (0 = the root): which logits row each child at depth d + 1 reads and its rank;
        # then the expanders at depth d + 1 (nodes with children): the feature row of their parent
        # and their token's index within level d + 1
        self.levels = []
        expanders_prev = [-1]             # node ids of the rows of the previous forward (-1: root)
        offset = 0                        # tree rows written so far
        rows_anc: dict[int, list[int]] = {-1: []}   # node -> tree rows of its ancestors-or-self
        for d in range(self.depth):
            nodes = [i for i in range(self.size) if level[i] == d + 1]
            src = [expanders_prev.index(int(parents[i])) for i in nodes]
            rank = [int(ranks[i]) for i in nodes]
            expanders = [i for i in nodes if has_children[i]]
            entry = {"src": torch.tensor(src), "rank": torch.tensor(rank), "topk": max(rank) + 1}
            if expanders:
                for j, i in enumerate(expanders):
                    rows_anc[i] = rows_anc[int(parents[i])] + [offset + j]
                width = offset + len(expanders)
                anc = torch.zeros(len(expanders), width, dtype=torch.bool)
                for j, i in enumerate(expanders):
                    anc[j, rows_anc[i]] = True
                entry.update(feat_src=torch.tensor([expanders_prev.index(int(parents[i])) for i in expanders]),
                             tok_idx=torch.tensor([nodes.index(i) for i in expanders]),
                             offset=offset, anc=anc)
                offset = width
            self.levels.append(entry)
            expanders_prev = expanders
        self.tree_rows = offset
        self.key = ("static", tuple(paths))

    def to(self, device) -> "StaticTree":
        for entry in self.levels:
            for name, value in entry.items():
                if isinstance(value, torch.Tensor):
                    entry[name] = value.to(device)
        return self

    def draft(self, step: "DraftStep", h_root: torch.Tensor, committed: torch.Tensor, cols: torch.Tensor):
        h, tokens = h_root, []
        for d, entry in enumerate(self.levels):
            tok = step.top(h, entry["topk"])[1][entry["src"], entry["rank"]]
            tokens.append(tok)
            if "anc" in entry:
                m = entry["anc"].shape[0]
                slots = committed + entry["offset"] + torch.arange(m, device=h.device)
                positions = (committed + d).expand(m)
                h = step.rows(h[entry["feat_src"]], tok[entry["tok_idx"]], positions, slots,
                              step.tree_mask(cols, committed, entry["anc"]))
        return torch.cat(tokens), self.parents_cpu, None


class DraftStep:
    """One drafting step on the draft's own cache: the pending rows (committed tokens with the
    target's features, the root last) in one causal forward, then the tree's levels."""

    def __init__(self, model: Transformer, drafter: EagleDraft | Eagle3Draft, plan, max_len: int, vocab: torch.Tensor | None):
        self.model, self.drafter, self.plan, self.vocab = model, drafter, plan, vocab
        # in the drafter's own dtype (`draft_dtype`)
        self.head = None if vocab is None else fixed_linear(model.lm_head.weight[vocab].to(drafter.dtype))
        self.cache = drafter.new_cache(max_len, model.device, drafter.dtype)

    def rows(self, feats, tokens, positions, slots, mask) -> torch.Tensor:
        return self.drafter(feats, tokens, positions, self.cache, mask, self.model, slots=slots, span=mask.shape[1])

    def top(self, h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best draft tokens of each row of h: log-probabilities [n, k] and target ids [n, k].
        With a draft vocabulary (the `draft_vocab` option, or EAGLE-3's own head) only its tokens
        are scored, and ranked in that compact space: never scattered into the whole vocabulary."""
        logits, ids = (self.head(h), self.vocab) if self.vocab is not None else self.drafter.draft_logits(h, self.model)
        logp = torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
        # a row that overflowed (NaN: a random bf16 draft on CUDA did) ranks last; NaN would sort
        # above its parent and leave a kept node without its parent
        values, index = top_k_rows(logp.masked_fill(logp.isnan(), float("-inf")), k)
        return values, index if ids is None else ids[index]

    @staticmethod
    def tree_mask(cols: torch.Tensor, committed: torch.Tensor, anc: torch.Tensor) -> torch.Tensor:
        """[m, span]: every committed slot, and the tree rows (from slot `committed` on) marked in anc [m, r]."""
        rel = cols - committed
        inside = (rel >= 0) & (rel < anc.shape[1])
        return (rel < 0)[None, :] | (inside[None, :] & anc[:, rel.clamp(0, anc.shape[1] - 1)])

    def compute(self, tokens: torch.Tensor, raw: torch.Tensor, n: torch.Tensor, base: torch.Tensor, span: int):
        """Rows 0..n-1 of tokens [P] / raw target features [P, D] written from slot `base` on
        (rows past n are padding); the tree's tokens [T], parents [T] and, for a tree shaped on the
        device, its ancestor mask [T, T] (else None)."""
        device = tokens.device
        cols = torch.arange(span, device=device)
        slots = base + torch.arange(tokens.shape[0], device=device)
        h = self.rows(self.drafter.draft_input(raw, self.model), tokens, slots, slots, cols[None, :] <= slots[:, None])
        return self.plan.draft(self, h.index_select(0, n - 1), base + n, cols)

    def __call__(self, tokens: torch.Tensor, raw: torch.Tensor, base: int):
        n = tokens.shape[0]
        return self.compute(tokens, raw, torch.tensor(n, device=tokens.device), torch.tensor(base, device=tokens.device),
                            span=base + n + self.plan.tree_rows)


class GraphedDraftStep(DraftStep):
    """The same step compiled and captured in one CUDA graph over static buffers (see
    `cuda_graph.capture`): pending rows padded to `pending` (they write past the committed rows,
    where tree rows or later steps overwrite them), attention over the whole cache with masks."""

    def __init__(self, model: Transformer, drafter: EagleDraft | Eagle3Draft, plan, max_len: int, vocab: torch.Tensor | None,
                 pending: int):
        super().__init__(model, drafter, plan, max_len, vocab)
        device = model.device
        self.tokens = torch.zeros(pending, dtype=torch.long, device=device)
        width = model.args.hidden_size * len(drafter.feature_layers(model))
        self.raw = torch.zeros(pending, width, dtype=model.dtype, device=device)
        self.n = torch.ones((), dtype=torch.long, device=device)
        # warm-up and capture write the last slots, never used by a generation
        self.base = torch.full((), max_len - pending - plan.tree_rows, dtype=torch.long, device=device)
        self.graph, self.out = capture(lambda: self.compute(self.tokens, self.raw, self.n, self.base, max_len),
                                       self, compiling())

    def __call__(self, tokens: torch.Tensor, raw: torch.Tensor, base: int):
        n = tokens.shape[0]
        self.tokens[:n].copy_(tokens, non_blocking=True)
        self.raw[:n].copy_(raw)
        self.n.fill_(n)
        self.base.fill_(base)
        self.graph.replay()
        return tuple(o if o is None or o.device.type == "cpu" else o.clone() for o in self.out)


def draft_step(model: Transformer, drafter: EagleDraft | Eagle3Draft, plan, need: int,
               vocab: torch.Tensor | None) -> DraftStep:
    """The drafter's step for this tree, draft vocabulary (its token ids, from the drafter's counts:
    keyed by their number) and at least `need` cache slots, kept across generations (a CUDA graph
    costs a capture; sizes are rounded up to 1024)."""
    size = -(-need // 1024) * 1024
    key = (plan.key, None if vocab is None else len(vocab), size, str(model.device), model.dtype, id(model))
    steps = drafter.__dict__.setdefault("_steps", {})
    if key not in steps:
        plan = plan.to(model.device)
        vocab = None if vocab is None else vocab.to(model.device)
        steps[key] = GraphedDraftStep(model, drafter, plan, size, vocab, plan.depth + 1) \
            if model.device.type == "cuda" else DraftStep(model, drafter, plan, size, vocab)
    return steps[key]


class Eagle(Proposer):
    """A one-layer draft on the target's features drafts a static (EAGLE-1) or dynamic (EAGLE-2) tree.

    Options:
    drafter: None: the one shipped for the default model
    depth: None: by device
    draft_top_k: None: by device
    total_tokens: None: by device
    draft_vocab: None: by device
    draft_dtype: None: bfloat16 for a float32 target on a CPU with native bfloat16, else the target's
    """
    kind = "eagle"
    defaults = DEFAULTS              # measured settings by `model.device_kind`
    own_vocabulary = False           # EAGLE-3's head scores its own vocabulary: no draft_vocab there

    def __init__(self, model: Transformer, drafter: Path | Drafter | None = None, tree: str | list = "dynamic", depth: int | None = None,
                 draft_top_k: int | None = None, total_tokens: int | None = None, draft_vocab: PositiveInt | None = None,
                 draft_dtype: DraftDtype | None = None):
        self.setup(model, drafter, tree, depth, draft_top_k, total_tokens, draft_vocab, draft_dtype)

    def setup(self, model: Transformer, drafter, tree: str | list, depth: int | None, draft_top_k: int | None,
              total_tokens: int | None, draft_vocab: int | None, draft_dtype: str | None) -> None:
        """Checks the options, resolves the drafter of `self.kind` and builds the tree plan."""
        given = {name: value for name, value in (("depth", depth), ("draft_top_k", draft_top_k),
                                                 ("total_tokens", total_tokens)) if value is not None}
        for name, value in given.items():
            _count(name, value)
        if isinstance(tree, str) and tree not in ("static", "dynamic"):
            raise SpecbenchError(f"tree must be 'dynamic', 'static' or a list of index paths, got {tree!r}")
        if not isinstance(tree, (str, list, tuple)):
            raise SpecbenchError(f"tree must be 'dynamic', 'static' or a list of index paths, got {tree!r}")
        if not isinstance(tree, str) and given:
            raise SpecbenchError(f"an explicit tree fixes its own shape: drop {', '.join(given)}")
        vocab = model.args.vocab_size
        defaults = self.defaults[device_kind(model.device)]
        settings = {**defaults, **given}
        if settings["draft_top_k"] > vocab:
            raise SpecbenchError(f"draft_top_k must be at most the vocabulary size {vocab}, "
                                 f"got {settings['draft_top_k']}")
        if settings["total_tokens"] > MAX_NODES:
            raise SpecbenchError(f"total_tokens must be at most {MAX_NODES}, got {settings['total_tokens']}")
        dtype = run_dtype(model, draft_dtype)
        self.drafter = resolve_drafter(drafter, model, self.kind)
        if tree == "dynamic":
            self.plan = DynamicTree(settings["depth"], settings["draft_top_k"], settings["total_tokens"])
        else:
            if tree == "static":
                acc = list(self.drafter.rank_accuracy)
                acc += [acc[-1] * 0.5 ** (i + 1) for i in range(settings["draft_top_k"] - len(acc))]
                paths = medusa_tree([acc[: settings["draft_top_k"]]] * settings["depth"], settings["total_tokens"])
            else:
                paths = check_tree(tree, MAX_NODES, vocab)
                if len(paths) > MAX_NODES:
                    raise SpecbenchError(f"tree must hold at most {MAX_NODES} paths, got {len(paths)}")
            self.plan = StaticTree(paths)
        self.vocab_ids = None if self.own_vocabulary else draft_vocabulary(
            draft_vocab, self.drafter.token_counts, defaults["draft_vocab"], vocab, self.ranks(), "eagle")
        self.tree_kind = tree if isinstance(tree, str) else "static"
        self.model = model
        self.max_nodes = self.plan.size
        self.feature_layers = self.drafter.feature_layers(model)
        self.drafter = self.drafter.cast(dtype)

    def ranks(self) -> int:
        """How many choices the tree takes per node at most (a draft vocabulary must hold them)."""
        return self.plan.top_k if isinstance(self.plan, DynamicTree) else 1 + max(max(p) for p in self.plan.paths)

    def begin(self, ctx: DecodeContext) -> None:
        n = len(ctx.tokens)
        self.step = draft_step(self.model, self.drafter, self.plan,
                               ctx.prompt_len + ctx.max_new_tokens + self.plan.depth + self.plan.tree_rows + 2,
                               self.vocab_ids)
        self.length = 0                        # draft cache rows (row j: token j + 1)
        self.pending = None                    # (tokens, raw target features) of rows to write next
        if ctx.prefill_features is None:       # a one-token prompt: nothing to draft from yet
            return
        device = self.model.device
        if n > 2:                              # the prompt's rows, all but the root's
            feats = self.drafter.draft_input(ctx.prefill_features[:-1], self.model)
            self.drafter(feats, torch.tensor(ctx.tokens[1:-1], device=device), torch.arange(n - 2, device=device),
                         self.step.cache, None, self.model, slots=torch.arange(n - 2, device=device), span=n - 2)
            self.length = n - 2
        self.pending = (torch.tensor([ctx.root], device=device), ctx.root_features)

    def propose(self, ctx: DecodeContext) -> DraftTree:
        if self.pending is None:
            return DraftTree.empty(self.model.device)
        tokens, raw = self.pending
        tree_tokens, parents, ancestors = self.step(tokens, raw, self.length)
        self.length += tokens.shape[0]
        self.pending = None
        return DraftTree(tokens=tree_tokens, parents=parents, ancestors=ancestors)

    def accept(self, ctx: DecodeContext, step: StepResult) -> None:
        # the committed tokens pair with the target's features at the rows that produced them
        rows = send([0] + [1 + i for i in step.accepted], step.features.device)
        self.pending = (send(step.tokens, self.model.device), step.features[rows])

    def stats(self) -> dict:
        return {"tree": self.tree_kind, "tree_nodes": self.plan.size, "draft_dtype": dtype_name(self.drafter.dtype)}


class Eagle3(Eagle):
    """EAGLE-3: a one-layer draft on fused low/mid/high target features with its own vocabulary drafts a dynamic or static tree.

    Options:
    drafter: None: the one shipped for the default model
    depth: None: by device
    draft_top_k: None: by device
    total_tokens: None: by device
    draft_dtype: None: bfloat16 for a float32 target on a CPU with native bfloat16, else the target's
    """
    kind = "eagle3"
    defaults = EAGLE3_DEFAULTS
    own_vocabulary = True

    def __init__(self, model: Transformer, drafter: Path | Drafter | None = None, tree: str | list = "dynamic", depth: int | None = None,
                 draft_top_k: int | None = None, total_tokens: int | None = None, draft_dtype: DraftDtype | None = None):
        self.setup(model, drafter, tree, depth, draft_top_k, total_tokens, None, draft_dtype)
        width = len(self.drafter.draft_ids)
        ranks = self.ranks()
        if ranks > width:
            raise SpecbenchError(f"the drafter's vocabulary of {width} tokens is smaller than the {ranks} choices "
                                 f"drafted per node: lower draft_top_k")
