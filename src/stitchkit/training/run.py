"""One training run: its settings, folder, model, optimizer and bookkeeping, with a public surface that the loop
(:mod:`stitchkit.training.loop`) drives: :meth:`Run.check_folder`, :meth:`Run.build`, :meth:`Run.restore`,
:meth:`Run.create_folder`, :meth:`Run.micro_step`, :meth:`Run.optimizer_step`, :meth:`Run.checkpoint`,
:meth:`Run.record` and :meth:`Run.finish`. Where the loop stands (:class:`Position`) belongs to the loop, which
hands it to the run when the run needs it; the run keeps only what is its own (:class:`RunStats`).
"""
from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


from ..compute import count_macs, count_params
from ..errors import StitchkitError
from ..files import atomic_write_json, atomic_write_text
from ..rundir import RunDir
from ..version import __version__
from . import distributed
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, from_yaml_file, to_yaml
from .identity import accepted_digests, config_digest, resume_differences, settings_id
from .logging import MetricsLog, json_safe, require_loggers
from .modes import (RESUME_CUTS_FIX, build_model, check_run_cuts, cuts_record, export_weights, load_trainable_state,
                    mode_for, trainable_state, trained_parts)
from .optim import build_optimizer, warmup_steps
from ..zoo.models import require_weights
from .clock import PhaseClock, add_seconds
from .host_syncs import HostSyncCounter
from .runtime import Runtime, machine, package_versions
from .stream import DataStream


class NonFiniteLossError(StitchkitError):
    """The loss became NaN or infinite."""


