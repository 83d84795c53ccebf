"""The sweep command's edges: options an executor would ignore, SLURM missing or faked, what a queued job carries,
a closed output stream, a time-out signal, cells that failed before, runs of another version of the sweep, and
sweep files with values of the wrong type. Each trains at most one tiny cell."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.rundir import RunDir
from stitchkit.sweeps.grid import expand, load_sweep

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


# --- options -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--gpus-per-job", "2"], "--gpus-per-job goes with --executor slurm"),
    (["--partition", "gpu", "--time-min", "30"], "--partition, --time-min go with --executor slurm"),
    (["--wait"], "--wait goes with --executor slurm"),
    (["--cluster", "local"], "--cluster goes with --executor slurm"),
    (["--no-costs"], "--no-costs goes with --dry-run"),
    (["--executor", "slurm", "--gpus-per-job", "-3"], "--gpus-per-job must be at least 1, got -3"),
    (["--executor", "slurm", "--time-min", "0"], "--time-min must be at least 1"),
    (["--executor", "slurm", "--cluster", "local", "--partition", "gpu"], "--partition only reaches SLURM"),
])
def test_options_an_executor_would_ignore_are_refused(tmp_path, capsys, options, message):
    code, _, err = _run(capsys, "sweep", _one(tmp_path), "--out", tmp_path / "runs", *options)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_slurm_without_sbatch_is_refused_and_a_fake_sbatch_gets_the_sweeps_job_name(tmp_path, capsys, monkeypatch):
    """Without sbatch, submitit used to fall back to running every cell at once in the background and report them
    submitted. With a fake sbatch the submission goes through, under the sweep's name."""
    pytest.importorskip("submitit")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    sweep, runs = _one(tmp_path, name="my_grid"), tmp_path / "runs"
    code, out, err = _run(capsys, "sweep", sweep, "--out", runs, "--executor", "slurm", "--partition", "gpu")
    assert code == 2 and "no SLURM found (sbatch and srun are not on PATH)" in err and "--cluster local" in err, err
    assert not out and not runs.exists()

    fake = tmp_path / "fake-bin"
    fake.mkdir()
    (fake / "sbatch").write_text(f'#!/bin/sh\ncp "$(eval echo \\${{$#}})" {tmp_path}/script.sh\n'
                                 'echo "Submitted batch job 4242"\n')
    for tool in ("sbatch", "srun", "squeue", "sacct", "scancel"):
        (fake / tool).touch()
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin:/bin")
    code, out, err = _run(capsys, "sweep", sweep, "--out", runs, "--executor", "slurm", "--partition", "gpu")
    assert code == 0 and "submitted 1 cells" in out, err
    script = (tmp_path / "script.sh").read_text()
    assert "#SBATCH --job-name=my_grid" in script and "#SBATCH --partition=gpu" in script
    # Two cells on one front, trained together: one job, and the line says both counts.
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text(sweep.read_text().replace("methods: [downsample_linear]",
                                                 "methods: [downsample_linear, downsample_bottleneck]")
                       + "group_by_front: true\n")
    code, out, err = _run(capsys, "sweep", grouped, "--out", tmp_path / "grouped-runs", "--executor", "slurm")
    assert code == 0 and "submitted 2 cells in 1 jobs" in out, (out, err)


