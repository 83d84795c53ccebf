"""The benchmark runs at tiny sizes and reports every column (no assertion on wall-clock time)."""
import json

import pytest

from stitchkit.cli import main


def test_bench_prints_every_column(capsys):
    assert main(["--threads", "1", "bench", "--src", "resnet18", "--gap", "1:3", "--batch-size", "2",
                 "--input-size", "32", "--repeats", "1", "--warmup", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["columns"]) == {"stitchkit", "naive", "full_dst", "lower_bound"}
    assert all(c["images_per_s"] > 0 for c in result["columns"].values())
    assert set(result["columns"]["lower_bound"]["parts_s"]) == {"front", "adapters", "back"}
    assert result["speedup_vs_naive"] > 0 and result["ratio_to_lower_bound"] > 0
    assert main(["--threads", "1", "bench", "--src", "resnet18", "--dst", "resnet34", "--batch-size", "2",
                 "--input-size", "32", "--repeats", "1", "--warmup", "0"]) == 0
    text = capsys.readouterr().out
    for column in ("stitchkit", "naive", "full_dst", "lower_bound", "speedup vs naive"):
        assert column in text


def test_grouped_bench_times_separate_and_grouped_runs(capsys):
    assert main(["--threads", "1", "bench", "--grouped", "--src", "resnet10t", "--gap", "1:2,1:3",
                 "--adapter", "linear", "--batch-size", "8", "--input-size", "32", "--train-images", "16",
                 "--val-images", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cells"] == ["1:2 linear", "1:3 linear"]
    assert result["separate_s"] > 0 and result["grouped_s"] > 0 and result["grouped_vs_separate"] > 0
    assert result["results_equal"] is True
    assert main(["bench", "--gap", "1:2,1:3"]) == 2  # lists need --grouped


def test_data_bench_reports_every_pipeline_stage(capsys):
    assert main(["--threads", "1", "bench", "--data", "--train-images", "8", "--batch-size", "4", "--input-size", "32",
                 "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = list(result["columns"])
    assert names[:3] == ["decode", "decode+augment (cpu)", "decode+crop (augment_on=device, worker part)"]
    assert names[-2].startswith("flip+autoaugment+normalize on cpu") and names[-2].endswith("batched)")
    assert names[-1].startswith("the same per image")  # the reference it replaced, measured beside it
    try:
        import nvidia.dali  # noqa: F401
        assert names[3] == "decode+augment (data.loader=dali, 1 thread, CPU)" and len(names) == 6
    except ImportError:
        assert len(names) == 5
    assert all(c["images_per_s"] > 0 for c in result["columns"].values())


def test_pipeline_bench_measures_loader_step_and_whole_run_in_one_go(capsys):
    assert main(["--threads", "1", "bench", "--pipeline", "--src", "resnet10t", "--gap", "1:2", "--adapter", "linear",
                 "--batch-size", "4", "--input-size", "32", "--train-images", "8", "--repeats", "1",
                 "--augment-on", "device", "--loader", "gpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 8 and result["loader"] == "gpu" and result["host_syncs_per_batch"] is None
    for key in ("loader_images_per_s", "step_images_per_s", "run_images_per_s"):
        assert result[key] > 0, key
    assert result["run_fraction_of_step"] == result["run_images_per_s"] / result["step_images_per_s"]
    assert result["limited_by"] in ("data", "step") and result["run_seconds"]["train"] > 0
    assert main(["--threads", "1", "bench", "--pipeline", "--src", "resnet10t", "--gap", "1:2", "--adapter", "linear",
                 "--batch-size", "4", "--input-size", "32", "--train-images", "8", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    for line in ("loader alone", "step alone", "whole run", "of the step"):
        assert line in text


def test_pipeline_bench_refuses_a_whole_run_that_timed_no_step(capsys, monkeypatch):
    """With --compile the run's first step compiles and is not timed: a run of one batch times none. The bench says
    so and how to fix it, instead of dividing by nothing (reached here by a run that reports no timed image)."""
    import stitchkit.training

    real_train = stitchkit.training.train
    monkeypatch.setattr(stitchkit.training, "train", lambda config: dict(real_train(config), images_per_s=None))
    assert main(["--threads", "1", "bench", "--pipeline", "--src", "resnet10t", "--gap", "1:2", "--adapter", "linear",
                 "--batch-size", "4", "--input-size", "32", "--train-images", "4", "--repeats", "1"]) != 0
    err = capsys.readouterr().err
    assert "timed no training step" in err and "--train-images of at least 8" in err


@pytest.mark.slow
def test_gpu_check_script_runs_at_smoke_size(tmp_path):
    """The GPU check is prepared for a GPU machine; --smoke runs every part of it on the CPU at tiny sizes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--skip-compile", "--out", str(tmp_path)],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["stitchkit_bf16_channels_last"]["largest_batch"] == 4
    assert report["speedup_vs_naive_images_per_s"] > 0
    assert set(report["no_downsample"]) == {"naive_fp32", "stitchkit_bf16"}
    assert report["engine"]["torchrun"]["returncode"] == 0
    assert report["engine"]["grouped"]["max_abs_loss_difference"] == 0.0  # on the CPU, exactly equal
    assert set(report["data_path"]) == {"torch_cpu_augment", "torch_device_augment", "gpu", "gpu_inline"}
    assert all(row.get("run_fraction_of_step", 0) > 0 for row in report["data_path"].values()), report["data_path"]
    assert list(report["section_seconds"]) == ["4", "1", "2", "3"]  # the data path first, then the step
    assert all(report["gpu_loader_crop"][way]["done_ms"] > 0 for way in ("round_each", "round_batch"))


def test_gpu_check_names_its_sections(tmp_path):
    """--sections reruns part of the check (a device run cut short); a number it does not have is refused."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--sections", "1,5", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--sections takes numbers from 1 to 4" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()
