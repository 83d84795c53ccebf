"""The training loop: one stitch, the fine-tuning baseline, or a model from scratch, with the paper's recipe.

Recipe (the defaults of :class:`~stitchkit.training.config.Config`): AdamW (lr 0.002, weight decay 0.05), effective
batch 512 by gradient accumulation over processes and micro-batches, cosine annealing to 0 stepped per optimizer
step with optional linear warm-up, 10 epochs, cross-entropy.

Resumption is exact on CPU: checkpoints are taken only at optimizer-step boundaries and hold the trainable weights,
optimizer, scheduler, scaler, counters, loss accumulators and every RNG state; data order and augmentation depend
only on (seed, epoch, index) (see :mod:`stitchkit.training.data`), so a resumed run replays the same micro-batches.
"""
from __future__ import annotations

import math
import platform
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..compute import count_macs, count_params
from ..errors import StitchkitError
from . import distributed, faults
from .checkpoint import atomic_write_json, atomic_write_text, digest, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, from_yaml_file, resume_differences, to_yaml
from .data import EpochSampler, Splits, build_splits, collate, preprocessing_for
from .logging import MetricsLog
from .models import build_model, load_trainable_state, trainable_state

EXIT_INTERRUPTED = 130
# Everything a run (or the sweep runner) writes into a run directory; anything else there is the user's.
RUN_FILES = {"config.yaml", "metrics.jsonl", "result.json", "eval.json", "model.pt", "adapters.pt", "checkpoints",
             "tensorboard", "cell.json", "attempts.log", ".lock", "cell-config.yaml", ".write-test", "wandb"}


class NonFiniteLossError(StitchkitError):
    """The loss became NaN or infinite."""


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after a checkpoint; a scheduler should requeue it


class RunInterrupted(Exception):
    """Training stopped by a signal after writing a checkpoint; ``--resume`` continues it.

    ``exit_code`` is 130 for Ctrl-C and 75 (EX_TEMPFAIL, "try again") for SIGTERM, which SLURM sends before
    preempting or timing out a job: requeue on 75.
    """

    def __init__(self, message: str, exit_code: int = EXIT_INTERRUPTED):
        super().__init__(message)
        self.exit_code = exit_code


def default_run_dir(config: Config) -> Path:
    m = config.model
    models = m.src if config.mode != "stitch" else f"{m.src}--{m.dst or m.src}"
    parts = [config.mode, models.replace(":", "_").replace("/", "_")]
    if config.mode != "scratch":
        parts.append(m.gap.replace(":", "to"))
    if config.mode == "stitch":
        parts += [m.adapter, m.resize]
    parts.append(f"seed{config.train.seed}")
    return Path("runs") / "-".join(parts)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StitchkitError(f"train.device={name} but no CUDA device is visible; use train.device=cpu")
    return device


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """LR factor at optimizer step ``s``: linear warm-up, then cosine annealing to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.dim() > 1]
    other = [p for p in params if p.dim() <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def package_versions() -> dict[str, str]:
    import timm
    import torchvision

    from .. import __version__

    return {"stitchkit": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


@dataclass
class Counters:
    """Where training stands, saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress (0-based)
    micro: int = 0  # micro-batches of this epoch consumed
    images: int = 0  # training images seen (this rank)
    skipped: int = 0  # corrupt images skipped (this rank)
    train_seconds: float = 0.0  # wall time spent training, over all resumptions
    train_loss: float | None = None  # mean training loss of the last (possibly partial) epoch


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None,
             channels_last: bool, ctx: distributed.Dist) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean loss over a whole split, summed over ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, loss sum, count
    for images, labels, _ in loader:
        if images.numel() == 0:
            continue
        images, labels = _to_device(images, labels, device, channels_last)
        with _autocast(device, dtype):
            logits = model(images)
        faults.point("evaluation")
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        hits = top.eq(labels[:, None])
        totals += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), loss, torch.tensor(labels.numel(), device=device)]).double()
    model.train(was_training)
    correct1, correct5, loss_sum, count = distributed.all_reduce_sum(totals, ctx).tolist()
    if count == 0:
        raise StitchkitError("the evaluation split yielded no images (all skipped as corrupt?)")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
            "images": int(count)}


