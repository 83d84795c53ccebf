"""The report over real-life runs folders: a sweep file given instead of its folder, runs left over from another
version of a sweep, two sweeps of one pair, a torn result.json, and baselines told apart from stitches."""
import json
from pathlib import Path

import pytest

from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.reports import write_report


def test_a_sweep_file_given_instead_of_its_runs_folder_is_named_as_such(tmp_path, capsys):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text("pairs: [[resnet10t, resnet10t]]\n")
    with pytest.raises(StitchkitError, match=r"is a file, not a runs folder; .*--out.*runs/tiny"):
        write_report(sweep_file)
    assert main(["report", str(sweep_file)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" not in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert sweep_file.read_text() == "pairs: [[resnet10t, resnet10t]]\n"  # nothing written over it


def _result(runs: Path, name: str, **result) -> dict:
    """A run folder with its result.json; returns its manifest cell."""
    (runs / name).mkdir(parents=True)
    (runs / name / "result.json").write_text(json.dumps({"status": "finished", **result}))
    return {"name": name, **{k: result.get(k) for k in ("kind", "src", "dst", "gap", "method", "seed", "lr")}}


def _stitch(seed: int, top1: float, gap: str = "1:3", **more) -> dict:
    return dict(kind="stitch", src="m", dst="m", gap=gap, method="downsample_linear", seed=seed, lr=None, top1=top1,
                top5=90.0, gmacs=1.0, params=10, trainable_params=1, mode="stitch", adapter="linear",
                resize="bilinear", dataset="synthetic", input_size=32, epochs=1, train_images=64, **more)


def _manifest(runs: Path, name: str, cells: list[dict]) -> None:
    (runs / "sweeps").mkdir(exist_ok=True)
    (runs / "sweeps" / f"{name}.json").write_text(json.dumps({"sweep": name, "cells": cells}))


def test_runs_outside_the_current_manifest_are_counted_apart_and_the_report_says_why(tmp_path):
    """A sweep rerun with a smaller grid: its manifest names 2 runs, the folder holds 2 more finished ones from the
    larger grid. The report leaves those out of the summary (as before) and now says so, on the page and to the
    command's output, and its status cards count the 2 it summarizes as finished, not 4."""
    runs = tmp_path / "runs"
    cells = [_result(runs, f"now/{seed}", **_stitch(seed, 70.0 + seed)) for seed in range(2)]
    for seed in range(2):  # the larger grid's other gap: finished, no longer in the manifest
        _result(runs, f"before/{seed}", **_stitch(seed, 50.0, gap="1:2"))
    _manifest(runs, "tiny", cells)
    notes = []
    page = write_report(runs, log=notes.append)
    assert len(notes) == 1 and notes[0].startswith("note: 2 finished runs below the folder are in no sweep's current "
                                                   "manifest") and "left out of summary.csv" in notes[0]
    text = page.read_text()
    assert '<b>2</b>finished</div>' in text and '<b>2</b>left out: in no current sweep</div>' in text
    assert "2 finished runs below the folder are in no sweep&#x27;s current manifest" in text
    assert "1:2" not in (page.parent / "summary.csv").read_text()
    assert (page.parent / "results.csv").read_text().count("before/") == 2  # still listed
    # A folder whose runs are all in the manifest: no note, no card for them.
    _manifest(runs, "tiny", cells + [_result(runs, f"more/{seed}", **_stitch(seed, 60.0, gap="2:3")) for seed in
                                     range(1)])
    import shutil
    shutil.rmtree(runs / "before")
    notes.clear()
    assert "left out" not in write_report(runs, log=notes.append).read_text() and notes == []
