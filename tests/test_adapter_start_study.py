"""scripts/adapter_start_study.py builds its grid and judges it as its page says (no training here: the study
itself is docs/adapter_start.md)."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "adapter_start_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("adapter_start_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["adapter_start_study"] = module
    spec.loader.exec_module(module)
    return module


def test_every_arm_runs_with_its_own_settings_in_one_sweep_per_source(study, tmp_path):
    sources, arm_sweeps = study.sweeps(tmp_path, [0, 1, 2], list(study.ARMS), 1)
    merged = study.by_source(arm_sweeps, 1)
    assert sorted(s.cells[0].src for s in merged) == sorted({s.cells[0].src for _, s in arm_sweeps})
    by_arm = {}
    for arm, sweep in arm_sweeps:
        by_arm.setdefault(arm, []).extend(sweep.cells)
    cells = {c.name: c for s in merged for c in s.cells}
    assert len(cells) == sum(len(v) for v in by_arm.values())  # no two arms' runs share a folder

    def settings(arm):
        return [cells[c.name].settings for c in by_arm[arm]]

    assert all("optim" not in s and s["model"].get("adapter_norm") is None for s in settings("default"))
    assert all(s["optim"]["warmup"] == 0 for s in settings("without warm-up"))
    assert all(s["optim"]["warmup"] == 0 and s["train"]["epochs"] == 1 for s in settings("without warm-up, 1 epoch"))
    assert all(s["model"]["adapter_norm"] == "paper_code" for s in settings("paper_code"))
    for arm in ("default, 1 epoch", "without warm-up, 1 epoch"):  # time to accuracy: beyond 1:1 only
        assert all(c.gap != "1:1" and cells[c.name].settings["train"]["epochs"] == 1 for c in by_arm[arm])
    for arm in study.ONE_SEED_ARMS:
        assert {c.seed for c in by_arm[arm]} == {0}
    assert {c.seed for c in by_arm["default"]} == {0, 1, 2}
    # Each stitch reads its own destination's checkpoint from the sources' sweep.
    checkpoints = {str(tmp_path / c.name) for c in sources.cells}
    assert all(any(s["model"]["dst_checkpoint"].startswith(p) for p in checkpoints) for s in settings("default"))


def test_the_verdict_applies_the_rules_cell_by_cell(study):
    def runs(*finals, start=50.0):
        return [{"top1": f, "top1_at_start": start, "top1_after_epoch": [f - 1, f]} for f in finals]

    cells = {
        ("resnet18", "resnet18", "1:3", "downsample_linear"): {
            "default": runs(80, 81, 82), "paper_code": runs(70, 71, 72), "lstsq": runs(60),
            "default, 1 epoch": runs(72, 72, 72)},  # one epoch beats paper_code's two
        ("resnet18", "resnet18", "1:4", "downsample_linear"): {
            "default": runs(70, 70, 70), "paper_code": runs(75, 75, 75), "lstsq": runs(60),
            "default, 1 epoch": runs(65, 65, 65)},  # behind by 5 points: reported
    }
    verdict = study.judge(cells, ["default", "default, 1 epoch", "lstsq", "paper_code"])
    assert [key[2] for key, *_ in verdict["behind"]] == ["1:4"]
    assert verdict["time_to_accuracy"] == [(("resnet18", "resnet18", "1:3", "downsample_linear"), True),
                                           (("resnet18", "resnet18", "1:4", "downsample_linear"), False)]
    assert verdict["means"]["default"] == pytest.approx(75.5)


def test_the_page_describes_the_environment_its_runs_recorded(study):
    here = {"versions": {"stitchkit": "0.9.1", "torch": "2.14.1", "timm": "1.0.31", "python": "3.11.7"},
            "machine": {"threads": 1, "cores": 2, "cpu": "Test CPU", "cpu_kernels": "AVX2"}}
    run = {"top1": 80.0, "top1_at_start": 50.0, "top1_after_epoch": [79.0, 80.0], **here}
    cells = {("resnet18", "resnet18", "1:3", "downsample_linear"): {"default": [run, run], "paper_code": [run, run]}}
    page = study.report(cells, ["default", "paper_code"], 2, None, 1, {"resnet18": {"top1": 88.0, **here}})
    assert page.startswith("Measured by this script with stitchkit 0.9.1, torch 2.14.1, timm 1.0.31, 1 torch "
                           "thread(s) per run, 2 CPU cores (Test CPU, torch's AVX2 kernels), Python 3.11.7.")
    assert "resnet18 88.00%" in page
    elsewhere = {**here, "machine": {**here["machine"], "cpu_kernels": "AVX512"}}
    page = study.report(cells, ["default", "paper_code"], 2, None, 1, {"resnet18": {"top1": 88.0, **elsewhere}})
    assert "more than one environment" in page and "AVX512 kernels), Python 3.11.7 (1 run)" in page