def test_a_queued_job_trains_what_was_submitted(tmp_path, monkeypatch):
    """The job carries the resolved cells and an absolute runs folder: the sweep file edited by the time the job
    runs, and the job started in another folder, change nothing (it used to re-read the file by a relative path)."""
    import yaml

    from stitchkit.sweeps.runner import cell_jobs

    monkeypatch.chdir(tmp_path)
    sweep_file = _one(tmp_path)
    submitted = load_sweep(sweep_file.name, ["optim.lr=0.001"])
    [job] = cell_jobs(submitted, submitted.runnable, Path("runs"), retry_failed=False, gpus_per_job=1)
    job = pickle.loads(pickle.dumps(job))  # as the queue keeps it
    assert Path(job.runs_dir).is_absolute() and [c.name for c in job.sweep.cells] == [submitted.cells[0].name]
    sweep_file.write_text(sweep_file.read_text().replace('gaps: ["1:3"]', 'gaps: ["2:3"]'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    assert job() == {submitted.cells[0].name: "finished"}
    config = yaml.safe_load((tmp_path / "runs" / submitted.cells[0].name / "config.yaml").read_text())
    assert config["optim"]["lr"] == 0.001 and config["model"]["gap"] == "1:3"
    assert not (elsewhere / "runs").exists()


# --- a closed output stream ----------------------------------------------------------------------------------------

class _ClosesAfter:
    """stderr whose reader goes away once a line containing ``word`` has been written (``... 2>&1 | head``)."""

    def __init__(self, word: str, closed: bool = False):
        self.word, self.closed, self.lines = word, closed, []

    def write(self, text: str) -> int:
        if self.closed:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(text)
        self.closed = self.word in text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_a_closed_output_stops_the_sweep_without_failing_the_cell(tmp_path, capsys, monkeypatch):
    """The progress line that cannot be written is not the cell's failure: it is not recorded failed, the sweep
    stops with a non-zero code, and the next run trains the cell to the end."""
    sweep, runs = _one(tmp_path), tmp_path / "runs"
    monkeypatch.setattr(sys, "stderr", _ClosesAfter("training stitch run"))
    assert main(["sweep", str(sweep), "--out", str(runs)]) == 141
    monkeypatch.undo()
    cell = load_sweep(sweep).cells[0].name
    assert RunDir(runs / cell).state() in ("new", "interrupted") and not RunDir(runs / cell).result.exists()
    code, out, _ = _run(capsys, "sweep", sweep, "--out", runs)
    assert code == 0 and json.loads(out.splitlines()[-1])["finished"] == 1


def test_a_stdout_closed_before_the_summary_keeps_the_sweeps_exit_code(tmp_path, monkeypatch):
    """The work done, only the summary line is lost: the code still says that a cell failed (not 141)."""
    sweep, runs = _one(tmp_path), tmp_path / "runs"
    _fake_result(runs / load_sweep(sweep).cells[0].name, "failed", "one")
    monkeypatch.setattr(sys, "stdout", _ClosesAfter("", closed=True))
    assert main(["sweep", str(sweep), "--out", str(runs)]) == 1


# --- the time-out signal under submitit ----------------------------------------------------------------------------

def test_usr2_checkpoints_the_training_cell_before_submitit_requeues(tmp_path, monkeypatch):
    """SLURM's time-out warning (USR2) used to requeue at once, losing the steps since the last periodic checkpoint
    (train.checkpoint_every); now the cell writes its checkpoint where it stands, then submitit requeues it. The job
    runs under submitit's own signal handling, as on a node; the signal comes when step 2 is logged."""
    pytest.importorskip("submitit")
    import torch
    from submitit.core.utils import DelayedSubmission, JobPaths
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE, LocalJobEnvironment

    from stitchkit.sweeps.runner import cell_jobs
    from stitchkit.training.logging import MetricsLog

    monkeypatch.chdir(tmp_path)  # the job moves to the folder it was submitted from
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "1")
    sweep, runs = load_sweep(_one(tmp_path, images=100000, every=100000)), tmp_path / "runs"
    [job] = cell_jobs(sweep, sweep.runnable, runs, retry_failed=False, gpus_per_job=1)
    write = MetricsLog.write

    def write_then_time_out(self, record):
        write(self, record)
        if record.get("type") == "train" and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGUSR2)  # SLURM's warning before the time limit

    monkeypatch.setattr(MetricsLog, "write", write_then_time_out)
    delayed = DelayedSubmission(job)
    delayed.set_timeout(60, 3)
    paths = JobPaths(runs / ".submitit", job_id="1", task_id=0)
    paths.folder.mkdir(parents=True)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGCONT, signal.SIGUSR2)}
    try:
        LocalJobEnvironment()._handle_signals(paths, delayed)  # what submitit does before it runs a job
        with pytest.raises(SystemExit) as ended:
            delayed.result()
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    assert ended.value.code == LOCAL_REQUEUE_RETURN_CODE  # submitit requeued it
    cell = RunDir(runs / sweep.cells[0].name)
    assert cell.state() == "interrupted"
    step = torch.load(cell.last_checkpoint, map_location="cpu", weights_only=False)["counters"]["step"]
    assert step == 2  # where it stood, not step 0 or the last multiple of checkpoint_every
    assert paths.submitted_pickle.is_file()  # the job to resume, as submitit requeues it


