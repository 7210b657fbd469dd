"""The one-token decode forward captured once in a CUDA graph.

At batch 1 a small model's step is dominated by kernel launches (the GPU idles between ~300 small
kernels). The step is therefore written with static shapes (the whole static cache as the
attention span, masked by position) and no host synchronisation, captured once, and replayed.
"""
from __future__ import annotations

import torch

from .model import KVCache, Transformer


class GraphedDecode:
    def __init__(self, model: Transformer, max_len: int):
        self.model = model
        self.cache = model.new_cache(max_len)
        device = model.device
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.all_slots = torch.arange(max_len, device=device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(2):       # warm-up outside the graph (allocator, cuBLAS handles)
                self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.logits = self._forward()

    def _forward(self) -> torch.Tensor:
        mask = (self.all_slots <= self.pos)[None]
        return self.model(self.token, self.pos, self.cache, mask, slots=self.pos,
                          span=self.cache.max_len).logits

    def __call__(self, token: int, position: int) -> torch.Tensor:
        """Logits [1, V] of `token` at `position` (its K/V land in slot `position`)."""
        self.token.fill_(token)
        self.pos.fill_(position)
        self.graph.replay()
        return self.logits


def graphed_decode(model: Transformer, max_len: int) -> tuple[KVCache, GraphedDecode]:
    """A captured decode step with its own static cache, reused across generations on one model
    (capture takes ~0.1 s; the cache size is rounded up to 512 so a few graphs serve all lengths)."""
    size = -(-max_len // 512) * 512
    graphs = model.__dict__.setdefault("_decode_graphs", {})
    if size not in graphs:
        graphs[size] = GraphedDecode(model, size)
    graph = graphs[size]
    graph.cache.length = 0
    return graph.cache, graph
