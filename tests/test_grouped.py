"""One pass, many stitches: grouped training computes exactly what separate runs compute."""
import json
import os
import subprocess
import sys

import pytest
import torch

from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.sweeps.grid import expand, load_sweep
from stitchkit.training import NonFiniteLossError, RunInterrupted, load_config, train
from stitchkit.training.loop import TrainingPass
from stitchkit.training.run import Run
from stitchkit.training import train_group
from stitchkit.training.grouped import check_groupable, group_key, partition

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=96", "data.synthetic_val_size=32",
        "data.synthetic_classes=1000", "optim.batch_size=32", "train.batch_size=16", "train.workers=0",
        "train.threads=1", "train.log_every=1", "model.pretrained=false", "train.epochs=2", "mode=stitch",
        "model.src=resnet10t"]
# Four stitches from resnet10t's Stage 1: other gaps, adapters, learning rates and a ViT destination.
MEMBERS = [
    ["model.gap=1:3", "model.adapter=bottleneck"],
    ["model.gap=1:2", "model.adapter=linear", "optim.lr=0.001"],
    ["model.gap=1:3", "model.adapter=conv3x3_relu", "optim.warmup_steps=2"],
    ["model.gap=1:2", "model.dst=vit_tiny_patch16_224", "model.adapter=linear_relu", "optim.lr=0.004"],
]


def _configs(tmp_path, prefix, members=MEMBERS, extra=()):
    return [load_config(None, [*TINY, *m, *extra, f"output.dir={tmp_path / f'{prefix}{i}'}"])
            for i, m in enumerate(members)]


def _metric_lines(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "images_per_s")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_outcome(separate: dict, grouped: dict, run_a, run_b) -> None:
    for key in ("top1", "top5", "loss", "train_loss", "steps", "epochs", "images_seen", "gmacs", "trainable_params"):
        assert grouped[key] == separate[key], key
    assert _metric_lines(run_a) == _metric_lines(run_b)
    a = torch.load(run_a / "adapters.pt", weights_only=True)["adapters"]
    b = torch.load(run_b / "adapters.pt", weights_only=True)["adapters"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_grouped_training_equals_separate_runs(tmp_path):
    separate = [train(c) for c in _configs(tmp_path, "alone")]
    members = [Run(c) for c in _configs(tmp_path, "group")]
    grouped = TrainingPass(members).run()
    for i, (s, g) in enumerate(zip(separate, grouped)):
        assert g["status"] == "finished" and g["group_size"] == 4 and s["group_size"] == 1
        _same_outcome(s, g, tmp_path / f"alone{i}", tmp_path / f"group{i}")
    # One front in memory for all; identical frozen backs (same destination and stage) shared too.
    models = [m.model for m in members]
    assert all(m.front is models[0].front for m in models)
    assert models[0].back is models[2].back and models[1].back is not models[0].back
    assert models[3].back is not models[1].back


def test_only_compatible_runs_group(tmp_path):
    base = _configs(tmp_path, "r", MEMBERS[:1])[0]
    for override, named in [("train.seed=1", "train.seed"), ("model.gap=2:3", "source stage"),
                            ("data.synthetic_train_size=64", "data.synthetic_train_size"),
                            ("train.epochs=3", "train.epochs")]:
        other = load_config(None, [*TINY, override, f"output.dir={tmp_path / 'other'}"])
        with pytest.raises(StitchkitError, match=named):
            check_groupable([base, other])
    for override, reason in [("mode=finetune", "no frozen front"), ("model.frozen_mode=train", "BatchNorm")]:
        other = load_config(None, [*TINY, override, f"output.dir={tmp_path / 'other'}"])
        assert group_key(other) is None
        with pytest.raises(StitchkitError, match=reason):
            check_groupable([base, other])
    with pytest.raises(StitchkitError, match="own output.dir"):
        check_groupable([base, base])
    # Keys decide the passes: runs that cannot share train alone; max_size splits big groups.
    assert partition([("a",), None, ("a",), ("b",), ("a",)]) == [[0, 2, 4], [1], [3]]
    assert partition([("a",)] * 5, max_size=2) == [[0, 1], [2, 3], [4]]


@pytest.mark.slow
def test_a_nan_member_fails_alone(tmp_path):
    configs = _configs(tmp_path, "g", [MEMBERS[0], [*MEMBERS[1], "optim.lr=1e30"]])
    outcomes = train_group(configs)
    assert outcomes[0]["status"] == "finished"
    assert isinstance(outcomes[1], NonFiniteLossError)
    assert json.loads((tmp_path / "g1" / "result.json").read_text())["status"] == "failed"
    reference = train(_configs(tmp_path, "alone", [MEMBERS[0]])[0])
    assert outcomes[0]["top1"] == reference["top1"] and outcomes[0]["loss"] == reference["loss"]


@pytest.mark.slow
def test_an_interrupted_group_resumes_to_the_same_results(tmp_path, monkeypatch):
    from stitchkit.training import logging as training_logging

    members = MEMBERS[:2]
    reference = [train(c) for c in _configs(tmp_path, "alone", members)]
    original, calls = training_logging.MetricsLog.advance, []

    def advance(self, steps=1):
        original(self, steps)
        calls.append(1)
        if len(calls) == 2 * 4:  # the 4th optimizer step (of 6), once both members have taken it
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training_logging.MetricsLog, "advance", advance)
        with pytest.raises(RunInterrupted):
            train_group(_configs(tmp_path, "group", members))
    resumed = train_group(_configs(tmp_path, "group", members), resume=True)
    for i, (s, g) in enumerate(zip(reference, resumed)):
        _same_outcome(s, g, tmp_path / f"alone{i}", tmp_path / f"group{i}")


