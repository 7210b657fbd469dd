"""Medusa (Cai et al. 2024): heads on the target's last hidden state draft a sparse tree of top-k
combinations, verified in one target forward.

The tree is Medusa's "tree choices": index paths such as [0], [1], [0, 0] (head 1's best, its
second best, then head 2's best below head 1's best). `tree=<int>` builds the tree of that many
nodes with the highest estimated acceptance from the drafter's measured per-rank accuracies;
the default size depends on the device (a CPU pays per token verified, a GPU hardly does: see
README, "Medusa"). Drafts are deterministic top-k picks, so exact sampling needs no draft
distribution; `acceptance="typical"` selects Medusa's lossy typical acceptance instead.
`draft_vocab=N` lets the heads score only the N tokens most often seen as assistant tokens in their
training data (FR-Spec's frequency-ranked vocabulary, as `sps` and `eagle` do): on a CPU the heads'
product with the 49,152-row LM head is most of a Medusa draft step. The drafts stay picks, so
decoding stays exact.

On CUDA the heads' step (norm, ResBlocks, LM head, top-k, the tree's picks) is one compiled,
captured CUDA graph: run eagerly, its dozen small launches kept the device waiting 0.66 ms a step
on the H200, more than half the target's 0.86 ms step (docs/results/gpu_mt_bench_h200/).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ..cuda_graph import capture, compiling
from ..drafters import Drafter, resolve_drafter
from ..drafters.base import DraftDtype, draft_vocabulary, dtype_name, run_dtype
from ..drafters.medusa import MedusaHeads, check_tree, medusa_tree, tree_arrays
from ..engine import DecodeContext, Proposer
from ..errors import SpecbenchError
from ..model import Transformer, device_kind, fixed_linear
from ..options import PositiveInt
from ..tree import DraftTree, ancestor_mask, top_k_rows

# default tree sizes, chosen by measurement (README, "Medusa"): on the CPU the root and 5 nodes cost
# what one token does and 7 rows about 15% more (oneDNN; 1.34x against 1.17x for 10 nodes,
# experiments/cpu_small_trees.yaml, docs/results/cpu_small_trees/); on CUDA the root and 14 nodes
# fill the 16-row graph bucket, and 17 rows jump to the 64-row one. On an AVX2 CPU (`model.device_kind`)
# a forward over 3 rows costs 1.14x a step against 1.32x over 6: 2 nodes ran 1.051x as fast as 5 on
# 24 questions (paired 95% interval 1.028-1.074x; experiments/cpu_avx2_trees_24q.yaml,
# docs/results/cpu_avx2_trees_24q/)
DEFAULT_TREE_SIZE = {"cpu": 5, "cpu-avx2": 2, "cuda": 14}
# default draft vocabulary by device: on the CPU 4,096 tokens cut the heads' step from 5.1 to 1.4 ms
# with 1.55 against 1.56 tokens per step (1.15x against 1.08x vanilla; 2,048 tokens measured alike:
# 1.2 ms, 1.54 tokens, 1.19x within the run's noise; experiments/cpu_medusa_vocab.yaml,
# docs/results/cpu_medusa_vocab/). On CUDA the heads' step is one captured graph, not measured with
# a draft vocabulary: the whole one. The default applies to heads that counted their training
# tokens; others score the whole vocabulary.
DEFAULT_DRAFT_VOCAB = {"cpu": 4096, "cpu-avx2": 4096, "cuda": None}


class DraftVocab:
    """The draft vocabulary's tokens (`draft_vocabulary`: those most often assistant tokens in the
    heads' training data), and the LM head rows (shared or each head's own) that score only them,
    packed for the device."""

    def __init__(self, drafter: MedusaHeads, model: Transformer, ids: torch.Tensor):
        self.ids = ids.to(model.device)
        weights = [model.lm_head.weight] if drafter.lm_heads is None else [lm.weight for lm in drafter.lm_heads]
        self.heads = [fixed_linear(w.detach()[self.ids].to(drafter.dtype)) for w in weights]   # `draft_dtype`

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """[K, D] head states -> [K, size] logits of the draft vocabulary."""
        if len(self.heads) == 1:
            return self.heads[0](states)
        return torch.stack([head(states[k]) for k, head in enumerate(self.heads)])


def tree_tokens(drafter: MedusaHeads, model: Transformer, features: torch.Tensor, head: torch.Tensor,
                rank: torch.Tensor, topk: int, vocab: DraftVocab | None = None) -> torch.Tensor:
    """The tree's tokens for one root feature [1, D]: node i is head[i]'s rank[i]-th choice (among
    the draft vocabulary's tokens, if given)."""
    if vocab is None:
        logits = drafter(features, model)[0]                          # [K, V]
        return top_k_rows(logits, topk)[1][head, rank]
    scores = vocab.scores(drafter.head_states(features, model)[0])    # [K, size]
    return vocab.ids[top_k_rows(scores, topk)[1][head, rank]]


class GraphedTreeTokens:
    """`tree_tokens` compiled and captured in one CUDA graph over static buffers. The graph reads
    its tensors by address, so it owns every one of them: indices held by the proposer that
    captured it were freed with that proposer, and a later replay read reused memory as token
    indices (a device-side assert in a benchmark of several trees on the H200)."""

    def __init__(self, drafter: MedusaHeads, model: Transformer, head: torch.Tensor, rank: torch.Tensor, topk: int,
                 vocab: DraftVocab | None):
        self.features = torch.zeros(1, model.args.hidden_size, dtype=model.dtype, device=model.device)
        self.head, self.rank, self.vocab = head.clone(), rank.clone(), vocab
        self.graph, self.out = capture(
            lambda: tree_tokens(drafter, model, self.features, self.head, self.rank, topk, self.vocab), self,
            compiling())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        self.features.copy_(features)
        self.graph.replay()
        return self.out.clone()


class Medusa(Proposer):
    """Medusa heads on the last hidden state draft a tree of top-k combinations.

    Options:
    drafter: None: the one shipped for the default model
    tree: a node count, None: by device, or index paths
    draft_vocab: None: by device (CPU 4096 where the heads counted their training tokens, else the whole vocabulary)
    draft_dtype: None: bfloat16 for a float32 target on a CPU with native bfloat16, else the target's
    """

    def __init__(self, model: Transformer, drafter: Path | Drafter | None = None, tree: int | list | None = None,
                 acceptance: Literal["exact", "typical"] = "exact", typical_threshold: float = 0.09,
                 typical_alpha: float = 0.3, draft_vocab: PositiveInt | None = None,
                 draft_dtype: DraftDtype | None = None):
        if not 0 < typical_threshold <= 1 or not 0 < typical_alpha <= 1:
            raise SpecbenchError("typical_threshold and typical_alpha must be in (0, 1]")
        if isinstance(tree, bool) or (isinstance(tree, int) and tree < 1):
            raise SpecbenchError(f"tree must be a node count >= 1 or a list of index paths, got {tree!r}")
        self.drafter = resolve_drafter(drafter, model, "medusa").cast(run_dtype(model, draft_dtype))
        heads = self.drafter.num_heads
        if tree is None:
            tree = DEFAULT_TREE_SIZE[device_kind(model.device)]
        self.paths = medusa_tree(self.drafter.rank_accuracy, tree) if isinstance(tree, int) \
            else check_tree(tree, heads, model.args.vocab_size)
        self.parents, head, rank = tree_arrays(self.paths)      # parents stay on the CPU (DraftTree)
        self.head, self.rank = head.to(model.device), rank.to(model.device)
        # the tree's shape never changes: its ancestors go to the device once, so a step builds its
        # mask and positions there instead of on the host while the device waits
        self.ancestors = ancestor_mask(self.parents)[1:, 1:].to(model.device)
        self.topk = int(rank.max()) + 1
        ids = draft_vocabulary(draft_vocab, self.drafter.token_counts, DEFAULT_DRAFT_VOCAB[device_kind(model.device)],
                               model.args.vocab_size, self.topk, "medusa")
        self.vocab = None if ids is None else DraftVocab(self.drafter, model, ids)
        self.max_nodes = len(self.paths)
        self.feature_layers = (model.args.num_layers,)
        self.lossless = self.lossless_with({"acceptance": acceptance})
        if not self.lossless:
            self.typical = (typical_threshold, typical_alpha)

    @classmethod
    def lossless_with(cls, options: dict) -> bool:
        return options["acceptance"] == "exact"

    def propose(self, ctx: DecodeContext) -> DraftTree:
        if ctx.root_features is None:    # a one-token prompt has no state before the root yet
            return DraftTree.empty(ctx.model.device)
        return DraftTree(tokens=self.draft(ctx.root_features), parents=self.parents, ancestors=self.ancestors)

    def begin(self, ctx: DecodeContext) -> None:
        """The step's drafting function: on CUDA a captured graph, kept on the drafter across
        generations (a capture costs seconds), else the eager function."""
        model = ctx.model
        if model.device.type != "cuda":
            self.draft = lambda features: tree_tokens(self.drafter, model, features, self.head, self.rank, self.topk,
                                                      self.vocab)
            return
        size = None if self.vocab is None else len(self.vocab.ids)
        key = (tuple(self.paths), id(model), model.dtype, size)
        graphs = self.drafter.__dict__.setdefault("_graphed", {})
        if key not in graphs:
            graphs[key] = GraphedTreeTokens(self.drafter, model, self.head, self.rank, self.topk, self.vocab)
        self.draft = graphs[key]

    def stats(self) -> dict:
        return {"tree_nodes": len(self.paths), "draft_dtype": dtype_name(self.drafter.dtype)}
