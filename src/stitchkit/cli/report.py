"""``stitchkit report RUNS_DIR``: tables, figures and a page from a folder of runs."""
from __future__ import annotations

from .common import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "report", run,
                    "results.csv, summary.csv, plots, table1.md and index.html from a runs folder",
                    "Collect every run below RUNS_DIR (sweep cells and single runs) into results.csv and summary.csv "
                    "(mean and standard error over seeds), the paper's figures (accuracy vs gap, accuracy vs compute "
                    "with Pareto fronts), table1.md and index.html.")
    p.add_argument("runs_dir", help="a sweep's runs folder, or any folder with runs below it")
    p.add_argument("--out", default=None, help="report folder (default RUNS_DIR/report)")


def run(args) -> int:
    from ..reports import write_report

    index = write_report(args.runs_dir, args.out, log=print)
    print(f"report written: {index}")
    return 0
