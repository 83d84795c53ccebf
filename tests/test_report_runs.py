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