_TORCHRUN_CELL = """
import pathlib, sys
from stitchkit.sweeps.runner import train_with_torchrun
from stitchkit.training import RunInterrupted, load_config
run = pathlib.Path(sys.argv[1])
run.mkdir(parents=True, exist_ok=True)
config = load_config(None, ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=2048",
                            "data.synthetic_val_size=32", "optim.batch_size=32", "train.batch_size=16",
                            "train.workers=0", "train.threads=1", "model.pretrained=false", "mode=scratch",
                            "model.src=resnet10t", "train.epochs=1", "train.log_every=1",
                            "train.checkpoint_every=1000", f"output.dir={run}"])
try:
    train_with_torchrun(2)(config, resume=sys.argv[2] == "resume", overwrite=False)
except RunInterrupted as stop:
    print(stop, flush=True)
    sys.exit(stop.exit_code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("whom", ["job", "every process"])  # USR2 turned into SIGTERM reaches the job alone
def test_a_torchrun_cell_stopped_by_sigterm_is_interrupted_not_failed(tmp_path, whom):
    """SLURM's SIGTERM (preemption, time-out) to a job that trains a cell with torchrun: the training processes
    checkpoint where they stand and the cell resumes next time. torchrun's exit code said "failed" before, and a
    failed cell is not rerun without --retry-failed."""
    from stitchkit.training.loop import EXIT_PREEMPTED

    import stitchkit

    run = tmp_path / "cell"
    src = str(Path(stitchkit.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src)
    env.pop("STITCHKIT_FAULT", None)
    job = subprocess.Popen([sys.executable, "-c", _TORCHRUN_CELL, str(run), "new"], env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        time.sleep(0.05)
    if whom == "job":
        job.send_signal(signal.SIGTERM)
    else:
        os.killpg(job.pid, signal.SIGTERM)
    out, err = job.communicate(timeout=240)
    assert job.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "stopped by SIGTERM at step" in out and RunDir(run).state() == "interrupted"
    resumed = subprocess.run([sys.executable, "-c", _TORCHRUN_CELL, str(run), "resume"], env=env, text=True,
                             capture_output=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 64 and result["world_size"] == 2


# --- what the command says -----------------------------------------------------------------------------------------

def _fake_result(run_dir: Path, status: str, sweep: str) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({"status": status, "error": "OSError: no such file"}))
    (run_dir / "cell.json").write_text(json.dumps({"sweep": sweep}))


def test_cells_that_failed_before_are_named_with_the_fix(tmp_path, capsys):
    sweep, runs = _one(tmp_path), tmp_path / "runs"
    _fake_result(runs / load_sweep(sweep).cells[0].name, "failed", "one")
    code, out, err = _run(capsys, "sweep", sweep, "--out", runs)
    assert code == 1 and json.loads(out.splitlines()[-1])["skipped-failed"] == 1
    assert "1 cell failed in an earlier attempt and was not rerun; add --retry-failed to run it again" in err


def test_finished_runs_of_another_version_of_the_sweep_are_announced(tmp_path, capsys):
    """Changing a setting that names the cells (optim.lr) starts a new set of cells in the same folder and the
    manifest lists only them: say so, and how many finished runs the report will leave out."""
    sweep, runs = _one(tmp_path), tmp_path / "runs"
    _fake_result(runs / load_sweep(sweep, ["optim.lr=0.001"]).cells[0].name, "finished", "one")
    _fake_result(runs / "elsewhere" / "run", "finished", "another_sweep")  # another sweep's: not counted
    _fake_result(runs / load_sweep(sweep).cells[0].name, "finished", "one")  # this version's: nothing to train
    code, _, err = _run(capsys, "sweep", sweep, "--out", runs)
    assert code == 0
    assert ("1 finished run in this folder belongs to another version of this sweep (other settings); it stays on "
            "disk but the report summarises this version") in err
    code, _, err = _run(capsys, "sweep", sweep, "--out", runs, "optim.lr=0.001")
    assert code == 0 and "1 finished run in this folder belongs to another version" in err


def test_a_missing_data_folder_is_refused_once_before_any_cell(tmp_path, capsys):
    sweep, runs = _one(tmp_path), tmp_path / "runs"
    code, _, err = _run(capsys, "sweep", sweep, "--out", runs, "data.name=imagefolder", f"data.root={tmp_path}/none")
    assert code == 2 and f"data.root '{tmp_path}/none' does not exist" in err and err.count("\n") == 1, err
    assert not runs.exists()
    (tmp_path / "data").mkdir()  # the folder is there, its train/ is not
    code, _, err = _run(capsys, "sweep", sweep, "--out", runs, "data.name=imagefolder", f"data.root={tmp_path}/data")
    assert code == 2 and f"data folder '{tmp_path}/data/train' does not exist" in err and err.count("\n") == 1, err


def test_local_gpu_workers_fail_the_sweep_when_any_does(monkeypatch):
    """One worker per GPU; one killed by a signal (a negative code) is not hidden behind another's 0."""
    from stitchkit.sweeps import runner

    class Worker:
        def __init__(self, code):
            self.code = code

        def wait(self):
            return self.code

    for codes, expected in (([0, -9], 137), ([-9, 0], 137), ([0, 3], 3), ([0, 0], 0)):
        given = iter(codes)
        monkeypatch.setattr(runner.subprocess, "Popen", lambda *a, **k: Worker(next(given)))
        assert runner.run_local_gpus(["sweep", "x.yaml"], len(codes)) == expected, codes


