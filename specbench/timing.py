"""Where a generation's time goes: wall time split into phases, with no extra host synchronisation.

The engine calls `lap(phase)` at each phase boundary: the time since the previous lap (or since
the timer started) is charged to `phase`, so the phases partition the timed span and their sum
never exceeds the generation's wall time. On CPU a lap reads `time.perf_counter`. On CUDA it
records an event on the current stream instead (a sync per lap would change what is measured);
the events are resolved once by `totals()`, which the engine calls after its final synchronize.
There, a phase's time is the stretch of the device timeline between its two events: host work
that the device waits for is charged to the phase that does it, device work queued ahead of the
host to the phase during which it finishes.

Inside `counting_syncs()` (CUDA), the timer also counts the host synchronisations of each phase
(torch's sync debug mode reports every synchronising call), and the engine puts them in
`stats["host_syncs"]`: how the speed issue's "one synchronisation per step" is checked.
"""
from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .model import cpu_bfloat16_native

_sync_log: list[warnings.WarningMessage] | None = None   # set inside counting_syncs()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        cpu = ""
    return f"{cpu or platform.machine()}, {os.cpu_count()} cores"


def machine(device: torch.device) -> str:
    """What a timing depends on beyond the code and its settings: the device's name and, on a CPU,
    torch's thread count and whether it multiplies bfloat16 natively (the main job's EAGLE, one
    head, ran at 1.26x on a 2-core Intel Xeon and 1.34x on a 2-core AVX2-only AMD EPYC:
    docs/results/cpu_quick_xeon, docs/results/cpu_quick_epyc_avx2)."""
    if device.type == "cuda":
        return device_name(device)
    return f"{device_name(device)}, {cpu_settings(torch.get_num_threads(), cpu_bfloat16_native())}"


def cpu_settings(threads: int, bfloat16_native: bool) -> str:
    """The CPU settings a timing names (the bench's machine, the profile's table)."""
    return f"{threads} threads, bfloat16 {'native' if bfloat16_native else 'not native'}"


@contextmanager
def counting_syncs() -> Iterator[None]:
    """Within the block, every generation on CUDA counts its host synchronisations per phase
    (slower: each one raises a warning, which this block records instead of printing)."""
    global _sync_log
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _sync_log = caught
            yield
    finally:
        _sync_log = None
        torch.cuda.set_sync_debug_mode("default")

PHASES = ("prefill", "draft", "forward", "verify", "host")
"""prefill: cache setup, the prompt's forward and the proposer's begin(); draft: propose();
forward: building the step's inputs and the target forward; verify: logits processing,
verification and the cache commit; host: stop checks, bookkeeping and the proposer's accept()."""


class PhaseTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._totals = dict.fromkeys(PHASES, 0.0)
        self._events: list[tuple[str, torch.cuda.Event]] = []
        self._last = time.perf_counter()
        if self.cuda:
            self._events.append(("", self._record()))
        self.syncs = dict.fromkeys(PHASES, 0) if self.cuda and _sync_log is not None else None
        self._seen = len(_sync_log) if self.syncs is not None else 0

    @staticmethod
    def _record() -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap (and its synchronisations, when counted) to `phase`."""
        if self.syncs is not None:
            self.syncs[phase] += sum("synchroniz" in str(w.message) for w in _sync_log[self._seen:])
            self._seen = len(_sync_log)
        if self.cuda:
            self._events.append((phase, self._record()))
            return
        now = time.perf_counter()
        self._totals[phase] += now - self._last
        self._last = now

    def totals(self) -> dict[str, float]:
        """Seconds per phase; on CUDA only after the device has been synchronised."""
        totals = dict(self._totals)
        for (_, before), (phase, after) in zip(self._events, self._events[1:]):
            totals[phase] += before.elapsed_time(after) / 1000.0
        return totals
