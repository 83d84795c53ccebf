"""Metrics out of a run: Weights & Biases gets what a user needs to find and resume a run; TensorBoard asked for but
not installed is an error that names the extra."""
import sys
import types

import pytest

from stitchkit.errors import StitchkitError
from stitchkit.rundir import RunDir
from stitchkit.training import load_config
from stitchkit.training.logging import MetricsLog, format_duration


class FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged = [], []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda data, step: self.logged.append((step, data)), finish=lambda: None)


def test_wandb_run_is_named_grouped_configured_and_resumable(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = tmp_path / "sweep_a" / "cell1"
    run.mkdir(parents=True)
    RunDir(run).cell.write_text("{}")  # a sweep cell: grouped by its sweep
    config = load_config(None, ["train.wandb=true", "train.wandb_project=stitching", "train.epochs=3"])
    for _ in range(2):  # started, then resumed
        log = MetricsLog(run, True, config, 10, progress=False)
        log.write({"type": "train", "step": 1, "epoch": 0, "loss": 2.0, "lr": 0.1, "images_per_s": 5.0})
        log.close()
    first, again = fake.inits
    assert first == again  # the resumed process continues the same W&B run
    assert (first["project"], first["group"], first["name"], first["resume"]) == ("stitching", "sweep_a", "cell1",
                                                                                  "allow")
    assert len(first["id"]) == 16 and first["config"]["train.epochs"] == 3 and first["dir"] == str(run)
    assert fake.logged[0] == (1, {"train/epoch": 0, "train/loss": 2.0, "train/lr": 0.1, "train/images_per_s": 5.0})


def test_tensorboard_asked_for_but_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it fails, as when not installed
    config = load_config(None, ["train.tensorboard=true"])
    with pytest.raises(StitchkitError, match=r"pip install 'stitchkit\[tensorboard\]'"):
        MetricsLog(tmp_path, True, config, 10, progress=False)
    MetricsLog(tmp_path, True, load_config(None, []), 10, progress=False).close()  # off by default: no error


@pytest.mark.parametrize("logger,module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_missing_logger_package_fails_before_the_run_folder_is_made(tmp_path, monkeypatch, capsys, logger, module):
    from stitchkit.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # importing it fails, as when not installed
    run = tmp_path / "run"
    code = main(["train", "mode=scratch", "model.src=resnet10t", "model.pretrained=false", "data.name=synthetic",
                 "data.input_size=32", "train.workers=0", f"train.{logger}=true", f"output.dir={run}"])
    err = capsys.readouterr().err
    assert code == 2 and f"pip install 'stitchkit[{logger}]', or set train.{logger}=false" in err, err
    assert not run.exists()  # no config.yaml, sources.json or checkpoints/ of a run that never started


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (5, 65, 3 * 3600 + 125)] == ["5s", "1m05s", "3h02m"]


def test_a_sweep_asking_for_a_missing_logger_fails_once_before_any_cell(tmp_path, monkeypatch):
    """train.tensorboard=true in a sweep's base on a machine without tensorboard: one error before the first cell,
    not a failure recorded in every cell's folder."""
    from stitchkit.sweeps.grid import load_sweep
    from stitchkit.sweeps.runner import run_local

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    spec = tmp_path / "sweep.yaml"
    spec.write_text("base: {model: {pretrained: false}, data: {name: synthetic, input_size: 32}, "
                    "train: {workers: 0, tensorboard: true}}\npairs: [[resnet10t, resnet10t]]\ngaps: ['1:2']\n"
                    "methods: [downsample_linear]\nseeds: [0]\n")
    with pytest.raises(StitchkitError, match=r"pip install 'stitchkit\[tensorboard\]'"):
        run_local(load_sweep(spec), tmp_path / "runs", log=lambda line: None)
    assert not (tmp_path / "runs").exists()
