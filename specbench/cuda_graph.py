"""Target forwards captured in CUDA graphs, for every method's steps on the GPU.

At batch 1 a small model's forward is dominated by kernel launches (~35 small kernels per layer),
whether it scores 1 token or 64. Each forward shape (new tokens padded to a bucket, start and stop
layer) is therefore compiled with torch.compile (which fuses norms, RoPE and SiLU into a few
Triton kernels), captured in a CUDA graph over a static cache, and replayed. The committed length
is a device tensor the attention kernels read, so a replay touches only the live slots, whatever
the cache's size. Nothing inside a replay synchronises with the host. A model's graphs belong to
its numerics mode (specbench/numerics.py).
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Callable

import torch

from .model import ForwardOut, KVCache, Transformer

BUCKETS = (1, 4, 16, 64, 256)


def compiling() -> bool:
    """Whether captured graphs are torch.compile'd first (the default; SPECBENCH_COMPILE=0 captures
    the plain PyTorch code, which skips seconds of compilation per shape)."""
    return os.environ.get("SPECBENCH_COMPILE", "1") != "0"


# the owners of the compiled code dynamo holds (see `capture`)
_compiled_owners: list[weakref.ref] = []


def capture(fn: Callable[[], Any], owner: object, compile: bool, pool=None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """fn (reading and writing static buffers of `owner` only) compiled for its static shapes when
    `compile`, warmed up on a side stream (compilation, cuBLAS handles) and captured: returns the
    graph and the outputs its replays overwrite.

    Every capture of one kind compiles the same code object (a method or a lambda), and dynamo
    keeps compiled code per code object, guarded on the identity of the objects it read; an owner
    that has died may leave its address to a new one. So once an owner has died, dynamo's cache is
    dropped before the next compilation rather than trusted (a precaution: it costs recompiling
    when models or drafters come and go, never a wrong graph)."""
    if compile:
        if any(ref() is None for ref in _compiled_owners):
            torch._dynamo.reset()
            _compiled_owners.clear()
        _compiled_owners.append(weakref.ref(owner))
    step = torch.compile(fn, dynamic=False) if compile else fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = step()
    return graph, out


def bucket(n: int) -> int:
    for b in BUCKETS:
        if n <= b:
            return b
    raise ValueError(f"a forward over {n} new tokens exceeds the largest graph bucket {BUCKETS[-1]}")


class GraphedForward:
    """One captured forward shape: `n` padded new tokens, layers [start_layer, stop_layer), and
    the outputs of `feature_layers` beside the logits."""

    def __init__(self, model: Transformer, cache: KVCache, n: int, start_layer: int,
                 stop_layer: int | None, feature_layers: tuple[int, ...], compile: bool, pool):
        self.model, self.cache, self.n = model, cache, n
        self.start_layer, self.stop_layer, self.feature_layers = start_layer, stop_layer, feature_layers
        device, size = model.device, cache.max_len
        self.tokens = torch.zeros(n, dtype=torch.long, device=device)
        # positions are start + offsets, computed inside the graph: a tree's offsets are its depths,
        # which a step writes without adding the committed length on the host first
        self.offsets = torch.zeros(n, dtype=torch.long, device=device)
        # warm-up and capture write to the last slots, never used by a generation in progress
        self.start = torch.full((1,), size - n, dtype=torch.long, device=device)
        self.causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        self.pad_eye = torch.eye(n, dtype=torch.bool, device=device)   # pads see themselves only
        self.mask = self.causal.clone()
        # what `mask` holds beyond the rows a call writes: "causal", ("rows", k) (a k x k mask, then
        # pads) or ("tree", k) (root column and pads set, the nodes' ancestors written per call);
        # a call that finds its own layout there copies only what changes
        self.layout: object = "causal"
        self.hidden = torch.zeros(n, model.args.hidden_size, dtype=model.dtype, device=device)
        # every bucket compiles for its own static token count: with dynamo's automatic dynamic
        # shapes the second bucket would compile a symbolic count that all later buckets share,
        # and kernels for a symbolic size were measured slower (a 4-token forward cost 1.8x the
        # one-token step on the default model)
        self.graph, self.out = capture(self._forward, self, compile, pool)

    def _forward(self) -> tuple[torch.Tensor, ...]:
        out = self.model(self.tokens, self.start + self.offsets, self.cache, self.mask, start=self.start,
                         start_layer=self.start_layer,
                         hidden=self.hidden if self.start_layer else None, stop_layer=self.stop_layer,
                         output_layers=self.feature_layers)
        head = out.hidden if self.stop_layer is not None else out.logits
        return (head, *(out.layer_hidden[i] for i in self.feature_layers))

    def replay(self, n: int) -> ForwardOut:
        """Replay with the inputs already written; copies of the first n rows of the outputs."""
        self.graph.replay()
        head, *layer_outs = (o[:n].clone() for o in self.out)
        layer_hidden = dict(zip(self.feature_layers, layer_outs))
        if self.stop_layer is not None:
            return ForwardOut(None, head, layer_hidden)
        return ForwardOut(head, layer_hidden.get(self.model.args.num_layers), layer_hidden)


class GraphedModel:
    """A model's static cache and its captured forwards, kept across generations (capturing and
    compiling costs seconds; see `compiling`)."""

    def __init__(self, model: Transformer, max_len: int):
        self.model = model
        self.cache = model.new_cache(max_len)
        self.graphs: dict[tuple, GraphedForward] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.compile = compiling()
        # every captured shape compiles `GraphedForward._forward` anew; a benchmark of several
        # methods needs more than dynamo's default of 8 compilations of one function
        torch._dynamo.config.recompile_limit = 256
        torch._dynamo.config.accumulated_recompile_limit = 4096

    @torch.inference_mode()
    def prepare(self, n: int, start_layer: int = 0, stop_layer: int | None = None,
                feature_layers: tuple[int, ...] = ()) -> GraphedForward:
        """The captured forward that serves n new tokens, captured on first use (callers may
        capture ahead, so no timed step pays for it)."""
        key = (bucket(n), start_layer, stop_layer, feature_layers)
        if key not in self.graphs:
            self.graphs[key] = GraphedForward(self.model, self.cache, bucket(n), start_layer, stop_layer,
                                              feature_layers, self.compile, self.pool)
        return self.graphs[key]

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                offset: int = 0, start_layer: int = 0, hidden: torch.Tensor | None = None,
                stop_layer: int | None = None, feature_layers: tuple[int, ...] = ()) -> ForwardOut:
        """DecodeContext.forward's contract, replayed: new tokens at slots from length + offset,
        seeing every slot before them; returns copies of the outputs."""
        n, length = tokens.shape[0], self.cache.length + offset
        g = self.prepare(n, start_layer, stop_layer, feature_layers)
        g.tokens[:n].copy_(tokens, non_blocking=True)
        torch.sub(positions, length, out=g.offsets[:n])
        g.start.fill_(length)                               # pads write past the real tokens
        if mask is None:
            if g.layout != "causal":
                g.mask.copy_(g.causal)
                g.layout = "causal"
        else:
            if g.layout != ("rows", n):
                g.mask.copy_(g.pad_eye)
                g.layout = ("rows", n)
            g.mask[:n, :n] = mask
        if start_layer:
            g.hidden[:n].copy_(hidden)
        return g.replay(n)

    @torch.inference_mode()
    def tree_forward(self, root: int, tokens: torch.Tensor, ancestors: torch.Tensor | None,
                     start_layer: int = 0, hidden: torch.Tensor | None = None,
                     feature_layers: tuple[int, ...] = ()) -> ForwardOut:
        """A step's forward over (root, nodes) at the committed length, written straight into the
        captured inputs: ancestors [n, n] (the nodes' ancestor-or-self mask, on the device; None
        for the root alone) give the mask and, summed, the depths. A step's inputs cost five
        small copies here against about twenty through `forward`, each of them host time while
        the device, idle since the step's synchronisation, waits for the replay."""
        n = 1 + tokens.shape[0]
        g = self.prepare(n, start_layer, None, feature_layers)
        g.tokens[:1].fill_(root)
        g.start.fill_(self.cache.length)
        if g.layout != ("tree", n):
            g.mask.copy_(g.pad_eye)
            g.mask[:n, 0] = True
            g.offsets.zero_()
            g.layout = ("tree", n)
        if n > 1:
            g.tokens[1:n].copy_(tokens, non_blocking=True)
            g.mask[1:n, 1:n] = ancestors
            torch.sum(ancestors, -1, out=g.offsets[1:n])
        if start_layer:
            g.hidden[:n].copy_(hidden)
        return g.replay(n)


def graphed_model(model: Transformer, max_len: int) -> GraphedModel:
    """The model's graphs for a cache of at least max_len slots: the smallest set already captured
    that is large enough (a replay reads only the live slots, so a larger cache costs nothing),
    else a new one with its size rounded up to 1024. Reusing the larger set matters in a
    benchmark: one long prompt once made a fresh set compile inside a timed answer (79 s, lookahead
    W=31 N=5, docs/results/gpu_lookahead_scaling_h200/NOTE.md)."""
    needed = max_len + BUCKETS[-1]
    graphs = model.__dict__.setdefault("_graphed", {})
    fits = [size for size, numerics in graphs if numerics == model.numerics and size >= needed]
    key = (min(fits) if fits else -(-needed // 1024) * 1024, model.numerics)
    if key not in graphs:
        graphs[key] = GraphedModel(model, key[0])
    graphed = graphs[key]
    graphed.cache.length = 0
    return graphed


def step_buckets(max_nodes: int) -> tuple[int, ...]:
    """The buckets a step whose forward holds the root and up to `max_nodes` nodes may use."""
    return tuple(b for b in BUCKETS if b <= bucket(1 + max_nodes))
