"""Running a sweep's cells: locally (one after another, or one process per visible GPU) or on SLURM via submitit.

Every cell runs under an exclusive ``flock`` on ``RUN_DIR/.lock``: two sweep processes on one folder never run a
cell twice, and a killed process's lock vanishes with it. A cell's state is read from its run directory:

* ``finished``: ``result.json`` with status finished: skipped;
* ``failed``: ``result.json`` with status failed (out of memory, NaN, bad config): skipped, rerun with
  ``--retry-failed``; it is a row with its error in the report, never a silent gap;
* ``interrupted``: a checkpoint but no result: resumed;
* ``new``: started.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import StitchkitError
from .. import faults
from ..files import append_line, atomic_write_json, cut_torn_tail
from ..temps import remove_own_temps
from ..rundir import RunDir
from .grid import Cell, Sweep, _slug

MANIFEST_DIR = "sweeps"
EXIT_OUTPUT_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a process that a closed pipe ended


@contextmanager
def cell_lock(run_dir: Path):
    """Yield True while holding the cell's lock, False when another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(RunDir(run_dir).lock, "a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        faults.point("locked")
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def write_manifest(sweep: Sweep, runs_dir: Path) -> None:
    """Record every cell (skipped ones with their reason) so the report shows pending and skipped cells too."""
    # Temporary files of a process killed while writing a manifest (those of a live sweep process are kept).
    remove_own_temps(runs_dir / MANIFEST_DIR)
    atomic_write_json(runs_dir / MANIFEST_DIR / f"{sweep.name}.json",
                      {"sweep": sweep.name, "base": sweep.base, "cells": [c.describe() for c in sweep.cells]})


def runs_of_other_versions(sweep: Sweep, runs_dir: Path) -> int:
    """Finished runs in ``runs_dir`` that a sweep of this name trained but this version of it does not list (its
    settings changed since: other cell names). The manifest lists this version only, so the report leaves them out."""
    if not runs_dir.is_dir():
        return 0
    names, count = {c.name for c in sweep.cells}, 0
    for path in runs_dir.rglob("cell.json"):
        run_dir = path.parent
        if run_dir.relative_to(runs_dir).as_posix() in names:
            continue
        try:
            owner = json.loads(path.read_text()).get("sweep")
        except (OSError, ValueError, AttributeError):  # torn or foreign: not a run this sweep can claim
            continue
        if owner == sweep.name and RunDir(run_dir).state() == "finished":
            count += 1
    return count


def adopt_earlier_runs(sweep: Sweep, runs_dir: Path, log=None) -> Sweep:
    """``sweep`` with each cell that has an :attr:`~stitchkit.sweeps.grid.Cell.earlier_name` under that name where
    a run was made there (finished, failed or interrupted) and none under its own name yet, and the run's saved
    settings are the cell's as it trains (the settings its mode does not use left aside): stitchkit up to 0.12.0
    named a baseline cell after the base's stitch-only settings too, and a resumed sweep must neither retrain
    nor leave out what it finished. ``log`` is told how many were taken up, and each one not taken up and why."""
    from dataclasses import replace

    from ..training.config import flatten, from_yaml_file
    from ..training.identity import NOT_IDENTITY
    from .grid import _unused_in

    def effective(settings: dict) -> dict:  # as the run's mode uses them; where the run lives left aside
        unused = {f"model.{key}": value for key, value in _unused_in(settings).items()}
        return {k: v for k, v in {**settings, **unused}.items() if k not in NOT_IDENTITY}

    cells, taken, refused = [], Counter(), []
    for cell in sweep.cells:
        earlier = cell.earlier_name
        if (earlier is None or cell.skip_reason or RunDir(runs_dir / cell.name).state() != "new"
                or (state := RunDir(runs_dir / earlier).state()) == "new"):
            cells.append(cell)
            continue
        adopted = replace(cell, name=earlier)
        try:
            saved = effective(flatten(from_yaml_file(RunDir(runs_dir / earlier).config)))
        except (StitchkitError, OSError, ValueError) as err:
            refused.append(f"{earlier} ({state}): its config.yaml cannot be read ({str(err)[:200]})")
            cells.append(cell)
            continue
        wanted = effective(flatten(sweep.config(adopted, runs_dir)))
        differ = [k for k in sorted(saved.keys() | wanted.keys()) if saved.get(k) != wanted.get(k)]
        if differ:
            refused.append(f"{earlier} ({state}): its settings differ from the cell's ("
                           + ", ".join(f"{k}={saved.get(k)!r} there, {wanted.get(k)!r} now" for k in differ[:3])
                           + (" ..." if len(differ) > 3 else "") + ")")
            cells.append(cell)
            continue
        taken[state] += 1
        cells.append(adopted)
    if log and taken:
        states = ", ".join(f"{n} {state}" for state, n in sorted(taken.items()))
        one = sum(taken.values()) == 1
        log(f"stitchkit: {sum(taken.values())} cell{'' if one else 's'} found under the name{'' if one else 's'} "
            f"stitchkit 0.12.0 and earlier gave {'it' if one else 'them'} ({states}), and kept there: those names took "
            "the base's settings a cell's mode does not use; the runs are taken up, not trained again")
    for line in refused if log else []:
        log(f"stitchkit: warning: not taken up under its earlier name, the cell trains as new: {line}")
    return Sweep(sweep.name, sweep.base, cells, sweep.group_by_front, sweep.max_group_size)


