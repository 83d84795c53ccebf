"""Metrics out of a run: JSON lines always, a progress bar on a terminal (plain lines otherwise), TensorBoard when
installed, Weights & Biases only when asked. Only rank 0 writes."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import StitchkitError


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, tensorboard: bool = True, wandb: bool = False,
                 initial_step: int = 0, progress: bool = True, label: str | None = None):
        """``progress``: draw the progress bar (one per terminal, when runs train together); ``label`` prefixes the
        printed lines, to tell such runs apart."""
        self.enabled = enabled
        self.prefix = f"[{label}] " if label else ""
        self.path = run_dir / "metrics.jsonl"
        self.bar = self.tb = self.wandb = None
        self.start = time.time()
        if not enabled:
            return
        if progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard not installed: JSON lines are the record
                self.tb = None
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise StitchkitError("train.wandb=true needs the wandb package: pip install wandb") from None
            self.wandb = wandb_module.init(project="stitchkit", dir=str(run_dir))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time() - self.start, 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(f"{record.get('type', 'train')}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{record.get('type', 'train')}/{k}": v for k, v in scalars.items()}, step=step)
        if record.get("type") == "train":
            text = f"loss {record['loss']:.4f} lr {record['lr']:.2e} {record['images_per_s']:.0f} img/s"
            if self.bar is not None:
                self.bar.set_postfix_str(self.prefix + text)
            else:
                _say(f"{self.prefix}step {step} epoch {record['epoch']}: {text}")
        elif record.get("type") == "eval":
            text = f"{self.prefix}{record['split']} top-1 {record['top1']:.2f}% top-5 {record['top5']:.2f}% (epoch {record['epoch']})"
            (self.bar.write if self.bar is not None else _say)(text)

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


def _say(text: str) -> None:
    """A line on stderr; on a terminal through tqdm, so that it lands above another run's progress bar (the runs of
    a training group share one bar) instead of through it."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)
