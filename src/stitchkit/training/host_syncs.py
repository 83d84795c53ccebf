"""Counting the host synchronisations of the training steps on CUDA (``train.count_host_syncs``).

A step that waits for the GPU (``.item()``, a blocking copy, a tensor made from Python numbers on the device) stalls
the CPU that should be queueing the next step's kernels, so a run on a fast card falls behind its step's speed. The
training loop makes none by design (its bookkeeping stays on the device until a log point); this counter lets a run
show it: torch's sync debug mode warns at every synchronising call, and the warnings raised inside the steps are
counted. Log points, checkpoints and evaluations, which synchronise on purpose, lie outside the steps and are not
counted.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

# The text torch's sync debug mode warns with ("called a synchronizing CUDA operation").
SYNC_WARNING = "synchroniz"


class HostSyncCounter:
    """Counts the synchronising calls made inside :meth:`step` blocks. Disabled, it costs nothing and counts
    nothing (``per_step`` is None). ``set_mode``: torch's ``set_sync_debug_mode`` (replaceable in tests, since it
    needs a CUDA driver)."""

    def __init__(self, enabled: bool, set_mode: Callable[[str], None] | None = None):
        self.enabled = enabled
        self._set_mode = set_mode or torch.cuda.set_sync_debug_mode
        self.syncs = 0
        self.steps = 0

    @contextmanager
    def step(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        caught: list = []
        finished = False
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._set_mode("warn")
                try:
                    yield
                    finished = True
                finally:
                    self._set_mode("default")
        finally:
            self.steps += finished
            for w in caught:
                if SYNC_WARNING in str(w.message):
                    self.syncs += finished
                else:  # every other warning of the step goes on as if it had not been caught
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)

    @property
    def per_step(self) -> float | None:
        """Synchronisations per counted step; None when not counting (or before the first step)."""
        return self.syncs / self.steps if self.enabled and self.steps else None