def check_shared_settings(sweep: Sweep) -> None:
    """Fail once, before the first cell, on what every cell shares and would fail on in turn: a logger package
    this machine lacks, a data folder that is not there. Cheap checks only (no listing of the images)."""
    from ..training.config import load_config
    from ..training.data import folder_problem
    from ..training.logging import require_loggers

    config = load_config(layers=[("the sweep's base", sweep.base)])
    require_loggers(config)
    data = config.data
    if data.name == "imagefolder":
        if not data.root:
            raise StitchkitError("data.name=imagefolder needs data.root, a folder with train/<class>/ and "
                                 "val/<class>/; pass data.root=PATH")
        root = Path(data.root).expanduser()
        train = root / "train"
        problem = folder_problem(root)
        if problem:
            raise StitchkitError(f"data.root {data.root!r} {problem}, so every cell would fail; correct data.root, a "
                                 "folder with train/<class>/ and val/<class>/")
        if not train.is_dir():
            raise StitchkitError(f"data folder {str(train)!r} does not exist, so every cell would fail; set data.root "
                                 "to a folder with train/<class>/ and val/<class>/ subfolders")
    elif data.name == "fashion_mnist" and data.root and not Path(data.root).expanduser().exists():
        raise StitchkitError(f"data.root {data.root!r} does not exist, so every cell would fail; correct data.root, "
                             "or leave it unset to read the installed Fashion-MNIST")


def train_in_process(config, resume: bool, overwrite: bool) -> None:
    from ..training import train

    train(config, resume=resume, overwrite=overwrite)


def train_with_torchrun(gpus: int):
    """A launcher that trains one cell over ``gpus`` processes with torchrun (DDP), inside one SLURM job.

    A SIGTERM to the job while torchrun runs (SLURM's preemption or time-out; USR2 becomes one, see :class:`_Usr2`)
    is handed to torchrun, which hands it to its training processes: they checkpoint at the next step boundary and
    stop. The cell is then interrupted, not failed (torchrun's own exit code does not tell the two apart): it raises
    :class:`~stitchkit.training.RunInterrupted` and the cell resumes when the job runs again."""

    def launch(config, resume: bool, overwrite: bool) -> None:
        from ..training.config import to_yaml

        run_dir = Path(config.output.dir)
        cell_config = RunDir(run_dir).cell_config
        cell_config.write_text(to_yaml(config))
        flags = ["--resume"] if resume else (["--overwrite"] if overwrite else [])
        process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    f"--nproc_per_node={gpus}", "-m", "stitchkit", "train", str(cell_config), *flags])
        stopped = []

        def hand_on(signum, frame):
            stopped.append(signum)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, hand_on) if in_main else None
        try:
            code = process.wait()
        except KeyboardInterrupt:  # Ctrl-C reached torchrun too: let its processes stop before saying so
            process.wait()
            raise
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
        if stopped:
            raise _interrupted_by_sigterm(RunDir(run_dir))
        if code != 0:
            raise StitchkitError(f"torchrun over {gpus} processes exited with code {code}")

    return launch


def _interrupted_by_sigterm(run: RunDir):
    """What a torchrun cell stopped by SIGTERM amounts to: the training processes' own interruption, with the step of
    the checkpoint they wrote (none: stopped during set-up)."""
    from ..training.checkpoint import load_checkpoint
    from ..training.loop import EXIT_PREEMPTED, RunInterrupted

    step = None
    if run.last_checkpoint.is_file() and not run.result.is_file():
        try:
            step = load_checkpoint(run.last_checkpoint)["counters"]["step"]
        except (StitchkitError, OSError, KeyError, RuntimeError):
            pass
    checkpoints = [str(run.last_checkpoint)] if step is not None else []
    return RunInterrupted("stopped by SIGTERM", step, checkpoints, exit_code=EXIT_PREEMPTED)