def test_slurm_wait_exits_non_zero_when_cells_fail(tmp_path, capsys):
    pytest.importorskip("submitit")
    sweep, runs = _one(tmp_path), tmp_path / "runs"
    code, out, _ = _run(capsys, "sweep", sweep, "--out", runs, "optim.lr=1e30", "--executor", "slurm",
                        "--cluster", "debug", "--wait")
    assert code == 1 and json.loads(out.splitlines()[-1])["failed"] == 1


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


# --- cells renamed since -------------------------------------------------------------------------------------------

BASELINES = """
base:
  model: {pretrained: false, num_classes: 10, init_images: 64}
  data: {name: synthetic, input_size: 32, synthetic_train_size: 32, synthetic_val_size: 16}
  train: {epochs: 1, workers: 0, threads: 1}
pairs: [[resnet10t, resnet10t]]
gaps: ["1:3"]
methods: []
baselines:
  finetune: {lrs: [0.01]}
  scratch: {models: [resnet10t]}
seeds: [0]
"""


def _made_under_earlier_name(runs: Path, sweep, cell, **changed) -> Path:
    """A finished run as stitchkit 0.12.0 left it: in the folder named after the whole base, with the settings the
    cell trains with (``changed``: ``{"section.key": value}`` differing from them)."""
    from dataclasses import replace

    from stitchkit.training.config import to_yaml

    config = sweep.config(replace(cell, name=cell.earlier_name), runs)
    for key, value in changed.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    run = RunDir(runs / cell.earlier_name)
    run.path.mkdir(parents=True)
    run.config.write_text(to_yaml(config))
    run.result.write_text(json.dumps({"status": "finished", "top1": 50.0, **cell.describe(),
                                      "name": cell.earlier_name}))
    run.cell.write_text(json.dumps({"sweep": sweep.name, **cell.describe(), "name": cell.earlier_name}))
    return run.path


def test_runs_made_under_a_cells_earlier_name_are_taken_up_not_retrained(tmp_path, capsys):
    """Up to 0.12.0 a baseline cell's name took the base's stitch-only settings (model.init_images here): its
    name is now that of the settings it trains with. A resumed sweep finds the runs finished under the earlier
    names and keeps them there, neither training them again nor leaving them out of the report."""
    path, runs = tmp_path / "baselines.yaml", tmp_path / "runs"
    path.write_text(BASELINES)
    sweep = load_sweep(path)
    assert [c.kind for c in sweep.cells] == ["finetune", "scratch"]
    assert all(c.earlier_name and c.earlier_name != c.name for c in sweep.cells)
    _made_under_earlier_name(runs, sweep, sweep.cells[0])
    # Before the sweep's base applied to each cell as far as its mode uses it, a scratch run recorded the stitch's
    # setting too: it changed nothing such a run does, so the run is the cell's all the same.
    _made_under_earlier_name(runs, sweep, sweep.cells[1], **{"model.init_images": 64})
    code, out, err = _run(capsys, "sweep", path, "--out", runs)
    assert code == 0 and json.loads(out.splitlines()[-1]) == {"runs_dir": str(runs), "skipped-finished": 2}, err
    assert "2 cells found under the names stitchkit 0.12.0 and earlier gave them (2 finished), and kept there" in err
    assert "another version" not in err and not any((runs / c.name).exists() for c in sweep.cells)
    manifest = json.loads((runs / "sweeps" / "baselines.json").read_text())
    assert [c["name"] for c in manifest["cells"]] == [c.earlier_name for c in sweep.cells]


