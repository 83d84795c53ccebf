"""A training process SIGKILLed at five different moments, then resumed, ends exactly like an uninterrupted run."""
import json
import os
import subprocess
import sys

import pytest

from stitchkit.training import load_config, train
from stitchkit.faults import POINTS

SETTINGS = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=96", "data.synthetic_val_size=32",
            "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "model.pretrained=false",
            "mode=scratch", "model.src=resnet10t", "train.epochs=2", "train.checkpoint_every=1", "train.log_every=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference")
    result = train(load_config(None, [*SETTINGS, f"output.dir={run}"]))
    return result, (run / "metrics.jsonl").read_text()


# evaluation:1 is the evaluation of the start, before any checkpoint (the resume starts over); evaluation:2 the
# first end-of-epoch one.
@pytest.mark.parametrize("fault", ["step:4", "checkpoint-write:3", "evaluation:1", "evaluation:2", "epoch-end:1",
                                   "finish:1"])
def test_killed_at_any_moment_resumes_to_the_same_result(tmp_path, reference, fault):
    assert fault.split(":")[0] in POINTS
    run = tmp_path / "run"
    env = dict(os.environ, STITCHKIT_FAULT=fault, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    killed = subprocess.run([sys.executable, "-m", "stitchkit", "train", *SETTINGS, f"output.dir={run}"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (run / "result.json").exists()
    assert not list((run / "checkpoints").glob(".*.tmp")) or fault.startswith("checkpoint-write")
    resumed = train(load_config(None, [*SETTINGS, f"output.dir={run}"]), resume=True)
    expected, metrics = reference
    for key in ("top1", "top5", "loss", "train_loss", "steps", "epochs", "images_seen"):
        assert resumed[key] == expected[key], key
    strip = lambda text: [{k: v for k, v in json.loads(l).items() if k not in ("time", "images_per_s")}
                          for l in text.splitlines()]
    assert strip((run / "metrics.jsonl").read_text()) == strip(metrics)  # no line lost, none twice


def test_sigterm_checkpoints_and_exits_for_requeue(tmp_path, reference):
    import signal
    import time

    from stitchkit.training.loop import EXIT_PREEMPTED

    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("STITCHKIT_FAULT", None)
    settings = [s for s in SETTINGS if not s.startswith("train.checkpoint_every")] + ["train.checkpoint_every=1000"]
    process = subprocess.Popen([sys.executable, "-m", "stitchkit", "train", *settings, f"output.dir={run}"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "SIGTERM" in err and "--resume" in err and (run / "checkpoints" / "last.pt").is_file()
    resumed = train(load_config(None, [*settings, f"output.dir={run}"]), resume=True)
    expected, _ = reference
    for key in ("top1", "top5", "loss", "train_loss", "steps"):
        assert resumed[key] == expected[key], key


# Ctrl-C checkpoints at the last step boundary. In an end-of-epoch evaluation that boundary is the epoch's last step,
# whose end (loss line, evaluations) is not checkpointed yet: the resume ends that epoch again, so its lines must not
# be logged twice, and after the run's last step it must still count the epoch. With a hold-out split each evaluation
# is val (2 batches), then holdout (2): the 5th batch is the first epoch end's val, the 11th the last one's holdout
# (its val line already written).
@pytest.mark.parametrize("interrupted_batch", [5, 11])
def test_ctrl_c_in_an_end_of_epoch_evaluation_resumes_to_the_same_result(tmp_path, monkeypatch, interrupted_batch):
    from stitchkit import faults
    from stitchkit.training.loop import RunInterrupted

    settings = [*SETTINGS, "data.holdout_fraction=0.25"]
    expected = train(load_config(None, [*settings, f"output.dir={tmp_path / 'reference'}"]))
    seen = []

    def point(name):
        seen.append(name)
        if name == "evaluation" and seen.count("evaluation") == interrupted_batch:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(faults, "point", point)
        with pytest.raises(RunInterrupted):
            train(load_config(None, [*settings, f"output.dir={run}"]))
    resumed = train(load_config(None, [*settings, f"output.dir={run}"]), resume=True)
    for key in ("top1", "top5", "loss", "holdout_top1", "train_loss", "steps", "epochs", "images_seen",
                "top1_after_epoch"):
        assert resumed[key] == expected[key], key
    strip = lambda text: [{k: v for k, v in json.loads(l).items() if k not in ("time", "images_per_s")}
                          for l in text.splitlines()]
    assert strip((run / "metrics.jsonl").read_text()) == strip((tmp_path / "reference" / "metrics.jsonl").read_text())
