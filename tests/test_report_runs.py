"""The report over real-life runs folders: a sweep file given instead of its folder, runs left over from another
version of a sweep, two sweeps of one pair, a torn result.json, and baselines told apart from stitches."""
import json
from pathlib import Path

import pytest

from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.reports import write_report


def test_a_sweep_file_given_instead_of_its_runs_folder_is_named_as_such(tmp_path, capsys):
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text("pairs: [[resnet10t, resnet10t]]\n")
    with pytest.raises(StitchkitError, match=r"is a file, not a runs folder; .*--out.*runs/tiny"):
        write_report(sweep_file)
    assert main(["report", str(sweep_file)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" not in err and "is a file" in err and len(err.strip().splitlines()) == 1
    assert sweep_file.read_text() == "pairs: [[resnet10t, resnet10t]]\n"  # nothing written over it


def _result(runs: Path, name: str, **result) -> dict:
    """A run folder with its result.json; returns its manifest cell."""
    (runs / name).mkdir(parents=True)
    (runs / name / "result.json").write_text(json.dumps({"status": "finished", **result}))
    return {"name": name, **{k: result.get(k) for k in ("kind", "src", "dst", "gap", "method", "seed", "lr")}}


def _stitch(seed: int, top1: float, gap: str = "1:3", **more) -> dict:
    return {**dict(kind="stitch", src="m", dst="m", gap=gap, method="downsample_linear", seed=seed, lr=None, top1=top1,
                   top5=90.0, gmacs=1.0, params=10, trainable_params=1, mode="stitch", adapter="linear",
                   resize="bilinear", dataset="synthetic", input_size=32, epochs=1, train_images=64), **more}


def _manifest(runs: Path, name: str, cells: list[dict]) -> None:
    (runs / "sweeps").mkdir(exist_ok=True)
    (runs / "sweeps" / f"{name}.json").write_text(json.dumps({"sweep": name, "cells": cells}))


def test_runs_outside_the_current_manifest_are_counted_apart_and_the_report_says_why(tmp_path):
    """A sweep rerun with a smaller grid: its manifest names 2 runs, the folder holds 2 more finished ones from the
    larger grid. The report leaves those out of the summary (as before) and now says so, on the page and to the
    command's output, and its status cards count the 2 it summarizes as finished, not 4."""
    runs = tmp_path / "runs"
    cells = [_result(runs, f"now/{seed}", **_stitch(seed, 70.0 + seed)) for seed in range(2)]
    for seed in range(2):  # the larger grid's other gap: finished, no longer in the manifest
        _result(runs, f"before/{seed}", **_stitch(seed, 50.0, gap="1:2"))
    _manifest(runs, "tiny", cells)
    notes = []
    page = write_report(runs, log=notes.append)
    assert len(notes) == 1 and notes[0].startswith("note: 2 finished runs below the folder are in no sweep's current "
                                                   "manifest") and "left out of summary.csv" in notes[0]
    text = page.read_text()
    assert '<b>2</b>finished</div>' in text and '<b>2</b>left out: in no current sweep</div>' in text
    assert "2 finished runs below the folder are in no sweep&#x27;s current manifest" in text
    assert "1:2" not in (page.parent / "summary.csv").read_text()
    assert (page.parent / "results.csv").read_text().count("before/") == 2  # still listed
    # A folder whose runs are all in the manifest: no note, no card for them.
    _manifest(runs, "tiny", cells + [_result(runs, f"more/{seed}", **_stitch(seed, 60.0, gap="2:3")) for seed in
                                     range(1)])
    import shutil
    shutil.rmtree(runs / "before")
    notes.clear()
    assert "left out" not in write_report(runs, log=notes.append).read_text() and notes == []


ONE_CELL = """
base:
  model: {pretrained: false, num_classes: 10}
  data: {name: synthetic, input_size: 32, synthetic_train_size: 32, synthetic_val_size: 16, random_resized_crop: false,
         auto_augment: false}
  optim: {batch_size: 16}
  train: {batch_size: 16, epochs: 1, workers: 0, threads: 1}
pairs: [[resnet10t, resnet10t]]
gaps: ["1:3"]
methods: [downsample_linear]
seeds: [0]
"""


def _sweep_counts(capsys, *argv) -> tuple[int, dict]:
    code = main(["sweep", *map(str, argv)])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_corrupt_result_json_is_not_a_failure_and_the_sweep_redoes_the_run(tmp_path, capsys):
    """A result.json damaged on disk (cut to 100 bytes) was read as a failed run with no error: the report said
    "failed" and a sweep rerun skipped it as failed (exit 1). Now the run is redone: resumed from its last checkpoint
    when that is there (which evaluates it again and writes result.json anew, the same accuracy), trained again when
    not; until then the report names the problem and what the sweep will do."""
    from stitchkit.reports.collect import collect
    from stitchkit.rundir import RunDir

    sweep_file, runs = tmp_path / "one.yaml", tmp_path / "runs"
    sweep_file.write_text(ONE_CELL)
    assert _sweep_counts(capsys, sweep_file, "--out", runs) == (0, {"runs_dir": str(runs), "finished": 1})
    run = RunDir(next(runs.rglob("result.json")).parent)
    before = json.loads(run.result.read_text())
    adapters = run.adapter_weights.read_bytes()
    run.result.write_bytes(run.result.read_bytes()[:100])
    assert run.state() == "interrupted" and run.result_problem().startswith("result.json unreadable (corrupt): ")
    [row] = collect(runs)[0]
    assert row["status"] == "interrupted" and row["error"].startswith("result.json unreadable (corrupt): ")
    assert "resumes the run from its last checkpoint" in row["error"]
    assert _sweep_counts(capsys, sweep_file, "--out", runs) == (0, {"runs_dir": str(runs), "finished": 1})
    after = json.loads(run.result.read_text())
    assert after["status"] == "finished" and after["top1"] == before["top1"] and after["params"] == before["params"]
    assert run.adapter_weights.read_bytes() == adapters  # resumed at its end: evaluated again, not trained again
    assert "start interrupted" in run.attempts.read_text()
    # Without its checkpoint there is nothing to resume: the run is new to the sweep, and trained again.
    import shutil
    shutil.rmtree(run.checkpoints)
    run.result.write_text('{"status": "finished", "top1": 5')
    assert run.state() == "new"
    [row] = collect(runs)[0]
    assert row["status"] == "pending" and "no checkpoint to resume from; rerunning the sweep trains" in row["error"]
    assert _sweep_counts(capsys, sweep_file, "--out", runs) == (0, {"runs_dir": str(runs), "finished": 1})
    assert run.state() == "finished" and run.read_result()["top1"] == before["top1"]  # seeded: the same run again


def test_an_unreadable_result_outside_the_sweeps_is_named_not_dropped(tmp_path):
    runs = tmp_path / "runs"
    _manifest(runs, "tiny", [_result(runs, "now/0", **_stitch(0, 70.0))])
    _result(runs, "single/0", **_stitch(0, 60.0))
    (runs / "single/0/result.json").write_bytes(b"\x00\xff" * 20)  # not even text
    (runs / "single/0/checkpoints").mkdir()
    (runs / "single/0/checkpoints/last.pt").write_bytes(b"")
    notes = []
    page = write_report(runs, log=notes.append)
    assert len(notes) == 1 and notes[0].startswith(f"note: {runs / 'single/0'}: result.json unreadable (corrupt): ")
    assert f"stitchkit train {runs / 'single/0'}/config.yaml output.dir={runs / 'single/0'} --resume" in notes[0]
    assert "result.json unreadable (corrupt)" in page.read_text()


def test_the_fine_tuning_baseline_is_named_as_a_baseline_and_counts_its_own_failures(tmp_path):
    """The fine-tuning baseline beat every stitch and was presented as the pair's most accurate "stitch", in Table 1
    as "stitched" with its error to two decimals (68.8 ± 18.75), and its row counted the failures of the learning
    rate that was not chosen."""
    runs = tmp_path / "runs"
    cells = [_result(runs, f"stitch/{seed}", **_stitch(seed, 30.0 + 10 * seed, gmacs=0.02)) for seed in range(2)]
    for lr, status in ((0.002, "finished"), (1e6, "failed")):
        for seed, top1 in enumerate((50.0, 87.5)):
            cells.append(_result(runs, f"finetune/{lr:g}/{seed}", **{
                **_stitch(seed, top1 if status == "finished" else None, gmacs=0.022, holdout_top1=top1),
                "kind": "finetune", "method": "finetune", "mode": "finetune", "lr": lr, "status": status}))
    cells.append(_result(runs, "scratch/0", **{**_stitch(0, 46.9, gmacs=0.022), "kind": "scratch", "gap": None,
                                                "method": "scratch", "mode": "scratch"}))
    _manifest(runs, "f1", cells)
    page = write_report(runs)
    summary = {r["method"]: r for r in __import__("csv").DictReader((page.parent / "summary.csv").open())}
    finetune = summary["finetune"]
    assert (finetune["lr"], finetune["n"], finetune["n_failed"]) == ("0.002", "2", "0")
    assert finetune["selected_on"] == "holdout; 2 runs failed at learning rate 1e+06"
    text = page.read_text()
    assert "most accurate stitch: Downsample, Linear at stage 1 -&gt; 3, with 35.0 ± 5.0 % top-1" in text
    assert "most accurate: Fine-Tuning" not in text and "most accurate stitch: Fine-Tuning" not in text
    assert ("The fine-tuning baseline (no stitch: the model cut across the gap, every weight trained): best at stage "
            "1 -&gt; 3, with 68.8 ± 18.8 % top-1 at 0.022 GMACs (mean of 2 seeds, learning rate 0.002 chosen on "
            "holdout; 2 runs failed at learning rate 1e+06).") in text
    table = (page.parent / "table1.md").read_text()
    assert ("| m -> m Stage 1 -> 3 (fine-tuning baseline, learning rate 0.002) | 68.8 ± 18.8 | 0.022 | fine-tuning "
            "baseline (no stitch), mean of 2 seeds |") in table
    # The stitch within reach of the original's compute keeps its row: the better baseline does not take its place.
    assert "| m -> m Stage 1 -> 3 (downsample_linear) | 35.0 ± 5.0 | 0.020 | stitched, mean of 2 seeds |" in table


def _drawn(monkeypatch) -> dict:
    """Figures the plots module draws, by file stem, instead of writing them."""
    from stitchkit.reports import plots

    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out, stem: drawn.setdefault(stem, fig) and [])
    return drawn


def _lines(fig) -> dict[str, list[tuple]]:
    """Each labelled line of a figure's panels: its (x, y) points."""
    return {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for ax in fig.axes
            for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_two_sweeps_of_one_pair_are_not_drawn_as_one_line(tmp_path, monkeypatch):
    """The same pair in two sweeps trained differently (128 and 96 images): summary.csv had a row each, but the
    figures joined them into one zig-zag line per method, lost the title's training note, and drew the other
    sweep's model trained from scratch as the reference. Now each way of training is a figure of its own, with
    its note, its own lines and its own reference; two sweeps trained alike share a figure, and where both have a
    point at the same place their lines are told apart by sweep."""
    from stitchkit.reports import plots
    from stitchkit.reports.collect import collect, summarize

    runs = tmp_path / "runs"
    g1 = [_result(runs, f"g1/{gap}/{seed}", **_stitch(seed, top1 + seed, gap=gap, train_images=128))
          for gap, top1 in (("1:2", 14.0), ("1:3", 23.0)) for seed in range(2)]
    f1 = [_result(runs, f"f1/{seed}", **_stitch(seed, 20.0 + seed, train_images=96)) for seed in range(2)]
    f1 += [_result(runs, f"f1/scratch/{seed}", **{**_stitch(seed, 46.0 + seed, train_images=96), "kind": "scratch",
                                                   "gap": None, "method": "scratch", "mode": "scratch"})
           for seed in range(2)]
    _manifest(runs, "g1", g1)
    _manifest(runs, "f1", f1)
    rows, originals = collect(runs)
    summary = summarize(rows)
    drawn = _drawn(monkeypatch)
    plots.accuracy_vs_gap(summary, originals, tmp_path)
    plots.accuracy_vs_compute(summary, originals, tmp_path)
    assert sorted(drawn) == ["compute_m_m__f1", "compute_m_m__g1", "gap_m_m__f1", "gap_m_m__g1"]
    assert _lines(drawn["gap_m_m__g1"]) == {"Downsample, Linear": [(2, 14.5), (3, 23.5)]}
    f1_lines = _lines(drawn["gap_m_m__f1"])
    assert f1_lines["Downsample, Linear"] == [(3, 20.5)]
    assert [points for label, points in f1_lines.items() if label.startswith("m (original")] == [[(0, 46.5), (1, 46.5)]]
    assert "x 128 images" in drawn["gap_m_m__g1"]._suptitle.get_text()
    assert "x 96 images" in drawn["gap_m_m__f1"]._suptitle.get_text()
    assert "(sweep g1)" in drawn["gap_m_m__g1"]._suptitle.get_text()
    # g1 trained no model from scratch; f1's (trained on 96 images) is f1's reference, not g1's.
    legend = [t.get_text() for t in drawn["gap_m_m__g1"].legends[0].get_texts()]
    assert not any("original" in text for text in legend)
    assert plots.figure_title(Path("gap_m_m__g1.png"), ["m -> m"]) == "Accuracy vs gap: m -> m (sweep g1)"

    # Two sweeps trained alike: one figure; the method both ran at 1:3 is a line per sweep, the other one line.
    alike = tmp_path / "alike"
    a = [_result(alike, f"a/{gap}", **_stitch(0, top1, gap=gap)) for gap, top1 in (("1:2", 10.0), ("1:3", 30.0))]
    b = [_result(alike, f"b/{gap}", **_stitch(0, top1, gap=gap)) for gap, top1 in (("1:3", 20.0), ("1:4", 40.0))]
    b += [_result(alike, "b/bottleneck", **{**_stitch(0, 50.0), "method": "downsample_bottleneck",
                                            "adapter": "bottleneck"})]
    _manifest(alike, "a", a)
    _manifest(alike, "b", b)
    rows, originals = collect(alike)
    drawn.clear()
    plots.accuracy_vs_gap(summarize(rows), originals, tmp_path)
    assert list(drawn) == ["gap_m_m"]
    assert _lines(drawn["gap_m_m"]) == {"Downsample, Linear (sweep a)": [(2, 10.0), (3, 30.0)],
                                        "Downsample, Linear (sweep b)": [(3, 20.0), (4, 40.0)],
                                        "Downsample, Bottleneck": [(3, 50.0)]}


def test_a_pairs_figure_replaced_by_one_per_sweep_does_not_stay_beside_them(tmp_path):
    runs = tmp_path / "runs"
    _manifest(runs, "g1", [_result(runs, f"g1/{seed}", **_stitch(seed, 20.0, train_images=128)) for seed in range(2)])
    report = write_report(runs).parent
    assert {p.name for p in report.glob("gap_*")} == {"gap_m_m.png", "gap_m_m.pdf"}
    _manifest(runs, "f1", [_result(runs, f"f1/{seed}", **_stitch(seed, 30.0, train_images=96)) for seed in range(2)])
    (report / "gap_notes.png").write_bytes(b"someone else's")  # not a figure of a pair of these runs: kept
    write_report(runs)
    assert {p.name for p in report.glob("gap_*.png")} == {"gap_m_m__g1.png", "gap_m_m__f1.png", "gap_notes.png"}


def test_a_folder_whose_only_result_is_unreadable_says_so(tmp_path):
    run = tmp_path / "runs" / "single"
    run.mkdir(parents=True)
    (run / "result.json").write_text('{"status": "fin')
    with pytest.raises(StitchkitError, match=r"^no readable runs under .*single: result\.json unreadable \(corrupt\): "
                                             r".*no checkpoint to resume from: run the command that wrote it again"):
        write_report(tmp_path / "runs")


def test_a_cell_two_sweeps_share_counts_in_each_and_once_where_sweeps_are_combined(tmp_path, monkeypatch):
    """A pilot sweep (seed 0) and the full grid (seeds 0-2) run into one folder share the seed-0 run. The report
    gave each run to the first manifest that listed it and averaged within a sweep: the grid's row had 2 seeds
    (the pilot's 1), no row was the 3-seed mean, and Table 1 and the pair's sentence picked the pilot's 1-seed row.
    Now each sweep's row counts every run its manifest lists (the grid's: 3 seeds); the pilot's row, whose run the
    grid's row holds too, stays in summary.csv (subset_of: grid) but not in the figures, Table 1 or the sentences."""
    from stitchkit.reports import plots
    from stitchkit.reports.collect import collect, summarize

    runs = tmp_path / "runs"
    grid = [_result(runs, f"cell/seed{seed}", **_stitch(seed, top1)) for seed, top1 in ((0, 90.0), (1, 70.0), (2, 80.0))]
    _manifest(runs, "a_pilot", grid[:1])
    _manifest(runs, "grid", grid)
    rows, originals = collect(runs)
    assert len(rows) == 3  # one row per run in results.csv
    summary = {r["sweep"]: r for r in summarize(rows)}
    assert (summary["grid"]["n"], summary["grid"]["top1_mean"]) == (3, 80.0)
    assert summary["grid"]["top1_se"] == pytest.approx(5.7735, abs=1e-4)
    assert (summary["a_pilot"]["n"], summary["a_pilot"]["top1_mean"], summary["a_pilot"]["subset_of"]) == \
        (1, 90.0, "grid")
    assert summary["grid"]["subset_of"] is None
    shared = next(r for r in rows if r["run_dir"].endswith("seed0"))
    assert (shared["sweep"], shared["sweeps"], shared["also_in"]) == ("a_pilot", ["a_pilot", "grid"], "grid")

    (runs / "originals" / "m").mkdir(parents=True)  # a reference for Table 1, of the stitches' compute
    (runs / "originals" / "m" / "result.json").write_text(json.dumps({
        "status": "finished", "mode": "eval", "src": "m", "dst": "m", "top1": 85.0, "gmacs": 1.0,
        "dataset": "synthetic"}))
    drawn = _drawn(monkeypatch)
    page = write_report(runs)
    assert _lines(drawn["gap_m_m"])["Downsample, Linear"] == [(3, 80.0)]  # one point, the grid's: no second line
    assert _lines(drawn["compute_m_m"])["Downsample, Linear"] == [(1.0, 80.0)]
    table = (page.parent / "table1.md").read_text()
    assert "| m -> m Stage 1 -> 3 (downsample_linear) | 80.0 ± 5.8 | 1.000 | stitched, mean of 3 seeds |" in table
    assert "90.0" not in table
    text = page.read_text()
    assert "most accurate stitch: Downsample, Linear at stage 1 -&gt; 3, with 80.0 ± 5.8 % top-1" in text
    summary_csv = list(__import__("csv").DictReader((page.parent / "summary.csv").open()))
    assert [(r["sweep"], r["n"], r["subset_of"]) for r in summary_csv] == [("a_pilot", "1", "grid"), ("grid", "3", "")]
    results_csv = list(__import__("csv").DictReader((page.parent / "results.csv").open()))
    assert sorted((r["sweep"], r["also_in"]) for r in results_csv) == [("a_pilot", "grid"), ("grid", ""), ("grid", "")]

    # Two sweeps listing the very same runs: both rows in summary.csv, the second by name marked as the first's.
    _manifest(runs, "a_pilot", grid)
    summary = {r["sweep"]: r for r in summarize(collect(runs)[0])}
    assert (summary["a_pilot"]["n"], summary["grid"]["n"]) == (3, 3)
    assert (summary["a_pilot"]["subset_of"], summary["grid"]["subset_of"]) == (None, "a_pilot")


def _card_runs(runs: Path, dataset: str, classes: int, input_size: int) -> None:
    cells = [_result(runs, f"stitch/{gap}/{seed}", **_stitch(seed, 92.0 + seed, gap=gap, src="resnet18", dst="resnet18",
                                                             gmacs=gmacs, dataset=dataset, classes=classes,
                                                             input_size=input_size))
             for gap, gmacs in (("1:2", 1.6), ("1:3", 1.7)) for seed in range(2)]
    _manifest(runs, "cards", cells)


def test_model_cards_stand_in_only_for_runs_on_imagenet(tmp_path):
    """Published ImageNet top-1 (model cards) was the 'original' of any image-folder run: a 10-class 64 px folder
    got resnet18 at 71.5 % (and its MACs at 224 px) in Table 1, and the page said the stitch was 21 points above
    resnet18. Now only runs on an image folder of 1000 classes at 224 px get model cards; others get none, and
    Table 1 says how to measure the originals."""
    flowers = tmp_path / "flowers"
    _card_runs(flowers, "imagefolder", 10, 64)
    page = write_report(flowers)
    table = (page.parent / "table1.md").read_text()
    assert "(model card)" not in table and "71.5" not in table
    assert "No reference models to compare the 2 finished stitched cells with" in table
    assert f"stitchkit eval-model resnet18 --data ... --out {flowers / 'originals' / 'resnet18'}" in table
    assert "only for runs on ImageNet itself (an image folder of 1000 classes at 224 px)" in table
    text = page.read_text()
    assert "points above resnet18" not in text and "(model card)" not in text
    assert "with 92.5 ± 0.5 % top-1 at 1.6 GMACs (mean of 2 seeds)." in text

    imagenet = tmp_path / "imagenet"
    _card_runs(imagenet, "imagefolder", 1000, 224)
    page = write_report(imagenet)
    table = (page.parent / "table1.md").read_text()
    assert "| resnet18 | 71.5 | 1.8" in table and "model card" in table
    assert "points above resnet18 on its own (71.5 %" in page.read_text()


def _loose_finetune(runs: Path, name: str, seed: int, lr: float, top1: float, with_config: bool = True,
                    **settings) -> None:
    """A fine-tuning run trained with `stitchkit train` (no sweep): result.json and, as such a run has, its
    config.yaml, whose settings_id the result records."""
    from stitchkit.training.config import load_config, to_yaml
    from stitchkit.training.identity import settings_id

    config = load_config(None, ["mode=finetune", "model.src=resnet10t", "model.gap=1:3", f"optim.lr={lr}",
                                f"train.seed={seed}", *(f"{k}={v}" for k, v in settings.items())])
    _result(runs, name, **{**_stitch(seed, top1, kind="finetune", method="finetune", mode="finetune", lr=lr),
                           "settings_id": settings_id(config)})
    if with_config:
        (runs / name / "config.yaml").write_text(to_yaml(config))


def test_learning_rates_of_runs_outside_sweeps_are_compared_as_a_sweeps_are(tmp_path, monkeypatch):
    """Fine-tuning runs made with `stitchkit train` at two learning rates: grouped by their settings digest, which
    holds the rate, each rate was a row of its own (no choice, no 'optimistic' label), the gap figure drew both
    on one line labelled 'Fine-Tuning (sweep )', and the page's 'best' baseline was the better rate on the eval
    split, unlabelled. Now the rates of runs alike otherwise (their config.yaml without the rate) are compared as
    a sweep's are; runs that differ in another setting are not, and their lines are told apart."""
    from stitchkit.reports import plots
    from stitchkit.reports.collect import collect, summarize

    runs = tmp_path / "runs"
    for lr, top1s in ((0.01, (60.0, 62.0)), (0.002, (70.0, 71.0))):
        for seed, top1 in enumerate(top1s):
            _loose_finetune(runs, f"ft/{lr}/{seed}", seed, lr, top1)
    [row] = summarize(collect(runs)[0])
    assert (row["lr"], row["n"], row["top1_mean"], row["sweep"]) == (0.002, 2, 70.5, None)
    assert row["selected_on"] == "eval split (no hold-out: optimistic)"
    drawn = _drawn(monkeypatch)
    page = write_report(runs)
    assert _lines(drawn["gap_m_m"]) == {"Fine-Tuning": [(3, 70.5)]}
    assert ("best at stage 1 -&gt; 3, with 70.5 ± 0.5 % top-1 at 1 GMACs (mean of 2 seeds, learning rate 0.002 "
            "chosen on eval split (no hold-out: optimistic))") in page.read_text()

    # Another weight decay is another setting: not a learning rate to choose among. Each is a line of its own.
    _loose_finetune(runs, "wd/0", 0, 0.0005, 75.0, **{"optim.weight_decay": 0.1})
    summary = summarize(collect(runs)[0])
    assert sorted((r["lr"], r["n"], r["selected_on"]) for r in summary) == [
        (0.0005, 1, None), (0.002, 2, "eval split (no hold-out: optimistic)")]
    drawn.clear()
    write_report(runs)
    assert sorted(_lines(drawn["gap_m_m"]).values()) == [[(3, 70.5)], [(3, 75.0)]]
    assert sorted(_lines(drawn["gap_m_m"])) == ["Fine-Tuning (settings 1)", "Fine-Tuning (settings 2)"]

    # Without config.yaml (copied result.json files), runs that recorded the same training are compared, and the
    # choice says on what it rests.
    bare = tmp_path / "bare"
    for lr, top1 in ((0.01, 60.0), (0.002, 70.0)):
        _loose_finetune(bare, f"ft/{lr}", 0, lr, top1, with_config=False)
    [row] = summarize(collect(bare)[0])
    assert row["lr"] == 0.002 and row["selected_on"] == ("eval split (no hold-out: optimistic); no readable "
                                                         "config.yaml: runs matched on recorded data, classes, images "
                                                         "and epochs only")


def test_the_accuracy_vs_compute_figure_has_standard_error_bars(tmp_path, monkeypatch):
    """README promises standard-error bands in both figures (the paper's Figure 5 has them); the accuracy-vs-compute
    figure had none and its title said nothing of them. Now each point with seeds has a ± standard error bar, and the
    title says what the bars are (or that one seed per point has none)."""
    runs = tmp_path / "runs"
    cells = [_result(runs, f"{gap}/{seed}", **_stitch(seed, top1, gap=gap, gmacs=gmacs))
             for gap, gmacs in (("1:2", 0.03), ("1:3", 0.02)) for seed, top1 in enumerate((40.0, 60.0, 80.0))]
    _manifest(runs, "s", cells)
    drawn = _drawn(monkeypatch)
    write_report(runs)
    fig = drawn["compute_m_m"]
    [bars] = [c for ax in fig.axes for c in ax.containers]
    [segments] = bars.lines[2]
    assert sorted(tuple(map(tuple, s)) for s in segments.get_segments()) == [
        ((0.02, 60.0 - 11.547005383792516), (0.02, 60.0 + 11.547005383792516)),
        ((0.03, 60.0 - 11.547005383792516), (0.03, 60.0 + 11.547005383792516))]
    assert fig._suptitle.get_text().endswith("; error bars: standard error over seeds, n = 3")

    one = tmp_path / "one"
    _manifest(one, "s", [_result(one, gap, **_stitch(0, 50.0, gap=gap, gmacs=gmacs))
                         for gap, gmacs in (("1:2", 0.03), ("1:3", 0.02))])
    drawn.clear()
    write_report(one)
    fig = drawn["compute_m_m"]
    assert not [c for ax in fig.axes for c in ax.containers]
    assert fig._suptitle.get_text().endswith("; one seed per point: no error bars")
