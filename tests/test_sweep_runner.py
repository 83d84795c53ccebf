"""The sweep command's edges: options an executor would ignore, SLURM missing or faked, what a queued job carries,
a closed output stream, a time-out signal, cells that failed before, runs of another version of the sweep, and
sweep files with values of the wrong type. Each trains at most one tiny cell."""
from pathlib import Path

import pytest

from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.sweeps.grid import expand, load_sweep

ROOT = Path(__file__).resolve().parents[1]
ONE = """
base:
  model: {pretrained: false, num_classes: 10}
  data: {name: synthetic, input_size: 32, synthetic_train_size: %(images)d, synthetic_val_size: 16,
         random_resized_crop: false, auto_augment: false, crop_pct: 1.0}
  optim: {batch_size: 16}
  train: {batch_size: 16, epochs: 1, workers: 0, threads: 1, log_every: 1, checkpoint_every: %(every)d}
pairs: [[resnet10t, resnet10t]]
gaps: ["1:3"]
methods: [downsample_linear]
seeds: [0]
"""


def _one(folder: Path, images: int = 32, every: int = 1000, name: str = "one") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(ONE % {"images": images, "every": every})
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- sweep files ---------------------------------------------------------------------------------------------------

PAIR = {"pairs": [["resnet10t", "resnet10t"]], "gaps": ["1:2"], "methods": ["downsample_linear"], "seeds": [0]}


def test_learning_rates_are_numbers_as_in_base():
    """YAML 1.1 reads 2e-3 as a string; a single value stands for a list of it; anything else is refused."""
    def lrs(value):
        return [c.lr for c in expand({**PAIR, "baselines": {"finetune": {"lrs": value}}}).cells if c.kind == "finetune"]

    assert lrs(["2e-3", 1]) == [0.002, 1.0] and lrs(0.1) == [0.1]
    assert lrs(["2e-3"]) == lrs([0.002])  # the same cell, by name too
    assert ([c.name for c in expand({**PAIR, "baselines": {"finetune": {"lrs": ["2e-3"]}}}).cells]
            == [c.name for c in expand({**PAIR, "baselines": {"finetune": {"lrs": [0.002]}}}).cells])
    for bad in (["abc"], [-0.1], [None], [True], [".nan"]):
        with pytest.raises(StitchkitError, match="baselines.finetune.lrs must be positive numbers"):
            lrs(bad)


@pytest.mark.parametrize("spec, message", [
    ({**PAIR, "seeds": [True]}, "seeds must be a list of distinct integers"),
    ({**PAIR, "baselines": {"finetune": {"lr": [0.1]}}}, "unknown key 'lr' under baselines.finetune"),
    ({**PAIR, "baselines": {"scratch": ["resnet18"]}}, "baselines.scratch must be a mapping"),
    ({**PAIR, "baselines": {"scratch": {"models": [3]}}}, "baselines.scratch.models must be a list of model names"),
    ({**PAIR, "base": ["train.epochs=1"]}, "base must be a mapping"),
    ({**PAIR, "gaps": {"1": 2}}, "gaps must be a list"),
])
def test_sweep_values_of_the_wrong_type(spec, message):
    with pytest.raises(StitchkitError, match=message):
        expand(spec)


def test_a_single_value_stands_for_a_list_of_it():
    one = expand({**PAIR, "gaps": "1:2", "methods": "downsample_linear", "seeds": 0,
                  "baselines": {"scratch": {"models": "resnet10t"}}})
    assert [(c.kind, c.gap, c.method, c.seed) for c in one.cells] == [
        ("stitch", "1:2", "downsample_linear", 0), ("scratch", None, "scratch", 0)]


def test_a_sweep_file_without_runs_is_refused(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text("pairs: []\n")
    code, _, err = _run(capsys, "sweep", path, "--dry-run")
    assert code == 2 and "lists no runs" in err
    path.write_text("pairs: [[resnet10t, resnet10t]]\nmethods: []\n")
    with pytest.raises(StitchkitError, match="lists no runs"):
        load_sweep(path)
