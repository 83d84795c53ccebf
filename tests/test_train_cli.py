"""``stitchkit train`` / ``eval`` / ``eval-model`` through the CLI, a killed process resumed, and 2-process DDP."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import stitchkit
from stitchkit.cli import main
from stitchkit.training import load_config, train

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=128", "data.synthetic_val_size=64",
        "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "model.pretrained=false",
        "mode=scratch", "model.src=resnet10t"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def test_a_stitch_that_costs_more_than_its_source_says_so_before_it_trains(tmp_path, capsys):
    """resnet10t to resnet18 at gap 1:3 (resnet18 from just after stage 3's first block on) costs 13% more than
    resnet10t with the run's 10-class head: the second line says so (it compared with the 1000-class resnet10t,
    which hid 3 points of the difference)."""
    small = ["data.synthetic_train_size=16", "data.synthetic_val_size=16", "train.epochs=1", "mode=stitch",
             "model.gap=1:3", "model.num_classes=10"]
    assert main(["train", *TINY, *small, "model.dst=resnet18", f"output.dir={tmp_path / 'dearer'}"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].startswith("note: this stitch costs more compute than resnet10t itself (0.025 vs 0.022 GMACs, "
                               "13% more): resnet18's later stages cost more"), lines[:3]
    assert main(["train", *TINY, *small, f"output.dir={tmp_path / 'cheaper'}"]) == 0  # within one model: cheaper
    assert "costs more compute" not in capsys.readouterr().err


def test_a_stitch_with_a_new_head_is_compared_with_its_models_at_that_head():
    """What inspect reports against the whole models: a 10-class stitch against the 10-class source, not the
    library's 1000-class one (at 32 px the head dominates a small model: 45% of the source, where it is 97%)."""
    from stitchkit.summary import describe_stitch

    stitch = stitchkit.create_stitched("mobilenetv3_small_050", "mobilenetv3_small_050", "2:2", input_size=32,
                                       num_classes=10)
    report = describe_stitch(stitch, "mobilenetv3_small_050", "mobilenetv3_small_050", 32)
    source = stitchkit.create_model("mobilenetv3_small_050", input_size=32, num_classes=10)
    assert report["macs_vs_src"] == pytest.approx(stitchkit.count_macs(stitch) / stitchkit.count_macs(source))
    assert 0.9 < report["macs_vs_src"] < 1


