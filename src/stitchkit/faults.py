"""Fault injection, for proving that a run, a sweep or a report killed at any moment loses nothing.

``STITCHKIT_FAULT=POINT:N`` makes the process kill itself with SIGKILL (no cleanup, like the OOM killer or a
preempted node) the N-th time it reaches ``POINT``. Unset, a point costs one dictionary lookup. The points:

* every file stitchkit writes (:mod:`stitchkit.files`): ``write:NAME`` (the temporary file is complete, not yet
  renamed over ``NAME``), ``renamed:NAME`` (renamed, the folder not yet synced), ``append:NAME`` (half a line
  appended to ``NAME``, as a kill in the middle of a write leaves it);
* the training loop: ``step`` (between micro-batches of an optimizer step), ``evaluation`` (inside an evaluation
  pass), ``epoch-end`` (between epochs), ``finish`` (results computed, result.json not yet written);
* the sweep runner: ``locked`` (a cell's lock taken, nothing written yet);
* ``checkpoint-write``: the same moment as ``write:last.pt`` (kept for the tests that name it).
"""
from __future__ import annotations

import os
import signal

POINTS = ("step", "checkpoint-write", "evaluation", "epoch-end", "finish", "locked", "write:NAME", "renamed:NAME",
          "append:NAME")
_counts: dict[str, int] = {}


def _parse(spec: str) -> tuple[str, int]:
    target, _, count = spec.rpartition(":")
    return (target, int(count)) if target and count.isdigit() else (spec, 1)


def fires_next(name: str) -> bool:
    """Whether the next :func:`point` ``name`` kills the process (for code that must first do the damage a kill
    there does, such as half a line)."""
    spec = os.environ.get("STITCHKIT_FAULT")
    if not spec:
        return False
    target, count = _parse(spec)
    return target == name and _counts.get(name, 0) + 1 == count


def point(name: str) -> None:
    spec = os.environ.get("STITCHKIT_FAULT")
    if not spec:
        return
    target, count = _parse(spec)
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == count:
        os.kill(os.getpid(), signal.SIGKILL)