SWEEP = """
base:
  data: {name: synthetic, input_size: 32, synthetic_train_size: 64, synthetic_val_size: 32, synthetic_classes: 1000}
  optim: {batch_size: 16}
  train: {batch_size: 16, workers: 0, threads: 1, epochs: 2, log_every: 1, checkpoint_every: 1}
  model: {pretrained: false}
pairs:
  - [resnet10t, resnet10t]
gaps: ["1:2", "1:3", "2:3"]
methods: [downsample_linear, downsample_bottleneck]
baselines:
  finetune: {lrs: [0.002]}
seeds: [0]
group_by_front: %s
"""


@pytest.mark.slow
def test_sweep_groups_by_front_and_survives_a_kill(tmp_path, capsys):
    sweep_file, runs = tmp_path / "s.yaml", tmp_path / "runs"
    sweep_file.write_text(SWEEP % "true")
    sweep = load_sweep(sweep_file)
    groups = [[c.name.split("/")[2] + "/" + c.method for c in g] for g in sweep.groups(sweep.runnable)]
    # Stage-1 stitches share a pass; Stage 2 has its own; fine-tuning cells train alone.
    assert sorted(map(len, groups)) == [1, 1, 1, 2, 4]
    assert main(["sweep", str(sweep_file), "--out", str(runs), "--dry-run", "--no-costs"]) == 0
    assert "group_by_front: 5 passes; 6 stitches share a front in 2 of them (largest 4)" in capsys.readouterr().out
    # Killed (SIGKILL) in the middle of the Stage-1 pass, then rerun: every cell finishes once, with the results of
    # an unkilled sweep.
    env = dict(os.environ, OMP_NUM_THREADS="1", STITCHKIT_FAULT="step:5")
    env.pop("STITCHKIT_SWEEP_WORKER", None)
    command = [sys.executable, "-m", "stitchkit", "sweep", str(sweep_file), "--out", str(runs)]
    assert subprocess.run(command, env=env, capture_output=True).returncode == -9
    env.pop("STITCHKIT_FAULT")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["finished"] == 9
    plain_file = tmp_path / "plain.yaml"
    plain_file.write_text(SWEEP % "false")
    assert main(["sweep", str(plain_file), "--out", str(tmp_path / "plain")]) == 0
    for cell in sweep.runnable:
        killed = json.loads((runs / cell.name / "result.json").read_text())
        plain = json.loads((tmp_path / "plain" / cell.name / "result.json").read_text())
        assert killed["top1"] == plain["top1"] and killed["loss"] == plain["loss"], cell.name
        assert (runs / cell.name / "attempts.log").read_text().count(" finished") == 1
        assert killed["group_size"] == (1 if cell.kind != "stitch" else 4 if cell.gap in ("1:2", "1:3") else 2)


