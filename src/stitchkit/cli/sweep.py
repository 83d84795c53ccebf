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
  stitchkit sweep configs/examples/fashion_mnist_resnet10t.yaml model.src_checkpoint=runs/fm/model.pt \
      model.dst_checkpoint=runs/fm/model.pt train.epochs=1 --out runs/try
  stitchkit sweep configs/paper/grid.yaml data.root=/data/imagenet --executor slurm --partition gpu --gpus-per-job 1"""


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
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--time-min", type=int, default=24 * 60, help="SLURM time limit per cell (minutes)")
    p.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per cell (torchrun inside the job when > 1)")
    p.add_argument("--cpus-per-task", type=int, default=10, help="SLURM CPUs per task")
    p.add_argument("--array-parallelism", type=int, default=64, help="SLURM jobs of the array running at once")
    p.add_argument("--cluster", default=None, help="submitit cluster: slurm (default), local or debug (for testing)")
    p.add_argument("--wait", action="store_true", help="wait for the submitted jobs to finish")


def run(args) -> int:
    from ..sweeps.grid import load_sweep

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
    from ..sweeps.runner import run_local, run_local_gpus, submit_slurm, write_manifest
    from ..training import RunInterrupted

    write_manifest(sweep, runs_dir)
    if args.executor == "slurm":
        jobs = submit_slurm(sweep, args.sweep, list(args.settings), runs_dir, retry_failed=args.retry_failed,
                            partition=args.partition, time_min=args.time_min, gpus_per_job=args.gpus_per_job,
                            cpus_per_task=args.cpus_per_task, array_parallelism=args.array_parallelism,
                            cluster=args.cluster, wait=args.wait)
        print(f"submitted {len(jobs)} cells" + (f" (job ids {jobs[0].job_id} ...)" if jobs else " (nothing to run)"))
        return 0
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1 and not os.environ.get("STITCHKIT_SWEEP_WORKER"):
        return run_local_gpus(args.argv, gpus)
    try:
        counts = run_local(sweep, runs_dir, retry_failed=args.retry_failed,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    except RunInterrupted as stop:
        print(f"stitchkit: sweep stopped: {stop}; rerun the same command to continue", file=sys.stderr)
        return stop.exit_code
    print(json.dumps({"runs_dir": str(runs_dir), **counts}))
    return 1 if counts.get("failed") or counts.get("skipped-failed") else 0  # failed cells remain: say so