def run_cell(sweep: Sweep, cell: Cell, runs_dir: Path, retry_failed: bool = False, launch=train_in_process) -> str:
    """Run one cell unless it is finished, failed (without ``retry_failed``) or running elsewhere.

    ``launch(config, resume, overwrite)`` trains it (in this process by default, or with torchrun).
    Returns what happened: ``finished``, ``failed``, ``skipped-finished``, ``skipped-failed`` or ``busy``.
    A :class:`~stitchkit.training.RunInterrupted` propagates (the cell resumes next time).
    """
    return run_group(sweep, [cell], runs_dir, retry_failed, launch)[cell.name]


def run_group(sweep: Sweep, cells: list[Cell], runs_dir: Path, retry_failed: bool = False,
              launch=train_in_process) -> dict[str, str]:
    """Run cells that can share a pass (see :meth:`Sweep.groups`) together; :func:`run_cell`'s outcome per cell.

    Each cell is locked, and skipped when finished, failed or busy, as on its own. The rest train in one pass when
    they start from the same step (new cells, or interrupted ones whose checkpoints agree); a group that fails as a
    whole (out of memory with every member loaded, say) falls back to training its cells one by one.
    """
    outcomes: dict[str, str] = {}
    with ExitStack() as locks:
        todo: dict[tuple, list[tuple[Cell, str]]] = {}
        for cell in cells:
            run_dir = runs_dir / cell.name
            if not locks.enter_context(cell_lock(run_dir)):
                outcomes[cell.name] = "busy"
                continue
            state = RunDir(run_dir).state()
            if state in ("finished", "failed"):
                _close_attempt(run_dir, state)
            if state == "finished":
                outcomes[cell.name] = "skipped-finished"
            elif state == "failed" and not retry_failed:
                outcomes[cell.name] = "skipped-failed"
            else:
                todo.setdefault(_start_position(run_dir, state), []).append((cell, state))
        for members in todo.values():
            if len(members) > 1:
                outcomes.update(_train_together(sweep, members, runs_dir, launch))
            else:
                outcomes.update(_train_alone(sweep, *members[0], runs_dir, launch))
    return outcomes


def _start_position(run_dir: Path, state: str) -> tuple:
    """(step, epoch, micro-batch) a cell starts from: its checkpoint's, or zeros for a new run."""
    if state != "interrupted":
        return (0, 0, 0)
    from ..training.checkpoint import load_checkpoint

    try:
        c = load_checkpoint(RunDir(run_dir).last_checkpoint)["counters"]
        return (c["step"], c["epoch"], c["micro"])
    except (StitchkitError, OSError, KeyError, RuntimeError):
        return ("unreadable", str(run_dir))  # resumes alone, where the error is reported


def _begin(sweep: Sweep, cell: Cell, state: str, runs_dir: Path, how: str = "") -> None:
    """Record in the cell's folder which sweep cell it is and that an attempt starts."""
    atomic_write_json(RunDir(runs_dir / cell.name).cell, {"sweep": sweep.name, **cell.describe()})
    _attempt(runs_dir / cell.name, f"start {state}{how}")


def _train_alone(sweep: Sweep, cell: Cell, state: str, runs_dir: Path, launch) -> dict[str, str]:
    run_dir = runs_dir / cell.name
    _begin(sweep, cell, state, runs_dir)
    try:
        config = sweep.config(cell, runs_dir)
        # A "new" cell may still hold an unreadable result.json (see RunDir.state), which training would refuse
        # to replace: it is no result, so it is overwritten (a new cell has nothing else to lose).
        launch(config, resume=state == "interrupted", overwrite=state in ("failed", "new"))
    except (StitchkitError, RuntimeError, ValueError, OSError) as err:  # RuntimeError covers out-of-memory
        _record_failure(run_dir, cell, err)
        return {cell.name: "failed"}
    _attempt(run_dir, "finished")
    return {cell.name: "finished"}


