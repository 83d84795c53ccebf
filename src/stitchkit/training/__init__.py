"""Training and evaluation: the paper's recipe for stitches, the fine-tuning baseline and models from scratch.

Names are imported on first use, so reading settings (``stitchkit.training.config``) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Config": "config", "load_config": "config",
    "NonFiniteLossError": "engine", "RunInterrupted": "engine", "Trainer": "engine", "TrainingGroup": "engine",
    "evaluate": "engine", "train": "engine", "train_group": "engine",
    "evaluate_model": "evaluation", "evaluate_run": "evaluation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .config import Config, load_config
    from .engine import NonFiniteLossError, RunInterrupted, Trainer, TrainingGroup, evaluate, train, train_group
    from .evaluation import evaluate_model, evaluate_run
