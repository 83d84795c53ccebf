"""Sweeps: expansion of the paper's grid, a tiny sweep end to end, kills, concurrency, SLURM via submitit's local
executor; reports checked against hand-computed numbers."""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.reports import collect, pareto_front, standard_error, summarize, write_report
from stitchkit.sweeps.grid import _identity, expand, load_sweep
from stitchkit.training.config import flatten

ROOT = Path(__file__).resolve().parents[1]
TINY = """
base:
  data: {name: synthetic, input_size: 32, synthetic_train_size: 64, synthetic_val_size: 32, synthetic_classes: 1000}
  optim: {batch_size: 16}
  train: {batch_size: 16, workers: 0, threads: 1, epochs: %(epochs)d, log_every: 1, checkpoint_every: 1}
  model: {pretrained: false}
pairs:
  - [resnet10t, resnet10t]
  - [resnet10t, vit_tiny_patch16_224]
gaps: ["1:2", "2:3"]
methods: [downsample_linear, vit_block]
baselines:
  finetune: {lrs: [0.002]}
seeds: [0, 1]
"""


def _tiny(tmp_path, epochs=1) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % {"epochs": epochs})
    return path


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("STITCHKIT_SWEEP_WORKER", None)
    return env


def test_paper_grid_expands_to_the_papers_cell_counts():
    sweep = load_sweep(ROOT / "configs" / "paper" / "grid.yaml", ["data.root=/data/imagenet"])
    runnable = sweep.runnable
    # 12 pairs x 9 gaps x 9 image methods x 3 seeds, plus the ViT block for ViT->ViT (9 gaps x 3 seeds)
    assert sum(c.kind == "stitch" for c in runnable) == 12 * 9 * 9 * 3 + 9 * 3 == 2943
    # fine-tuning: 4 self-pairs x 9 gaps x 3 learning rates x 3 seeds
    assert sum(c.kind == "finetune" for c in runnable) == 4 * 9 * 3 * 3 == 324
    skipped = [c for c in sweep.cells if c.skip_reason]
    assert len(skipped) == 11 * 9 * 3 + 8 * 9 * 3 * 3  # ViT block on 11 pairs, fine-tuning on 8 cross pairs
    assert len({c.name for c in sweep.cells}) == len(sweep.cells)
    scratch = load_sweep(ROOT / "configs" / "paper" / "scratch_baselines.yaml")
    assert [(c.src, c.seed) for c in scratch.runnable] == [(m, s) for m in ("resnet18", "resnet34") for s in (0, 1, 2)]


def test_run_names_are_derived_from_the_full_config(tmp_path):
    sweep = load_sweep(_tiny(tmp_path))
    for cell in random.Random(0).sample(sweep.runnable, 5):
        config = sweep.config(cell, tmp_path)
        assert cell.name.endswith(_identity(flatten(config)))
    again = load_sweep(_tiny(tmp_path))
    assert [c.name for c in again.cells] == [c.name for c in sweep.cells]
    changed = load_sweep(_tiny(tmp_path), ["optim.lr=0.01"])
    assert all(a.name != b.name for a, b in zip(changed.runnable, sweep.runnable) if a.kind == "stitch")
    moved = load_sweep(_tiny(tmp_path), ["data.root=/elsewhere", "train.workers=3"])
    assert [c.name for c in moved.cells] == [c.name for c in sweep.cells]  # where data lives is not identity


