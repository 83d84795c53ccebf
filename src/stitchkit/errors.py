"""Errors that users see.

Every error a user can cause derives from :class:`StitchkitError`. The CLI prints its message (no traceback unless
``--debug``) and exits non-zero, so messages must say what is wrong *and* how to fix it.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class StitchkitError(ValueError):
    """A problem with the user's input, explained in a way that names the fix."""


class UnknownNameError(StitchkitError, KeyError):
    """A name (model, adapter, resize mode, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0] if self.args else ""


class GapError(StitchkitError):
    """A stitching gap that cannot be built."""


class IncompatibleError(StitchkitError):
    """Two parts that cannot be joined the way that was asked for."""


class WeightsUnavailableError(StitchkitError):
    """Pretrained weights that cannot be had here: ``problem`` says why, ``fix`` how to go on in the caller's terms
    (config keys by default; a command with options of its own names them through :meth:`with_fix`)."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix

    def with_fix(self, fix: str) -> "WeightsUnavailableError":
        return WeightsUnavailableError(self.problem, fix)


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Names from ``choices`` that look like ``name`` (case-insensitive), best first."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    # Substring hits catch e.g. "swin_t" -> "torchvision:swin_t" that difflib scores low.
    subs = [c for c in choices if name.lower() in c.lower() and c.lower() not in hits]
    return [lowered[h] for h in hits] + sorted(subs, key=len)[: max(0, n - len(hits))]


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> UnknownNameError:
    """Build the error for an unknown ``kind`` called ``name``, listing close matches or all choices."""
    choices = sorted(choices)
    matches = close_matches(name, choices)
    if matches:
        listing = "did you mean: " + ", ".join(matches) + "?"
    elif len(choices) <= 12:
        listing = "choose one of: " + ", ".join(choices)
    else:
        listing = f"{len(choices)} choices exist"
    message = f"unknown {kind} {name!r}; {listing}"
    if hint:
        message += f" ({hint})"
    return UnknownNameError(message)
