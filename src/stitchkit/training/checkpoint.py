"""Checkpoints that survive being killed at any moment, and load with ``weights_only=True``.

A checkpoint is written atomically (:mod:`stitchkit.files`): a reader sees the old complete file or the new
complete file, never a torn one. Each file carries a format tag and
the digest of the config that made it, which loading verifies.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import StitchkitError
from ..files import atomic_write_bytes

FORMAT = "stitchkit.checkpoint.v1"


def save_checkpoint(path: Path, state: dict) -> None:
    import io

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, config_digest: str | tuple[str, ...] | None = None) -> dict:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (by a run whose config has one of the
    ``config_digest`` values, when given)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: never half-load it
        raise StitchkitError(f"checkpoint {str(path)!r} is unreadable ({err}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StitchkitError(f"{str(path)!r} is not a stitchkit training checkpoint")
    accepted = (config_digest,) if isinstance(config_digest, str) else config_digest
    if accepted is not None and state.get("config_digest") not in accepted:
        raise StitchkitError(
            f"checkpoint {str(path)!r} was written by a run with another config (another stitch, model or recipe); "
            "resume with the run's own config.yaml, or use a new output.dir"
        )
    return state


def rng_state() -> dict:
    """Every random number generator's state, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