def test_a_run_under_a_cells_earlier_name_with_other_settings_is_not_taken_up(tmp_path):
    from stitchkit.sweeps.runner import adopt_earlier_runs

    path, runs = tmp_path / "baselines.yaml", tmp_path / "runs"
    path.write_text(BASELINES)
    sweep = load_sweep(path)
    _made_under_earlier_name(runs, sweep, sweep.cells[0], **{"train.epochs": 2})
    said = []
    kept = adopt_earlier_runs(sweep, runs, said.append)
    assert [c.name for c in kept.cells] == [c.name for c in sweep.cells]
    assert len(said) == 1 and "not taken up under its earlier name, the cell trains as new" in said[0], said
    assert f"{sweep.cells[0].earlier_name} (finished): its settings differ" in said[0]
    assert "train.epochs=2 there, 1 now" in said[0]
    # Nothing under the earlier name, or a run under the cell's own name already: nothing to take up.
    assert [c.name for c in adopt_earlier_runs(sweep, tmp_path / "none").cells] == [c.name for c in sweep.cells]


# --- cells that do not apply ---------------------------------------------------------------------------------------

def test_a_sweep_whose_every_cell_is_inapplicable_is_refused(tmp_path, capsys):
    """A ViT block between two CNNs: each cell is skipped, so the sweep would train nothing and exit 0, as an empty
    grid would; it is refused as one, with the reason and the fix, before anything is written."""
    path, runs = tmp_path / "cnn_vit_block.yaml", tmp_path / "runs"
    path.write_text((ONE % {"images": 32, "every": 1000}).replace("[downsample_linear]", "[vit_block]")
                    .replace("seeds: [0]", "seeds: [0, 1, 2]"))
    for extra in ([], ["--dry-run"]):
        code, _, err = _run(capsys, "sweep", path, "--out", runs, *extra)
        assert code == 2 and err.count("\n") == 1, err
        assert "has nothing to run: none of its 3 cells applies; vit_block joins token layouts only (ViT to ViT); " \
               "resnet10t -> resnet10t is not. Add pairs or methods that apply to each other" in err
    assert not runs.exists()
    # with a fine-tuning baseline across models too, two reasons:
    path.write_text((ONE % {"images": 32, "every": 1000}).replace("[downsample_linear]", "[vit_block]")
                    .replace("[[resnet10t, resnet10t]]", "[[resnet10t, resnet18]]")
                    + "baselines: {finetune: {lrs: [0.01]}}\n")
    with pytest.raises(StitchkitError, match=r"nothing to run: none of its 2 cells applies; vit_block .*"
                                             r" \(and 1 other reason\)"):
        load_sweep(path)


def test_a_sweep_that_skips_some_cells_says_how_many_and_why(tmp_path, capsys):
    path, runs = tmp_path / "some.yaml", tmp_path / "runs"
    path.write_text((ONE % {"images": 32, "every": 1000}).replace("[downsample_linear]", "[downsample_linear, vit_block]")
                    .replace("[[resnet10t, resnet10t]]", "[[resnet10t, resnet10t], [resnet10t, resnet18]]")
                    + "baselines: {finetune: {lrs: [0.01]}}\n")
    sweep = load_sweep(path)
    assert len(sweep.runnable) == 3 and len(sweep.cells) == 6
    for cell in sweep.runnable:  # finished already: nothing trains here
        _fake_result(runs / cell.name, "finished", "some")
    code, out, err = _run(capsys, "sweep", path, "--out", runs)
    assert code == 0 and json.loads(out.splitlines()[-1])["skipped-finished"] == 3
    assert ("stitchkit: 3 cells skipped (inapplicable): vit_block joins token layouts only (ViT to ViT); "
            "resnet10t -> resnet10t is not (1 cell); 2 more for 2 other reasons (--dry-run lists each cell's)\n") in err
    assert err.count("skipped (inapplicable)") == 1  # said once, not again by run_local
    from stitchkit.sweeps.runner import run_local

    said = []
    run_local(load_sweep(path), runs, log=said.append)
    assert said[0].startswith("3 cells skipped (inapplicable): vit_block") and len(said) == 1 + 3, said
    path.write_text(ONE % {"images": 32, "every": 1000})  # nothing skipped: nothing said
    assert load_sweep(path).skipped_summary() is None
