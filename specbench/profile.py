"""`specbench profile`: what a target forward over n new tokens costs, and how far decoding is from
the memory-bandwidth floor.

A speculative method gains what it accepts per step divided by what its verification forward over
k tokens costs against a one-token step, so this cost curve bounds every method (the notebooks'
cost model reads its CSV). Everything is measured in one run on one device:

- the curve: milliseconds per target forward over n = 1, 2, 4, ..., 256 new tokens on top of a
  cache holding `cache_len` tokens, through the engine's own forward (`DecodeContext.forward`:
  the CUDA-graph replay on a GPU, new tokens padded to its buckets; the plain forward on CPU);
- vanilla decoding through the engine (`engine.run`), tokens per second of its decode steps
  (prefill excluded: the `phase_time_s` of its stats);
- the floor: the bytes one decode step must read (every weight once; an untied embedding table is
  only gathered from) over the device's copy bandwidth (read + write bytes per second of a large
  `copy_`), measured here.

Speed depends on shapes, not values, so the named shapes are built with random weights directly
on the device in the requested dtype; the cache holds zeros. Timing: warm-up calls first (on a GPU
they compile and capture every bucket), then `repeats` timed calls, each between two device
synchronisations, reporting the median; on CUDA the device time of each call (CUDA events) is
reported beside it.
"""
from __future__ import annotations

import contextlib
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .checks import check_device, check_dtype
from .engine import DecodeContext, run
from .errors import SpecbenchError
from .loading import ModelSource, load_with_status, locate_model
from .model import ModelArgs, Transformer, cpu_bfloat16_native, rope_inv_freq
from .numerics import check_numerics
from .sampling import SamplingParams
from .strategies.vanilla import Vanilla
from .timing import PHASES, cpu_settings, device_name

NEW_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Public configs of each architecture (no weights); "tiny" is a smoke-test shape.
SHAPES: dict[str, ModelArgs] = {
    "default": ModelArgs(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                         num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0,
                         tie_word_embeddings=True, max_position_embeddings=8192),
    "llama2-7b": ModelArgs(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                           num_heads=32, num_kv_heads=32, head_dim=128, max_position_embeddings=4096),
    "llama3-8b": ModelArgs(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                           num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
                           max_position_embeddings=8192),
    "qwen2-7b": ModelArgs(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                          num_heads=28, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6,
                          qkv_bias=True, max_position_embeddings=32768),
    "tiny": ModelArgs(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=2048),
}


def shape_model(shape: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                seed: int = 0) -> Transformer:
    """A model of a named shape with random weights, allocated on the device in the dtype (a 7B
    shape never passes through float32 or host memory)."""
    if shape not in SHAPES:
        raise SpecbenchError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    args = SHAPES[shape]
    with torch.device("meta"):
        model = Transformer(args)
    model = model.to(check_dtype(dtype)).to_empty(device=device)
    if args.tie_word_embeddings:    # to_empty allocates the two uses of the tied weight apart
        model.lm_head.weight = model.embed.weight
    model.inv_freq = rope_inv_freq(args).float().to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:   # small normal values: no overflow, no denormals
                param.normal_(0.0, 0.02, generator=gen)
    model.pack_weights()
    return model.eval().requires_grad_(False)


def weight_bytes(model: Transformer) -> int:
    """Bytes one decode step reads: every parameter once, but not an untied embedding table (a
    step gathers one row of it); a tied one is the LM head and counts."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if name != "embed.weight" or model.args.tie_word_embeddings)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall seconds of fn() between device synchronisations, and median device seconds
    (CUDA events; NaN on CPU)."""
    walls, events = [], []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        if device.type == "cuda":
            pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            pair[0].record()
        fn()
        if device.type == "cuda":
            pair[1].record()
            events.append(pair)
        _sync(device)
        walls.append(time.perf_counter() - start)
    device_s = [a.elapsed_time(b) / 1000.0 for a, b in events]
    return statistics.median(walls), statistics.median(device_s) if device_s else float("nan")


