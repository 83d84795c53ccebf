"""Reports: the paper's tables and figures from a runs folder, in one command (``stitchkit report``)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import StitchkitError
from ..files import atomic_write_text
from ..temps import remove_own_temps
from .collect import (RESULT_COLUMNS, SUMMARY_COLUMNS, collect, distinct, left_out, report_notes, standard_error,
                      summarize)
from ..zoo.metadata import published_top1
from .page import table1_markdown, table1_missing, table1_rows, write_html
from .plots import accuracy_vs_compute, accuracy_vs_gap, pairs_overview, pareto_front

__all__ = ["collect", "pareto_front", "standard_error", "summarize", "write_report"]


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


# What marks a run as trained and evaluated on ImageNet (as far as result.json can tell): an image folder of 1000
# classes at 224 px. A model card's published top-1 (and its MACs at 224 px) describes such runs only.
IMAGENET_LIKE = {"dataset": "imagefolder", "classes": 1000, "input_size": 224}


def imagenet_like(row: dict) -> bool:
    return all(row.get(key) == value for key, value in IMAGENET_LIKE.items())


def _add_model_cards(rows: list[dict], originals: dict) -> None:
    """Fill in published ImageNet accuracies for the models of ImageNet-like runs (:data:`IMAGENET_LIKE`) not
    measured here. Any other data (another image folder, another size) gets none: an ImageNet top-1 says nothing of
    a model's accuracy there, and table1_missing says how to measure it."""
    imagenet = [r for r in rows if imagenet_like(r)]
    if not imagenet:
        return
    from ..sweeps.dryrun import meta_model
    from ..compute import count_macs

    for name in sorted({r["src"] for r in imagenet} | {r["dst"] for r in imagenet}):
        if name and name not in originals and (card := published_top1(name)):
            originals[name] = {"top1": card[0], "gmacs": count_macs(meta_model(name, 224), 224) / 1e9,
                               "source": card[1]}


def _remove_replaced_figures(out: Path, summary: list[dict], written: list[Path]) -> None:
    """A pair's figures from an earlier report that this one replaced under other names (one figure became one per
    sweep, or the other way round): left there, they would show a pair as it no longer is beside the new ones."""
    from .plots import FIGURE_KINDS, _slug

    keep = {path.name for path in written}
    for pair in {r["pair"] for r in summary}:
        for kind in FIGURE_KINDS:
            for path in [*out.glob(f"{kind}_{_slug(pair)}.*"), *out.glob(f"{kind}_{_slug(pair)}__*.*")]:
                if path.suffix in (".png", ".pdf") and path.name not in keep:
                    path.unlink()


def write_report(runs_dir: str | Path, out: str | Path | None = None, log=None) -> Path:
    """Write results.csv, summary.csv, the figures (PNG and PDF), table1.md and index.html; returns index.html.
    ``log``: called with each note on what the report left out or could not read (the page says them too).

    Each file is written atomically and index.html last: a report killed half-way leaves whole files, and a rerun
    writes them all again."""
    runs_dir = Path(runs_dir)
    if runs_dir.exists() and not runs_dir.is_dir():
        # Most often the sweep file itself (`stitchkit report tiny.yaml`): name the folder its runs went to.
        hint = f", runs/{runs_dir.stem} by default for this sweep file" if runs_dir.suffix in (".yaml", ".yml") else ""
        raise StitchkitError(f"{str(runs_dir)!r} is a file, not a runs folder; pass the folder a sweep wrote its runs "
                             f"into: the sweep's --out{hint}")
    if not runs_dir.is_dir():
        raise StitchkitError(f"runs folder {str(runs_dir)!r} does not exist; pass the --out folder of a sweep")
    rows, originals = collect(runs_dir)
    if not rows:
        unreadable = report_notes(runs_dir, rows)  # result.json files that are there but cannot be read
        if unreadable:
            more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
            raise StitchkitError(f"no readable runs under {str(runs_dir)!r}: {unreadable[0]}{more}")
        raise StitchkitError(f"no runs found under {str(runs_dir)!r} (no sweeps/*.json manifest, no result.json)")
    _add_model_cards(rows, originals)
    summary = summarize(rows)
    out = Path(out) if out else runs_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out)  # temporary files of a report killed while writing
    _write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    _write_csv(out / "summary.csv", summary, SUMMARY_COLUMNS)
    shown = distinct(summary)  # a sweep's row whose runs another sweep's row counts too is in summary.csv only
    gap = accuracy_vs_gap(shown, originals, out)
    compute = accuracy_vs_compute(shown, originals, out)
    figures = {"gap": gap, "compute": pairs_overview(shown, originals, out) + compute}  # the overview leads
    _remove_replaced_figures(out, summary, gap + compute)
    table1 = table1_rows(shown, originals)
    atomic_write_text(out / "table1.md", table1_markdown(table1, table1_missing(shown, originals, runs_dir)))
    index = out / "index.html"
    notes = report_notes(runs_dir, rows)
    write_html(index, runs_dir, rows, summary, originals, table1, figures,
               {"results": RESULT_COLUMNS, "summary": SUMMARY_COLUMNS}, notes, left_out(rows))
    for note in notes if log else ():
        log(f"note: {note}")
    return index
