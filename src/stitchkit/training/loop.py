"""The training loop: runs that share a data stream trained in lockstep, one optimizer step at a time.

Recipe (the defaults of :class:`~stitchkit.training.config.Config`): AdamW (lr 0.002, weight decay 0.05), effective
batch 512 by gradient accumulation over processes and micro-batches, cosine annealing to 0 stepped per optimizer
step with optional linear warm-up, 10 epochs, cross-entropy.

Resumption is exact on CPU: checkpoints are taken only at optimizer-step boundaries and hold the trainable weights,
optimizer, scheduler, scaler, position, loss accumulators (with several processes, each one's own) and every RNG
state; data order and augmentation depend only on (seed, epoch, index) (see :mod:`stitchkit.training.data`), so a
resumed run replays the same micro-batches.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import astuple
from typing import Sequence

import torch
from torch import nn

from .. import faults
from ..errors import StitchkitError
from . import distributed
from .checkpoint import rng_state
from .config import Config
from .clock import PhaseClock, device_synchronizer
from .host_syncs import HostSyncCounter
from .run import NonFiniteLossError, Position, Run
from .scoring import evaluate_heads
from .stream import build_stream

EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM after a checkpoint; a scheduler should requeue it


class RunInterrupted(Exception):
    """Training stopped by a signal: what stopped it (``cause``), at which optimizer ``step`` (None: during set-up,
    before the loop) and the ``checkpoints`` written then (none during set-up).

    Its message states these facts and names no way to continue: that is the caller's to word (``stitchkit train``
    continues with --resume, a sweep by rerunning the same command, which resumes its interrupted cells).

    ``exit_code`` is 130 for Ctrl-C and 75 (EX_TEMPFAIL, "try again") for SIGTERM, which SLURM sends before
    preempting or timing out a job: requeue on 75.
    """

    def __init__(self, cause: str, step: int | None = None, checkpoints: Sequence[str] = (),
                 exit_code: int = EXIT_INTERRUPTED):
        self.cause, self.step, self.checkpoints, self.exit_code = cause, step, list(checkpoints), exit_code
        if step is None:
            message = f"{cause} during set-up, before training; nothing to checkpoint"
        else:
            message = f"{cause} at step {step}; checkpoint written to {', '.join(map(repr, self.checkpoints))}"
        super().__init__(message)


class TrainingPass:
    """Trains runs that share a data stream in lockstep: one data pipeline, and for stitches from the same source
    front one front forward per batch; each run keeps its own adapters, optimizer, scheduler, checkpoints and run
    folder, and computes exactly what it would alone (see :mod:`stitchkit.training.grouped`).

    A pass of one run is how :func:`train` trains. :meth:`run` returns one outcome per run: its result record, or
    the exception that failed it alone (its NaN loss, or an error while setting it up). Errors of the whole pass
    (the data, an interruption) propagate.
    """

    def __init__(self, runs: list[Run]):
        if not runs:
            raise ValueError("a training pass needs at least one run")
        self.runs = runs
        self.shared = len(runs) > 1  # several runs: they share the source front as well as the data
        self.config, self.runtime = runs[0].config, runs[0].runtime
        self.position = Position()  # where the loop stands, for every run
        self.evaluated_at: int | None = None  # the step of the last evaluation
        self.front: nn.Module | None = None
        self.outcomes: dict[int, dict | BaseException] = {}
        # One clock for the pass: its runs share its wall time (set-up, training, evaluation, checkpoints).
        self.clock = PhaseClock(synchronize=device_synchronizer(self.runtime.device))
        self.host_syncs = HostSyncCounter(self.config.train.count_host_syncs and self.runtime.device.type == "cuda")
        for r in runs:
            r.clock, r.host_syncs = self.clock, self.host_syncs
        if self.shared:
            names = [str(r.run_dir) for r in runs]
            for r in runs:
                r.share_pass(names)

    @property
    def live(self) -> list[Run]:
        return [r for r in self.runs if id(r) not in self.outcomes]

    def _guard(self, run: Run, action) -> None:
        """Run one run's set-up step; in a shared pass, its failure fails that run only."""
        try:
            action()
        except (StitchkitError, RuntimeError, ValueError, OSError) as err:
            if not self.shared:
                raise
            self.outcomes[id(run)] = err

    def _each_live(self, action) -> None:
        """``action(run)`` for every live run; one whose loss became NaN fails alone."""
        for r in self.live:
            try:
                action(r)
            except NonFiniteLossError as err:
                r.fail(self.position, err)
                self.outcomes[id(r)] = err

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _set_up(self) -> None:
        from .grouped import check_groupable, share_frozen_parts

        if self.shared:
            check_groupable([r.config for r in self.runs])
        for r in self.runs:
            self._guard(r, r.check_folder)
            if r.finished_record is not None:  # resumed, and already finished: its result is its outcome
                self.outcomes[id(r)] = r.finished_record
        if not self.live:
            return
        for r in self.live:
            self._guard(r, r.check_loggers)
        for r in self.live:
            self._guard(r, r.check_weights)
        self.stream = build_stream(self.config, self.runs[0].accum, self.runtime)
        for r in self.live:
            self._guard(r, lambda r=r: r.build(self.stream))
        if self.shared and self.live:
            self.front = share_frozen_parts([r.model for r in self.live])
        for r in self.live:
            self._guard(r, lambda r=r: r.wire(self.stream, tail_only=self.shared))
        restored: dict[int, Position] = {}
        for r in self.live:
            if r.resume:
                self._guard(r, lambda r=r: restored.__setitem__(id(r), r.restore()))
        found = {astuple(restored.get(id(r), Position())) for r in self.live}
        if len(found) > 1:
            raise StitchkitError(
                "the runs of a pass must continue from the same step, but their checkpoints are at (step, epoch, "
                f"micro-batch) {sorted(found)}; resume them one by one"
            )
        if self.live:
            self.position = restored.get(id(self.live[0]), Position())
        for r in self.live:
            self._guard(r, lambda r=r: r.create_folder(self.position, self.stream.total_steps,
                                                         self.stream.micro_per_epoch))

    # --- the loop -------------------------------------------------------------------------------------------------

    def run(self) -> list[dict | BaseException]:
        try:
            self._set_up()  # building models and fitting adapters can take minutes: Ctrl-C is likely here too
        except KeyboardInterrupt:
            # Nothing to save: no step was taken. Each run's folder is as a failed set-up leaves it, which the same
            # command accepts again (see Run.check_folder and Run.create_folder).
            raise RunInterrupted("interrupted") from None
        # Printed lines of a shared pass name each run by its path below the runs' common folder.
        common = os.path.commonpath([r.run_dir.resolve() for r in self.runs]) if self.shared else None
        for i, r in enumerate(self.live):
            r.open_log(self.stream.total_steps, self.position.step, progress=i == 0,
                       label=str(r.run_dir.resolve().relative_to(common)) if common else None)
        self._boundary_rng = rng_state()
        restore = self._catch_sigterm()
        try:
            if self.live and self.position.step == 0 and self.config.train.eval_at_start:
                self._evaluate_at_start()
            self.clock.switch("train")
            if self.live:
                self._train()
            if self.live:
                self._finish()
        except KeyboardInterrupt:
            for r in self.live:
                r.discard_step()
            self._checkpoint_all(rng=self._boundary_rng)
            raise RunInterrupted("interrupted", self.position.step, self._checkpoints()) from None
        finally:
            restore()
            for r in self.live:
                r.close_log()
            distributed.shutdown(self.runtime.ctx)
        return [self.outcomes[id(r)] for r in self.runs]

    def _checkpoints(self) -> list[str]:
        return [str(r.dir.last_checkpoint) for r in self.live]

    def _check_all(self) -> None:
        """Fail each run whose training has diverged (see :meth:`Run.check_finite`)."""
        self._each_live(lambda r: r.check_finite(self.position))

    def _checkpoint_all(self, rng: dict | None = None) -> None:
        with self.clock.phase("checkpoint"):
            self._each_live(lambda r: r.checkpoint(self.position, rng))  # checks the loss first

    def _forward_front(self, images: torch.Tensor) -> torch.Tensor:
        """The shared front's output (no autograd: nothing before the adapters is trained)."""
        if self.front is None:
            return images
        with torch.no_grad(), self.runtime.autocast():
            return self.front(images)

    def _train(self) -> None:
        t, s, p = self.config.train, self.stream, self.position
        train_seconds = lambda: self.clock.seconds()["train"]  # noqa: E731 (evaluation, checkpoints excluded)
        log_start, log_images = train_seconds(), 0
        compiling = t.compile  # this process's first step compiles the model: its own phase, its syncs not counted
        if p.micro >= s.micro_per_epoch:
            # Resumed from a stop (Ctrl-C in its evaluation, SIGTERM) after an epoch's last step but before its end
            # was checkpointed: that end comes first, even when the step was the run's last (else the epoch would
            # not count and its top-1 would miss from top1_after_epoch).
            self._end_epoch()
            if not self.live:
                return
        while p.step < s.total_steps and p.epoch < t.epochs:
            s.train_sampler.set_epoch(p.epoch, start=p.micro * t.batch_size)
            batches = iter(s.train_loader)
            while p.micro < s.micro_per_epoch and p.step < s.total_steps:
                with self.clock.phase("compile") if compiling else self.host_syncs.step():
                    micro_batches = min(s.accum, s.micro_per_epoch - p.micro)
                    images_in_step = skipped_in_step = 0
                    for i in range(micro_batches):
                        images, labels, skipped, params = next(batches)
                        if images.numel() > 0:
                            images, labels = self.runtime.to_device(images, labels, s.splits.device_augment, params)
                            inputs = self._forward_front(images)
                            for r in self.live:
                                r.micro_step(inputs, labels, p.step, micro_batches, last=i == micro_batches - 1)
                        faults.point("step")
                        images_in_step += labels.numel()
                        skipped_in_step += skipped
                    with self._deferred_ctrl_c():  # every run steps, or none: checkpoints stay at step boundaries
                        for r in self.live:
                            r.optimizer_step(images_in_step, skipped_in_step)
                        p.step += 1
                        p.micro += micro_batches
                        self._boundary_rng = rng_state()
                if compiling:
                    for r in self.live:
                        r.stats.warmup_images += images_in_step
                    compiling = False
                else:
                    log_images += images_in_step
                if p.step % t.log_every == 0:
                    self._check_all()
                    if not self.live:
                        return
                    elapsed = max(train_seconds() - log_start, 1e-9)
                    rate = log_images * self.runtime.ctx.world_size / elapsed if log_images else None  # None: compiling
                    for r in self.live:
                        r.log_train(p, rate)
                    log_start, log_images = train_seconds(), 0
                if p.step % t.checkpoint_every == 0 and p.micro < s.micro_per_epoch:
                    self._checkpoint_all()
                if not self.live:
                    return
                for r in self.live:
                    r.advance_progress()
                self._stop_if_asked()
            del batches
            if p.micro >= s.micro_per_epoch:
                self._end_epoch()
                if not self.live:
                    return

    def _end_epoch(self) -> None:
        self._check_all()  # before the epoch's loss is logged and the model evaluated
        if not self.live:
            return
        for r in self.live:
            r.end_epoch(self.position)
        self._evaluate_all(self.position.epoch, epoch_end=True)
        self.position.epoch += 1
        self.position.micro = 0
        for r in self.live:
            r.start_epoch()
        self._checkpoint_all()
        if self.live:
            faults.point("epoch-end")

    def _evaluate_at_start(self) -> None:
        """Every run's accuracy before its first step: what the start alone gives (``train.eval_at_start``). The
        RNG is left as it was, so training is the same with or without it."""
        devices = [self.runtime.device.index or 0] if self.runtime.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self._evaluate_all(-1, at_start=True)

    def _evaluate_all(self, epoch: int, at_start: bool = False, epoch_end: bool = False) -> None:
        with self.clock.phase("evaluation"):
            self._evaluate_live(epoch, at_start, epoch_end)

    def _evaluate_live(self, epoch: int, at_start: bool, epoch_end: bool) -> None:
        live = self.live
        for r in live:
            r.begin_evaluation()
        try:
            for split, loader in self.stream.eval_loaders.items():
                heads = self.live  # a run whose loss was not finite on an earlier split is out
                results = dict(zip(map(id, heads), evaluate_heads(self.front, [r.head for r in heads], loader,
                                                                  self.runtime)))
                self._each_live(lambda r: r.evaluated(split, self.position, epoch, results[id(r)], at_start=at_start,
                                                      epoch_end=epoch_end))
        finally:
            for r in live:
                r.end_evaluation()
        self.evaluated_at = self.position.step

    def _finish(self) -> None:
        p = self.position
        if self.evaluated_at != p.step:  # stopped inside an epoch, or resumed after the last
            self._check_all()
            if not self.live:
                return
            if p.micro > 0:  # max_steps stopped the epoch part-way: its loss so far
                for r in self.live:
                    r.close_partial_epoch()
            self._evaluate_all(-1 if p.step == 0 else p.epoch if p.micro > 0 or p.epoch == 0 else p.epoch - 1)
            self._checkpoint_all()
        elif p.step == 0:  # train.epochs=0 evaluated at start: still a checkpoint, which export, eval and predict read
            self._checkpoint_all()
        records = {id(r): r.record(p, "finished", totals=r.summed_counters()) for r in self.live}
        faults.point("finish")
        for r in self.live:
            r.finish(records[id(r)])
            self.outcomes[id(r)] = records[id(r)]

    # --- signals --------------------------------------------------------------------------------------------------

    def _catch_sigterm(self):
        """Turn SIGTERM into "checkpoint at the next step boundary, then stop"; returns the undo function.

        A handler that was already installed (e.g. submitit's) still runs, so its requeue logic keeps working.
        """
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
            raise RunInterrupted("stopped by SIGTERM", self.position.step, self._checkpoints(),
                                 exit_code=EXIT_PREEMPTED)


def train(config: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """Train one run and return its result record (also written to ``RUN_DIR/result.json``).

    Example:
        >>> cfg = load_config(None, ["mode=scratch", "model.src=resnet10t", "data.name=synthetic", "data.input_size=32",
        ...                          "train.epochs=1", "optim.batch_size=32", "train.batch_size=32", "train.workers=0"])
        >>> train(cfg)["top1"]
    """
    outcome = TrainingPass([Run(config, resume=resume, overwrite=overwrite)]).run()[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train_group(configs: Sequence[Config], resume: bool | Sequence[bool] = False,
                overwrite: bool | Sequence[bool] = False) -> list[dict | BaseException]:
    """Train ``configs`` in one pass (a :class:`TrainingPass`; which runs can share one is in
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
    runtime = None  # one device and process group for the whole pass
    runs = []
    for config, res, over in zip(configs, resume, overwrite):
        runs.append(Run(config, res, over, runtime))
        runtime = runs[0].runtime
    return TrainingPass(runs).run()