def copy_bandwidth(device: str | torch.device, nbytes: int | None = None, repeats: int = 10) -> float:
    """Bytes per second (read + written) of copying a buffer far larger than any cache."""
    device = torch.device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 256 << 20)
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    wall, dev = _timed(lambda: dst.copy_(src), device, repeats)
    return 2 * nbytes / (dev if device.type == "cuda" else wall)


def _graphed(model: Transformer, max_len: int):
    from .cuda_graph import graphed_model
    return graphed_model(model, max_len) if model.device.type == "cuda" else None


def forward_curve(model: Transformer, cache_len: int, new_tokens=NEW_TOKENS, repeats: int = 5,
                  warmup: int = 2, seed: int = 0) -> list[dict]:
    """ms per target forward over each n of `new_tokens` on a cache of `cache_len` tokens, through
    the engine's forward (writes K/V past the committed length, as a verification does)."""
    device = model.device
    max_len = cache_len + max(new_tokens) + 1
    graphed = _graphed(model, max_len)
    cache = graphed.cache if graphed is not None else model.new_cache(max_len)
    gen = torch.Generator(device=device).manual_seed(seed)
    ctx = DecodeContext(model, cache, [0] * (cache_len + 1), cache_len + 1, SamplingParams(), gen, 0, graphed)
    rows = []
    with torch.inference_mode():
        for n in new_tokens:
            cache.length = cache_len
            tokens = torch.randint(model.args.vocab_size, (n,), device=device, generator=gen)
            positions = torch.arange(cache_len, cache_len + n, device=device)
            for _ in range(warmup):
                ctx.forward(tokens, positions)
            wall, dev = _timed(lambda: ctx.forward(tokens, positions), device, repeats)
            rows.append({"cache_len": cache_len, "new_tokens": n, "ms": 1e3 * wall, "device_ms": 1e3 * dev})
    cache.length = 0
    return rows


def kernel_table(model: Transformer, cache_len: int, n: int, calls: int = 5, rows: int = 25) -> str:
    """torch.profiler's table of the operators (on CUDA: the kernels, graph replays included) of
    `calls` engine forwards over n new tokens, sorted by device time (CPU time on CPU)."""
    from torch.profiler import ProfilerActivity
    device = model.device
    max_len = cache_len + n + 1
    graphed = _graphed(model, max_len)
    cache = graphed.cache if graphed is not None else model.new_cache(max_len)
    ctx = DecodeContext(model, cache, [0] * (cache_len + 1), cache_len + 1, SamplingParams(),
                        torch.Generator(device=device), 0, graphed)
    cache.length = cache_len
    tokens = torch.zeros(n, dtype=torch.long, device=device)
    positions = torch.arange(cache_len, cache_len + n, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode():
        for _ in range(2):
            ctx.forward(tokens, positions)
        _sync(device)
        with torch.profiler.profile(activities=activities) as p:
            for _ in range(calls):
                ctx.forward(tokens, positions)
            _sync(device)
    cache.length = 0
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return p.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)


