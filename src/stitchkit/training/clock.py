"""Where a pass's wall time goes: set-up, calibration (fitting the adapters' start), compilation, training,
evaluation and checkpoints, so that a run's throughput is training images per second *of training*, not of everything around it."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

import torch

# "compile": a compiled model's first training step in each process (torch.compile compiles there), kept apart so
# that training's images per second is the compiled model's speed.
PHASES = ("setup", "calibration", "compile", "train", "evaluation", "checkpoint")


class PhaseClock:
    """Wall time per phase. Phases nest (evaluation inside training, calibration inside set-up): time spent in an
    inner phase counts for it alone.

    ``synchronize``: waits for the device (on CUDA, see :func:`device_synchronizer`). The host runs ahead of a GPU by
    the steps it has queued, so without waiting, a phase's last steps would be charged to whatever comes next
    (evaluation, a checkpoint) and training would look faster than it is. It is called only where the clock is read
    (phase changes, log points), never inside a training step."""

    def __init__(self, phase: str = "setup", synchronize: Callable[[], None] | None = None):
        self._charged = dict.fromkeys(PHASES, 0.0)
        self._stack = [phase]
        self._synchronize = synchronize
        self._since = time.perf_counter()

    def _charge(self) -> None:
        if self._synchronize is not None:
            self._synchronize()
        now = time.perf_counter()
        self._charged[self._stack[-1]] += now - self._since
        self._since = now

    def switch(self, phase: str) -> None:
        """Count from now on for ``phase`` (at the outermost level)."""
        self._charge()
        self._stack[0] = phase

    def reassign(self, seconds: float, phase: str) -> None:
        """Move ``seconds`` already counted for the current phase to ``phase`` (measured inside a call that the
        clock cannot see into, e.g. the start's fit inside building a stitch)."""
        self._charge()
        seconds = min(seconds, self._charged[self._stack[-1]])
        self._charged[self._stack[-1]] -= seconds
        self._charged[phase] += seconds

    @contextmanager
    def phase(self, name: str):
        if name not in self._charged:
            raise ValueError(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def seconds(self) -> dict[str, float]:
        """Seconds per phase so far (the current phase included)."""
        self._charge()
        return dict(self._charged)


def device_synchronizer(device: torch.device) -> Callable[[], None] | None:
    """What a :class:`PhaseClock` waits for the device with: CUDA's synchronize; None where work is not queued."""
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)


def add_seconds(*parts: dict | None) -> dict[str, float]:
    """Phase seconds added up (a run resumed several times adds each stretch)."""
    total = dict.fromkeys(PHASES, 0.0)
    for part in parts:
        for phase, value in (part or {}).items():
            total[phase] = total.get(phase, 0.0) + float(value)
    return total
