"""Results out of a runs folder: one row per run, one summary row per cell, and the original models' accuracies.

Rows come from the sweep manifests (so pending, skipped and failed cells appear too) and from every
``result.json`` below the folder (so single ``stitchkit train`` and ``eval-model`` runs count as well).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Iterable

from ..chain import parse_gap
from ..files import read_json
from ..rundir import RunDir
from ..sweeps.runner import MANIFEST_DIR
from .words import plural

RESULT_COLUMNS = ["pair", "src", "dst", "gap", "src_stage", "dst_stage", "method", "kind", "seed", "lr", "top1", "top5",
                  "top1_at_start", "holdout_top1", "gmacs", "params", "trainable_params", "epochs", "wall_time_s", "status", "error",
                  "dataset", "input_size", "classes", "train_images", "adapter_norm", "sweep", "also_in", "settings_id",
                  "run_dir"]
SUMMARY_COLUMNS = ["pair", "src", "dst", "gap", "src_stage", "dst_stage", "method", "kind", "lr", "n", "top1_mean",
                   "top1_se", "top1_at_start_mean", "top5_mean", "holdout_top1_mean", "gmacs", "params", "trainable_params", "selected_on",
                   "n_failed", "training", "sweep", "subset_of"]


def _stages(gap: str | None) -> tuple[int | None, int | None]:
    return parse_gap(gap) if gap else (None, None)


def _row(cell: dict, result: dict | None, run_dir: Path, status: str, sweep: str | None = None) -> dict[str, Any]:
    result = result or {}
    src_stage, dst_stage = _stages(cell.get("gap"))
    row = {
        "pair": f"{cell['src']} -> {cell['dst']}", "src": cell["src"], "dst": cell["dst"], "gap": cell.get("gap"),
        "src_stage": src_stage, "dst_stage": dst_stage, "method": cell.get("method"), "kind": cell.get("kind"),
        "seed": cell.get("seed"), "lr": cell.get("lr"),
        "status": status, "error": result.get("error") or cell.get("skip_reason"), "run_dir": str(run_dir),
        # every sweep whose manifest lists the run (two sweeps share a cell's folder when they have that cell in
        # common): "sweep" is the first, "also_in" names the others
        "sweep": sweep, "sweeps": [sweep] if sweep else [], "also_in": None,
    }
    for key in ("top1", "top5", "top1_at_start", "holdout_top1", "gmacs", "params", "trainable_params", "epochs", "wall_time_s",
                "dataset", "input_size", "classes", "train_images", "adapter_norm", "settings_id"):
        row[key] = result.get(key)
    if row["settings_id"] and _written_before_0_3(result):
        row["settings_id"] = _current_settings_id(run_dir) or row["settings_id"]
    return row


def _written_before_0_3(result: dict) -> bool:
    version = str((result.get("versions") or {}).get("stitchkit", "0.3"))
    return version.startswith(("0.1.", "0.2."))


def _current_settings_id(run_dir: Path) -> str | None:
    """stitchkit 0.2 wrote settings_id with another digest text: recompute it from the run's saved config, so its
    seeds average with runs written since (a sweep resumed across the upgrade)."""
    from ..training.config import from_yaml_file
    from ..training.identity import settings_id

    try:
        return settings_id(from_yaml_file(RunDir(run_dir).config))
    except Exception:  # no readable config: keep the recorded id (the run still counts, in a group of its own)
        return None


def _settings_without_lr(run_dir: Path, recorded: str | None) -> str | None:
    """The digest of a run's settings without its seed and its learning rate, from its saved config: runs trained
    outside a sweep at several learning rates, alike otherwise, share it (their rates are compared as a sweep's
    are). None when config.yaml cannot be read or is not the config the run recorded (its settings_id differs)."""
    from ..training.config import flatten, from_yaml_file
    from ..training.identity import settings_digest, settings_id
    from ..training.settings import keys_of_kind

    try:
        config = from_yaml_file(RunDir(run_dir).config)
    except Exception:
        return None
    if recorded and settings_id(config) != recorded:
        return None
    return settings_digest(flatten(config), keys_of_kind("run") | {"train.seed", "optim.lr"})


def _cell_from_result(result: dict) -> dict:
    """A row's identity for a run trained outside a sweep: a baseline's method is its mode's name, a stitch's the
    stitching method with its adapter and resizing (or ``<resize>_<adapter>`` when no method is registered)."""
    from ..sweeps.methods import list_methods
    from ..training.modes import MODES

    name = result.get("mode")
    mode = MODES.get(name) if name in MODES else None
    method = name
    if mode is not None and mode.joins_models:
        match = [m.name for m in list_methods()
                 if (m.adapter, m.resize, m.fusion) == (result.get("adapter"), result.get("resize"), result.get("fusion"))]
        method = match[0] if match else f"{result.get('resize')}_{result.get('adapter')}"
    return {"src": result.get("src"), "dst": result.get("dst"), "gap": result.get("gap"), "method": method,
            "kind": name, "seed": result.get("seed"), "lr": result.get("lr") if mode and mode.sweeps_lr else None}


def collect(runs_dir: str | Path) -> tuple[list[dict], dict[str, dict]]:
    """``(rows, measured_originals)``; originals map a model name to ``{"top1", "gmacs", "source"}``."""
    runs_dir = Path(runs_dir)
    rows, listed = [], {}
    for manifest in sorted((runs_dir / MANIFEST_DIR).glob("*.json")):
        data = read_json(manifest) or {}
        sweep = data.get("sweep", manifest.stem)
        for cell in data.get("cells", []):
            run_dir = runs_dir / cell["name"]
            if run_dir in listed:  # a cell this sweep has in common with another: one run, counted by both sweeps
                if sweep not in listed[run_dir]["sweeps"]:
                    listed[run_dir]["sweeps"].append(sweep)
                continue
            if cell.get("skip_reason"):
                rows.append(listed.setdefault(run_dir, _row(cell, None, run_dir, "skipped", sweep)))
                continue
            run = RunDir(run_dir)
            state = run.state()
            result = run.read_result() if state in ("finished", "failed") else None
            status = {"new": "pending", "interrupted": "interrupted"}.get(state, state)
            row = listed[run_dir] = _row(cell, result, run_dir, status, sweep)
            problem = run.result_problem()
            if problem:  # not the run's failure: say so, and what the sweep will do about it (RunDir.state)
                row["error"] = problem + ("; rerunning the sweep resumes the run from its last checkpoint, which "
                                          "evaluates it again and rewrites result.json" if state == "interrupted" else
                                          " and there is no checkpoint to resume from; rerunning the sweep trains "
                                          "the run again")
            rows.append(row)
    for row in listed.values():
        row["also_in"] = ", ".join(row["sweeps"][1:]) or None
    seen = set(listed)
    originals: dict[str, dict] = {}
    for path in sorted(runs_dir.rglob("result.json")):
        run_dir = path.parent
        result = read_json(path)
        if result is None:
            continue
        if result.get("mode") == "eval" and result.get("top1") is not None:
            originals[result["src"]] = {"top1": result["top1"], "gmacs": result.get("gmacs"), "dataset": result.get("dataset"),
                                        "source": f"measured (eval-model) on {result.get('dataset')}"}
            continue
        if run_dir in seen or result.get("mode") is None:
            continue
        seen.add(run_dir)
        row = _row(_cell_from_result(result), result, run_dir, result.get("status", "failed"))
        if row["lr"] is not None:  # a baseline trained at several learning rates: its rates are compared
            row["settings_without_lr"] = _settings_without_lr(run_dir, row["settings_id"])
        rows.append(row)
    # As for summaries: in a folder with sweep manifests, only the sweeps' own runs count (not leftovers).
    in_sweeps = [r for r in rows if r["sweep"]] if any(r["sweep"] for r in rows) else rows
    originals.update(scratch_originals(in_sweeps, exclude=set(originals)))
    return rows, originals


def left_out(rows: list[dict]) -> list[dict]:
    """The runs :func:`summarize` leaves out: in a folder with sweep manifests, those in no sweep's current manifest
    (left over from a sweep rerun with other settings or a smaller grid). results.csv still lists them."""
    return [r for r in rows if not r["sweep"]] if any(r["sweep"] for r in rows) else []


def unreadable_results(runs_dir: str | Path, rows: list[dict]) -> list[tuple[Path, str]]:
    """``(run folder, problem)`` of every result.json under ``runs_dir`` that cannot be read and belongs to no row
    (a run outside the sweeps, which would otherwise vanish from the report without a word)."""
    listed = {str(r["run_dir"]) for r in rows}
    found = []
    for path in sorted(Path(runs_dir).rglob("result.json")):
        if str(path.parent) not in listed and (problem := RunDir(path.parent).result_problem()):
            found.append((path.parent, problem))
    return found


def report_notes(runs_dir: str | Path, rows: list[dict]) -> list[str]:
    """What the report leaves out or cannot read, one sentence each (the page and the command both say them)."""
    notes = []
    if left := left_out(rows):
        counts = {}
        for row in left:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        # finished runs first: they are what the summary would have counted
        runs = ", ".join(plural(n, f"{status} run") for status, n in sorted(counts.items(),
                                                                          key=lambda c: (c[0] != "finished", c[0])))
        notes.append(f"{runs} below the folder {'is' if len(left) == 1 else 'are'} in no sweep's current manifest "
                     "(left over from a sweep rerun with other settings or a smaller grid): left out of summary.csv, "
                     "the figures, Table 1 and the pairs' sentences; results.csv lists them, with an empty sweep "
                     "column")
    for run_dir, problem in unreadable_results(runs_dir, rows):
        fix = (f"resume it to evaluate it again: stitchkit train {run_dir}/config.yaml output.dir={run_dir} --resume"
               if RunDir(run_dir).last_checkpoint.is_file() else
               "it has no checkpoint to resume from: run the command that wrote it again, with --overwrite")
        notes.append(f"{run_dir}: {problem}; left out of the report; {fix}")
    corrupt = [r for r in rows if (r["error"] or "").startswith("result.json unreadable")]
    if corrupt:
        notes.append(f"{plural(len(corrupt), 'sweep run')} with an unreadable result.json, counted as "
                     f"{' or '.join(sorted({r['status'] for r in corrupt}))} (see 'Failed, interrupted and pending "
                     f"runs'): {', '.join(r['run_dir'] for r in corrupt[:3])}{' ...' if len(corrupt) > 3 else ''}")
    return notes


def training_label(row: dict) -> str:
    """What a run was trained on, for labels: ``fashion_mnist 32 px, 2 epochs x 16000 images``."""
    parts = [row.get("dataset") or "unknown data"]
    if row.get("input_size"):
        parts[0] += f" {row['input_size']} px"
    if row.get("epochs") is not None:
        images = f" x {row['train_images']} images" if row.get("train_images") else ""
        parts.append(f"{plural(row['epochs'], 'epoch')}{images}")
    return ", ".join(parts)


def scratch_originals(rows: list[dict], exclude: set[str] = frozenset()) -> dict[str, dict]:
    """A model trained from scratch in the folder is an original model of its own. Seeds are averaged only within
    one settings digest (never a 2-epoch run with a 3-epoch one); where a model was trained under several settings,
    the one with the most seeds (then the longest training) is its original, and the label says how many other
    settings there were."""
    by_setting: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["kind"] == "scratch" and row["status"] == "finished" and row["top1"] is not None:
            by_setting.setdefault((row["src"], row.get("settings_id") or row["run_dir"]), []).append(row)
    originals: dict[str, dict] = {}
    for name in sorted({src for src, _ in by_setting} - set(exclude)):
        settings = [runs for (src, _), runs in by_setting.items() if src == name]
        runs = max(settings, key=lambda rs: (len(rs), (rs[0].get("epochs") or 0) * (rs[0].get("train_images") or 0),
                                             rs[0].get("settings_id") or ""))
        top1 = [r["top1"] for r in runs]
        label = f"trained from scratch: {training_label(runs[0])}, {plural(len(top1), 'seed')}"
        if len(settings) > 1:
            label += f"; {plural(len(settings) - 1, 'other setting')} in the folder not shown"
        originals[name] = {"top1": statistics.fmean(top1), "top1_se": standard_error(top1), "n": len(top1),
                           "gmacs": runs[0]["gmacs"], "source": label, "dataset": runs[0]["dataset"],
                           "sweep": runs[0].get("sweep")}  # whose reference it is, where a pair has several sweeps
    return originals


def standard_error(values: list[float]) -> float | None:
    """Sample standard deviation / sqrt(n); None for fewer than two values."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) >= 2 else None


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