def test_a_base_applies_to_each_cell_as_far_as_its_mode_uses_it(tmp_path):
    """A stitch's settings in the base (where the adapters start, on how many images, the paper code's train-mode
    frozen parts, its trained last blocks) would make the baselines' cells refuse them: their configs leave them
    at their defaults, and the folder names stay what they were."""
    path = tmp_path / "mixed.yaml"
    path.write_text((TINY % {"epochs": 1}).replace("  finetune: {lrs: [0.002]}\n", "  finetune: {lrs: [0.002]}\n"
                                                                                "  scratch: {models: [resnet10t]}\n"))
    stitch_only = ["model.adapter_norm=paper_code", "model.init_images=16", "model.frozen_mode=train",
                   "model.unfreeze_last=1", "model.num_classes=10"]
    sweep = load_sweep(path, stitch_only)
    plain = load_sweep(path, ["model.num_classes=10"])
    kinds = set()
    for cell in sweep.runnable:
        model = sweep.config(cell, tmp_path).model
        kinds.add(cell.kind)
        used = (model.adapter_norm, model.init_images, model.frozen_mode, model.unfreeze_last)
        assert used == (("paper_code", 16, "train", 1) if cell.kind == "stitch" else ("fitted", None, "eval", 0))
    assert kinds == {"stitch", "finetune", "scratch"}
    # The names follow the settings as each cell trains with them: the baselines' are those of the base without
    # the stitch's settings; the names earlier versions gave them (from the whole base) are kept beside, so that a
    # resumed sweep takes up runs made under them (test_sweep_runner.py).
    for a, b in zip(sweep.cells, plain.cells):
        assert (a.name == b.name) == (a.kind != "stitch"), (a.name, b.name)
        assert (a.earlier_name is not None) == (a.kind != "stitch") and a.earlier_name != a.name
        assert b.earlier_name is None
    # What the settings ask of a stitch alone renames no baseline (before: every one, so a resumed grid retrained
    # them and the report left the finished ones out).
    init = load_sweep(path, ["model.num_classes=10", "model.init_images=128"])
    assert [c.name for c in init.cells if c.kind != "stitch"] == [c.name for c in plain.cells if c.kind != "stitch"]
    assert all(a.name != b.name for a, b in zip(init.cells, plain.cells) if a.kind == "stitch")


def test_cell_names_of_bases_without_stitch_only_settings_are_unchanged():
    """Cell names are where finished runs are found: a base that sets nothing its cells' modes leave unused names
    them as every earlier version did (digests computed with stitchkit 0.12.0), the paper's grid included. Stitch
    cells are the exception by design: 0.13.0 changed model.init_images' default (256 -> the start's choice), which
    changes their results, so they have new names (0.12.0: seed0-8ae682dc); baselines keep theirs."""
    spec = {"base": {"data": {"name": "synthetic", "input_size": 32}, "model": {"pretrained": False}},
            "pairs": [["resnet10t", "resnet10t"]], "gaps": ["1:3"], "methods": ["downsample_linear"],
            "baselines": {"finetune": {"lrs": [0.01]}, "scratch": {"models": ["resnet10t"]}}, "seeds": [0]}
    assert [c.name for c in expand(spec).cells] == [
        "stitch/resnet10t--resnet10t/1to3/downsample_linear/seed0-8abd3734",
        "finetune/resnet10t--resnet10t/1to3/finetune-lr0.01/seed0-8271a99d",
        "scratch/resnet10t/scratch/seed0-0057f7eb"]
    grid = load_sweep(ROOT / "configs" / "paper" / "grid.yaml", ["data.root=/data/imagenet"])
    assert all(c.earlier_name is None for c in grid.cells)  # the earlier naming gives the same name to every cell


def test_bad_sweep_files(tmp_path):
    cases = [({"pairs": [["resnet18", "resnet18"]], "method": ["downsample_linear"]}, "did you mean 'methods'"),
             ({"pairs": [["resnet18", "resnet18"]], "methods": ["downsample_linear", "downsample_linear"]}, "twice"),
             ({"pairs": [["resnet18", "resnet18"]], "methods": ["downsample_bottlenek"]}, "downsample_bottleneck"),
             ({"pairs": [["resnet18"]]}, r"must be \[src, dst\]"),
             ({"pairs": [["resnet18", "resnet18"]], "gaps": ["3:1"]}, "write it as 1:3"),
             ({"pairs": [["resnet18", "resnet18"]], "base": {"train": {"epoch": 2}}}, "train.epochs"),
             ({"pairs": [["resnet18", "resnet18"]], "seeds": [0, 0]}, "distinct")]
    for spec, message in cases:
        with pytest.raises(StitchkitError, match=message):
            expand(spec)


