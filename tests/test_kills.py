"""A sweep (and its report) SIGKILLed at every write and state change, then rerun, ends as an uninterrupted one.

Each kill is injected with ``STITCHKIT_FAULT=POINT:N`` (stitchkit.faults) in a subprocess; the rerun must finish
every cell exactly once, refuse nothing, and give the numbers of a sweep that was never interrupted.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stitchkit.files import append_line, atomic_write_text, cut_torn_tail
from stitchkit.temps import is_own_temp, remove_own_temps
from stitchkit.rundir import RunDir

SWEEP = """
base:
  data: {name: synthetic, input_size: 32, synthetic_train_size: 64, synthetic_val_size: 32, synthetic_classes: 1000}
  optim: {batch_size: 16}
  train: {batch_size: 16, workers: 0, threads: 1, epochs: 2, log_every: 1, checkpoint_every: 2}
  model: {pretrained: false}
pairs:
  - [resnet10t, resnet10t]
gaps: ["1:2"]
methods: [downsample_linear]
baselines:
  finetune: {lrs: [0.002]}
seeds: [0]
"""
NUMBERS = ("top1", "top5", "epochs", "gmacs", "params", "trainable_params")
# Every write and state change of a sweep of one stitch and one fine-tuning baseline (N: which occurrence). Each
# costs a killed sweep, a rerun and a report (about 8 s): the suite kills at one point of every kind (before and
# after a rename, half a line, the lock, a step, an evaluation) on every file kind that matters for resuming;
# STITCHKIT_ALL_KILLS=1 adds the others (about 1.5 minutes more).
EVERY_KIND = ["locked:1", "write:cell.json:1", "renamed:config.yaml:2", "append:metrics.jsonl:3",
              "write:last.pt:1",  # before the first checkpoint: the rerun starts afresh, its metrics too
              "write:last.pt:2", "renamed:result.json:2", "append:attempts.log:2", "step:3", "evaluation:2"]
MORE = ["write:kills.json:1", "renamed:kills.json:1", "renamed:cell.json:2", "append:attempts.log:1",
        "write:config.yaml:1", "renamed:last.pt:1", "write:adapters.pt:1", "renamed:model.pt:1", "write:result.json:1"]
ALL_KILLS = os.environ.get("STITCHKIT_ALL_KILLS") == "1"
# The quick suite (-m "not slow") kills at two of them: mid-checkpoint and mid-line.
QUICK = ("write:last.pt:2", "append:metrics.jsonl:3")
POINTS = [p if p in QUICK else pytest.param(p, marks=pytest.mark.slow) for p in EVERY_KIND] + [
    pytest.param(p, marks=pytest.mark.skipif(not ALL_KILLS, reason="the other write points: STITCHKIT_ALL_KILLS=1"))
    for p in MORE]


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    for key in ("STITCHKIT_SWEEP_WORKER", "STITCHKIT_FAULT", "WORLD_SIZE"):
        if key not in extra:
            env.pop(key, None)
    return env


def _stitchkit(*args, **env):
    return subprocess.run([sys.executable, "-m", "stitchkit", *map(str, args)], env=_env(**env), capture_output=True,
                          text=True, timeout=600)


def _numbers(runs: Path) -> dict:
    """Each cell's numbers from the report's results.csv (times left out)."""
    report = runs / "report"
    done = _stitchkit("report", runs, "--out", report)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(report / "results.csv") as f:
        return {row["run_dir"].split("/")[-1] + row["method"]: {k: row[k] for k in NUMBERS} for row in csv.DictReader(f)}


def _sweep_file(folder: Path) -> Path:
    path = folder / "kills.yaml"
    path.write_text(SWEEP)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    runs = folder / "runs"
    done = _stitchkit("sweep", _sweep_file(folder), "--out", runs)
    assert done.returncode == 0, done.stderr[-2000:]
    return _numbers(runs)


def _finished_once(runs: Path) -> None:
    cells = [RunDir(p.parent) for p in runs.rglob("cell.json")]
    assert len(cells) == 2 and all(c.state() == "finished" for c in cells)
    for cell in cells:
        attempts = cell.attempts.read_text().splitlines()
        assert sum(" finished" in line for line in attempts) == 1, attempts
        assert all(" pid=" in line for line in attempts)  # no torn line left
        steps = [json.loads(l)["step"] for l in cell.metrics.read_text().splitlines() if '"train"' in l]
        assert steps == sorted(set(steps)), f"metric lines lost or repeated in {cell}"
        assert not cell.foreign_files()


@pytest.mark.parametrize("fault", POINTS)
def test_a_sweep_killed_at_any_write_reruns_to_the_uninterrupted_result(tmp_path, reference, fault):
    sweep, runs = _sweep_file(tmp_path), tmp_path / "runs"
    killed = _stitchkit("sweep", sweep, "--out", runs, STITCHKIT_FAULT=fault)
    assert killed.returncode == -9, f"{fault} was never reached: {killed.stderr[-1500:]}"
    rerun = _stitchkit("sweep", sweep, "--out", runs)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _finished_once(runs)
    assert _numbers(runs) == reference


@pytest.mark.parametrize("fault", ["write:results.csv:1", pytest.param("write:index.html:1", marks=pytest.mark.slow), pytest.param(
    "renamed:gap_resnet10t_resnet10t.png:1", marks=pytest.mark.skipif(not ALL_KILLS, reason="STITCHKIT_ALL_KILLS=1"))])
def test_a_report_killed_half_way_is_whole_after_a_rerun(tmp_path, reference, fault):
    sweep, runs = _sweep_file(tmp_path), tmp_path / "runs"
    assert _stitchkit("sweep", sweep, "--out", runs).returncode == 0
    killed = _stitchkit("report", runs, "--out", runs / "report", STITCHKIT_FAULT=fault)
    assert killed.returncode == -9, f"{fault} was never reached: {killed.stderr[-1500:]}"
    assert _numbers(runs) == reference
    assert not [p for p in (runs / "report").iterdir() if is_own_temp(p)]


def test_own_leftovers_are_told_from_a_users_files(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    atomic_write_text(run.result, "{}")
    leftover = run.path / ".result.json.k2j3ab_Z.tmp"  # what a kill before the rename left (before PIDs in names)
    leftover.write_text("half")
    os.utime(leftover, (1e9, 1e9))  # unchanged for years: its writer is gone
    (run.path / "notes.txt").write_text("mine")
    assert run.foreign_files() == ["notes.txt"]
    assert run.remove_leftovers() == [".result.json.k2j3ab_Z.tmp"] and (run.path / "notes.txt").is_file()
    fresh = run.path / ".config.yaml.abcdefgh.tmp"
    fresh.write_text("a live writer's")
    assert remove_own_temps(run.path) == [] and fresh.is_file()  # its writer cannot be asked and may be writing


def test_a_torn_line_is_cut_before_the_next_append(tmp_path):
    log = tmp_path / "metrics.jsonl"
    append_line(log, '{"step": 1}')
    with open(log, "a") as f:
        f.write('{"step": 2, "lo')  # a kill in the middle of a write
    append_line(log, '{"step": 2}')
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert not cut_torn_tail(log)


def _burn_cpu():
    """A process that keeps one core busy, as another job on a shared machine does."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