def test_group_by_front_values():
    assert expand({"pairs": [["resnet18", "resnet18"]], "group_by_front": 3}).max_group_size == 3
    with pytest.raises(StitchkitError, match="group_by_front must be"):
        expand({"pairs": [["resnet18", "resnet18"]], "group_by_front": "yes"})


def test_ctrl_c_during_the_optimizer_steps_waits_for_the_end_of_the_step():
    import signal

    group = TrainingPass.__new__(TrainingPass)  # only the signal helper is under test
    started_with = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whoever started us
    try:
        finished = []
        with pytest.raises(KeyboardInterrupt):
            with group._deferred_ctrl_c():
                os.kill(os.getpid(), signal.SIGINT)
                finished.append(True)  # still runs: the interrupt is held until the block ends
        assert finished == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
        # A process started with Ctrl-C ignored (nohup, a background job) keeps ignoring it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with group._deferred_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, started_with)


def test_other_runs_lines_go_above_the_shared_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    import tqdm

    from stitchkit.training import logging as training_logging

    written = []
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, text, file=None: written.append(text)))
    config = load_config(None, ["train.epochs=2"])
    log = training_logging.MetricsLog(tmp_path, True, config, 10, progress=False, label="1to3/linear", device="cpu")
    log.write({"type": "eval", "split": "val", "step": 1, "epoch": 0, "top1": 50.0, "top5": 90.0})
    log.close()
    assert written == [f"[1to3/linear] training stitch run in {tmp_path}: 10 steps, 2 epochs on cpu",
                       "[1to3/linear] val top-1 50.00% top-5 90.00% (after epoch 1/2)"]


def test_a_back_that_trains_is_never_shared(tmp_path):
    """Stitches with a new head (which trains) keep their own back in a pass: sharing an identical-looking one
    made a member's checkpoint save another member's head (found in 0.7; its numbers were right, its files not)."""
    def configs(prefix):
        return [load_config(None, [*TINY, "data.synthetic_classes=10", "model.num_classes=10", "train.max_steps=2",
                                   f"model.adapter={adapter}", f"output.dir={tmp_path / f'{prefix}{i}'}"])
                for i, adapter in enumerate(["linear", "bottleneck"])]

    separate = [train(c) for c in configs("alone")]
    members = [Run(c) for c in configs("group")]
    TrainingPass(members).run()
    assert members[0].model.back is not members[1].model.back
    for i, result in enumerate(separate):
        alone = torch.load(tmp_path / f"alone{i}" / "checkpoints" / "last.pt", weights_only=False)["model"]
        together = torch.load(tmp_path / f"group{i}" / "checkpoints" / "last.pt", weights_only=False)["model"]
        assert alone.keys() == together.keys() and all(torch.equal(alone[k], together[k]) for k in alone)


def test_identical_frozen_backs_are_held_once_where_the_pass_runs_them(tmp_path):
    """The back a member trains and evaluates through (its tail) is the shared one: the tails were made before the
    backs were shared, so every member ran, and kept in memory, its own copy (found in 0.13)."""
    members = [Run(c) for c in _configs(tmp_path, "g", [["model.gap=1:3", f"model.adapter={a}"]
                                                        for a in ("bottleneck", "linear")],
                                        extra=["train.max_steps=1", "train.eval_at_start=false"])]
    TrainingPass(members).run()
    backs = {id(module) for r in members for module in r.head.children() if module is not r.model.bridge}
    assert backs == {id(members[0].model.back)}
    assert all(r.model.back is members[0].model.back for r in members)