def test_tiny_sweep_end_to_end_with_report(tmp_path, capsys):
    sweep_file, runs = _tiny(tmp_path), tmp_path / "runs"
    assert main(["sweep", str(sweep_file), "--out", str(runs), "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "total: 24 cells, 12 to run (4 finetune, 8 stitch), 12 skipped" in table
    assert main(["sweep", str(sweep_file), "--out", str(runs)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["finished"] == 12
    assert main(["sweep", str(sweep_file), "--out", str(runs)]) == 0  # a rerun skips everything
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"runs_dir": str(runs), "skipped-finished": 12}
    assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    report = tmp_path / "report"
    rows = (report / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 24  # every cell, skipped ones included
    assert sum(",skipped," in r for r in rows) == 12 and sum(",finished," in r for r in rows) == 12
    for png in report.glob("*.png"):
        assert png.stat().st_size > 5000
    assert {p.stem for p in report.glob("*.pdf")} == {p.stem for p in report.glob("*.png")} and len(list(report.glob("*.png"))) >= 3
    page = (report / "index.html").read_text()
    assert page.count("<img") == len(list(report.glob("*.png"))) and "Table 1" in page and "skipped" in page
    assert (report / "table1.md").read_text().startswith("| Model |")


@pytest.mark.slow
def test_failed_cell_is_a_row_and_retry_failed_reruns_it(tmp_path, capsys):
    sweep_file, runs = tmp_path / "s.yaml", tmp_path / "runs"
    sweep_file.write_text((TINY % {"epochs": 1}).replace("  - [resnet10t, vit_tiny_patch16_224]\n", "")
                          .replace("optim: {batch_size: 16}", "optim: {batch_size: 16, lr: 1.0e+30}"))
    assert main(["sweep", str(sweep_file), "--out", str(runs)]) == 1  # NaN losses: cells fail, the sweep goes on
    rows, _ = collect(runs)
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and all("NaN" in r["error"] for r in failed)
    capsys.readouterr()
    assert main(["sweep", str(sweep_file), "--out", str(runs)]) == 1
    assert "skipped-failed" in capsys.readouterr().out
    main(["sweep", str(sweep_file), "--out", str(runs), "--retry-failed"])
    attempts = (runs / failed[0]["run_dir"].split(str(runs) + "/")[1] / "attempts.log").read_text()
    assert attempts.count("start") == 2


def _finished_once(runs: Path, expected: int) -> None:
    logs = sorted(runs.rglob("attempts.log"))
    finished = [p for p in logs if p.read_text().count(" finished") == 1]
    assert len(logs) == expected and len(finished) == expected, [p.read_text() for p in logs]
    for path in runs.rglob("metrics.jsonl"):
        steps = [json.loads(l)["step"] for l in path.read_text().splitlines() if json.loads(l)["type"] == "train"]
        assert steps == sorted(set(steps)), f"duplicated metric lines in {path}"
    rows, _ = collect(runs)
    done = [r for r in rows if r["status"] == "finished"]
    assert len(done) == expected and len({r["run_dir"] for r in done}) == expected


@pytest.mark.slow
def test_sweep_killed_at_random_moments_finishes_every_cell_once(tmp_path):
    sweep_file, runs = _tiny(tmp_path, epochs=2), tmp_path / "runs"
    command = [sys.executable, "-m", "stitchkit", "sweep", str(sweep_file), "--out", str(runs)]
    rng = random.Random(1)
    for _ in range(3):
        process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(6.0, 12.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert subprocess.run(command, env=_env(), capture_output=True).returncode == 0
    _finished_once(runs, 12)


@pytest.mark.slow
def test_two_sweep_processes_share_one_folder(tmp_path):
    sweep_file, runs = _tiny(tmp_path), tmp_path / "runs"
    command = [sys.executable, "-m", "stitchkit", "sweep", str(sweep_file), "--out", str(runs)]
    processes = [subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for _ in range(2)]
    outputs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in processes]
    assert sum(o.get("finished", 0) for o in outputs) == 12
    _finished_once(runs, 12)


@pytest.mark.slow
def test_slurm_executor_through_submitit_local(tmp_path, capsys):
    pytest.importorskip("submitit")
    sweep_file, runs = _tiny(tmp_path), tmp_path / "runs"
    sweep_file.write_text(sweep_file.read_text().replace("seeds: [0, 1]", "seeds: [0]").replace(
        "  - [resnet10t, vit_tiny_patch16_224]\n", ""))
    assert main(["sweep", str(sweep_file), "--out", str(runs), "--executor", "slurm", "--cluster", "local",
                 "--wait", "--time-min", "10"]) == 0
    assert "submitted 4 cells" in capsys.readouterr().out
    rows, _ = collect(runs)
    assert sorted(r["status"] for r in rows if r["status"] != "skipped") == ["finished"] * 4


def _fake_run(runs: Path, name: str, **result) -> dict:
    run = runs / name
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"status": "finished", **result}))
    return {"name": name, **{k: result[k] for k in ("kind", "src", "dst", "gap", "method", "seed", "lr")}}


def test_summary_matches_hand_computed_means_and_standard_errors(tmp_path):
    runs = tmp_path / "runs"
    cells = []
    for seed, top1 in enumerate([70.0, 72.0, 77.0]):
        cells.append(_fake_run(runs, f"a/{seed}", kind="stitch", src="m", dst="m", gap="1:3", method="downsample_linear",
                               seed=seed, lr=None, top1=top1, top5=90.0, gmacs=1.0, params=10, trainable_params=1))
    for lr, holdout, evaluation in [(0.01, 60.0, 75.0), (0.002, 65.0, 70.0)]:
        for seed in range(2):
            cells.append(_fake_run(runs, f"ft/{lr}/{seed}", kind="finetune", src="m", dst="m", gap="1:3",
                                   method="finetune", seed=seed, lr=lr, top1=evaluation + seed, top5=95.0,
                                   holdout_top1=holdout + seed, gmacs=2.0, params=20, trainable_params=20))
    cells.append({"name": "pending/0", "kind": "stitch", "src": "m", "dst": "m", "gap": "1:4", "method": "downsample_linear",
                  "seed": 0, "lr": None})
    (runs / "sweeps").mkdir()
    (runs / "sweeps" / "fake.json").write_text(json.dumps({"sweep": "fake", "cells": cells}))
    # A run left over from other settings, outside the sweep: listed, never averaged in.
    _fake_run(runs, "old/0", kind="stitch", src="m", dst="m", gap="1:3", method="downsample_linear", seed=5, lr=None,
              top1=10.0, top5=10.0, gmacs=1.0, params=10, trainable_params=1, mode="stitch", adapter="linear",
              resize="bilinear")
    rows, _ = collect(runs)
    assert [r["status"] for r in rows].count("pending") == 1 and len(rows) == 3 + 4 + 1 + 1
    summary = {(r["method"], r["gap"]): r for r in summarize(rows)}
    linear = summary[("downsample_linear", "1:3")]
    assert linear["n"] == 3 and linear["top1_mean"] == pytest.approx(73.0)
    sd = math.sqrt(((70 - 73) ** 2 + (72 - 73) ** 2 + (77 - 73) ** 2) / 2)
    assert linear["top1_se"] == pytest.approx(sd / math.sqrt(3)) == pytest.approx(2.081666, abs=1e-5)
    finetune = summary[("finetune", "1:3")]
    # lr 0.01 is better on the evaluation split, but 0.002 on the hold-out split, which is what selects.
    assert finetune["lr"] == 0.002 and finetune["selected_on"] == "holdout"
    assert finetune["top1_mean"] == pytest.approx(70.5) and finetune["top1_se"] == pytest.approx(0.5)
    assert summary[("downsample_linear", "1:4")]["n"] == 0
    assert standard_error([1.0]) is None


def test_pareto_front():
    points = [(1.0, 60.0), (2.0, 70.0), (2.5, 65.0), (3.0, 80.0), (3.0, 75.0), (4.0, 79.0)]
    assert pareto_front(points) == [(1.0, 60.0), (2.0, 70.0), (3.0, 80.0)]


def test_report_errors(tmp_path):
    with pytest.raises(StitchkitError, match="does not exist"):
        write_report(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StitchkitError, match="no runs found"):
        write_report(tmp_path / "empty")


@pytest.mark.slow
def test_a_cell_can_train_over_several_processes_with_torchrun(tmp_path, monkeypatch):
    from stitchkit.sweeps.runner import run_cell, train_with_torchrun

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    sweep = load_sweep(_tiny(tmp_path), ["train.batch_size=8"])  # 16 per step = 2 processes x 8
    cell = next(c for c in sweep.runnable if c.kind == "stitch" and c.src == c.dst)
    runs = tmp_path / "runs"
    assert run_cell(sweep, cell, runs, launch=train_with_torchrun(2)) == "finished"
    result = json.loads((runs / cell.name / "result.json").read_text())
    assert result["world_size"] == 2 and result["status"] == "finished"
    assert run_cell(sweep, cell, runs, launch=train_with_torchrun(2)) == "skipped-finished"


def test_originals_average_only_runs_with_the_same_settings_and_say_what_they_were(tmp_path, monkeypatch):
    """Two seeds of a 3-epoch run and one 2-epoch run of the same model: the original is the 3-epoch mean only, and
    its label names the data and training length; the figures do not claim error bands for single runs."""
    runs = tmp_path / "runs"
    common = dict(kind="scratch", src="m", dst="m", gap=None, method="scratch", lr=None, top5=99.0, gmacs=1.0,
                  params=10, trainable_params=10, mode="scratch", dataset="fashion_mnist", input_size=32)
    _fake_run(runs, "long/0", seed=0, top1=90.0, epochs=3, train_images=512, settings_id="long", **common)
    _fake_run(runs, "long/1", seed=1, top1=92.0, epochs=3, train_images=512, settings_id="long", **common)
    _fake_run(runs, "short/0", seed=0, top1=60.0, epochs=2, train_images=256, settings_id="short", **common)
    _fake_run(runs, "stitch/0", kind="stitch", src="m", dst="m", gap="1:3", method="downsample_linear", seed=0,
              lr=None, top1=80.0, top5=99.0, gmacs=0.5, params=10, trainable_params=1, mode="stitch",
              adapter="linear", resize="bilinear", settings_id="s")
    rows, originals = collect(runs)
    assert originals["m"]["top1"] == pytest.approx(91.0) and originals["m"]["n"] == 2
    label = originals["m"]["source"]
    assert "fashion_mnist 32 px, 3 epochs x 512 images, 2 seeds" in label and "1 other setting" in label
    from stitchkit.reports import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, stem: drawn.append(fig) or [])
    summary = summarize(rows)
    plots.accuracy_vs_gap(summary, originals, tmp_path)
    plots.accuracy_vs_compute(summary, originals, tmp_path)
    titles = [fig._suptitle.get_text() for fig in drawn]
    assert "one seed per point: no error bands" in titles[0] and "standard error" not in titles[0]
    legends = [t.get_text() for fig in drawn for legend in fig.legends for t in legend.get_texts()]
    assert any("3 epochs x 512 images" in text for text in legends)
    assert plots.bands_note([{"n": 3}, {"n": 3}]) == "bands: standard error over seeds, n = 3"
    write_report(runs)  # and the whole report still builds


