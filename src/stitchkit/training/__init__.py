"""Training and evaluation: the paper's recipe for stitches, the fine-tuning baseline and models from scratch."""
from .config import Config, load_config
from .engine import NonFiniteLossError, RunInterrupted, Trainer, TrainingGroup, evaluate, train, train_group
from .evaluation import evaluate_model, evaluate_run

__all__ = ["Config", "NonFiniteLossError", "RunInterrupted", "Trainer", "TrainingGroup", "evaluate", "evaluate_model",
           "evaluate_run", "load_config", "train", "train_group"]
