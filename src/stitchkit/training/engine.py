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
import os
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..compute import count_macs, count_params
from ..errors import StitchkitError
from .. import faults
from . import distributed
from ..files import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..rundir import RunDir
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, accepted_digests, config_digest, from_yaml_file, resume_differences, settings_id, to_yaml
from ..zoo.metadata import preprocessing
from .data import EpochSampler, Splits, build_splits, calibration_images, collate
from .logging import MetricsLog
from .modes import build_model, get_mode, load_trainable_state, trainable_state

EXIT_INTERRUPTED = 130


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
    return Path("runs") / "-".join([*get_mode(config.mode).run_dir_parts(config), f"seed{config.train.seed}"])


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
    try:
        return evaluate_heads(None, [model], loader, device, dtype, channels_last, ctx)[0]
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_heads(front, heads, loader: DataLoader, device: torch.device, dtype: torch.dtype | None,
                   channels_last: bool, ctx: distributed.Dist) -> list[dict[str, float]]:
    """:func:`evaluate` for several models that share ``front`` (``None``: the heads see the images), in one pass.

    Each head maps the front's output to logits; the caller puts the models in evaluation mode.
    """
    totals = [torch.zeros(4, dtype=torch.float64, device=device) for _ in heads]  # correct@1, @5, loss sum, count
    for images, labels, _, _ in loader:
        if images.numel() == 0:
            continue
        images, labels = _to_device(images, labels, device, channels_last)
        with _autocast(device, dtype):
            inputs = front(images) if front is not None else images
            logits_per_head = [head(inputs) for head in heads]
        faults.point("evaluation")
        for logits, total in zip(logits_per_head, totals):
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
            k = min(5, logits.shape[-1])
            hits = logits.topk(k, dim=-1).indices.eq(labels[:, None])
            total += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), loss,
                                  torch.tensor(labels.numel(), device=device)]).double()
    results = []
    for total in totals:
        correct1, correct5, loss_sum, count = distributed.all_reduce_sum(total, ctx).tolist()
        if count == 0:
            raise StitchkitError("the evaluation split yielded no images (all skipped as corrupt?)")
        results.append({"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
                        "images": int(count)})
    return results


def _to_device(images, labels, device, channels_last, augment=None, seeds=None):
    images = images.to(device, non_blocking=True)
    if augment is not None:
        images = augment(images, seeds)
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


@dataclass
class DataStream:
    """What the runs of a group share: the data, its order, and the length of the loop."""

    splits: Splits
    train_sampler: EpochSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    accum: int  # micro-batches per optimizer step
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    # Calibration batches by (model name, images): members of a group share one seed and data, so they load and
    # preprocess the images once for the whole pass.
    calibration: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)


def build_stream(config: Config, accum: int, device: torch.device, ctx: distributed.Dist) -> DataStream:
    t = config.train
    prep = preprocessing(config.model.src)  # the model that sees the pixels sets normalisation and crop
    splits = build_splits(config.data, prep, t.seed)
    sampler = EpochSampler(len(splits.train), t.seed, ctx.rank, ctx.world_size, True)
    if config.data.loader == "dali":
        from .dali import DaliTrainLoader

        loader = DaliTrainLoader(splits.train, config.data, prep, sampler, t.batch_size,
                                 t.workers, device, t.seed, ctx.rank, ctx.world_size)
    else:
        loader = make_loader(splits.train, sampler, t.batch_size, t.workers, device, True)
    micro_per_epoch = len(sampler) // t.batch_size
    if micro_per_epoch == 0:
        raise StitchkitError(
            f"the training split has {len(splits.train)} images, fewer than one batch of {t.batch_size} per "
            "process; lower train.batch_size or add data"
        )
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    return DataStream(splits, sampler, loader, eval_loaders(splits, t.batch_size, t.workers, device, ctx), accum,
                      micro_per_epoch, steps_per_epoch, total_steps)