def test_an_interrupted_sweep_resumes_with_changed_speed_settings(tmp_path, capsys):
    """amp, channels_last and compile change how fast a run goes, not what it computes: a sweep killed mid-cell and
    rerun with them changed finds the same cell folders and resumes them (it used to record them as failed)."""
    sweep_file, runs = tmp_path / "s.yaml", tmp_path / "runs"
    sweep_file.write_text((TINY % {"epochs": 2}).replace("  - [resnet10t, vit_tiny_patch16_224]\n", "")
                          .replace('gaps: ["1:2", "2:3"]', 'gaps: ["1:2"]').replace("seeds: [0, 1]", "seeds: [0]")
                          .replace("methods: [downsample_linear, vit_block]", "methods: [downsample_linear]"))
    env = dict(_env(), STITCHKIT_FAULT="epoch-end:1")  # SIGKILL after the first cell's first epoch
    killed = subprocess.run([sys.executable, "-m", "stitchkit", "sweep", str(sweep_file), "--out", str(runs)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert len(list(runs.rglob("checkpoints/last.pt"))) == 1 and not list(runs.rglob("result.json"))
    faster = ["train.channels_last=true", "train.amp=none"]
    assert main(["sweep", str(sweep_file), "--out", str(runs), *faster]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["finished"] == 2
    _finished_once(runs, 2)
    resumed = [p for p in runs.rglob("attempts.log") if p.read_text().count("start") == 2]
    assert len(resumed) == 1  # the killed cell continued in its own folder
    assert json.loads((resumed[0].parent / "result.json").read_text())["epochs"] == 2


def test_dry_run_prices_a_stitch_as_the_sum_of_its_parts(tmp_path):
    """The dry run counts each front and back once and adds the adapters: the same MACs as counting the whole
    stitched model, for CNN and ViT parts and for the baselines."""
    import stitchkit
    from stitchkit.sweeps.dryrun import cell_costs
    from stitchkit.sweeps.methods import get_method

    sweep = expand({"base": {"data": {"input_size": 32}}, "pairs": [["resnet10t", "vit_tiny_patch16_224"],
                                                                   ["vit_tiny_patch16_224", "resnet10t"]],
                    "gaps": ["1:2", "2:4"], "methods": ["downsample_bottleneck", "integrated_conv3x3_relu"], "seeds": [0]},
                   name="priced")
    for cell in sweep.runnable:
        costs = cell_costs(sweep, cell)
        method = get_method(cell.method)
        model = stitchkit.create_stitched(cell.src, cell.dst, cell.gap, method.adapter, method.resize, input_size=32)
        assert costs["gmacs"] == pytest.approx(stitchkit.count_macs(model, 32) / 1e9, rel=1e-9), cell.name
        assert costs["params"] == stitchkit.count_params(model)
        assert costs["trainable_params"] == stitchkit.count_params(model, trainable_only=True)
