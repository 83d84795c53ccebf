"""Fault injection, for proving that a run killed at any moment loses nothing.

``STITCHKIT_FAULT=POINT:N`` makes the process kill itself with SIGKILL (no cleanup, like the OOM killer or a
preempted node) the N-th time it reaches ``POINT``. The points are named where the engine calls :func:`point`:
``step`` (between micro-batches of an optimizer step), ``checkpoint-write`` (a checkpoint's temporary file written,
not yet renamed), ``evaluation`` (inside an evaluation pass), ``epoch-end`` (between epochs) and ``finish`` (results
computed, result.json not yet written). Unset, it costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

POINTS = ("step", "checkpoint-write", "evaluation", "epoch-end", "finish")
_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("STITCHKIT_FAULT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