def _train_together(sweep: Sweep, members: list[tuple[Cell, str]], runs_dir: Path, launch) -> dict[str, str]:
    from ..training import train_group

    if launch is not train_in_process:
        raise StitchkitError("group_by_front trains a group in one process; it cannot be combined with torchrun "
                             "(--gpus-per-job > 1). Drop one of them")
    for cell, state in members:
        _begin(sweep, cell, state, runs_dir, f" (in a pass of {len(members)} sharing a front)")
    try:
        configs = [sweep.config(cell, runs_dir) for cell, _ in members]
        results = train_group(configs, resume=[s == "interrupted" for _, s in members],
                              overwrite=[s in ("failed", "new") for _, s in members])
    except (StitchkitError, RuntimeError, ValueError, OSError) as err:
        outcomes = {}
        for cell, before in members:
            run_dir = runs_dir / cell.name
            _attempt(run_dir, f"group failed ({type(err).__name__}: {str(err)[:200]}); training alone")
            now = RunDir(run_dir).state()
            if now == "finished" or (now == "failed" and before != "failed"):  # it ended before the group did
                outcomes[cell.name] = now
            else:
                outcomes.update(_train_alone(sweep, cell, now, runs_dir, launch))
        return outcomes
    outcomes = {}
    for (cell, _), result in zip(members, results):
        if isinstance(result, BaseException):
            _record_failure(runs_dir / cell.name, cell, result)
            outcomes[cell.name] = "failed"
        else:
            _attempt(runs_dir / cell.name, "finished")
            outcomes[cell.name] = "finished"
    return outcomes


def _record_failure(run_dir: Path, cell: Cell, err: BaseException) -> None:
    """Log the failure, and write a failed result.json unless training already wrote one."""
    _attempt(run_dir, "failed")
    run = RunDir(run_dir)
    if (run.read_result() or {}).get("status") != "failed":
        trace = "".join(traceback.format_exception(type(err), err, err.__traceback__, limit=8))
        atomic_write_json(run.result, {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": trace,
                                   **cell.describe()})


def _close_attempt(run_dir: Path, state: str) -> None:
    """A process killed after writing a cell's result but before logging how the attempt ended leaves the log at
    its start line (or a torn one): say how it ended, once."""
    attempts = RunDir(run_dir).attempts
    if not attempts.is_file():
        return
    cut_torn_tail(attempts)
    lines = attempts.read_text().splitlines()
    if lines and " start " in lines[-1]:
        _attempt(run_dir, f"{state} (found so by a later run: the process that ended it stopped before saying so)")


def _attempt(run_dir: Path, event: str) -> None:
    """Append to the cell's ``attempts.log``: who ran it when, and how it ended (one line, appended whole)."""
    append_line(RunDir(run_dir).attempts,
                f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} host={os.uname().nodename} {event}")


def run_local(sweep: Sweep, runs_dir: Path, retry_failed: bool = False, log=print,
              say_skipped: bool = True) -> dict[str, int]:
    """Run every runnable cell in this process, one after another (or a group at a time with ``group_by_front``);
    returns counts of outcomes. ``say_skipped``: first log how many cells are skipped as inapplicable, and why."""
    # A logger package the base asks for and this machine lacks, or a missing data folder, fails the sweep once,
    # here, not every cell in turn.
    check_shared_settings(sweep)
    if say_skipped and (skipped := sweep.skipped_summary()):
        log(skipped)
    counts: dict[str, int] = {}
    cells = sweep.runnable
    done = 0
    for group in sweep.groups(cells):
        names = ", ".join(c.name for c in group[:2]) + (f" and {len(group) - 2} more" if len(group) > 2 else "")
        span = f"{done + 1}" if len(group) == 1 else f"{done + 1}-{done + len(group)}"
        log(f"[{span}/{len(cells)}] {names}" + (" (one pass)" if len(group) > 1 else ""))
        done += len(group)
        for name, outcome in run_group(sweep, group, runs_dir, retry_failed).items():
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "failed":
                log(f"    {name} failed: {(RunDir(runs_dir / name).read_result() or {}).get('error', '?')[:300]}")
    return counts


def run_local_gpus(argv: list[str], gpus: int) -> int:
    """One sweep process per visible GPU, each pinned to its GPU; the cell locks share out the work."""
    processes = []
    for gpu in range(gpus):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(gpu), STITCHKIT_SWEEP_WORKER="1")
        processes.append(subprocess.Popen([sys.executable, "-m", "stitchkit", *argv], env=env))
    codes = [p.wait() for p in processes]
    # Any worker that did not succeed fails the whole: max() would hide one killed by a signal (a negative code)
    # behind another's 0. A signal is reported as a shell does, 128 + its number.
    return next((128 - code if code < 0 else code for code in codes if code != 0), 0)