def _to_device(images, labels, device, channels_last):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, train: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", drop_last=train, persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def eval_loaders(splits: Splits, batch_size: int, workers: int, device: torch.device,
                 ctx: distributed.Dist) -> dict[str, DataLoader]:
    """Loaders for the evaluation splits (val, and hold-out when there is one), each image seen once over ranks."""
    loaders = {}
    for split in ("val", "holdout"):
        dataset = getattr(splits, split)
        if dataset is not None:
            sampler = EpochSampler(len(dataset), 0, ctx.rank, ctx.world_size, shuffle=False)
            loaders[split] = make_loader(dataset, sampler, batch_size, workers, device, False)
    return loaders


class Trainer:
    """Sets up a run from a :class:`Config` and trains it; :meth:`run` returns the result record."""

    def __init__(self, config: Config, resume: bool = False, overwrite: bool = False):
        self.config, self.resume, self.overwrite = config, resume, overwrite
        t = config.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self.ctx = distributed.init(self.device.type)
        if self.device.type == "cuda" and self.ctx.enabled:
            self.device = torch.device("cuda", self.ctx.local_rank)
            torch.cuda.set_device(self.device)
        self.dtype = amp_dtype(t.amp, self.device)
        self.channels_last = t.channels_last
        per_step = t.batch_size * self.ctx.world_size
        if config.optim.batch_size % per_step:
            raise StitchkitError(
                f"optim.batch_size={config.optim.batch_size} is not a multiple of train.batch_size x processes = "
                f"{t.batch_size} x {self.ctx.world_size}; choose sizes that divide it (e.g. train.batch_size="
                f"{_divisor_hint(config.optim.batch_size, self.ctx.world_size, t.batch_size)})"
            )
        self.accum = config.optim.batch_size // per_step
        self.run_dir = Path(config.output.dir) if config.output.dir else default_run_dir(config)
        self.config_yaml = to_yaml(config)
        self.config_digest = digest(_results_relevant_yaml(config))

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _check_run_dir(self) -> None:
        """Refuse to clobber finished, unfinished or foreign files (writes nothing; --overwrite deletes our files)."""
        run = self.run_dir
        foreign = sorted(p.name for p in run.iterdir() if p.name not in RUN_FILES) if run.is_dir() else []
        if foreign:
            raise StitchkitError(
                f"output.dir {str(run)!r} holds files stitchkit did not write ({', '.join(foreign[:3])}); a run "
                "directory must be new or a stitchkit run, so choose another output.dir"
            )
        result, last = run / "result.json", run / "checkpoints" / "last.pt"
        if self.resume:
            if not last.is_file():
                raise StitchkitError(f"nothing to resume in {str(run)!r}: no checkpoints/last.pt; drop --resume to start")
            saved = from_yaml_file(run / "config.yaml")
            differences = resume_differences(saved, self.config)
            if differences:
                raise StitchkitError(
                    f"the run in {str(run)!r} was started with another config; resume with the same settings or use a "
                    "new output.dir. Differences (saved -> now): " + "; ".join(differences)
                )
        elif (result.is_file() or last.is_file()) and not self.overwrite:
            what = "a finished run" if result.is_file() else "an unfinished run (pass --resume to continue it)"
            raise StitchkitError(f"{str(run)!r} already holds {what}; pass --overwrite to replace it, or choose another "
                                 "output.dir")

    def _create_run_dir(self) -> None:
        """Make the run directory and write config.yaml, once data and model have been built without error."""
        run, main = self.run_dir, self.ctx.is_main
        if main and self.overwrite and not self.resume:  # only now that the new run has built without error
            for name in ("result.json", "metrics.jsonl", "config.yaml", "eval.json", "model.pt", "adapters.pt"):
                (run / name).unlink(missing_ok=True)
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
            shutil.rmtree(run / "tensorboard", ignore_errors=True)
        if main:
            for stale in (run / "checkpoints").glob(".*.tmp"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)
            try:
                (run / "checkpoints").mkdir(parents=True, exist_ok=True)
                atomic_write_text(run / ".write-test", "ok\n")
                (run / ".write-test").unlink()
            except OSError as err:
                raise StitchkitError(f"cannot write to output directory {str(run)!r} ({err.strerror}); fix its "
                                     "permissions or free space, or choose another output.dir") from None
            if not self.resume:
                atomic_write_text(run / "config.yaml", self.config_yaml)
        distributed.barrier(self.ctx)

    def _build(self) -> None:
        config = self.config
        torch.manual_seed(config.train.seed)
        pixels_model = config.model.src  # the model that sees the pixels sets normalisation and crop
        self.splits: Splits = build_splits(config.data, preprocessing_for(pixels_model), config.train.seed)
        self.model = build_model(config, len(self.splits.classes)).to(self.device)
        self.gmacs = count_macs(self.model, config.data.input_size) / 1e9
        self.params = count_params(self.model)
        self.trainable = count_params(self.model, trainable_only=True)
        if self.trainable == 0:
            raise StitchkitError("the model has no trainable parameters")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        forward_model = self.model
        if config.train.compile:
            forward_model = torch.compile(forward_model)
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward_model = DistributedDataParallel(forward_model, device_ids=ids)
        self.forward_model = forward_model

        t, o = config.train, config.optim
        self.train_sampler = EpochSampler(len(self.splits.train), t.seed, self.ctx.rank, self.ctx.world_size, True)
        self.train_loader = make_loader(self.splits.train, self.train_sampler, t.batch_size, t.workers, self.device, True)
        self.micro_per_epoch = len(self.train_sampler) // t.batch_size
        if self.micro_per_epoch == 0:
            raise StitchkitError(
                f"the training split has {len(self.splits.train)} images, fewer than one batch of {t.batch_size} per "
                "process; lower train.batch_size or add data"
            )
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / self.accum)
        self.total_steps = t.epochs * self.steps_per_epoch
        if t.max_steps is not None:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.eval_loaders = eval_loaders(self.splits, t.batch_size, t.workers, self.device, self.ctx)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay, o.no_decay_norm_bias), lr=o.lr, betas=(o.beta1, o.beta2),
            fused=self.device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_with_warmup(self.total_steps, o.warmup_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.counters = Counters()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # since the last log line
        self.loss_count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_loss = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, count over the epoch
        self.group_loss = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, count in this step
        self._boundary_rng = rng_state()
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # first step with a non-finite loss

    # --- checkpoints ----------------------------------------------------------------------------------------------

    def _checkpoint(self, rng: dict | None = None) -> None:
        """Write ``checkpoints/last.pt`` (rank 0), after checking that no loss so far was NaN or infinite.

        Called only at optimizer-step boundaries; ``rng`` is the RNG state at that boundary when it is not now.
        """
        self._check_finite()
        if self.ctx.is_main:
            c = self.counters
            try:
                self._write_checkpoint(rng)
            except OSError as err:  # disk full, quota, vanished mount: the previous checkpoint is still whole
                raise StitchkitError(
                    f"cannot write a checkpoint at step {c.step} ({err.strerror or err}); the last good checkpoint in "
                    f"{str(self.run_dir / 'checkpoints')!r} is kept. Free space, then continue with --resume"
                ) from None
        distributed.barrier(self.ctx)

    def _write_checkpoint(self, rng: dict | None) -> None:
        c = self.counters
        save_checkpoint(self.run_dir / "checkpoints" / "last.pt", {
            "config_digest": self.config_digest,
            "model": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counters": {**c.__dict__, "train_seconds": c.train_seconds + self._elapsed()},
            "epoch_loss": self.epoch_loss.cpu(),
            "rng": rng if rng is not None else rng_state(),
        })

    def _restore(self) -> None:
        state = load_checkpoint(self.run_dir / "checkpoints" / "last.pt", self.config_digest)
        try:
            load_trainable_state(self.model, state["model"])
        except RuntimeError as err:
            raise StitchkitError(f"checkpoint in {str(self.run_dir)!r} does not fit this model: {err}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.counters = Counters(**state["counters"])
        self.epoch_loss = state["epoch_loss"].to(self.device)
        set_rng_state(state["rng"])
        if self.ctx.is_main:
            self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint we resume from: they are about to be written again."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return
        import json

        c = self.counters
        step, kept = c.step, []
        # Killed after its last step but before result.json: the final evaluation at this step runs again.
        reevaluates = c.step >= self.total_steps or c.epoch >= self.config.train.epochs
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            at_step = record.get("step", 0)
            if at_step > step or (reevaluates and at_step == step and record.get("type") == "eval"):
                continue
            kept.append(line)
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))

    def _elapsed(self) -> float:
        return time.time() - self._segment_start

    def _check_finite(self) -> None:
        bad = int(self.bad_step.item())
        if distributed.any_true(bad >= 0, self.ctx, self.device):
            last = self.run_dir / "checkpoints" / "last.pt"
            kept = f"the last good checkpoint is {str(last)!r}" if last.is_file() else "no checkpoint was written"
            where = f"at optimizer step {bad + 1}" if bad >= 0 else "on another process"
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite {where}; training stopped and {kept}. Lower optim.lr, "
                "add optim.warmup_steps, or check the data"
            )

    # --- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> dict:
        self._check_run_dir()
        self._build()
        self._create_run_dir()  # checks the folder is writable before any training
        if self.resume:
            self._restore()
        c, t = self.counters, self.config.train
        self._segment_start = time.time()
        self.log = MetricsLog(self.run_dir, self.ctx.is_main, self.total_steps, t.tensorboard, t.wandb,
                              initial_step=c.step)
        restore = self._catch_sigterm()
        try:
            self._train_loop()
            result = self._finish()
        except KeyboardInterrupt:
            # Whatever the interrupted group accumulated is discarded: resume replays it from the step boundary.
            self.optimizer.zero_grad(set_to_none=True)
            self._checkpoint(rng=self._boundary_rng)
            raise RunInterrupted(f"interrupted at step {c.step}; checkpoint written to "
                                 f"{str(self.run_dir / 'checkpoints' / 'last.pt')!r}; continue with --resume") from None
        except NonFiniteLossError as err:
            if self.ctx.is_main:
                atomic_write_json(self.run_dir / "result.json", self._record("failed", error=str(err)))
            raise
        finally:
            restore()
            self.log.close()
            distributed.shutdown(self.ctx)
        return result

    def _catch_sigterm(self):
        """Turn SIGTERM into "checkpoint at the next step boundary, then stop"; returns the undo function.

        A handler that was already installed (e.g. submitit's) still runs, so its requeue logic keeps working.
        """
        import signal
        import threading

        self._stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            self._stop_signal = signum
            if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, handler)
        return lambda: signal.signal(signal.SIGTERM, previous)

    def _stop_if_asked(self) -> None:
        if self._stop_signal is not None:
            self._checkpoint()
            raise RunInterrupted(
                f"stopped by SIGTERM at step {self.counters.step}; checkpoint written to "
                f"{str(self.run_dir / 'checkpoints' / 'last.pt')!r}; continue with --resume", exit_code=EXIT_PREEMPTED)

    def _train_loop(self) -> None:
        c, t = self.counters, self.config.train
        log_start, log_images = time.time(), 0
        while c.step < self.total_steps and c.epoch < t.epochs:
            self.train_sampler.set_epoch(c.epoch, start=c.micro * t.batch_size)
            batches = iter(self.train_loader)
            while c.micro < self.micro_per_epoch and c.step < self.total_steps:
                group = min(self.accum, self.micro_per_epoch - c.micro)
                self._boundary_rng = rng_state()
                self.group_loss.zero_()
                images_in_group = skipped_in_group = 0
                for i in range(group):
                    images, labels, skipped = next(batches)
                    sync = nullcontext() if i == group - 1 or not self.ctx.enabled else self.forward_model.no_sync()
                    with sync:
                        self._micro_step(images, labels, group)
                    faults.point("step")
                    images_in_group += labels.numel()
                    skipped_in_group += skipped
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                # Commit the group's bookkeeping only now, so a checkpoint always describes a step boundary.
                self.loss_sum += self.group_loss[0]
                self.loss_count += self.group_loss[1]
                self.epoch_loss += self.group_loss
                c.step += 1
                c.micro += group
                c.images += images_in_group
                c.skipped += skipped_in_group
                log_images += images_in_group
                self.log.advance()
                if c.step % t.log_every == 0:
                    self._check_finite()
                    elapsed = max(time.time() - log_start, 1e-9)
                    loss = (self.loss_sum / self.loss_count.clamp(min=1)).item()
                    self.log.write({"type": "train", "step": c.step, "epoch": c.epoch, "loss": loss,
                                    "lr": self.optimizer.param_groups[0]["lr"],
                                    "images_per_s": log_images * self.ctx.world_size / elapsed})
                    self.loss_sum.zero_(), self.loss_count.zero_()
                    log_start, log_images = time.time(), 0
                if c.step % t.checkpoint_every == 0 and c.micro < self.micro_per_epoch:
                    self._checkpoint()
                self._stop_if_asked()
            del batches
            if c.micro >= self.micro_per_epoch:
                self._end_epoch()

    def _micro_step(self, images: torch.Tensor, labels: torch.Tensor, group: int) -> None:
        if images.numel() == 0:
            return
        images, labels = _to_device(images, labels, self.device, self.channels_last)
        with _autocast(self.device, self.dtype):
            logits = self.forward_model(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.scaler.scale(loss / group).backward()
        # Bookkeeping stays on the device: no host synchronisation per step.
        detached = loss.detach().double()
        n = labels.numel()
        self.group_loss[0] += detached * n
        self.group_loss[1] += n
        finite = torch.isfinite(detached)
        self.bad_step.copy_(torch.where((self.bad_step < 0) & ~finite, self.counters.step, self.bad_step))

    def _end_epoch(self) -> None:
        c = self.counters
        train_loss_sum, train_count = distributed.all_reduce_sum(self.epoch_loss.clone(), self.ctx).tolist()
        c.train_loss = train_loss_sum / max(train_count, 1)
        self.log.write({"type": "epoch", "step": c.step, "epoch": c.epoch, "train_loss": c.train_loss})
        self._evaluate_all(c.epoch)
        c.epoch += 1
        c.micro = 0
        self.epoch_loss.zero_()
        self._checkpoint()
        faults.point("epoch-end")

    def _evaluate_all(self, epoch: int) -> None:
        self.metrics = {}
        for split, loader in self.eval_loaders.items():
            metrics = evaluate(self.model, loader, self.device, self.dtype, self.channels_last, self.ctx)
            self.metrics[split] = metrics
            self.log.write({"type": "eval", "split": split, "step": self.counters.step, "epoch": epoch, **metrics})
        self.evaluated_at = self.counters.step

    def _finish(self) -> dict:
        c = self.counters
        if getattr(self, "evaluated_at", None) != c.step:  # stopped inside an epoch, or resumed after the last one
            if c.micro > 0:  # max_steps stopped the epoch part-way: its loss so far
                loss_sum, count = distributed.all_reduce_sum(self.epoch_loss.clone(), self.ctx).tolist()
                c.train_loss = loss_sum / max(count, 1)
            self._evaluate_all(c.epoch if c.micro > 0 or c.epoch == 0 else c.epoch - 1)
            self._checkpoint()
        record = self._record("finished")
        faults.point("finish")
        if self.ctx.is_main:
            self._export_weights()
            atomic_write_json(self.run_dir / "result.json", record)
        return record

    def _export_weights(self) -> None:
        """The trained weights on their own: ``adapters.pt`` for a stitch (see :func:`stitchkit.load_stitched`),
        ``model.pt`` (a plain state dict, usable as ``model.src_checkpoint``) otherwise."""
        import io

        from ..stitching import StitchedModel
        from .checkpoint import atomic_write_bytes

        buffer = io.BytesIO()
        if isinstance(self.model, StitchedModel):
            self.model.save_adapters(buffer)
            atomic_write_bytes(self.run_dir / "adapters.pt", buffer.getvalue())
        else:
            torch.save(self.model.state_dict(), buffer)
            atomic_write_bytes(self.run_dir / "model.pt", buffer.getvalue())

    def _record(self, status: str, error: str | None = None) -> dict:
        config, c = self.config, self.counters
        seconds = c.train_seconds + self._elapsed()
        images = c.images * self.ctx.world_size
        metrics = getattr(self, "metrics", {})
        record = {
            "status": status, "error": error, "mode": config.mode, "src": config.model.src,
            "dst": (config.model.dst or config.model.src) if config.mode == "stitch" else config.model.src,
            "gap": config.model.gap if config.mode != "scratch" else None,
            "adapter": config.model.adapter if config.mode == "stitch" else None,
            "resize": config.model.resize if config.mode == "stitch" else None,
            "seed": config.train.seed, "lr": config.optim.lr, "dataset": config.data.name,
            "input_size": config.data.input_size, "classes": len(self.splits.classes),
            "gmacs": self.gmacs, "params": self.params, "trainable_params": self.trainable,
            "epochs": c.epoch, "steps": c.step, "wall_time_s": seconds, "images_seen": images,
            "images_per_s": images / seconds if seconds > 0 else None, "skipped_images": c.skipped * self.ctx.world_size,
            "train_loss": c.train_loss, "world_size": self.ctx.world_size,
            "device": str(self.device), "amp": str(self.dtype).replace("torch.", "") if self.dtype else "none",
            "versions": package_versions(),
            # Runs that differ only in their seed share this: reports average over seeds within it, never across
            # other settings (epochs, data, recipe).
            "settings_id": digest(_results_relevant_yaml(config, without=("train.seed",))),
        }
        for split, values in metrics.items():
            prefix = "" if split == "val" else f"{split}_"
            record.update({f"{prefix}top1": values["top1"], f"{prefix}top5": values["top5"],
                           f"{prefix}loss": values["loss"]})
        return record


def _divisor_hint(effective: int, world: int, current: int) -> int:
    options = [b for b in range(1, effective + 1) if effective % (b * world) == 0 and b <= max(current, 1)]
    return options[-1] if options else 1


def _results_relevant_yaml(config: Config, without: tuple[str, ...] = ()) -> str:
    """The config without settings that may change on resume (and ``without``), for digests."""
    from .config import RESUMABLE_CHANGES, flatten

    skip = RESUMABLE_CHANGES | set(without)
    return "\n".join(f"{k}={v!r}" for k, v in sorted(flatten(config).items()) if k not in skip)


def train(config: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one run and return its result record (also written to ``RUN_DIR/result.json``).

    Example:
        >>> cfg = load_config(None, ["mode=scratch", "model.src=resnet10t", "data.name=synthetic", "data.input_size=32",
        ...                          "train.epochs=1", "optim.batch_size=32", "train.batch_size=32", "train.workers=0"])
        >>> train(cfg)["top1"]
    """
    return Trainer(config, resume=resume, overwrite=overwrite).run()

