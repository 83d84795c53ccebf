"""The model folders of a search's frontier (``OUT/frontier/``): one per frontier stitch, exported from its first
seed's run, and only those. A rerun that changes the frontier (a tighter budget, another proxy or ``--train-top``)
removes the folders it exported for stitches no longer on it; anything else in ``frontier/`` is left alone.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..files import read_json
from ..sweeps.grid import cell_folder
from .candidates import Candidate


def export_frontier(out: Path, front: list[dict], log) -> None:
    """Export each stitch of ``front`` (records with ``src``, ``dst``, ``gap``, ``method`` and their ``runs``) into
    ``out/frontier/<candidate key>``, replacing an earlier export, and remove the earlier exports of stitches not
    in ``front``."""
    from ..export import export_run

    folder = out / "frontier"
    current = {Candidate(t["src"], t["dst"], t["gap"], t["method"]).key: t for t in front}
    stale = [p for p in sorted(folder.iterdir()) if p.name not in current and exported_by_search(out, p)] \
        if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path)
    if stale:
        log(f"removed {len(stale)} frontier model folders of stitches no longer on the frontier: "
            f"{', '.join(p.name for p in stale)}")
    for key, t in current.items():
        target = folder / key
        if target.exists():
            shutil.rmtree(target)
        export_run(out / "runs" / t["runs"][0], target, formats=("safetensors",))
    if current:
        log(f"frontier model folders: {folder}")


def exported_by_search(out: Path, path: Path) -> bool:
    """Whether ``path`` is a model folder this search exported: a real folder named as a candidate
    (``src--dst--XtoY--method``), with the export's ``export.json``, whose model records as its run a stitch run of
    that candidate in ``out/runs``. A user's files in ``frontier/`` match none of this, and are never removed."""
    parts = path.name.split("--")
    if path.is_symlink() or not path.is_dir() or len(parts) != 4 or not re.fullmatch(r"\d+to\d+", parts[2]):
        return False
    run = _recorded_run(path)
    if not (path / "export.json").is_file() or run is None:
        return False
    src, dst, gap, method = parts
    # the run folder as the search's sweep names a stitch's cell
    return (out / "runs" / cell_folder("stitch", src, dst, gap.replace("to", ":"), method) / run).is_dir()


def _recorded_run(folder: Path) -> str | None:
    """The run folder's name that a model folder's ``config.json`` records it was made from, or None."""
    config = read_json(folder / "model" / "config.json")
    try:
        run = config["stitchkit"]["provenance"]["run"]
    except (TypeError, KeyError):
        return None
    return run if isinstance(run, str) and run not in ("", ".", "..") and "/" not in run else None
