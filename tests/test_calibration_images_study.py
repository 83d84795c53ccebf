"""scripts/calibration_images_study.py builds its arms and judges them as its page says (no training here: the
study itself is docs/calibration_images.md)."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "calibration_images_study.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("calibration_images_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calibration_images_study"] = module
    spec.loader.exec_module(module)
    return module


def test_every_arm_gives_its_own_count_and_folder_and_reads_the_given_sources(study, tmp_path):
    sources_dir = tmp_path / "elsewhere"
    sources, arm_sweeps = study.sweeps(tmp_path / "out", sources_dir, [0, 1, 2], study.ARMS, 1)
    merged = study.by_source(arm_sweeps, 1)
    cells = {c.name: c for s in merged for c in s.cells}
    assert len(cells) == sum(len(s.cells) for _, s in arm_sweeps)  # no two arms' runs share a folder
    assert {c.settings["model"]["init_images"] for c in cells.values()} == set(study.ARMS)
    # A pass shares init_images and the seed: one pass per arm, seed and source model.
    passes = [g for s in merged for g in s.groups(s.runnable)]
    assert all(len({(c.settings["model"]["init_images"], c.seed) for c in g}) == 1 for g in passes)
    assert len(passes) == len(study.ARMS) * 3 * len(merged)
    checkpoints = {str((sources_dir / c.name).resolve()) for c in sources.cells}
    assert all(any(c.settings["model"]["dst_checkpoint"].startswith(p) for p in checkpoints) for c in cells.values())


def test_the_verdict_pairs_seeds_against_the_default(study):
    def runs(*ends):
        return [{"seed": i, "top1": e, "top1_at_start": 50.0, "group_size": 7, "seconds": {"calibration": 14.0}}
                for i, e in enumerate(ends)]

    default = study.DEFAULT
    cells = {("resnet18", "resnet18", "1:4", "downsample_linear"): {default: runs(80, 82, 81),
                                                                    1024: runs(81.5, 83.4, 82.6)},  # +1.5 each
             ("resnet18", "resnet18", "1:1", "downsample_linear"): {default: runs(88, 88, 88),
                                                                    1024: runs(88.5, 87.5, 88.0)}}  # noise
    verdicts = {(key[2], arm): (mean, ahead) for key, arm, mean, se, n, ahead, _ in study.judge(cells, [default, 1024])}
    assert verdicts[("1:4", 1024)] == (pytest.approx(1.5), True)
    assert verdicts[("1:1", 1024)] == (pytest.approx(0.0), False)
    assert study.arm_cell(cells[("resnet18", "resnet18", "1:4", "downsample_linear")][1024])["seconds"][0] == 2.0


def test_a_table_of_nothing_finished_is_written(study):
    """--table-only before any stitch finished: the page's table is empty and there are no means to give (fmean of
    nothing raised)."""
    text = study.report({}, study.ARMS, 3, None, 1)
    assert "| pair | gap | adapter |" in text and "ahead of 0.12's default (256) at the end" in text
    assert "Mean top-1" not in text