def test_train_eval_and_eval_model_commands(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  epochs: 1\n")
    run = tmp_path / "run"
    assert main(["train", str(config), *TINY, "train.log_every=1", f"output.dir={run}"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["status"] == "finished"
    # Without a terminal (a SLURM log): where the run is, then each step out of the total with an ETA, epochs from 1.
    lines = err.splitlines()
    assert lines[0] == f"training scratch run in {run}: 4 steps, 1 epoch on cpu"
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == [f"step {i}/4 epoch 1/1" for i in range(1, 5)]
    assert ", ETA " in steps[0] and ", ETA " not in steps[-1]
    assert any(line.startswith("val top-1") and line.endswith("(after epoch 1/1)") for line in lines)
    assert main(["eval", str(run)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["top1"] == summary["top1"]  # the same weights, the same pipeline
    assert json.loads((run / "eval.json").read_text())["top1"] == summary["top1"]
    out = tmp_path / "eval-model"
    assert main(["eval-model", "resnet10t", "--data", "synthetic", "--input-size", "32", "--checkpoint",
                 str(run / "model.pt"), "--workers", "0", "--out", str(out)]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["top1"] == summary["top1"] and measured["mode"] == "eval"
    assert json.loads((out / "result.json").read_text())["gmacs"] > 0


def test_eval_model_replaces_a_result_only_with_overwrite_and_never_a_training_runs(tmp_path, capsys):
    """eval-model --out DIR wrote over any result.json there, a finished training run's included (whose export then
    failed: the class list was gone)."""
    import torch

    from stitchkit import create_model

    torch.save(create_model("resnet10t", num_classes=10).state_dict(), tmp_path / "weights.pt")
    measure = ["eval-model", "resnet10t", "--data", "synthetic", "--input-size", "32", "--workers", "0",
               "--checkpoint", str(tmp_path / "weights.pt"), "--set", "data.synthetic_val_size=16"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("mode: scratch\n")
    (run / "result.json").write_text('{"status": "finished", "class_names": ["a"]}')
    for extra in ([], ["--overwrite"]):
        assert main([*measure, "--out", str(run), *extra]) == 2
        assert "is a training run's folder (config.yaml)" in capsys.readouterr().err
    assert json.loads((run / "result.json").read_text())["class_names"] == ["a"]
    out = tmp_path / "measured"
    assert main([*measure, "--out", str(out)]) == 0
    (out / "result.json").write_text('{"mine": true}')
    assert main([*measure, "--out", str(out)]) == 2
    assert "already holds a result.json; pass --overwrite to replace it" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text()) == {"mine": True}
    assert main([*measure, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "result.json").read_text())["mode"] == "eval"


def test_eval_model_sends_trained_folders_and_adapter_files_to_eval(tmp_path, capsys):
    """A run folder or model folder as MODEL or --checkpoint, or a stitch's adapters.pt, is `stitchkit eval`'s to
    evaluate (the messages were "unknown model ...; 1460 choices exist", "checkpoint file ... does not exist" for an
    existing folder, "does not hold a state dict of tensors")."""
    import stitchkit

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("mode: stitch\n")
    stitchkit.create_stitched("resnet10t", "resnet10t", (1, 3), input_size=32).save_adapters(run / "adapters.pt")
    stitchkit.save_pretrained(stitchkit.create_model("resnet10t", num_classes=3), tmp_path / "folder", input_size=32)
    measure = ["eval-model", "--data", "synthetic", "--input-size", "32", "--workers", "0"]
    cases = [
        ([str(tmp_path / "folder")], f"MODEL '{tmp_path / 'folder'}' is a model folder, not a model name; evaluate "
                                     f"it with `stitchkit eval {tmp_path / 'folder'}`"),
        (["resnet10t", "--checkpoint", str(run)], f"--checkpoint '{run}' is a training run's folder, not a weights "
                                                  f"file; evaluate it with `stitchkit eval {run}`"),
        (["resnet10t", "--checkpoint", str(tmp_path)], f"checkpoint '{tmp_path}' is a folder, not a weights file"),
        (["resnet10t", "--checkpoint", str(run / "adapters.pt")],
         f"holds a stitch's adapters, not a model's weights; evaluate the stitch with `stitchkit eval {run}`"),
    ]
    for argv, message in cases:
        assert main([*measure, *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_train_command_errors(tmp_path, capsys):
    assert main(["train", "model.gapp=1:3"]) == 2
    assert "did you mean model.gap" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", *TINY, "data.name=imagefolder", f"data.root={tmp_path / 'nope'}",
                 f"output.dir={tmp_path / 'r'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_killed_process_resumes_to_the_same_result(tmp_path):
    settings = [*TINY, "train.epochs=2", "train.checkpoint_every=1", "train.log_every=1"]
    reference = train(load_config(None, [*settings, f"output.dir={tmp_path / 'reference'}"]))
    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "stitchkit", "train", *settings, f"output.dir={run}"],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "result.json").exists(), "the run finished before it could be killed"
    resumed = train(load_config(None, [*settings, f"output.dir={run}"]), resume=True)
    for key in ("top1", "top5", "loss", "train_loss", "steps"):
        assert resumed[key] == reference[key], key


@pytest.mark.slow
def test_two_process_ddp_with_gloo(tmp_path):
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "stitchkit", "train", *TINY, "train.epochs=2", "train.log_every=1", f"output.dir={run}"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["world_size"] == 2 and result["status"] == "finished"
    assert result["steps"] == 8  # 128 images / (2 processes x 16) per step, 2 epochs
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(1, 9))  # written once, by rank 0
    assert all(r["images"] == 64 for r in records if r["type"] == "eval")  # val split counted over both ranks



def _torchrun(port: int, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``stitchkit train ARGS`` in 2 processes (gloo), running this checkout's stitchkit whatever the working folder."""
    import stitchkit

    src = str(Path(stitchkit.__file__).resolve().parents[1])
    environment = dict(_env(), **env)
    environment["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [environment.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "stitchkit", "train", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    """Each rank's share of the epoch's loss so far is its own: both processes SIGKILLed in step 4 of 6 (after the
    checkpoint of step 3), then resumed, end as an uninterrupted 2-process run does (the epoch's train_loss is
    all-reduced over the ranks, so rank 1 must not restore rank 0's running sums)."""
    settings = [*TINY, "data.synthetic_train_size=192", "train.epochs=1", "train.log_every=1",
                "train.checkpoint_every=1"]  # 192 images / (2 processes x 16) = 6 steps
    reference, run = tmp_path / "reference", tmp_path / "killed"
    done = _torchrun(29531, *settings, f"output.dir={reference}")
    assert done.returncode == 0, done.stderr[-3000:]
    killed = _torchrun(29532, *settings, f"output.dir={run}", STITCHKIT_FAULT="step:4")
    assert killed.returncode != 0 and not (run / "result.json").exists(), killed.stderr[-3000:]
    assert (run / "checkpoints" / "last.pt").is_file()
    resumed = _torchrun(29533, *settings, f"output.dir={run}", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = (json.loads((r / "result.json").read_text()) for r in (reference, run))
    assert got["world_size"] == 2 and got["steps"] == 6
    for key in ("train_loss", "top1", "top5", "loss", "steps", "images_seen", "skipped_images"):
        assert got[key] == expected[key], (key, got[key], expected[key])
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k not in ("time", "images_per_s")}
                          for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in strip(run) if r["type"] == "train"] == list(range(1, 7))
    assert strip(run) == strip(reference)  # every training-loss line, the epoch's line, the evaluation



@pytest.mark.slow
def test_two_process_run_counts_the_corrupt_images_each_process_skipped(tmp_path):
    """One corrupt file among 20 falls to one of the 2 processes: skipped_images is 1 and images_seen 19, summed over
    the ranks (rank 0's count times 2 said 0 or 2)."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    for split in ("train", "val"):
        for label in range(2):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(10):
                Image.fromarray(np.full((40, 40, 3), 40 * label + 5 * i, np.uint8)).save(folder / f"{i}.png")
    (root / "train" / "class1" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    settings = [*[s for s in TINY if not s.startswith(("data.", "optim.batch", "train.batch"))], "data.input_size=32",
                "data.name=imagefolder", f"data.root={root}", "data.skip_corrupt=true", "optim.batch_size=20",
                "train.batch_size=10", "train.epochs=1", f"output.dir={tmp_path / 'run'}"]
    done = _torchrun(29541, *settings)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["world_size"] == 2 and result["steps"] == 1
    assert result["skipped_images"] == 1 and result["images_seen"] == 19
    assert "stitchkit: skipped:" in done.stderr and "9.png" in done.stderr


def test_eval_finds_the_source_weights_from_anywhere_and_in_a_moved_runs_tree(tmp_path, monkeypatch, capsys):
    import shutil

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)  # settings name the source weights relative to here, as users type them
    assert main(["train", *TINY, "train.epochs=1", "output.dir=runs/source"]) == 0
    stitch = ["mode=stitch", "model.gap=1:3", "model.src_checkpoint=runs/source/model.pt",
              "model.dst_checkpoint=runs/source/model.pt", "output.dir=runs/stitch"]
    assert main(["train", *[s for s in TINY if s != "mode=scratch"], "train.epochs=1", *stitch]) == 0
    top1 = json.loads((work / "runs" / "stitch" / "result.json").read_text())["top1"]
    capsys.readouterr()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(work / "runs" / "stitch"), "--workers", "0"]) == 0  # by the absolute path it recorded
    assert json.loads(capsys.readouterr().out)["top1"] == top1
    shutil.move(str(work / "runs"), str(tmp_path / "moved"))  # the whole runs tree elsewhere
    assert main(["eval", str(tmp_path / "moved" / "stitch"), "--workers", "0"]) == 0  # relative to the run
    assert json.loads(capsys.readouterr().out)["top1"] == top1
    (tmp_path / "moved" / "source" / "model.pt").unlink()
    assert main(["eval", str(tmp_path / "moved" / "stitch"), "--workers", "0"]) == 2
    assert "model.src_checkpoint of the run" in capsys.readouterr().err


def _strict_json(text: str):
    """``json.loads`` that refuses the bare NaN and Infinity Python's json writes (jq and browsers refuse them)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_stitch_that_diverges_fails_naming_the_fix_and_writes_strict_json(tmp_path, capsys):
    """lr=1e6: every training loss is finite (~6e31), but the last step's gradients overflow and AdamW makes the
    adapters NaN, so the evaluation's loss is NaN and its top-1 chance. The run used to be "finished" with that top-1
    and a bare NaN in result.json; it fails now as a NaN training loss does, and writes no NaN checkpoint."""
    run = tmp_path / "diverged"
    code = main(["train", "mode=stitch", "model.src=resnet10t", "model.dst=resnet10t", "model.gap=1:3",
                 "model.adapter=linear", "model.pretrained=false", "model.num_classes=10", "model.init_images=32",
                 "data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=128",
                 "data.synthetic_val_size=32", "optim.batch_size=32", "train.batch_size=16", "train.epochs=1",
                 "train.workers=0", "train.threads=1", "optim.lr=1e6", f"output.dir={run}"])
    err = capsys.readouterr().err
    assert code == 2, err
    message = err.splitlines()[-1]
    assert message.startswith("stitchkit: error: ") and "NaN or infinite" in message and "Lower optim.lr" in message
    result = _strict_json((run / "result.json").read_text())
    assert result["status"] == "failed" and "NaN or infinite" in result["error"]
    # Not a result: the last evaluation (the start's, before the step that diverged) under its own names and step.
    assert not {"top1", "top5", "loss"} & set(result)
    assert result["last_eval_step"] == 0 and result["last_eval_top1"] == result["top1_at_start"]
    for line in (run / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "adapters.pt").exists()


def _interrupted_main(argv) -> int:
    """``main(argv)`` for a command that Ctrl-C interrupts: the command line must handle it (an escaping
    KeyboardInterrupt would stop pytest itself)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the command line as a KeyboardInterrupt (a traceback, Python's exit status)")


def _refuse_building(monkeypatch):
    """Ctrl-C while the model is built (in a real run: loading weights, fitting adapters, calibrating)."""
    from stitchkit.training import run as training_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_run, "build_model", interrupted)


def test_ctrl_c_says_how_to_go_on_in_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    """During set-up (nothing to checkpoint: run the same command again), in the training loop (continue with
    --resume), and anywhere else (before any run starts): one line, no traceback, exit status 130."""
    from stitchkit.training.loop import EXIT_INTERRUPTED

    command = ["train", *TINY, "train.epochs=1", "train.log_every=100", f"output.dir={tmp_path / 'run'}"]
    with monkeypatch.context() as patch:
        _refuse_building(patch)
        assert _interrupted_main(command) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.splitlines() == ["stitchkit: interrupted during set-up, before training; nothing to checkpoint; "
                                "rerun the same command"], err
    with monkeypatch.context() as patch:
        _interrupt_at_step(patch, 2)
        assert _interrupted_main(command) == EXIT_INTERRUPTED  # the same command, as it said
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (f"stitchkit: interrupted at step 2; checkpoint written to "
                    f"{str(tmp_path / 'run' / 'checkpoints' / 'last.pt')!r}; continue with --resume"), last
    assert main([*command, "--resume"]) == 0
    capsys.readouterr()

    from stitchkit.cli import entry_point
    from stitchkit.training import config

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "load_config", interrupted)  # before any run: the command line's own catch
    monkeypatch.setattr("sys.argv", ["stitchkit", *command])
    with pytest.raises(SystemExit) as stop:
        try:
            entry_point()
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C escaped the stitchkit command as a KeyboardInterrupt")
    assert stop.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "stitchkit: interrupted; rerun the same command\n"
    monkeypatch.setattr("sys.argv", ["stitchkit", "--debug", *command])  # --debug: where it landed, same status
    with pytest.raises(SystemExit) as stop:
        entry_point()
    assert stop.value.code == EXIT_INTERRUPTED and "Traceback" in capsys.readouterr().err


def _interrupt_at_step(monkeypatch, step):
    from stitchkit.training import logging as training_logging

    original, calls = training_logging.MetricsLog.advance, []

    def advance(self, steps=1):
        original(self, steps)
        calls.append(steps)
        if len(calls) == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(training_logging.MetricsLog, "advance", advance)


def test_an_interrupted_sweep_says_to_rerun_it_not_to_resume(tmp_path, monkeypatch, capsys):
    """A sweep has no --resume: interrupted in a cell's set-up or training, it says to rerun the same command."""
    sweep = tmp_path / "one.yaml"
    sweep.write_text("""
base:
  model: {pretrained: false, num_classes: 10, init_images: 32}
  data: {name: synthetic, input_size: 32, synthetic_train_size: 128, synthetic_val_size: 32}
  optim: {batch_size: 32}
  train: {batch_size: 16, epochs: 1, workers: 0, threads: 1, log_every: 100}
pairs: [[resnet10t, resnet10t]]
gaps: ["1:3"]
methods: [downsample_linear]
seeds: [0]
""")
    command = ["sweep", str(sweep), "--out", str(tmp_path / "runs")]
    with monkeypatch.context() as patch:
        _refuse_building(patch)
        assert _interrupted_main(command) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("stitchkit: sweep stopped: interrupted during set-up, before training; nothing to checkpoint; "
                       "rerun the same command to continue"), err
    with monkeypatch.context() as patch:
        _interrupt_at_step(patch, 2)
        assert _interrupted_main(command) == 130
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("stitchkit: sweep stopped: interrupted at step 2; checkpoint written to ")
    assert last.endswith("last.pt'; rerun the same command to continue") and "--resume" not in last, last
    assert main(command) == 0  # as it said


def test_a_resume_may_switch_to_fp16(tmp_path, monkeypatch):
    """train.amp may change on resume (a job requeued onto a card without bf16): a run that trained without fp16
    saved a disabled scaler's empty state, which an fp16 scaler refused with torch's own traceback."""
    command = ["train", *TINY, "train.epochs=1", "train.checkpoint_every=1", f"output.dir={tmp_path / 'run'}"]
    with monkeypatch.context() as patch:
        _interrupt_at_step(patch, 2)
        assert _interrupted_main([*command, "train.amp=none"]) == 130
    assert main([*command, "train.amp=fp16", "--resume"]) == 0
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 4


def test_ctrl_c_in_the_first_step_writes_the_start_evaluation_once(tmp_path, monkeypatch):
    """Stopped during step 1 (with train.compile, a long one), the run checkpoints at step 0 and its resume
    evaluates the start again: its metrics lines are an uninterrupted run's, not the start's twice."""
    from stitchkit.training import run as training_run

    command = ["train", *TINY, "train.epochs=1", "train.eval_at_start=true", "train.log_every=1"]
    assert main([*command, f"output.dir={tmp_path / 'alone'}"]) == 0
    original, calls = training_run.Run.micro_step, []

    def micro_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training_run.Run, "micro_step", micro_step)
        assert _interrupted_main([*command, f"output.dir={tmp_path / 'run'}"]) == 130
    assert main([*command, f"output.dir={tmp_path / 'run'}", "--resume"]) == 0

    def lines(run):
        return [(line["type"], line["step"], line.get("split"), line.get("top1"), line.get("loss"))
                for line in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())]

    assert [line[:3] for line in lines("run")].count(("eval", 0, "val")) == 1
    assert lines("run") == lines("alone")


def test_resuming_a_finished_run_leaves_it_as_it_is(tmp_path, capsys):
    """A job that always passes --resume, requeued after its run finished: nothing trains again, nothing is
    rewritten (it evaluated again and added a second set-up to result.json's times), and it says so; its checkpoints
    may have been deleted to save space."""
    run = tmp_path / "run"
    command = ["train", *TINY, "train.epochs=1", f"output.dir={run}"]
    assert main(command) == 0
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main([*command, "--resume"]) == 0
    assert capsys.readouterr().err.splitlines() == [f"{str(run)!r} holds a finished run: nothing to resume (its "
                                                    "result.json stands)"]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
    (run / "checkpoints" / "last.pt").unlink()
    assert main([*command, "--resume"]) == 0
    assert main([*command, "model.src=resnet18", "--resume"]) == 2  # another run's settings: refused, as before