@pytest.mark.slow
def test_soak_a_sweep_killed_many_times_at_random_moments_on_a_busy_machine(tmp_path, reference):
    """Kills at seeded random moments, short and long, while another process keeps a core busy. Whatever moments
    they hit (the timing varies from machine to machine), the rerun must finish both cells exactly once with the
    numbers of the uninterrupted sweep: that, not the timing, is what is asserted."""
    import random
    import signal
    import time

    sweep, runs = _sweep_file(tmp_path), tmp_path / "runs"
    command = [sys.executable, "-m", "stitchkit", "sweep", str(sweep), "--out", str(runs)]
    rng, kills = random.Random(15), 0
    burner = _burn_cpu()
    try:
        for interval in [rng.uniform(0.2, 1.5) for _ in range(4)] + [rng.uniform(2.0, 6.0) for _ in range(3)]:
            process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(interval)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait()
    finally:
        burner.kill()
        burner.wait()
    rerun = _stitchkit("sweep", sweep, "--out", runs)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _finished_once(runs)
    assert _numbers(runs) == reference
    assert kills >= 1  # at least one landed (the first comes within 1.5 s, long before the sweep can finish)


def _trained_run(run: Path) -> Path:
    """A finished tiny run (trained in a subprocess, as the kill tests run everything)."""
    trained = _stitchkit("train", "mode=scratch", "model.src=resnet10t", "model.pretrained=false", "data.name=synthetic",
                         "data.input_size=32", "data.synthetic_train_size=32", "data.synthetic_val_size=32",
                         "optim.batch_size=16", "train.batch_size=16", "train.workers=0", "train.epochs=1",
                         f"output.dir={run}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    return run


@pytest.mark.slow
def test_eval_killed_while_writing_its_result_gives_the_same_result_when_rerun(tmp_path):
    run = _trained_run(tmp_path / "run")
    killed = _stitchkit("eval", run, "--workers", "0", STITCHKIT_FAULT="write:eval.json:1")
    assert killed.returncode == -9 and not RunDir(run).evaluation.exists()
    assert [p.name for p in run.iterdir() if is_own_temp(p)]  # the kill left a temporary file ...
    again = _stitchkit("eval", run, "--workers", "0")
    assert again.returncode == 0, again.stderr[-2000:]
    record = json.loads(RunDir(run).evaluation.read_text())
    assert record["top1"] == json.loads(RunDir(run).result.read_text())["top1"]
    assert not RunDir(run).foreign_files()  # ... which is ours, not the user's


@pytest.mark.slow
def test_export_killed_half_way_leaves_no_folder_and_reruns_whole(tmp_path):
    run = _trained_run(tmp_path / "run")
    out = tmp_path / "exported"
    killed = _stitchkit("export", run, "--out", out, "--format", "torchscript", "--format", "torch-export",
                        STITCHKIT_FAULT="write:model.pt2:1")
    assert killed.returncode == -9 and not out.exists()  # never a folder that looks complete
    again = _stitchkit("export", run, "--out", out, "--format", "torchscript", "--format", "torch-export")
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model", "model.pt2", "model.torchscript.pt",
                                                     "preprocessing.json"]
    assert sorted(p.name for p in (out / "model").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "run"]  # the killed one's staging is gone
