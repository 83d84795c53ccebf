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
import os
import subprocess
import sys
import time
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import StitchkitError
from .. import faults
from ..files import append_line, atomic_write_json, cut_torn_tail, remove_own_temps
from ..rundir import RunDir
from .grid import Cell, Sweep

MANIFEST_DIR = "sweeps"


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
    # Temporary files of a process killed while writing a manifest; an hour old, so never a live writer's.
    remove_own_temps(runs_dir / MANIFEST_DIR, older_than=time.time() - 3600)
    atomic_write_json(runs_dir / MANIFEST_DIR / f"{sweep.name}.json",
                      {"sweep": sweep.name, "base": sweep.base, "cells": [c.describe() for c in sweep.cells]})


def train_in_process(config, resume: bool, overwrite: bool) -> None:
    from ..training import train

    train(config, resume=resume, overwrite=overwrite)


def train_with_torchrun(gpus: int):
    """A launcher that trains one cell over ``gpus`` processes with torchrun (DDP), inside one SLURM job."""

    def launch(config, resume: bool, overwrite: bool) -> None:
        from ..training.config import to_yaml

        run_dir = Path(config.output.dir)
        cell_config = RunDir(run_dir).cell_config
        cell_config.write_text(to_yaml(config))
        flags = ["--resume"] if resume else (["--overwrite"] if overwrite else [])
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={gpus}", "-m", "stitchkit", "train", str(cell_config), *flags])
        if done.returncode != 0:
            raise StitchkitError(f"torchrun over {gpus} processes exited with code {done.returncode}")

    return launch


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


def run_local(sweep: Sweep, runs_dir: Path, retry_failed: bool = False, log=print) -> dict[str, int]:
    """Run every runnable cell in this process, one after another (or a group at a time with ``group_by_front``);
    returns counts of outcomes."""
    from ..training.config import load_config
    from ..training.logging import require_loggers

    # A logger package the base asks for and this machine lacks fails the sweep once, here, not every cell in turn.
    require_loggers(load_config(layers=[("the sweep's base", sweep.base)]))
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
    return max(p.wait() for p in processes)


class CellJob:
    """A submitit job for one cell, or for a group of cells that share a pass; on preemption or time-out submitit
    requeues it, and it resumes."""

    def __init__(self, sweep_file: str, overrides: list[str], cell_names: list[str], runs_dir: str,
                 retry_failed: bool, gpus_per_job: int):
        self.sweep_file, self.overrides, self.cell_names = sweep_file, overrides, cell_names
        self.runs_dir, self.retry_failed, self.gpus_per_job = runs_dir, retry_failed, gpus_per_job

    def __call__(self) -> dict[str, str]:
        from .grid import load_sweep

        sweep = load_sweep(self.sweep_file, self.overrides)
        by_name = {c.name: c for c in sweep.cells}
        launch = train_in_process if self.gpus_per_job <= 1 else train_with_torchrun(self.gpus_per_job)
        return run_group(sweep, [by_name[n] for n in self.cell_names], Path(self.runs_dir), self.retry_failed, launch)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def submit_slurm(sweep: Sweep, sweep_file: str, overrides: list[str], runs_dir: Path, *, retry_failed: bool,
                 partition: str | None, time_min: int, gpus_per_job: int, cpus_per_task: int, array_parallelism: int,
                 cluster: str | None = None, wait: bool = False) -> list:
    """Submit the pending cells as a SLURM job array (``cluster="local"`` runs them as local processes, for tests)."""
    try:
        import submitit
    except ImportError:
        raise StitchkitError("--executor slurm needs submitit: pip install 'stitchkit[slurm]'") from None
    pending = [c for c in sweep.runnable if _needs_run(runs_dir / c.name, retry_failed)]
    if not pending:
        return []
    if sweep.group_by_front and gpus_per_job > 1:
        raise StitchkitError("group_by_front trains a group in one process; it cannot be combined with "
                             "--gpus-per-job > 1 (torchrun). Drop one of them")
    executor = submitit.AutoExecutor(folder=str(runs_dir / ".submitit" / "%j"), cluster=cluster)
    params: dict = {"timeout_min": time_min, "cpus_per_task": cpus_per_task, "tasks_per_node": 1}
    if executor.cluster == "slurm":
        params.update(slurm_array_parallelism=array_parallelism, gpus_per_node=gpus_per_job,
                      slurm_additional_parameters={"requeue": True})
        if partition:
            params["slurm_partition"] = partition
    executor.update_parameters(**params)
    jobs = executor.submit_array([CellJob(str(sweep_file), overrides, [c.name for c in group], str(runs_dir),
                                          retry_failed, gpus_per_job) for group in sweep.groups(pending)])
    if wait:
        for job in jobs:
            job.result()
    return jobs


def _needs_run(run_dir: Path, retry_failed: bool) -> bool:
    state = RunDir(run_dir).state()
    return state in ("new", "interrupted") or (state == "failed" and retry_failed)