@dataclass
class Position:
    """Where the training loop stands; one for all the runs of a pass, saved in each run's checkpoint."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress (0-based)
    micro: int = 0  # micro-batches of this epoch consumed


@dataclass
class RunStats:
    """What one run has seen, saved in its checkpoint next to the position."""

    images: int = 0  # training images seen (this rank)
    skipped: int = 0  # corrupt images skipped (this rank)
    warmup_images: int = 0  # images of compiling first steps (this rank; their time is the compile phase's)
    seconds: dict | None = None  # wall time per phase (clock.PHASES), over all resumptions
    train_loss: float | None = None  # mean training loss of the last (possibly partial) epoch
    at_start: dict | None = None  # {split: top-1} before the first step (train.eval_at_start)
    after_epoch: list | None = None  # validation top-1 after each finished epoch


# The RunStats counters that are each process's own (the rest are the same on every rank, or rank 0's alone).
PER_RANK_COUNTERS = ("images", "skipped", "warmup_images")


def default_run_dir(config: Config) -> Path:
    return Path("runs") / "-".join([*mode_for(config).run_dir_parts(config), f"seed{config.train.seed}"])


def _divisor_hint(effective: int, world: int, current: int) -> int:
    options = [b for b in range(1, effective + 1) if effective % (b * world) == 0 and b <= max(current, 1)]
    return options[-1] if options else 1


class Run:
    """One run, set up from a :class:`Config` (nothing is built or written until the loop asks)."""

    def __init__(self, config: Config, resume: bool = False, overwrite: bool = False, runtime: Runtime | None = None):
        self.config, self.resume, self.overwrite = config, resume, overwrite
        self.finished_record: dict | None = None  # resumed and found finished: its result, and nothing to train
        self.runtime = runtime or Runtime.from_settings(config.train)
        t, world = config.train, self.runtime.ctx.world_size
        per_step = t.batch_size * world
        if config.optim.batch_size % per_step:
            raise StitchkitError(
                f"optim.batch_size={config.optim.batch_size} is not a multiple of train.batch_size x processes = "
                f"{t.batch_size} x {world}; choose sizes that divide it (e.g. train.batch_size="
                f"{_divisor_hint(config.optim.batch_size, world, t.batch_size)})"
            )
        self.accum = config.optim.batch_size // per_step  # micro-batches per optimizer step
        self.dir = RunDir(Path(config.output.dir) if config.output.dir else default_run_dir(config))
        self.config_yaml = to_yaml(config)
        self.pass_members: list[str] = []  # the run folders trained in the same pass (empty when alone)
        self.stats = RunStats()
        self.metrics: dict[str, dict] = {}  # the last evaluation, per split
        self.metrics_step: int | None = None  # the optimizer step it was taken after
        self.log: MetricsLog | None = None
        self.clock = PhaseClock()  # this process's stretch; a pass gives its runs its own clock (wall time is shared)
        self.host_syncs: HostSyncCounter | None = None  # the pass's, when it counts them

    @property
    def run_dir(self) -> Path:
        return self.dir.path

    @property
    def is_main(self) -> bool:
        return self.runtime.ctx.is_main

    # --- the folder -----------------------------------------------------------------------------------------------

    def check_folder(self) -> None:
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
            finished = self.dir.state() == "finished"  # (its checkpoints may have been deleted to save space)
            if not finished and not last.is_file() and (result.is_file() or not self.dir.config.is_file()):
                raise StitchkitError(f"nothing to resume in {str(run)!r}: no checkpoints/last.pt; drop --resume to start")
            differences = resume_differences(from_yaml_file(self.dir.config), self.config)
            if differences:
                raise StitchkitError(
                    f"the run in {str(run)!r} was started with another config; resume with the same settings or use a "
                    "new output.dir. Differences (saved -> now): " + "; ".join(differences)
                )
            if finished:
                # A requeued job that always passes --resume: the run is done, and training it again would
                # evaluate it again and add a second set-up to its times.
                print(f"{str(run)!r} holds a finished run: nothing to resume (its result.json stands)",
                      file=sys.stderr)
                self.finished_record = self.dir.read_result()
                return
            if not last.is_file():
                # Started, then killed before its first checkpoint (e.g. during the evaluation of the start): a
                # requeued job with --resume starts it again from the beginning, as a rerun without --resume would.
                print(f"no checkpoint yet in {str(run)!r}: starting the run from the beginning", file=sys.stderr)
                self.resume = False
        elif (result.is_file() or last.is_file()) and not self.overwrite:
            what = "a finished run" if result.is_file() else "an unfinished run (pass --resume to continue it)"
            raise StitchkitError(f"{str(run)!r} already holds {what}; pass --overwrite to replace it, or choose another "
                                 "output.dir")

    def create_folder(self, position: Position, total_steps: int, micro_per_epoch: int) -> None:
        """Make the run folder and write config.yaml (a resumed run: cut its metrics back to ``position``), once data
        and model have been built without error."""
        run = self.dir
        if self.is_main:
            try:
                if not self.resume:  # only now that the new run has built without error
                    # --overwrite: the old run goes. Otherwise check_folder found no checkpoint and no result, so any
                    # output here is what an attempt killed before its first checkpoint left (its metric lines
                    # would repeat).
                    run.remove_outputs()
                run.remove_leftovers()  # temporary files of a process killed mid-write
                run.checkpoints.mkdir(parents=True, exist_ok=True)
                atomic_write_text(run.write_test, "ok\n")
                run.write_test.unlink()
            except OSError as err:
                raise StitchkitError(f"cannot write to output directory {str(run.path)!r} ({err.strerror}); fix its "
                                     "permissions or free space, or choose another output.dir") from None
            if not self.resume:
                run.record_sources({**self.config.model.checkpoint_files(), "data.root": self.config.data.root})
                atomic_write_text(run.config, self.config_yaml)
            else:
                # What the resumed run writes again at this step: the end of the epoch (its loss line and
                # evaluations) when stopped after the epoch's last step but before that end was checkpointed (Ctrl-C
                # during its evaluation, SIGTERM); else, when killed after its last step but before result.json,
                # the final evaluation.
                if position.micro >= micro_per_epoch:
                    redone = ("epoch", "eval")
                else:
                    final = position.step >= total_steps or position.epoch >= self.config.train.epochs
                    # Stopped in the first step (Ctrl-C while it compiles): the loop evaluates the start again.
                    again = position.step == 0 and self.config.train.eval_at_start
                    redone = ("eval",) if final or again else ()
                run.cut_metrics_after(position.step, redone_at_step=redone)
        distributed.barrier(self.runtime.ctx)

    def open_log(self, total_steps: int, initial_step: int, progress: bool, label: str | None) -> None:
        self.log = MetricsLog(self.run_dir, self.is_main, self.config, total_steps, initial_step=initial_step,
                              progress=progress, label=label, device=str(self.runtime.device))
        for note in getattr(self, "notes", []):
            if note:
                self.log.note(note)

    def _compute_note(self) -> str | None:
        """A stitch is usually meant to cost less than the model it starts from: say so before it trains when it
        does not (a destination whose later stages cost more than the source's)."""
        from ..summary import costlier_note, head_classes, model_macs

        m, size = self.config.model, self.config.data.input_size
        return costlier_note(self.model, m.src, m.dst or m.src, self.gmacs * 1e9,
                             model_macs(m.src, size, head_classes(self.model)))

    def share_pass(self, run_dirs: list[str]) -> None:
        """Record the runs trained in the same pass (their wall time is the pass's)."""
        self.pass_members = list(run_dirs)

    # --- the model ------------------------------------------------------------------------------------------------

    def check_loggers(self) -> None:
        """Fail before anything is written when train.tensorboard / train.wandb ask for a package that is missing
        (the logs themselves open only once the run folder exists). Every process checks, so none waits for one
        that stopped."""
        require_loggers(self.config)

    def check_weights(self) -> None:
        """Fail in one line, before any data is read, when pretrained weights the run needs can be neither found in
        the cache nor downloaded (see :mod:`stitchkit.zoo.weights`)."""
        m = self.config.model
        if not (m.pretrained and mode_for(self.config).loads_pretrained):
            return
        models = list(zip(m.sources(), m.source_checkpoints()))
        if mode_for(self.config).joins_models:
            models.append((m.dst or m.src, m.dst_checkpoint))
        for name, checkpoint in models:
            if checkpoint is None:
                require_weights(name)

    def build(self, stream: DataStream) -> None:
        """Build the model (then :meth:`wire` makes what trains it)."""
        config, rt = self.config, self.runtime
        self.splits = stream.splits
        self.total_steps = stream.total_steps  # checkpoints say it: eval of an unfinished run tells how far it got
        torch.manual_seed(config.train.seed)
        counts = []  # the calibration images measured (model.init_images, or the start's choice; at most the split)

        def calibration_images(name: str, count: int) -> torch.Tensor:
            with self.clock.phase("calibration"):
                images = stream.calibration_images(name, count)
            counts.append(len(images))
            return images

        self.model = build_model(config, len(self.splits.classes), calibration_images, rt.device).to(rt.device)
        self.init_images = max(counts, default=None)  # result.json records it
        if config.train.grad_checkpointing:  # on the parts themselves, so a pass's shared tail checkpoints too
            self.model.set_grad_checkpointing(True)
        self.clock.reassign(getattr(self.model, "start_seconds", 0.0), "calibration")
        self.gmacs = count_macs(self.model, config.data.input_size) / 1e9
        self.notes = [self._compute_note()] if config.mode == "stitch" and not config.model.parallel else []
        self.params = count_params(self.model)
        self.trainable = count_params(self.model, trainable_only=True)
        if self.trainable == 0:
            raise StitchkitError("the model has no trainable parameters")
        if rt.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()

    def wire(self, stream: DataStream, tail_only: bool = False) -> None:
        """What evaluation and training call (compiled and wrapped in DDP), the optimizer and the bookkeeping;
        ``tail_only``: the forward pass starts after the stitch's front, which the loop runs once for all the runs
        of a pass. After the runs of a pass share their frozen parts (:func:`~.grouped.share_frozen_parts` swaps
        whole modules, which a tail, a compiled module or DDP made before would keep holding)."""
        config, rt = self.config, self.runtime
        self.head = self.model.tail() if tail_only else self.model
        forward_model = self.head
        if config.train.compile:
            forward_model = torch.compile(forward_model)
        if rt.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [rt.device.index] if rt.device.type == "cuda" else None
            forward_model = DistributedDataParallel(forward_model, device_ids=ids)
        self.forward_model = forward_model

        self.warmup_steps = warmup_steps(self.model, config.optim, stream.total_steps)  # result.json records it
        self.optimizer, self.scheduler = build_optimizer(self.model, config.optim, stream.total_steps, rt.device,
                                                         self.warmup_steps)
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        if config.optim.warmup_steps and self.warmup_steps >= stream.total_steps:
            self.notes.append(
                f"optim.warmup_steps={self.warmup_steps} is not shorter than the run's {stream.total_steps} optimizer "
                f"steps: the learning rate never reaches optim.lr={config.optim.lr:g} and never decays; lower "
                "optim.warmup_steps, or give optim.warmup (a share of the run's steps)")
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=rt.device)  # noqa: E731
        self.loss_sum, self.loss_count = zeros(), zeros()  # since the last log line
        self.epoch_loss = zeros(2)  # sum, count over the epoch
        self.step_loss = zeros(2)  # sum, count over this optimizer step's micro-batches
        self.bad_step = torch.full((), -1, dtype=torch.long, device=rt.device)  # first step with a non-finite loss

    def restore(self) -> Position:
        """Load the last checkpoint into the model, optimizer and statistics; returns where it was taken."""
        state = load_checkpoint(self.dir.last_checkpoint, accepted_digests(self.config))
        self._check_world_size(state)
        # Before any weight loads: the run rebuilt from its settings must be cut where it trained (a checkpoint of
        # stitchkit before 0.13.0 records nothing, and says nothing of its version)
        check_run_cuts(self.model, state.get("architecture"), source=f"the run in {str(self.run_dir)!r}",
                       written_by=state.get("stitchkit_version"), fix=RESUME_CUTS_FIX)
        try:
            load_trainable_state(self.model, state["model"])
        except RuntimeError as err:
            raise StitchkitError(f"checkpoint in {str(self.run_dir)!r} does not fit this model: {err}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # groups of other sizes: the run's parameters were grouped otherwise
            raise StitchkitError(
                f"the optimizer state in {str(self.run_dir)!r} groups the parameters otherwise than this version "
                f"({err}); since 0.10 optim.no_decay_norm_bias=true also exempts the model's no_weight_decay() "
                "parameters (a ViT's class token, learned prefix tokens, fusion weights), since 0.11 a torchvision "
                "transformer's embeddings too (class token, position embedding, relative-position tables): finish "
                "the run with the stitchkit that started it, or start it again with --overwrite") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        # else: the run trained without fp16 (a disabled scaler saves nothing) and resumes with it (train.amp may
        # change on resume, e.g. requeued from a bf16 card onto one without): a fresh scaler finds its scale.
        counters = dict(state["counters"])
        if "train_seconds" in counters:  # a checkpoint of stitchkit <= 0.5: one total, counted as training
            counters["seconds"] = {"train": counters.pop("train_seconds")}
        position = Position(**{k: counters.pop(k) for k in ("step", "epoch", "micro")})
        self.stats = RunStats(**counters)
        self.epoch_loss = state["epoch_loss"].to(self.runtime.device)
        if "log_loss" in state:
            self.loss_sum, self.loss_count = (v.clone() for v in state["log_loss"].to(self.runtime.device))
        # With several processes each takes back its own loss sums and counters. Without that table (one process,
        # a checkpoint of stitchkit <= 0.10) every rank keeps rank 0's above.
        ctx, rows = self.runtime.ctx, state.get("per_rank")
        if rows is not None:
            own = rows[ctx.rank]
            self.epoch_loss = own["epoch_loss"].to(self.runtime.device)
            self.loss_sum, self.loss_count = (v.clone() for v in own["log_loss"].to(self.runtime.device))
            for name in PER_RANK_COUNTERS:
                setattr(self.stats, name, own[name])
        set_rng_state(state["rng"])  # the same on every rank: seeded alike, drawn from alike (augmentation: per image)
        return position

    def _check_world_size(self, state: dict) -> None:
        """Refuse to resume with another number of processes than the run's checkpoint was written by: the images
        of an optimizer step and each process's share of the epoch depend on it, so the run would not go on as it
        began (and each rank's own loss sums could not be handed back). A checkpoint of stitchkit <= 0.10 from one
        process says nothing and is trusted."""
        rows = state.get("per_rank")
        saved = state.get("world_size", len(rows) if rows is not None else None)
        world = self.runtime.ctx.world_size
        if saved is None or saved == world:
            return
        how = "plain stitchkit train --resume" if saved == 1 else f"torchrun --nproc_per_node {saved} ... --resume"
        raise StitchkitError(
            f"the run in {str(self.run_dir)!r} was trained by {saved} process{'es' if saved > 1 else ''} and this "
            f"resume has {world}: the images of each step and each process's share of the epoch depend on it. "
            f"Resume it with {saved} ({how}), or start it again with --overwrite"
        )

    # --- one step -------------------------------------------------------------------------------------------------

    def micro_step(self, inputs: torch.Tensor, labels: torch.Tensor, step: int, micro_batches: int, last: bool) -> None:
        """Forward and backward one micro-batch (images, or the shared front's output) of optimizer step ``step``,
        which has ``micro_batches`` of them (``last``: this is its last one)."""
        rt = self.runtime
        sync = nullcontext() if last or not rt.ctx.enabled else self.forward_model.no_sync()
        with sync:
            with rt.autocast():
                logits = self.forward_model(inputs)
            loss = F.cross_entropy(logits.float(), labels)
            self.scaler.scale(loss / micro_batches).backward()
        # Bookkeeping stays on the device: no host synchronisation per step.
        detached = loss.detach().double()
        n = labels.numel()
        self.step_loss[0] += detached * n
        self.step_loss[1] += n
        finite = torch.isfinite(detached)
        self.bad_step.copy_(torch.where((self.bad_step < 0) & ~finite, step, self.bad_step))

    def optimizer_step(self, images: int, skipped: int) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step took, for its log line
        self.scheduler.step()
        # Commit the step's bookkeeping only now, so a checkpoint always describes a step boundary.
        self.loss_sum += self.step_loss[0]
        self.loss_count += self.step_loss[1]
        self.epoch_loss += self.step_loss
        self.step_loss.zero_()
        self.stats.images += images
        self.stats.skipped += skipped

    def discard_step(self) -> None:
        """Drop what an interrupted step accumulated: resumption replays it from the step boundary."""
        self.optimizer.zero_grad(set_to_none=True)

    def check_finite(self, position: Position | None = None) -> None:
        """Stop the run when training has diverged: a non-finite training loss at some step, or non-finite trained
        weights or optimizer state. Weights can go bad while every loss was finite: one huge but finite loss gives
        overflowing gradients, and AdamW turns those into NaN weights (or an infinite second moment that freezes a
        weight for good) at that very step; the next forward would show it, but after the last step there is none,
        and a checkpoint must never hold such a state as "the last good" one. One host synchronisation; called at
        log steps, epoch ends and checkpoints, never per step."""
        bad_state = (~self._state_finite()).long()
        bad, state_bad = torch.stack([self.bad_step, bad_state]).tolist()
        if distributed.any_true(bad >= 0 or state_bad > 0, self.runtime.ctx, self.runtime.device):
            if bad >= 0:
                what = f"the training loss became NaN or infinite at optimizer step {bad + 1}"
            elif state_bad:
                by = f" by optimizer step {position.step}" if position is not None else ""
                what = f"the trained weights or their optimizer state became NaN or infinite{by}"
            else:
                what = "the training loss became NaN or infinite on another process"
            raise NonFiniteLossError(self._diverged(what))

    def _diverged(self, what: str) -> str:
        last = self.dir.last_checkpoint
        kept = f"the last good checkpoint is {str(last)!r}" if last.is_file() else "no checkpoint was written"
        return f"{what}; training stopped and {kept}. Lower optim.lr, add optim.warmup_steps, or check the data"

    def _state_finite(self) -> torch.Tensor:
        """Whether every floating-point number training changes is finite, as a device tensor (no synchronisation):
        the trained weights and buffers (what a checkpoint holds) and the optimizer's moments."""
        tensors = [v for v in trainable_state(self.model).values() if torch.is_floating_point(v)]
        tensors += [v for state in self.optimizer.state.values() for v in state.values()
                    if torch.is_tensor(v) and torch.is_floating_point(v)]
        if not tensors:
            return torch.ones((), dtype=torch.bool, device=self.runtime.device)
        return torch.stack([torch.isfinite(v).all().to(self.runtime.device) for v in tensors]).all()

    def log_train(self, position: Position, images_per_s: float | None) -> None:
        loss = (self.loss_sum / self.loss_count.clamp(min=1)).item()
        self.log.write({"type": "train", "step": position.step, "epoch": position.epoch, "loss": loss,
                        "lr": self.step_lr, "images_per_s": images_per_s})
        self.loss_sum.zero_(), self.loss_count.zero_()

    def end_epoch(self, position: Position) -> None:
        """The epoch's mean training loss over every process, logged."""
        self.close_partial_epoch()
        self.log.write({"type": "epoch", "step": position.step, "epoch": position.epoch,
                        "train_loss": self.stats.train_loss})

    def close_partial_epoch(self) -> None:
        """The epoch's mean training loss so far, over every process (``train.max_steps`` may stop it part-way)."""
        loss_sum, count = distributed.all_reduce_sum(self.epoch_loss.clone(), self.runtime.ctx).tolist()
        self.stats.train_loss = loss_sum / max(count, 1)

    def start_epoch(self) -> None:
        self.epoch_loss.zero_()

    def begin_evaluation(self) -> None:
        """Evaluation mode, and the last evaluation's metrics forgotten."""
        self.model.eval()
        self.metrics = {}

    def end_evaluation(self) -> None:
        self.model.train()  # StitchedModel.train keeps its frozen parts in eval mode

    def advance_progress(self) -> None:
        self.log.advance()

    def close_log(self) -> None:
        self.log.close()

    def evaluated(self, split: str, position: Position, epoch: int, metrics: dict, at_start: bool = False,
                  epoch_end: bool = False) -> None:
        """Log one split's evaluation: ``at_start`` before any step (epoch -1 in the log), ``epoch_end`` after a whole
        epoch (its validation top-1 joins :attr:`RunStats.after_epoch`).

        A non-finite loss fails the run before anything is logged: the top-1 of NaN logits is whatever comparisons of
        NaNs give (chance, here), not a result."""
        if not math.isfinite(metrics["loss"]):
            if at_start:
                raise NonFiniteLossError(
                    f"the {split} loss before any optimizer step is NaN or infinite: the untrained model already "
                    "gives non-finite outputs. Check the weights it starts from (model.src_checkpoint, "
                    "model.dst_checkpoint), train.amp (fp16 can overflow) and the data")
            raise NonFiniteLossError(self._diverged(
                f"the {split} loss became NaN or infinite at the evaluation after optimizer step {position.step}"))
        self.metrics[split], self.metrics_step = metrics, position.step
        self.log.write({"type": "eval", "split": split, "step": position.step, "epoch": epoch, **metrics})
        if at_start:
            self.stats.at_start = {**(self.stats.at_start or {}), split: metrics["top1"]}
        if epoch_end and split == "val":
            self.stats.after_epoch = [*(self.stats.after_epoch or [])[:epoch], metrics["top1"]]

    # --- checkpoints and results ------------------------------------------------------------------------------------

    def checkpoint(self, position: Position, rng: dict | None = None) -> None:
        """Write ``checkpoints/last.pt`` (rank 0), after checking that no loss so far was NaN or infinite.

        Called only at optimizer-step boundaries, by every rank; ``rng`` is the RNG state at that boundary when it is
        not now.
        """
        self.check_finite(position)
        per_rank = self._per_rank()
        if self.is_main:
            try:
                save_checkpoint(self.dir.last_checkpoint, self.state_dict(position, rng, per_rank))
            except OSError as err:  # disk full, quota, vanished mount: the previous checkpoint is still whole
                raise StitchkitError(
                    f"cannot write a checkpoint at step {position.step} ({err.strerror or err}); the last good "
                    f"checkpoint in {str(self.dir.checkpoints)!r} is kept. Free space, then continue with "
                    "stitchkit train --resume (in a sweep, --retry-failed trains the cell again)"
                ) from None
        distributed.barrier(self.runtime.ctx)

    def _per_rank(self) -> list[dict] | None:
        """Each rank's own bookkeeping (the epoch's and the log line's loss sums, :data:`PER_RANK_COUNTERS`), indexed
        by rank, for rank 0 to save: one small collective that every rank joins. None with one process (no
        collective: the checkpoint's own entries are that process's)."""
        ctx = self.runtime.ctx
        if not ctx.enabled:
            return None
        row = torch.cat([self.epoch_loss, self.loss_sum.view(1), self.loss_count.view(1), self._own_counters()])
        table = distributed.gather_rows(row, ctx).cpu()
        if not self.is_main:
            return None
        return [{"epoch_loss": r[0:2].clone(), "log_loss": r[2:4].clone(),
                 **{name: int(v) for name, v in zip(PER_RANK_COUNTERS, r[4:].tolist())}} for r in table]

    def state_dict(self, position: Position, rng: dict | None = None, per_rank: list[dict] | None = None) -> dict:
        """Everything resumption needs, at a step boundary; ``per_rank``: what :meth:`_per_rank` gathered (several
        processes), saved as is."""
        state = {
            "config_digest": config_digest(self.config),
            "model": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counters": {**asdict(position), **asdict(self.stats), "seconds": self._seconds()},
            "epoch_loss": self.epoch_loss.cpu(),
            # The loss since the last log line (sum, count): a resumed run's first line then averages over the same
            # steps as an uninterrupted run's (a checkpoint of an older version has none: it starts afresh).
            "log_loss": torch.stack([self.loss_sum, self.loss_count]).cpu(),
            "rng": rng if rng is not None else rng_state(),
            "world_size": self.runtime.ctx.world_size,  # a resume must have as many processes
            "total_steps": self.total_steps,
            # Where its network cuts its models (None: it cuts none), and who wrote it: what resuming checks
            "architecture": cuts_record(self.model),
            "stitchkit_version": __version__,
        }
        if per_rank is not None:  # with one process the checkpoint is as before: the entries above are its own
            state["per_rank"] = per_rank
        return state

    def _seconds(self) -> dict[str, float]:
        return add_seconds(self.stats.seconds, self.clock.seconds())

    def summed_counters(self) -> dict[str, int] | None:
        """:data:`PER_RANK_COUNTERS` summed over the processes: one small collective that every rank joins (at the
        end of a run; a rank whose images held more corrupt files than another's skipped more). None with one
        process, whose own counters are the totals."""
        ctx = self.runtime.ctx
        if not ctx.enabled:
            return None
        summed = distributed.all_reduce_sum(self._own_counters(), ctx).tolist()
        return {name: int(v) for name, v in zip(PER_RANK_COUNTERS, summed)}

    def _own_counters(self) -> torch.Tensor:
        """This process's :data:`PER_RANK_COUNTERS`, as float64 on the device (exact below 2**53) for a collective."""
        return torch.tensor([float(getattr(self.stats, name)) for name in PER_RANK_COUNTERS], dtype=torch.float64,
                            device=self.runtime.device)

    def record(self, position: Position, status: str, error: str | None = None,
               totals: dict[str, int] | None = None) -> dict:
        """The result record (``result.json``); ``totals``: :meth:`summed_counters`, where every rank could join it
        (else rank 0's counters times the number of processes stand for them: equal unless images were skipped)."""
        config, rt = self.config, self.runtime
        seconds = self._seconds()
        world = rt.ctx.world_size
        totals = totals or {name: getattr(self.stats, name) * world for name in PER_RANK_COUNTERS}
        images = totals["images"]
        record = {
            "status": status, "error": error, "mode": config.mode, **mode_for(config).model_settings(config),
            "seed": config.train.seed, "lr": config.optim.lr, "warmup_steps": self.warmup_steps,
            "init_images": self.init_images,
            "dataset": config.data.name,
            "input_size": config.data.input_size, "classes": len(self.splits.classes),
            "class_names": list(self.splits.classes),  # what `stitchkit predict` names its answers with
            "train_images": len(self.splits.train), "planned_epochs": config.train.epochs,
            "val_split_images": self.splits.val_split_images,
            "gmacs": self.gmacs, "params": self.params, "trainable_params": self.trainable,
            "trained": trained_parts(self.model),  # adapters, a stitch's trained blocks and head; or all
            # Where its network cut its models (None: it cuts none): what loading a run without its checkpoint checks
            "architecture": cuts_record(self.model),
            "epochs": position.epoch, "steps": position.step, "wall_time_s": sum(seconds.values()),
            "seconds": seconds, "images_seen": images,
            # Training images per second of training: set-up, calibration, evaluation and checkpoints excluded. None
            # where no image was timed (train.epochs=0, or only the compiling first step): a 0 would be averaged into
            # throughput tables.
            "images_per_s": ((images - totals["warmup_images"]) / seconds["train"]
                             if seconds["train"] > 0 and images > totals["warmup_images"] else None),
            # Host synchronisations per training step of this process (train.count_host_syncs on CUDA), else None.
            "host_syncs_per_step": self.host_syncs.per_step if self.host_syncs else None,
            "skipped_images": totals["skipped"],
            "train_loss": self.stats.train_loss, "world_size": world,
            "device": str(rt.device), "amp": rt.amp_name,
            # Runs trained in one pass share their wall time: wall_time_s is the pass's.
            "group_size": max(len(self.pass_members), 1), "group": self.pass_members,
            "versions": package_versions(), "machine": machine(rt.device),
            # Runs that differ only in their seed share this: reports average over seeds within it, never across
            # other settings (epochs, data, recipe).
            "settings_id": settings_id(config),
        }
        evaluated = {}
        for split, values in self.metrics.items():
            prefix = "" if split == "val" else f"{split}_"
            evaluated.update({f"{prefix}top1": values["top1"], f"{prefix}top5": values["top5"],
                              f"{prefix}loss": values["loss"], f"{prefix}eval_images": values.get("images"),
                              f"{prefix}eval_skipped_images": values.get("skipped", 0)})
        if status != "finished" and evaluated:
            # A failed run has no result: its last evaluation (often the start's, before the step that diverged) is
            # kept under names no reader takes for the run's top-1, with the step it was taken after.
            evaluated = {"last_eval_step": self.metrics_step, **{f"last_eval_{k}": v for k, v in evaluated.items()}}
        record.update(evaluated)
        # Time to accuracy: top-1 before the first step (the start alone, no training) and after every epoch.
        for split, top1 in (self.stats.at_start or {}).items():
            record[f"{'' if split == 'val' else split + '_'}top1_at_start"] = top1
        record["top1_after_epoch"] = list(self.stats.after_epoch or [])
        return json_safe(record)

    def finish(self, record: dict) -> None:
        """Write the trained weights, then ``result.json`` (the run is finished once it exists)."""
        if self.is_main:
            export_weights(self.model, self.dir)
            atomic_write_json(self.dir.result, record)

    def fail(self, position: Position, err: BaseException) -> None:
        """A run that cannot go on (its loss became NaN) while the rest of its pass does: a failed result."""
        if self.is_main:
            atomic_write_json(self.dir.result, self.record(position, "failed", error=str(err)))
        self.close_log()