class Trainer:
    """One run, set up from a :class:`Config`: its model, optimizer, counters and run directory.

    :meth:`run` trains it alone and returns the result record; :class:`TrainingGroup` trains several in one pass.
    """

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
        self.dir = RunDir(self.run_dir)
        self.config_yaml = to_yaml(config)
        self.config_digest = config_digest(config)
        self.group: list[str] = []  # the run directories trained in the same pass, when grouped

    def run(self) -> dict:
        outcome = TrainingGroup([self]).run()[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _check_run_dir(self) -> None:
        """Refuse to clobber finished, unfinished or foreign files (writes nothing; --overwrite deletes our files)."""
        run = self.run_dir
        foreign = self.dir.foreign_files()
        if foreign:
            raise StitchkitError(
                f"output.dir {str(run)!r} holds files stitchkit did not write ({', '.join(foreign[:3])}); a run "
                "directory must be new or a stitchkit run, so choose another output.dir"
            )
        result, last = self.dir.result, self.dir.last_checkpoint
        if self.resume:
            if not last.is_file():
                raise StitchkitError(f"nothing to resume in {str(run)!r}: no checkpoints/last.pt; drop --resume to start")
            saved = from_yaml_file(self.dir.config)
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
        run, main = self.dir, self.ctx.is_main
        if main and self.overwrite and not self.resume:  # only now that the new run has built without error
            run.remove_outputs()
        if main:
            run.remove_leftovers()  # temporary files of a process killed mid-write
            try:
                run.checkpoints.mkdir(parents=True, exist_ok=True)
                atomic_write_text(run.write_test, "ok\n")
                run.write_test.unlink()
            except OSError as err:
                raise StitchkitError(f"cannot write to output directory {str(run.path)!r} ({err.strerror}); fix its "
                                     "permissions or free space, or choose another output.dir") from None
            if not self.resume:
                atomic_write_text(run.config, self.config_yaml)
            else:
                self._truncate_metrics()
        distributed.barrier(self.ctx)

    def _build(self, stream: DataStream, tail_only: bool = False) -> None:
        """Build the model and optimizer; ``tail_only``: the forward pass starts after the stitch's front, which a
        :class:`TrainingGroup` runs once for all its members."""
        config = self.config
        self.stream, self.splits = stream, stream.splits
        torch.manual_seed(config.train.seed)
        self.model = build_model(config, len(self.splits.classes), self._calibration_images,
                                 self.device).to(self.device)
        self.gmacs = count_macs(self.model, config.data.input_size) / 1e9
        self.params = count_params(self.model)
        self.trainable = count_params(self.model, trainable_only=True)
        if self.trainable == 0:
            raise StitchkitError("the model has no trainable parameters")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        # What evaluation calls, and what training calls (compiled and wrapped in DDP).
        self.head = self.model.tail() if tail_only else self.model
        forward_model = self.head
        if config.train.compile:
            forward_model = torch.compile(forward_model)
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward_model = DistributedDataParallel(forward_model, device_ids=ids)
        self.forward_model = forward_model

        o = config.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay, o.no_decay_norm_bias), lr=o.lr, betas=(o.beta1, o.beta2),
            fused=self.device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           cosine_with_warmup(stream.total_steps, o.warmup_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.counters = Counters()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # since the last log line
        self.loss_count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_loss = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, count over the epoch
        self.group_loss = torch.zeros(2, dtype=torch.float64, device=self.device)  # sum, count in this step
        self.bad_step = torch.full((), -1, dtype=torch.long, device=self.device)  # first step with a non-finite loss
        self.metrics: dict[str, dict] = {}  # the last evaluation, per split
        self.evaluated_at: int | None = None  # the step it was taken at

    def _calibration_images(self, model_name: str) -> torch.Tensor:
        """A batch of training images for ``model_name`` (the same for every run of this seed, grouped or not)."""
        config = self.config
        key = (model_name, config.model.init_images)
        if key not in self.stream.calibration:
            self.stream.calibration[key] = calibration_images(self.splits, config.data, model_name,
                                                              config.model.init_images, config.train.seed)
        return self.stream.calibration[key]

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
                    f"{str(self.dir.checkpoints)!r} is kept. Free space, then continue with --resume"
                ) from None
        distributed.barrier(self.ctx)

    def _write_checkpoint(self, rng: dict | None) -> None:
        c = self.counters
        save_checkpoint(self.dir.last_checkpoint, {
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
        """Load the last checkpoint into the model, optimizer and counters (writes nothing)."""
        state = load_checkpoint(self.dir.last_checkpoint, accepted_digests(self.config))
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

    def _truncate_metrics(self) -> None:
        """Drop metric lines written after the checkpoint we resume from: they are about to be written again."""
        path = self.dir.metrics
        if not path.is_file():
            return
        import json

        c = self.counters
        step, kept = c.step, []
        # Killed after its last step but before result.json: the final evaluation at this step runs again.
        reevaluates = c.step >= self.stream.total_steps or c.epoch >= self.config.train.epochs
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
            last = self.dir.last_checkpoint
            kept = f"the last good checkpoint is {str(last)!r}" if last.is_file() else "no checkpoint was written"
            where = f"at optimizer step {bad + 1}" if bad >= 0 else "on another process"
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite {where}; training stopped and {kept}. Lower optim.lr, "
                "add optim.warmup_steps, or check the data"
            )

    # --- one step -------------------------------------------------------------------------------------------------

    def _micro_step(self, inputs: torch.Tensor, labels: torch.Tensor, group: int, last: bool) -> None:
        """Forward and backward one micro-batch (images, or the shared front's output) of an optimizer step."""
        sync = nullcontext() if last or not self.ctx.enabled else self.forward_model.no_sync()
        with sync:
            with _autocast(self.device, self.dtype):
                logits = self.forward_model(inputs)
            loss = F.cross_entropy(logits.float(), labels)
            self.scaler.scale(loss / group).backward()
        # Bookkeeping stays on the device: no host synchronisation per step.
        detached = loss.detach().double()
        n = labels.numel()
        self.group_loss[0] += detached * n
        self.group_loss[1] += n
        finite = torch.isfinite(detached)
        self.bad_step.copy_(torch.where((self.bad_step < 0) & ~finite, self.counters.step, self.bad_step))

    def _optimizer_step(self, micro: int, images: int, skipped: int) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        # Commit the step's bookkeeping only now, so a checkpoint always describes a step boundary.
        self.loss_sum += self.group_loss[0]
        self.loss_count += self.group_loss[1]
        self.epoch_loss += self.group_loss
        self.group_loss.zero_()
        c = self.counters
        c.step += 1
        c.micro += micro
        c.images += images
        c.skipped += skipped

    def _log_train(self, images_per_s: float) -> None:
        c = self.counters
        loss = (self.loss_sum / self.loss_count.clamp(min=1)).item()
        self.log.write({"type": "train", "step": c.step, "epoch": c.epoch, "loss": loss,
                        "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": images_per_s})
        self.loss_sum.zero_(), self.loss_count.zero_()

    def _close_epoch_loss(self) -> None:
        """The mean training loss of the epoch so far, over every process."""
        loss_sum, count = distributed.all_reduce_sum(self.epoch_loss.clone(), self.ctx).tolist()
        self.counters.train_loss = loss_sum / max(count, 1)

    # --- results --------------------------------------------------------------------------------------------------

    def _write_result(self, record: dict) -> None:
        if self.ctx.is_main:
            self._export_weights()
            atomic_write_json(self.dir.result, record)

    def _export_weights(self) -> None:
        """The trained weights on their own: ``adapters.pt`` for a stitch (see :func:`stitchkit.load_stitched`),
        ``model.pt`` (a plain state dict, usable as ``model.src_checkpoint``) otherwise."""
        import io

        from ..stitching import StitchedModel

        buffer = io.BytesIO()
        if isinstance(self.model, StitchedModel):
            self.model.save_adapters(buffer)
            atomic_write_bytes(self.dir.adapter_weights, buffer.getvalue())
        else:
            torch.save(self.model.state_dict(), buffer)
            atomic_write_bytes(self.dir.model_weights, buffer.getvalue())

    def _record(self, status: str, error: str | None = None) -> dict:
        config, c = self.config, self.counters
        seconds = c.train_seconds + self._elapsed()
        images = c.images * self.ctx.world_size
        record = {
            "status": status, "error": error, "mode": config.mode, **get_mode(config.mode).model_settings(config),
            "seed": config.train.seed, "lr": config.optim.lr, "dataset": config.data.name,
            "input_size": config.data.input_size, "classes": len(self.splits.classes),
            "train_images": len(self.splits.train), "planned_epochs": config.train.epochs,
            "gmacs": self.gmacs, "params": self.params, "trainable_params": self.trainable,
            "epochs": c.epoch, "steps": c.step, "wall_time_s": seconds, "images_seen": images,
            "images_per_s": images / seconds if seconds > 0 else None, "skipped_images": c.skipped * self.ctx.world_size,
            "train_loss": c.train_loss, "world_size": self.ctx.world_size,
            "device": str(self.device), "amp": str(self.dtype).replace("torch.", "") if self.dtype else "none",
            # Runs trained in one pass share their wall time: wall_time_s is the group's.
            "group_size": max(len(self.group), 1), "group": self.group,
            "versions": package_versions(),
            # Runs that differ only in their seed share this: reports average over seeds within it, never across
            # other settings (epochs, data, recipe).
            "settings_id": settings_id(config),
        }
        for split, values in self.metrics.items():
            prefix = "" if split == "val" else f"{split}_"
            record.update({f"{prefix}top1": values["top1"], f"{prefix}top5": values["top5"],
                           f"{prefix}loss": values["loss"]})
        return record


class TrainingGroup:
    """Trains runs that share a data stream in lockstep: one data pipeline, and for stitches from the same source
    front one front forward per batch; each run keeps its own adapters, optimizer, scheduler, checkpoints and run
    directory, and computes exactly what it would alone (see :mod:`stitchkit.training.grouped`).

    A group of one is how :meth:`Trainer.run` trains. :meth:`run` returns one outcome per member: its result
    record, or the exception that failed it alone (its NaN loss, or an error while setting it up). Errors of the
    whole group (the data, an interruption) propagate.
    """

    def __init__(self, members: list[Trainer]):
        if not members:
            raise ValueError("a training group needs at least one run")
        self.members = members
        self.grouped = len(members) > 1
        lead = members[0]
        self.config, self.device, self.ctx = lead.config, lead.device, lead.ctx
        self.dtype, self.channels_last = lead.dtype, lead.channels_last
        self.front: nn.Module | None = None
        self.outcomes: dict[int, dict | BaseException] = {}
        if self.grouped:
            names = [str(m.run_dir) for m in members]
            for m in members:
                m.group = names

    @property
    def live(self) -> list[Trainer]:
        return [m for m in self.members if id(m) not in self.outcomes]

    def _guard(self, member: Trainer, action) -> None:
        """Run one member's set-up step; in a group, its failure fails that member only."""
        try:
            action()
        except (StitchkitError, RuntimeError, ValueError, OSError) as err:
            if not self.grouped:
                raise
            self.outcomes[id(member)] = err

    def _drop(self, member: Trainer, err: NonFiniteLossError) -> None:
        if member.ctx.is_main:
            atomic_write_json(member.dir.result, member._record("failed", error=str(err)))
        member.log.close()
        self.outcomes[id(member)] = err

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _set_up(self) -> None:
        from .grouped import check_groupable, share_frozen_parts

        if self.grouped:
            check_groupable([m.config for m in self.members])
        for m in self.members:
            self._guard(m, m._check_run_dir)
        self.stream = build_stream(self.config, self.members[0].accum, self.device, self.ctx)
        for m in self.live:
            self._guard(m, lambda m=m: m._build(self.stream, tail_only=self.grouped))
        if self.grouped and self.live:
            self.front = share_frozen_parts([m.model for m in self.live])
        for m in self.live:
            if m.resume:
                self._guard(m, m._restore)
        positions = {(m.counters.step, m.counters.epoch, m.counters.micro) for m in self.live}
        if len(positions) > 1:
            raise StitchkitError(
                "the runs of a group must continue from the same step, but their checkpoints are at (step, epoch, "
                f"micro-batch) {sorted(positions)}; resume them one by one"
            )
        for m in self.live:
            self._guard(m, m._create_run_dir)  # checks the folder is writable before any training

    # --- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> list[dict | BaseException]:
        self._set_up()
        start = time.time()
        # Printed lines of a group name each run by its path below the runs' common folder.
        common = os.path.commonpath([m.run_dir.resolve() for m in self.members]) if self.grouped else None
        for i, m in enumerate(self.live):
            m._segment_start = start
            m.log = MetricsLog(m.run_dir, m.ctx.is_main, m.config, self.stream.total_steps,
                               initial_step=m.counters.step, progress=i == 0,
                               label=str(m.run_dir.resolve().relative_to(common)) if common else None,
                               device=str(self.device))
        self._boundary_rng = rng_state()
        restore = self._catch_sigterm()
        try:
            if self.live:
                self._train_loop()
            if self.live:
                self._finish()
        except KeyboardInterrupt:
            # Whatever the interrupted step accumulated is discarded: resume replays it from the step boundary.
            for m in self.live:
                m.optimizer.zero_grad(set_to_none=True)
            self._checkpoint_all(rng=self._boundary_rng)
            raise RunInterrupted(f"interrupted at step {self._step}; checkpoint written to {self._checkpoints()}; "
                                 "continue with --resume") from None
        finally:
            restore()
            for m in self.live:
                m.log.close()
            distributed.shutdown(self.ctx)
        return [self.outcomes[id(m)] for m in self.members]

    @property
    def _step(self) -> int:
        live = self.live
        return live[0].counters.step if live else 0

    def _checkpoints(self) -> str:
        return ", ".join(repr(str(m.dir.last_checkpoint)) for m in self.live)

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

    @contextmanager
    def _deferred_ctrl_c(self):
        """Hold a Ctrl-C (SIGINT) that arrives inside the block until its end, so that no run is interrupted between
        updating its weights and counting the step."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            yield  # (a process started with Ctrl-C ignored, e.g. under nohup, keeps ignoring it)
            return
        held = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        if held:
            raise KeyboardInterrupt

    def _stop_if_asked(self) -> None:
        if self._stop_signal is not None:
            self._checkpoint_all()
            raise RunInterrupted(f"stopped by SIGTERM at step {self._step}; checkpoint written to "
                                 f"{self._checkpoints()}; continue with --resume", exit_code=EXIT_PREEMPTED)

    def _each_live(self, action) -> None:
        """``action(member)`` for every live member; one whose loss became NaN fails alone (see :meth:`_drop`)."""
        for m in self.live:
            try:
                action(m)
            except NonFiniteLossError as err:
                self._drop(m, err)

    def _checkpoint_all(self, rng: dict | None = None) -> None:
        self._each_live(lambda m: m._checkpoint(rng))  # checks the loss first

    def _forward_front(self, images: torch.Tensor) -> torch.Tensor:
        """The shared front's output (no autograd: nothing before the adapters is trained)."""
        if self.front is None:
            return images
        with torch.no_grad(), _autocast(self.device, self.dtype):
            return self.front(images)

    def _train_loop(self) -> None:
        t, s = self.config.train, self.stream
        c = self.live[0].counters  # every member's counters move in lockstep
        log_start, log_images = time.time(), 0
        while c.step < s.total_steps and c.epoch < t.epochs:
            s.train_sampler.set_epoch(c.epoch, start=c.micro * t.batch_size)
            batches = iter(s.train_loader)
            while c.micro < s.micro_per_epoch and c.step < s.total_steps:
                group = min(s.accum, s.micro_per_epoch - c.micro)
                images_in_group = skipped_in_group = 0
                for i in range(group):
                    images, labels, skipped, seeds = next(batches)
                    if images.numel() > 0:
                        images, labels = _to_device(images, labels, self.device, self.channels_last,
                                                    s.splits.device_augment, seeds)
                        inputs = self._forward_front(images)
                        for m in self.live:
                            m._micro_step(inputs, labels, group, last=i == group - 1)
                    faults.point("step")
                    images_in_group += labels.numel()
                    skipped_in_group += skipped
                with self._deferred_ctrl_c():  # every member steps, or none: checkpoints stay at step boundaries
                    for m in self.live:
                        m._optimizer_step(group, images_in_group, skipped_in_group)
                    self._boundary_rng = rng_state()
                log_images += images_in_group
                if c.step % t.log_every == 0:
                    self._each_live(Trainer._check_finite)
                    if not self.live:
                        return
                    elapsed = max(time.time() - log_start, 1e-9)
                    for m in self.live:
                        m._log_train(log_images * self.ctx.world_size / elapsed)
                    log_start, log_images = time.time(), 0
                if c.step % t.checkpoint_every == 0 and c.micro < s.micro_per_epoch:
                    self._checkpoint_all()
                if not self.live:
                    return
                c = self.live[0].counters
                for m in self.live:
                    m.log.advance()
                self._stop_if_asked()
            del batches
            if c.micro >= s.micro_per_epoch:
                self._end_epoch()
                if not self.live:
                    return
                c = self.live[0].counters

    def _end_epoch(self) -> None:
        for m in self.live:
            m._close_epoch_loss()
            m.log.write({"type": "epoch", "step": m.counters.step, "epoch": m.counters.epoch,
                         "train_loss": m.counters.train_loss})
        self._evaluate_all(self.live[0].counters.epoch)
        for m in self.live:
            m.counters.epoch += 1
            m.counters.micro = 0
            m.epoch_loss.zero_()
        self._checkpoint_all()
        if self.live:
            faults.point("epoch-end")

    def _evaluate_all(self, epoch: int) -> None:
        live = self.live
        for m in live:
            m.model.eval()
            m.metrics = {}
        try:
            for split, loader in self.stream.eval_loaders.items():
                results = evaluate_heads(self.front, [m.head for m in live], loader, self.device, self.dtype,
                                         self.channels_last, self.ctx)
                for m, metrics in zip(live, results):
                    m.metrics[split] = metrics
                    m.log.write({"type": "eval", "split": split, "step": m.counters.step, "epoch": epoch, **metrics})
        finally:
            for m in live:
                m.model.train()
        for m in live:
            m.evaluated_at = m.counters.step

    def _finish(self) -> None:
        c = self.live[0].counters
        if self.live[0].evaluated_at != c.step:  # stopped inside an epoch, or resumed after the last
            if c.micro > 0:  # max_steps stopped the epoch part-way: its loss so far
                for m in self.live:
                    m._close_epoch_loss()
            self._evaluate_all(c.epoch if c.micro > 0 or c.epoch == 0 else c.epoch - 1)
            self._checkpoint_all()
        records = {id(m): m._record("finished") for m in self.live}
        faults.point("finish")
        for m in self.live:
            m._write_result(records[id(m)])
            self.outcomes[id(m)] = records[id(m)]


def _divisor_hint(effective: int, world: int, current: int) -> int:
    options = [b for b in range(1, effective + 1) if effective % (b * world) == 0 and b <= max(current, 1)]
    return options[-1] if options else 1


def train(config: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one run and return its result record (also written to ``RUN_DIR/result.json``).

    Example:
        >>> cfg = load_config(None, ["mode=scratch", "model.src=resnet10t", "data.name=synthetic", "data.input_size=32",
        ...                          "train.epochs=1", "optim.batch_size=32", "train.batch_size=32", "train.workers=0"])
        >>> train(cfg)["top1"]
    """
    return Trainer(config, resume=resume, overwrite=overwrite).run()


def train_group(configs: Sequence[Config], resume: bool | Sequence[bool] = False,
                overwrite: bool | Sequence[bool] = False) -> list[dict | BaseException]:
    """Train ``configs`` in one pass (a :class:`TrainingGroup`; which runs can share one is in
    :mod:`stitchkit.training.grouped`); one outcome per config, in order: the result record, or the exception that
    failed that run alone.

    Example:
        >>> base = ["mode=stitch", "model.src=resnet50", "model.adapter=bottleneck", "data.root=/data/imagenet"]
        >>> configs = [load_config(None, [*base, f"model.gap=3:{y}", f"output.dir=runs/3to{y}"]) for y in (3, 4)]
        >>> [r["top1"] for r in train_group(configs)]
    """
    n = len(configs)
    resume = [resume] * n if isinstance(resume, bool) else list(resume)
    overwrite = [overwrite] * n if isinstance(overwrite, bool) else list(overwrite)
    return TrainingGroup([Trainer(c, r, o) for c, r, o in zip(configs, resume, overwrite)]).run()
