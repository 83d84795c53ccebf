"""The run folder: one owner for its layout and its state.

A run folder holds what ``stitchkit train`` writes (settings, metrics, checkpoints, weights, result) and, for sweep
cells, what the sweep runner adds (the cell's description, its attempts, its lock). Every other module asks a
:class:`RunDir` for a path or the run's state instead of spelling file names.

States (:meth:`RunDir.state`): ``finished`` and ``failed`` (``result.json`` says which), ``interrupted`` (a
checkpoint but no result: resume it), ``new``. A ``result.json`` that cannot be read (corrupted on disk: runs write
it atomically, so never torn by a kill) is no result: the run is ``interrupted`` when its last checkpoint is there
(resuming re-evaluates it and writes result.json again) and ``new`` otherwise; :meth:`RunDir.result_problem` says
what is wrong with the file.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .errors import StitchkitError
from .files import atomic_write_text, read_json
from .temps import is_own_temp, remove_own_temps


class RunDir:
    """Paths and state of one run folder (nothing is created until something is written)."""

    # What a run and the sweep runner write at the folder's top level; anything else there is the user's.
    OWN = frozenset({"config.yaml", "metrics.jsonl", "result.json", "eval.json", "model.pt", "adapters.pt",
                     "checkpoints", "tensorboard", "wandb", "cell.json", "attempts.log", ".lock", "cell-config.yaml",
                     ".write-test", "sources.json"})
    # What a new run replaces when it overwrites an old one (the sweep runner's files stay).
    OUTPUTS = ("result.json", "metrics.jsonl", "config.yaml", "eval.json", "model.pt", "adapters.pt")
    OUTPUT_DIRS = ("checkpoints", "tensorboard")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- the layout ---------------------------------------------------------------------------------------------

    config = property(lambda self: self.path / "config.yaml")  # the resolved settings
    metrics = property(lambda self: self.path / "metrics.jsonl")
    result = property(lambda self: self.path / "result.json")
    evaluation = property(lambda self: self.path / "eval.json")  # stitchkit eval RUN_DIR
    model_weights = property(lambda self: self.path / "model.pt")  # finetune and scratch runs
    adapter_weights = property(lambda self: self.path / "adapters.pt")  # stitches
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    tensorboard = property(lambda self: self.path / "tensorboard")
    write_test = property(lambda self: self.path / ".write-test")
    cell = property(lambda self: self.path / "cell.json")  # sweep cells: the cell's description
    attempts = property(lambda self: self.path / "attempts.log")  # sweep cells: one line per start and end
    lock = property(lambda self: self.path / ".lock")  # sweep cells: flock while a process runs it
    cell_config = property(lambda self: self.path / "cell-config.yaml")  # torchrun cells: the settings handed over
    sources = property(lambda self: self.path / "sources.json")  # where the weight files and data the settings name are

    # --- the state ----------------------------------------------------------------------------------------------

    def read_result(self) -> dict | None:
        """``result.json``, or None when it is missing or unreadable (see :meth:`result_problem`)."""
        try:
            data = json.loads(self.result.read_text())
        except (OSError, ValueError):  # ValueError: not JSON, or not text (UnicodeDecodeError)
            return None
        return data if isinstance(data, dict) else None

    def result_problem(self) -> str | None:
        """What is wrong with a ``result.json`` that is there but cannot be read (``result.json unreadable
        (corrupt): ...``), or None when it is missing or readable."""
        try:
            data = json.loads(self.result.read_text())
        except FileNotFoundError:
            return None
        except OSError as err:
            return f"result.json unreadable ({err.strerror or err})"
        except ValueError as err:
            return f"result.json unreadable (corrupt): {err}"
        return None if isinstance(data, dict) else f"result.json unreadable (corrupt): a JSON {type(data).__name__}, " \
                                                      "not an object"

    def state(self) -> str:
        if self.result.is_file():
            result = self.read_result()
            if result is not None:
                return "finished" if result.get("status") == "finished" else "failed"
            # Unreadable: not a failure of the run (its weights and checkpoint may be whole), so the run is redone
            # from what is left (result_problem() says what is wrong, for reports).
        if self.last_checkpoint.is_file():
            return "interrupted"
        return "new"

    def foreign_files(self) -> list[str]:
        """Names at the top level that neither a run nor the sweep runner wrote (their temporary files count as
        theirs: a kill between writing one and renaming it leaves it)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in self.OWN and not is_own_temp(p))

    def remove_leftovers(self) -> list[str]:
        """Delete temporary files left by writers that are gone (killed), here and in checkpoints/."""
        return remove_own_temps(self.path) + remove_own_temps(self.checkpoints)

    def remove_outputs(self) -> None:
        """What a run wrote, before a new run replaces it (``--overwrite``)."""
        for name in self.OUTPUTS:
            (self.path / name).unlink(missing_ok=True)
        for name in self.OUTPUT_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    def cut_metrics_after(self, step: int, redone_at_step: tuple[str, ...] = ()) -> None:
        """Drop the metric lines written after ``step`` (a resumed run is about to write them again), and torn ones;
        ``redone_at_step``: the line types (``"eval"``, ``"epoch"``) at ``step`` too (they are written again)."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            at_step = record.get("step", 0)
            if at_step > step or (at_step == step and record.get("type") in redone_at_step):
                continue
            kept.append(line)
        atomic_write_text(self.metrics, "".join(f"{line}\n" for line in kept))

    def record_sources(self, files: dict[str, str | None]) -> None:
        """Remember where the weight files and the data folder named by the settings are (``{"model.src_checkpoint":
        path, "data.root": folder}``), as given, absolute, and relative to this folder: config.yaml keeps them as
        given (relative to wherever the run was started), and the run must still find them from another directory
        or after the runs tree moved."""
        entries = {}
        for key, given in files.items():
            if given:
                absolute = os.path.abspath(given)
                entries[key] = {"given": given, "absolute": absolute,
                                "from_run": os.path.relpath(absolute, os.path.abspath(self.path))}
        atomic_write_text(self.sources, json.dumps(entries, indent=2, sort_keys=True) + "\n")

    def locate(self, key: str, given: str) -> Path:
        """The weight file a setting names, found as :meth:`candidates` says."""
        candidates = self.candidates(key, given)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise StitchkitError(f"{key} of the run in {str(self.path)!r} is not found (tried {tried(candidates)}); put "
                             "the file back or run from the directory the run was started in")

    def candidates(self, key: str, given: str) -> list[Path]:
        """Where the file or folder a setting names may be, in order: as given (from here), then where
        :meth:`record_sources` saw it (absolute, then relative to this folder, for a runs tree moved as a whole)."""
        recorded = (self.read_json("sources.json") or {}).get(key) or {}
        candidates = [Path(given)]
        if recorded.get("absolute"):
            candidates.append(Path(recorded["absolute"]))
        if recorded.get("from_run"):
            candidates.append(self.path / recorded["from_run"])
        return list(dict.fromkeys(candidates))

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)


def tried(candidates: list[Path]) -> str:
    """The places :meth:`RunDir.candidates` gave, for a message."""
    return ", ".join(repr(str(c)) for c in candidates)