# Where a loose run's config cannot be read, rates are compared among runs that recorded the same training
# (these result.json fields) and the selection says so.
RECORDED_TRAINING = ("dataset", "input_size", "classes", "train_images", "epochs")


def _scopes(row: dict, with_manifest: bool) -> list[tuple[Any, Any]]:
    """``(scope, selection scope)`` pairs of a run: it is averaged with the runs of the same cell and learning rate
    in its scope, and a cell's learning rates are compared within a selection scope. In a folder with manifests
    both are a sweep, one pair per sweep that lists the run. Without, the scope is the settings digest (which holds
    the learning rate) and the selection scope the digest without the learning rate (:func:`_settings_without_lr`),
    or, where the run's config could not be read, the training its result.json recorded."""
    if with_manifest:
        return [(sweep, sweep) for sweep in row.get("sweeps") or [row["sweep"]]]
    scope = row.get("settings_id")
    if row["lr"] is None:
        return [(scope, scope)]
    if row.get("settings_without_lr"):
        return [(scope, row["settings_without_lr"])]
    return [(scope, ("recorded",) + tuple(row.get(k) for k in RECORDED_TRAINING))]


def summarize(rows: list[dict]) -> list[dict]:
    """One row per cell (pair, gap, method), averaged over seeds; for methods run at several learning rates (the
    fine-tuning baseline), the best learning rate, selected on the hold-out split when every run has one.

    Seeds are averaged only within one sweep (runs of one sweep share every other setting); a run that several
    sweeps list (a cell they have in common, trained once) counts in each of their rows, and a row whose runs are
    all in another sweep's row of the same cell names that sweep in ``subset_of`` (:func:`distinct` leaves it out
    of what combines sweeps: figures, Table 1, the pairs' sentences). In a folder with sweep manifests, runs
    outside them (left over from other settings) are listed in results.csv but not summarized; in a folder without
    manifests, runs are grouped by their settings digest, and learning rates compared among runs alike otherwise.
    """
    with_manifest = any(row["sweep"] for row in rows)
    outside = {id(row) for row in left_out(rows)}
    groups: dict[tuple, list[dict]] = {}
    selection_of: dict[tuple, Any] = {}
    for row in rows:
        if row["status"] == "skipped" or id(row) in outside:
            continue
        for scope, selection in _scopes(row, with_manifest):
            key = (row["kind"], row["src"], row["dst"], row["gap"], row["method"], row["lr"], scope)
            groups.setdefault(key, []).append(row)
            selection_of[key] = selection
    per_lr = []
    for key, members in groups.items():
        kind, src, dst, gap, method, lr, scope = key
        done = [r for r in members if r["status"] == "finished" and r["top1"] is not None]
        top1 = [r["top1"] for r in done]
        src_stage, dst_stage = _stages(gap)
        per_lr.append({
            "pair": f"{src} -> {dst}", "src": src, "dst": dst, "gap": gap, "src_stage": src_stage,
            "dst_stage": dst_stage, "method": method, "kind": kind, "lr": lr, "n": len(done),
            "top1_mean": _mean(top1), "top1_se": standard_error(top1), "top5_mean": _mean(r["top5"] for r in done),
            "top1_at_start_mean": _mean(r["top1_at_start"] for r in done),
            "holdout_top1_mean": _mean(r["holdout_top1"] for r in done) if done and all(
                r["holdout_top1"] is not None for r in done) else None,
            "gmacs": _mean(r["gmacs"] for r in done), "params": _mean(r["params"] for r in done),
            "trainable_params": _mean(r["trainable_params"] for r in done),
            "n_failed": sum(r["status"] == "failed" for r in members), "selected_on": None,
            "sweep": scope if with_manifest else None, "subset_of": None, "_scope": scope,
            "_selection": selection_of[key], "_runs": frozenset(str(r["run_dir"]) for r in members),
            "training": training_label(done[0]) if done else None,
        })
    best: dict[tuple, list[dict]] = {}
    for row in per_lr:
        best.setdefault((row["kind"], row["src"], row["dst"], row["gap"], row["method"], row.pop("_selection")),
                        []).append(row)
    summary = []
    for (*_, selection), candidates in best.items():
        if len(candidates) == 1:
            summary.append(candidates[0])
            continue
        if len({c["lr"] for c in candidates}) < len(candidates):
            # Loose runs told apart only by what result.json recorded, at one rate under several settings: no
            # choice of a rate can be made among them; each stands as it is.
            summary += candidates
            continue
        scored = [c for c in candidates if c["top1_mean"] is not None]
        on_holdout = bool(scored) and all(c["holdout_top1_mean"] is not None for c in scored)
        if not scored:  # no learning rate has a finished run: the row stands for them all
            summary.append({**candidates[0], "lr": None, "n_failed": sum(c["n_failed"] for c in candidates),
                            "_runs": frozenset().union(*(c["_runs"] for c in candidates))})
            continue
        chosen = max(scored, key=lambda c: c["holdout_top1_mean"] if on_holdout else c["top1_mean"])
        # The row is the chosen rate's: its n and n_failed are its own runs'. Runs that failed at the other rates
        # are told where the choice is (a learning rate that diverged is part of why this one was chosen).
        selected_on = "holdout" if on_holdout else "eval split (no hold-out: optimistic)"
        others = [c for c in candidates if c is not chosen and c["n_failed"]]
        if others:
            rates = ", ".join(f"{c['lr']:g}" if isinstance(c["lr"], (int, float)) else str(c["lr"]) for c in others)
            failed = sum(c["n_failed"] for c in others)
            selected_on += (f"; {plural(failed, 'run')} failed at learning {'rate' if len(others) == 1 else 'rates'} "
                            f"{rates}")
        if isinstance(selection, tuple) and selection[:1] == ("recorded",):
            selected_on += "; no readable config.yaml: runs matched on recorded data, classes, images and epochs only"
        summary.append({**chosen, "selected_on": selected_on})
    _mark_subsets(summary)
    for row in summary:
        del row["_runs"]
    return sorted(summary, key=lambda r: (r["pair"], r["gap"] or "", r["method"] or "", r["sweep"] or ""))


def _mark_subsets(summary: list[dict]) -> None:
    """Set ``subset_of`` on each sweep's row whose runs are all counted in another sweep's row of the same cell
    (a pilot's seed inside the full grid's seeds): the sweep whose row holds the most of them (of equal rows, the
    first sweep by name keeps its place)."""
    cells: dict[tuple, list[dict]] = {}
    for row in summary:
        if row["sweep"]:
            cells.setdefault((row["kind"], row["src"], row["dst"], row["gap"], row["method"]), []).append(row)
    for rows in cells.values():
        for row in rows:
            within = [other for other in rows if other is not row and row["_runs"] <= other["_runs"]
                      and (row["_runs"] < other["_runs"] or other["sweep"] < row["sweep"])]
            if within:
                row["subset_of"] = min(within, key=lambda o: (-len(o["_runs"]), o["sweep"]))["sweep"]


def distinct(summary: list[dict]) -> list[dict]:
    """The summary rows that figures, Table 1 and the pairs' sentences show: a row whose runs are all in another
    sweep's row (``subset_of``) would count them twice there. summary.csv keeps every row."""
    return [r for r in summary if not r.get("subset_of")]