def vanilla_tokens_per_s(model: Transformer, cache_len: int, decode_tokens: int = 64, repeats: int = 3,
                         seed: int = 0) -> float:
    """Median tokens/s of the engine's vanilla decode steps after a prompt of cache_len + 1 tokens."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(model.args.vocab_size, (cache_len + 1,), generator=gen).tolist()
    speeds = []
    for i in range(repeats + 1):    # the first run warms up (on a GPU: compiles and captures)
        stats = run(model, Vanilla(), prompt, SamplingParams(), decode_tokens, seed, eos_ids=()).stats
        decode_s = sum(stats["phase_time_s"][p] for p in PHASES if p != "prefill")
        if i:
            speeds.append(stats["new_tokens"] / decode_s)
    return statistics.median(speeds)


def _count(name: str, value, low: int) -> int:
    """An integer >= low, also from command-line text."""
    text = str(value).strip()
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not re.fullmatch(r"-?\d+", text) \
            or int(text) < low:
        raise SpecbenchError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(text)


@dataclass
class Request:
    """A checked profile request: what to profile (a named shape, or a located model file) and how."""
    shape: str | None
    source: ModelSource | None
    device: torch.device
    dtype: torch.dtype
    numerics: str
    cache_lens: list[int]
    new_tokens: tuple[int, ...]
    repeats: int
    decode_tokens: int
    threads: int | None

    @property
    def label(self) -> str:
        return self.shape or (self.source.name if self.source else "model")

    def load(self) -> Transformer:
        """The model: random weights of the shape, or the model file loaded (one status line)."""
        if self.source is None:
            model = shape_model(self.shape, self.device, self.dtype)
            model.numerics = self.numerics
        else:
            model = load_with_status(self.source, self.device, self.dtype, self.numerics)
        check_context(model.args, self.cache_lens, self.new_tokens, self.decode_tokens)
        return model


def check_request(shape: str | None = None, model_path: str | None = None, device="cpu", dtype="float32",
                  numerics: str = "fast", cache_lens=(512,), new_tokens=NEW_TOKENS, repeats=5,
                  decode_tokens=64, threads=None, verbose: bool = False) -> Request:
    """Check a profile request with the shared checks (`specbench.checks`, `locate_model` for a
    model path) before anything slow (neither shape nor path: a model the caller holds)."""
    if shape is not None and model_path is not None:
        raise SpecbenchError("give either a model path or a shape, not both")
    if shape is not None and shape not in SHAPES:
        raise SpecbenchError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    torch_dtype, dev = check_dtype(dtype), check_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise SpecbenchError(f"profile runs on cpu or cuda, not {device!r}")
    check_numerics(numerics)
    lens = [_count("cache length", value, 0) for value in cache_lens]
    if not lens:
        raise SpecbenchError("give at least one cache length")
    if not new_tokens or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in new_tokens):
        raise SpecbenchError(f"new token counts must be integers >= 1, got {list(new_tokens)}")
    request = Request(shape=shape, source=None, device=dev, dtype=torch_dtype, numerics=numerics, cache_lens=lens,
                      new_tokens=tuple(new_tokens), repeats=_count("repeats", repeats, 1),
                      decode_tokens=_count("decode_tokens", decode_tokens, 1),
                      threads=None if threads is None else _count("threads", threads, 1))
    if model_path is not None:
        request.source = locate_model(model_path, verbose)
    elif shape is not None:
        check_context(SHAPES[shape], lens, request.new_tokens, request.decode_tokens)
    return request


def check_context(args: ModelArgs, cache_lens: list[int], new_tokens, decode_tokens: int) -> None:
    need = max(cache_lens) + 1 + max(max(new_tokens), decode_tokens)
    if need > args.max_position_embeddings:
        raise SpecbenchError(f"cache length {max(cache_lens)} + {max(max(new_tokens), decode_tokens)} new tokens "
                             f"exceeds the model's context of {args.max_position_embeddings}")


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's CPU thread count set to `threads` (None: as it is) inside, restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(request: Request, model: Transformer) -> pd.DataFrame:
    """The cost curve, vanilla decode speed and bandwidth floor of `model` as one tidy DataFrame.

    One row per (cache_len, new_tokens): ms (median wall time per forward), device_ms (CUDA
    events), x_step (ms / ms of n=1 at that cache length); the run's constants are repeated on
    every row: vanilla_tok_s (per cache length), weight_gb, copy_gb_s, floor_ms (per token),
    pct_of_floor (vanilla against the floor), plus label, device, device_name, dtype, numerics,
    threads and bfloat16_native (on a CPU: whether oneDNN multiplies bfloat16 natively; without it a
    bfloat16 curve rises steeply, docs/results/cpu_profile_epyc_avx2).
    """
    check_context(model.args, request.cache_lens, request.new_tokens, request.decode_tokens)
    dev = model.device
    with torch_threads(request.threads):
        bandwidth = copy_bandwidth(dev)
        nbytes = weight_bytes(model)
        rows = []
        for cache_len in request.cache_lens:
            curve = forward_curve(model, cache_len, request.new_tokens, request.repeats)
            tok_s = vanilla_tokens_per_s(model, cache_len, request.decode_tokens, request.repeats)
            for row in curve:
                rows.append({**row, "x_step": row["ms"] / curve[0]["ms"], "vanilla_tok_s": tok_s})
        used_threads = torch.get_num_threads()
    floor_ms = 1e3 * nbytes / bandwidth
    df = pd.DataFrame(rows)
    df["pct_of_floor"] = 100.0 * floor_ms * df["vanilla_tok_s"] / 1e3
    df["weight_gb"], df["copy_gb_s"], df["floor_ms"] = nbytes / 1e9, bandwidth / 1e9, floor_ms
    df.insert(0, "label", request.label)
    df.insert(1, "device", dev.type)
    df.insert(2, "device_name", device_name(dev))
    df.insert(3, "dtype", str(model.dtype).removeprefix("torch."))
    df.insert(4, "numerics", model.numerics)
    df.insert(5, "threads", used_threads if dev.type == "cpu" else None)
    df.insert(6, "bfloat16_native", cpu_bfloat16_native() if dev.type == "cpu" else None)
    return df


def profile(model: Transformer | None = None, *, shape: str | None = None, model_path: str | None = None,
            device: str = "cpu", dtype: str = "float32", numerics: str = "fast", cache_lens=(512,),
            new_tokens=NEW_TOKENS, repeats: int = 5, decode_tokens: int = 64,
            threads: int | None = None) -> pd.DataFrame:
    """Profile `model` (as it is), a named `shape` (random weights, see SHAPES) or the model at
    `model_path` (with neither: the "default" shape); the request is checked before anything
    loads. Columns: see `measure`."""
    if model is not None:
        if shape is not None or model_path is not None:
            raise SpecbenchError("give a model, a shape or a model path, not several")
        device, dtype, numerics = model.device, model.dtype, model.numerics
    elif model_path is None and shape is None:
        shape = "default"
    request = check_request(shape, model_path, device, dtype, numerics, cache_lens, new_tokens, repeats,
                            decode_tokens, threads)
    with torch_threads(request.threads):
        model = request.load() if model is None else model
    return measure(request, model)


def table(df: pd.DataFrame) -> str:
    """A markdown summary: per cache length, ms per forward and its ratio to the one-token step."""
    first = df.iloc[0]
    ns = sorted(df["new_tokens"].unique())
    cpu = f", {cpu_settings(int(first['threads']), bool(first['bfloat16_native']))}" if first["device"] == "cpu" else ""
    mode = "" if first["numerics"] == "fast" else f", numerics {first['numerics']}"
    lines = [f"{first['label']} on {first['device_name']}{cpu}, {first['dtype']}{mode}: weights "
             f"{first['weight_gb']:.2f} GB, copy bandwidth {first['copy_gb_s']:.1f} GB/s -> floor "
             f"{first['floor_ms']:.3f} ms/token ({1e3 / first['floor_ms']:.0f} tok/s)", "",
             "| cache | | " + " | ".join(f"n={n}" for n in ns) + " | vanilla tok/s | % of floor |",
             "|---|---|" + "---|" * (len(ns) + 2)]
    for cache_len, part in df.groupby("cache_len", sort=True):
        by_n = part.set_index("new_tokens")
        lines.append(f"| {cache_len} | ms | " + " | ".join(f"{by_n.loc[n, 'ms']:.2f}" for n in ns)
                     + f" | {part['vanilla_tok_s'].iloc[0]:.1f} | {part['pct_of_floor'].iloc[0]:.0f}% |")
        lines.append("| | x n=1 | " + " | ".join(f"{by_n.loc[n, 'x_step']:.2f}" for n in ns) + " | | |")
    return "\n".join(lines)


def write_csv(df: pd.DataFrame, out: str | Path) -> Path:
    """`<out>/profile_<label>_<device>_<dtype>.csv` (`_batch_invariant` before `.csv` in that
    numerics mode; the folder is created)."""
    first = df.iloc[0]
    mode = "" if first["numerics"] == "fast" else f"_{first['numerics']}"
    name = re.sub(r"[^A-Za-z0-9_.+-]", "-", f"profile_{first['label']}_{first['device']}_{first['dtype']}{mode}")
    path = Path(out) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path
