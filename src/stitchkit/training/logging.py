"""Metrics out of a run: JSON lines always, a progress bar on a terminal (plain lines with the total and an ETA
otherwise, as in a SLURM log), TensorBoard and Weights & Biases when asked for. Only rank 0 writes.

``metrics.jsonl`` counts epochs from 0 (the epoch a step belongs to; an evaluation after the first epoch says 0, one
before the first step says -1); printed lines count from 1, as ``result.json``'s ``epochs`` does.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import StitchkitError
from ..files import append_line
from ..rundir import RunDir
from .config import Config, flatten


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool, config: Config, total_steps: int, initial_step: int = 0,
                 progress: bool = True, label: str | None = None, device: str = ""):
        """``progress``: draw the progress bar (one per terminal, when runs train together); ``label`` prefixes the
        printed lines, to tell such runs apart."""
        self.enabled = enabled
        self.prefix = f"[{label}] " if label else ""
        self.path = RunDir(run_dir).metrics
        self.total_steps, self.epochs = total_steps, config.train.epochs
        self.initial_step = initial_step
        self.bar = self.tb = self.wandb = None
        self.start = time.time()
        if not enabled:
            return
        t = config.train
        if t.tensorboard:
            self.tb = _summary_writer()(str(run_dir / "tensorboard"))
        if t.wandb:
            self.wandb = _start_wandb(run_dir, config)
        resumed = f", resuming at step {initial_step}" if initial_step else ""
        _say(f"{self.prefix}training {config.mode} run in {run_dir}: {total_steps} steps, {self.epochs} epoch{'s' if self.epochs != 1 else ''} "
             f"on {device or t.device}{resumed}")
        if progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def note(self, text: str) -> None:
        """A line worth reading before the run trains (said once, by the main process)."""
        if self.enabled:
            _say(f"{self.prefix}note: {text}")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time() - self.start, 3), **record}
        append_line(self.path, json.dumps(json_safe(record), allow_nan=False))
        step = record.get("step", 0)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(f"{record.get('type', 'train')}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{record.get('type', 'train')}/{k}": v for k, v in scalars.items()}, step=step)
        if record.get("type") == "train":
            speed = record.get("images_per_s")  # None: only the compiling first step since the last line
            text = (f"loss {record['loss']:.4f} lr {record['lr']:.2e} "
                    + (f"{speed:.0f} img/s" if speed is not None else "(compiled)"))
            if self.bar is not None:
                self.bar.set_postfix_str(self.prefix + text)
            else:
                _say(f"{self.prefix}step {step}/{self.total_steps} epoch {record['epoch'] + 1}/{self.epochs}: {text}"
                     f"{self._eta(step)}")
        elif record.get("type") == "eval":
            when = ("before training" if record["epoch"] < 0 else
                    f"after epoch {record['epoch'] + 1}/{self.epochs}")
            text = f"{self.prefix}{record['split']} top-1 {record['top1']:.2f}% top-5 {record['top5']:.2f}% ({when})"
            (self.bar.write if self.bar is not None else _say)(text)

    def _eta(self, step: int) -> str:
        """Time left at the rate of this process so far (steps since it started or resumed)."""
        done, elapsed = step - self.initial_step, time.time() - self.start
        if done <= 0 or elapsed <= 0 or step >= self.total_steps:
            return ""
        return f", ETA {format_duration((self.total_steps - step) * elapsed / done)}"

    def advance(self, steps: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None: Python's json writes them as bare ``NaN`` and
    ``Infinity``, which strict JSON readers (jq, JavaScript, most other languages) refuse. The run stops when its
    losses stop being finite (:meth:`~stitchkit.training.run.Run.check_finite`); this keeps what it writes readable
    whatever slips through."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def require_loggers(config: Config) -> None:
    """Fail in one line when a logger the config asks for cannot be imported. A run calls this before it writes
    anything: the logs open only after the run folder is made, and a failed start must leave no folder behind."""
    if config.train.tensorboard:
        _summary_writer()
    if config.train.wandb:
        _wandb()


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise StitchkitError("train.tensorboard=true needs the tensorboard package: "
                             "pip install 'stitchkit[tensorboard]', or set train.tensorboard=false") from None
    return SummaryWriter


def _wandb():
    try:
        import wandb
    except ImportError:
        raise StitchkitError("train.wandb=true needs the wandb package: pip install 'stitchkit[wandb]', or set "
                             "train.wandb=false") from None
    return wandb


def _start_wandb(run_dir: Path, config: Config):
    """A W&B run named after the run folder, with every setting as its config. Its id comes from the folder's path,
    so a resumed run continues the same W&B run; sweep cells are grouped by their sweep (the runs folder's name)."""
    wandb = _wandb()
    t = config.train
    folder = run_dir.resolve()
    group = t.wandb_group or (folder.parent.name if RunDir(folder).cell.exists() else None)
    return wandb.init(project=t.wandb_project, entity=t.wandb_entity, group=group, name=folder.name,
                      id=hashlib.sha256(str(folder).encode()).hexdigest()[:16], resume="allow",
                      config=flatten(config), dir=str(run_dir))


def _say(text: str) -> None:
    """A line on stderr; on a terminal through tqdm, so that it lands above another run's progress bar (the runs of
    a training group share one bar) instead of through it."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)
