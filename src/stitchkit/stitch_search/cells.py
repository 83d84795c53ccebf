"""The sweep a search trains: each candidate as the cells (one per seed) of one sweep over the search's settings.

A search prices its candidates from these cells (:func:`stitchkit.sweeps.dryrun.cell_costs`) and trains these
cells, so a candidate's price is built from exactly the settings its run is built from (heads, token adapters,
class-token policies, every ``model.*`` setting the dry run honours), never from a parallel list of defaults.
"""
from __future__ import annotations

from dataclasses import replace

from ..sweeps.grid import Cell, Sweep, _nest, expand
from .candidates import Candidate


def search_sweep(candidates: list[Candidate], settings: dict, checkpoints: dict[str, str],
                 seeds: tuple[int, ...]) -> tuple[Sweep, dict[Candidate, list[Cell]]]:
    """The sweep that trains ``candidates`` with the search's ``settings`` (fronts shared), and each candidate's
    cells. A cell's name depends only on its own settings over the base, so the same candidate has the same run
    folder however many others are priced or trained with it (a rerun finds its runs)."""
    base = _nest(settings)
    pairs = list(dict.fromkeys((c.src, c.dst) for c in candidates))
    gaps = list(dict.fromkeys(c.gap for c in candidates))
    methods = list(dict.fromkeys(c.method for c in candidates))
    grid = expand({"base": base, "pairs": [list(p) for p in pairs], "gaps": gaps, "methods": methods,
                   "seeds": list(seeds)}, name="search") if candidates else None
    by_key: dict[tuple, list[Cell]] = {}
    for cell in grid.cells if grid else []:
        by_key.setdefault((cell.src, cell.dst, cell.gap, cell.method), []).append(cell)
    cells: dict[Candidate, list[Cell]] = {}
    for candidate in candidates:
        # the checkpoints live in each cell's own settings, as in findings: one sweep, any number of models
        model = {"src_checkpoint": checkpoints.get(candidate.src), "dst_checkpoint": checkpoints.get(candidate.dst)}
        cells[candidate] = [replace(cell, settings={**cell.settings, "model": {**cell.settings["model"], **model}})
                            for cell in by_key[(candidate.src, candidate.dst, candidate.gap, candidate.method)]]
    return Sweep("search", base, [c for listed in cells.values() for c in listed], group_by_front=True), cells
