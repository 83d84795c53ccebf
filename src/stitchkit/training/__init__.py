"""Training and evaluation: the paper's recipe for stitches, the fine-tuning baseline and models from scratch.

Names are imported on first use, so reading settings (``stitchkit.training.config``) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Config": "config", "load_config": "config",
    "NonFiniteLossError": "run", "Run": "run", "RunInterrupted": "loop", "TrainingPass": "loop",
    "evaluate": "scoring", "train": "loop", "train_group": "loop",
    "evaluate_folder": "evaluation", "evaluate_model": "evaluation", "evaluate_run": "evaluation",
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
    from .loop import RunInterrupted, TrainingPass, train, train_group
    from .run import NonFiniteLossError, Run
    from .scoring import evaluate
    from .evaluation import evaluate_folder, evaluate_model, evaluate_run