class OutputClosed(Exception):
    """The reader of this process's output went away (``stitchkit sweep ... 2>&1 | head``). That says nothing about
    the cell being trained: the sweep stops as an interrupted one does, the cell keeps its last checkpoint and
    resumes on the next run, and the command exits with :data:`EXIT_OUTPUT_CLOSED`. Training on with nobody reading
    would keep a shell pipeline waiting for hours with no sign of life."""

    exit_code = EXIT_OUTPUT_CLOSED


class _GuardedStream:
    """A text stream whose writes raise :class:`OutputClosed` where the stream raises BrokenPipeError (an OSError,
    which a cell's training would otherwise record as the cell's failure)."""

    def __init__(self, stream):
        self._stream = stream

    def _closed(self) -> OutputClosed:
        # Later writes (the final flush, the stop message) go nowhere instead of raising again: the recipe of
        # Python's signal documentation for a closed pipe, as stitchkit's entry point follows it.
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):  # not a file descriptor (a test's capture): nothing to redirect
            return OutputClosed("the output stream was closed")
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        return OutputClosed("the output stream was closed")

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise self._closed() from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise self._closed() from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextmanager
def stop_when_output_closes():
    """While inside: a write to a closed stdout or stderr raises :class:`OutputClosed` (see there)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _GuardedStream(sys.stdout), _GuardedStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


class CellJob:
    """A submitit job for one cell, or for a group of cells that share a pass; on preemption or time-out submitit
    requeues it, and it resumes.

    It carries what was submitted: the sweep's resolved settings and its own cells (not the sweep file, which may
    change or vanish while the job waits in the queue), the runs folder as an absolute path, and the folder it was
    submitted from, where it runs so that relative paths in the settings (data.root, checkpoints) mean what they
    meant at submission.

    On time-out SLURM sends USR2 (``--signal=USR2@90``) and submitit's handler requeues the job at once; the steps
    since the cell's last periodic checkpoint would be lost. While a cell trains, the job turns USR2 into the stop
    that SIGTERM asks of the training loop (checkpoint at the next step boundary), and hands on to submitit's handler
    once that checkpoint is written.
    """

    def __init__(self, sweep: Sweep, runs_dir: str, retry_failed: bool, gpus_per_job: int, workdir: str):
        self.sweep, self.runs_dir, self.workdir = sweep, runs_dir, workdir
        self.retry_failed, self.gpus_per_job = retry_failed, gpus_per_job

    def __call__(self) -> dict[str, str]:
        from ..training import RunInterrupted

        if os.path.isdir(self.workdir):  # a node without that folder runs where the scheduler put it
            os.chdir(self.workdir)
        launch = train_in_process if self.gpus_per_job <= 1 else train_with_torchrun(self.gpus_per_job)
        usr2 = _Usr2()
        try:
            return run_group(self.sweep, self.sweep.cells, Path(self.runs_dir), self.retry_failed, launch)
        except RunInterrupted:
            if usr2.signal is None:  # SIGTERM or Ctrl-C: as before, the job ends and the cell resumes next time
                raise
            # Stopped on USR2 with its checkpoint written: now what submitit does on USR2 (it calls checkpoint()
            # below, requeues the job and exits).
            usr2.restore()
            usr2.submitit_handler(usr2.signal, None)
            raise
        finally:
            usr2.restore()

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


class _Usr2:
    """While installed: USR2 that arrives as a cell trains in this process (the training loop's SIGTERM handler is in
    place of the one the job started with) asks the loop to stop as SIGTERM does, and is remembered for
    :meth:`CellJob.__call__` to hand on. At any other moment (setting up, between cells) nothing unsaved is at stake,
    and submitit's handler runs at once. A torchrun cell's launcher puts its own SIGTERM handler in place while it
    runs, which hands the stop on to the training processes (:func:`train_with_torchrun`)."""

    def __init__(self):
        self.signal = None
        self.submitit_handler = None
        if threading.current_thread() is not threading.main_thread():
            self.restore = lambda: None
            return
        usr2 = getattr(signal, "SIGUSR2", None)
        previous = signal.getsignal(usr2) if usr2 is not None else None
        if not callable(previous):  # not under submitit (a test, a debug run): nothing to hand on to
            self.restore = lambda: None
            return
        self.submitit_handler, self._term_at_start = previous, signal.getsignal(signal.SIGTERM)

        def handler(signum, frame):
            term = signal.getsignal(signal.SIGTERM)
            if term is self._term_at_start or not callable(term):
                previous(signum, frame)
                return
            self.signal = signum
            term(signal.SIGTERM, frame)

        signal.signal(usr2, handler)
        self.restore = lambda: signal.signal(usr2, previous)


def check_slurm(cluster: str) -> None:
    """Refuse where SLURM is asked for and missing: submitit would otherwise fall back to running every cell at once
    as local background processes and still report them submitted."""
    # sbatch submits; submitit also looks for srun, which runs the job's command on the node.
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None] if cluster == "slurm" else []
    if missing:
        raise StitchkitError(f"no SLURM found ({' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on "
                             "PATH); load SLURM, or pass --cluster local to run the jobs on this machine")


def pending_cells(sweep: Sweep, runs_dir: Path, retry_failed: bool) -> list[Cell]:
    """The cells a submission would run: not finished, not failed unless ``retry_failed``."""
    return [c for c in sweep.runnable if _needs_run(Path(runs_dir) / c.name, retry_failed)]


def submit_slurm(sweep: Sweep, runs_dir: Path, *, retry_failed: bool, partition: str | None, time_min: int,
                 gpus_per_job: int, cpus_per_task: int, array_parallelism: int, cluster: str = "slurm") -> list:
    """Submit the pending cells as a SLURM job array (``cluster="local"`` runs them as local processes, for tests;
    ``"debug"`` in this process)."""
    try:
        import submitit
    except ImportError:
        raise StitchkitError("--executor slurm needs submitit: pip install 'stitchkit[slurm]'") from None
    check_slurm(cluster)
    runs_dir = Path(runs_dir).resolve()
    pending = pending_cells(sweep, runs_dir, retry_failed)
    if not pending:
        return []
    if sweep.group_by_front and gpus_per_job > 1:
        raise StitchkitError("group_by_front trains a group in one process; it cannot be combined with "
                             "--gpus-per-job > 1 (torchrun). Drop one of them")
    executor = submitit.AutoExecutor(folder=str(runs_dir / ".submitit" / "%j"), cluster=cluster)
    params: dict = {"timeout_min": time_min, "tasks_per_node": 1, "name": _slug(sweep.name)}
    if executor.cluster == "slurm":
        params.update(cpus_per_task=cpus_per_task, slurm_array_parallelism=array_parallelism,
                      gpus_per_node=gpus_per_job, slurm_additional_parameters={"requeue": True})
        if partition:
            params["slurm_partition"] = partition
    executor.update_parameters(**params)
    return executor.submit_array(cell_jobs(sweep, pending, runs_dir, retry_failed, gpus_per_job))


def cell_jobs(sweep: Sweep, cells: list[Cell], runs_dir: Path, retry_failed: bool, gpus_per_job: int) -> list[CellJob]:
    """One :class:`CellJob` per pass of ``cells``, each with only its own cells (a job array of the paper's grid
    pickles each job's cells, not the grid thousands of times)."""
    runs_dir, workdir = Path(runs_dir).resolve(), os.getcwd()
    return [CellJob(Sweep(sweep.name, sweep.base, group, sweep.group_by_front, sweep.max_group_size), str(runs_dir),
                    retry_failed, gpus_per_job, workdir) for group in sweep.groups(cells)]


def wait_for(jobs: list, log=print) -> dict[str, int]:
    """Wait for submitted jobs; counts of their cells' outcomes (as :func:`run_local`'s), plus ``job-failed`` for a
    job that ended without any (killed, or stopped by a signal), each named with its log."""
    counts: dict[str, int] = {}
    for job in jobs:
        try:
            outcomes = job.result()
        except Exception as err:  # submitit's FailedJobError / UncompletedJobError: the job's log says what happened
            counts["job-failed"] = counts.get("job-failed", 0) + 1
            first = str(err).strip().splitlines()
            log(f"    job {job.job_id} ended without a result ({first[0][:200] if first else type(err).__name__}); "
                f"see {job.paths.stderr}")
            continue
        for outcome in outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _needs_run(run_dir: Path, retry_failed: bool) -> bool:
    state = RunDir(run_dir).state()
    return state in ("new", "interrupted") or (state == "failed" and retry_failed)


def failed_before(sweep: Sweep, runs_dir: Path) -> int:
    """Runnable cells whose last attempt failed (they are skipped without ``--retry-failed``)."""
    return sum(RunDir(runs_dir / c.name).state() == "failed" for c in sweep.runnable)
