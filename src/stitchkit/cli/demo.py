"""``stitchkit demo`` (the whole method on Fashion-MNIST, offline) and ``stitchkit findings`` (the paper's five
findings at small scale, with seeds)."""
from __future__ import annotations

import sys

from .common import add_command


def add_demo(subparsers) -> None:
    p = add_command(subparsers, "demo", _demo, "the whole method on Fashion-MNIST on this CPU: sources, stitches, report",
                    "Train small source models from scratch on Fashion-MNIST, stitch them across small and large "
                    "gaps with several adapters, and write a report: offline, on a laptop CPU.")
    p.add_argument("--out", default="runs/demo", help="output folder (source models there are reused)")
    p.add_argument("--fast", action="store_true", help="less data and training: about two minutes instead of four to six on a laptop CPU")
    _add_workers(p)


def _add_workers(p) -> None:
    p.add_argument("--workers", type=int, default=1,
                   help="processes training side by side, one torch thread each (e.g. the number of CPU cores)")


def _stopped(command: str, stop) -> int:
    """A signal stopped a run after its checkpoint: one line, and the exit code that says which signal."""
    print(f"stitchkit: {command} stopped: {stop}; rerun the same command to continue", file=sys.stderr)
    return stop.exit_code


def _demo(args) -> int:
    from ..demo import run_demo
    from ..training import RunInterrupted

    try:
        run_demo(args.out, fast=args.fast, threads=args.threads, workers=args.workers)
    except RunInterrupted as stop:
        return _stopped("demo", stop)
    return 0


def add_findings(subparsers) -> None:
    p = add_command(subparsers, "findings", _findings,
                    "the paper's five findings at small scale, with seeds, judged and written up")
    p.add_argument("file", nargs="?", default="configs/findings/fashion_mnist.yaml", help="findings file")
    p.add_argument("--out", default="runs/findings", help="output folder (resumable; finished runs are reused)")
    p.add_argument("--doc", default=None, help="write the findings page here (e.g. docs/findings.md)")
    p.add_argument("--smoke", action="store_true", help="a few hundred images, one gap, two seeds: checks the path")
    _add_workers(p)


def _findings(args) -> int:
    from ..findings import run_findings
    from ..training import RunInterrupted

    try:
        run_findings(args.file, args.out, args.doc, smoke=args.smoke, threads=args.threads, workers=args.workers)
    except RunInterrupted as stop:
        return _stopped("findings", stop)
    return 0
