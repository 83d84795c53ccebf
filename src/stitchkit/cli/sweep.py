"""``stitchkit sweep FILE``: a grid of runs, resumable, on this machine (one process per GPU) or on SLURM."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .common import add_command

_DESCRIPTION = """\
Run every cell of a sweep file (pairs x gaps x methods x seeds, baselines), skipping finished cells; rerun the same
command after an interruption to continue. Examples:

  stitchkit sweep configs/paper/grid.yaml data.root=/data/imagenet --dry-run
  stitchkit sweep configs/examples/fashion_mnist_resnet10t.yaml model.src_checkpoint=runs/fm/model.pt \\
      model.dst_checkpoint=runs/fm/model.pt train.epochs=1 --out runs/try
  stitchkit sweep configs/paper/grid.yaml data.root=/data/imagenet --executor slurm --partition gpu --gpus-per-job 1"""


# Options of the SLURM executor (the local one runs one cell at a time per visible GPU, and has none of them), and
# those of them that reach SLURM only (submitit's local and debug clusters drop them).
_SLURM_OPTIONS = {"gpus_per_job": "--gpus-per-job", "partition": "--partition", "time_min": "--time-min",
                  "cpus_per_task": "--cpus-per-task", "array_parallelism": "--array-parallelism",
                  "cluster": "--cluster", "wait": "--wait"}
_SLURM_CLUSTER_ONLY = ("partition", "cpus_per_task", "array_parallelism")
_COUNTS = ("gpus_per_job", "time_min", "cpus_per_task", "array_parallelism")  # each at least 1


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "sweep", run, "run a grid of stitches, resumable, locally or on SLURM", _DESCRIPTION)
    p.add_argument("sweep", help="sweep YAML file (see configs/paper/)")
    p.add_argument("settings", nargs="*", metavar="key=value", help="overrides of the sweep's base settings")
    p.add_argument("--out", default=None, help="runs folder (default runs/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="print the cells with GMACs and parameters, run nothing")
    p.add_argument("--no-costs", action="store_true", help="with --dry-run: skip the GMACs and parameter columns")
    p.add_argument("--print-config", action="store_true",
                   help="print the sweep's resolved base settings as YAML and stop")
    p.add_argument("--executor", choices=["local", "slurm"], default="local", help="where the cells run")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    # The SLURM options default to None, so that one given with the local executor is refused, not ignored.
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--time-min", type=int, default=None, help="SLURM time limit per cell in minutes (default 1440)")
    p.add_argument("--gpus-per-job", type=int, default=None,
                   help="with --executor slurm: GPUs per cell (default 1; torchrun inside the job when > 1)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="SLURM CPUs per task (default 10)")
    p.add_argument("--array-parallelism", type=int, default=None,
                   help="SLURM jobs of the array running at once (default 64)")
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], default=None,
                   help="with --executor slurm: submit to slurm (default), or run the jobs on this machine through "
                        "submitit's local or debug executor (for testing)")
    p.add_argument("--wait", action="store_true", help="with --executor slurm: wait for the submitted jobs to finish")


def _check_options(args) -> None:
    """Refuse options that the chosen executor would silently ignore, and counts below 1."""
    from ..errors import StitchkitError

    if args.no_costs and not args.dry_run:
        raise StitchkitError("--no-costs goes with --dry-run (it drops the dry run's cost columns); add --dry-run or "
                             "leave --no-costs out")
    given = [flag for name, flag in _SLURM_OPTIONS.items() if getattr(args, name) not in (None, False)]
    if args.executor == "local" and given:
        raise StitchkitError(f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with --executor slurm; the "
                             "local executor runs one cell at a time on each visible GPU. Add --executor slurm, or "
                             f"leave {'it' if len(given) == 1 else 'them'} out")
    ignored = [_SLURM_OPTIONS[name] for name in _SLURM_CLUSTER_ONLY if getattr(args, name) is not None]
    if args.cluster in ("local", "debug") and ignored:
        raise StitchkitError(f"{', '.join(ignored)} only reach{'es' if len(ignored) == 1 else ''} SLURM, and "
                             f"--cluster {args.cluster} runs the jobs on this machine; leave "
                             f"{'it' if len(ignored) == 1 else 'them'} out")
    for name in _COUNTS:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise StitchkitError(f"{_SLURM_OPTIONS[name]} must be at least 1, got {value}")


def run(args) -> int:
    from ..sweeps.grid import load_sweep

    _check_options(args)
    sweep = load_sweep(args.sweep, args.settings)
    if args.print_config:
        from ..training.config import load_config, to_yaml

        print(to_yaml(load_config(layers=[("the sweep's base", sweep.base)])), end="")
        return 0
    runs_dir = Path(args.out or Path("runs") / sweep.name)
    if args.dry_run:
        from ..sweeps.dryrun import dry_run_table

        print(dry_run_table(sweep, with_costs=not args.no_costs))
        return 0
    from ..sweeps.runner import OutputClosed, check_slurm, stop_when_output_closes

    if args.executor == "slurm":
        check_slurm(args.cluster or "slurm")  # before anything is written
    try:
        with stop_when_output_closes():
            return _run(args, sweep, runs_dir)
    except OutputClosed as stop:
        try:  # seen where only stdout closed; the closed stream itself points at devnull by now
            _say("stitchkit: sweep stopped: its output was closed; rerun the same command to continue (finished "
                 "cells are skipped, interrupted ones resume from their last checkpoint)")
        except OSError:
            pass
        return stop.exit_code


def _run(args, sweep, runs_dir: Path) -> int:
    from ..sweeps.runner import (adopt_earlier_runs, check_shared_settings, failed_before, pending_cells, run_local,
                                 run_local_gpus, runs_of_other_versions, submit_slurm, wait_for, write_manifest)
    from ..training import RunInterrupted

    if args.executor == "local":
        check_shared_settings(sweep)  # before the manifest: a sweep refused here leaves nothing behind
    worker = bool(os.environ.get("STITCHKIT_SWEEP_WORKER"))
    # Runs made under a cell's earlier name keep it (each GPU's worker decides the same, and says nothing).
    sweep = adopt_earlier_runs(sweep, runs_dir, log=None if worker else _say)
    if not worker:  # once, not again in each GPU's worker
        others = runs_of_other_versions(sweep, runs_dir)
        if others:
            one = others == 1
            _say(f"stitchkit: warning: {others} finished run{'' if one else 's'} in this folder "
                 f"belong{'s' if one else ''} to another version of this sweep (other settings); "
                 f"{'it stays' if one else 'they stay'} on disk but the report summarises this version")
    write_manifest(sweep, runs_dir)
    skipped = sweep.skipped_summary()
    if skipped and not worker:  # once, not again in each GPU's worker (nor by run_local)
        _say(f"stitchkit: {skipped}")
    if args.executor == "slurm":
        cells = len(pending_cells(sweep, runs_dir, args.retry_failed))
        jobs = submit_slurm(sweep, runs_dir, retry_failed=args.retry_failed, partition=args.partition,
                            time_min=args.time_min or 24 * 60, gpus_per_job=args.gpus_per_job or 1,
                            cpus_per_task=args.cpus_per_task or 10, array_parallelism=args.array_parallelism or 64,
                            cluster=args.cluster or "slurm")
        # A job trains one cell, or with group_by_front the cells that share a front.
        what = f"{cells} cells" if len(jobs) == cells else f"{cells} cells in {len(jobs)} jobs"
        _out(f"submitted {what}" + (f" (job ids {jobs[0].job_id} ...)" if jobs else " (nothing to run)"))
        skipped = 0 if args.retry_failed else failed_before(sweep, runs_dir)
        _hint_retry(skipped, "submitted")
        if not args.wait:
            return 0
        counts = wait_for(jobs, log=_say)
        if skipped:
            counts["skipped-failed"] = skipped
        _out(json.dumps({"runs_dir": str(runs_dir), **counts}))
        return 1 if counts.get("failed") or counts.get("job-failed") or skipped else 0
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1 and not worker:
        return run_local_gpus(args.argv, gpus)
    try:
        counts = run_local(sweep, runs_dir, retry_failed=args.retry_failed, log=_say, say_skipped=False)
    except RunInterrupted as stop:
        _say(f"stitchkit: sweep stopped: {stop}; rerun the same command to continue")
        return stop.exit_code
    _hint_retry(counts.get("skipped-failed", 0), "rerun")
    _out(json.dumps({"runs_dir": str(runs_dir), **counts}))
    return 1 if counts.get("failed") or counts.get("skipped-failed") else 0  # failed cells remain: say so


def _hint_retry(skipped: int, done: str) -> None:
    """Cells skipped because an earlier attempt failed (a setting since fixed, say) are not silent."""
    if skipped:
        _say(f"stitchkit: {skipped} cell{'s' if skipped != 1 else ''} failed in an earlier attempt and "
             f"{'was' if skipped == 1 else 'were'} not {done}; add --retry-failed to run "
             f"{'it' if skipped == 1 else 'them'} again")


def _out(line: str) -> None:
    """The command's result on stdout. Once the work is done, a reader gone by then loses only this line: the exit
    code still says how the cells went (OutputClosed has pointed the stream at devnull)."""
    from ..sweeps.runner import OutputClosed

    try:
        print(line, flush=True)
    except OutputClosed:
        pass


def _say(line: str) -> None:
    # sys.stderr looked up at each call: inside stop_when_output_closes it is the guarded stream.
    print(line, file=sys.stderr, flush=True)
