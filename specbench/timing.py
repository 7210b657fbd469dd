"""Where a generation's time goes: wall time split into phases, with no extra host synchronisation.

The engine calls `lap(phase)` at each phase boundary: the time since the previous lap (or since
the timer started) is charged to `phase`, so the phases partition the timed span and their sum
never exceeds the generation's wall time. On CPU a lap reads `time.perf_counter`. On CUDA it
records an event on the current stream instead (a sync per lap would change what is measured);
the events are resolved once by `totals()`, which the engine calls after its final synchronize.
There, a phase's time is the stretch of the device timeline between its two events: host work
that the device waits for is charged to the phase that does it, device work queued ahead of the
host to the phase during which it finishes.
"""
from __future__ import annotations

import time

import torch

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

    @staticmethod
    def _record() -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def lap(self, phase: str) -> None:
        """Charge the time since the previous lap to `phase`."""
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
