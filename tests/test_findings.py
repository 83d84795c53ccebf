"""`stitchkit findings`: the judging rules on hand-made numbers (each verdict can go either way), and the whole
command at smoke size on Fashion-MNIST."""
import pytest

from stitchkit.errors import StitchkitError
from stitchkit.findings import findings_sweeps, judge, load_findings_file, run_findings
from stitchkit.training.data import find_fashion_mnist

FILE = "configs/findings/fashion_mnist.yaml"
R, V, M = "resnet18", "vit_micro_patch4_32", "mobilenetv3_large_100"


def _row(src, dst, gap, method, top1, se=0.5, n=3, gmacs=1.0):
    return {"kind": "stitch", "src": src, "dst": dst, "gap": gap, "method": method, "top1_mean": top1, "top1_se": se,
            "n": n, "gmacs": gmacs}


def _summary(bottleneck=80.0, linear=60.0, integrated=70.0, into_vit=52.0):
    rows = []
    for gap, cost in (("1:2", 3.0), ("1:4", 1.0)):
        rows += [_row(R, R, gap, "downsample_bottleneck", bottleneck, gmacs=cost),
                 _row(R, R, gap, "downsample_linear", linear, gmacs=cost * 0.9),
                 _row(R, R, gap, "downsample_conv3x3_relu", bottleneck - 1, gmacs=cost * 1.5),
                 _row(R, R, gap, "integrated_bottleneck", integrated, gmacs=cost * 1.05),
                 _row(R, R, gap, "noresize_bottleneck", bottleneck, gmacs=cost * 20),
                 _row(R, V, gap, "downsample_bottleneck", into_vit), _row(R, V, gap, "downsample_linear", 25.0),
                 _row(V, R, gap, "downsample_bottleneck", 72.0), _row(V, R, gap, "downsample_linear", 50.0),
                 _row(R, M, gap, "downsample_bottleneck", 75.0), _row(R, M, gap, "downsample_linear", 55.0)]
    return rows


ORIGINALS = {R: {"top1": 88.0}, V: {"top1": 65.0}, M: {"top1": 80.0}}


def test_the_paper_s_pattern_is_confirmed():
    verdicts = {f.number: f.verdict for f in judge(_summary(), ORIGINALS, chance=10.0)}
    assert verdicts == {1: "confirmed", 2: "confirmed", 3: "confirmed", 4: "confirmed", 5: "confirmed"}


def test_the_opposite_pattern_is_not_confirmed():
    swap = {"downsample_bottleneck": "downsample_linear", "downsample_linear": "downsample_bottleneck"}
    rows = [{**r, "method": swap.get(r["method"], r["method"])} for r in _summary(integrated=85.0)]
    for r in rows:  # and stitches into and out of the ViT keep the most of their destination's accuracy
        if (r["src"], r["dst"]) in ((R, V), (V, R)):
            r["top1_mean"] = 64.0 if r["dst"] == V else 86.0
    findings = {f.number: f for f in judge(rows, ORIGINALS, chance=10.0)}
    assert findings[2].verdict == "not confirmed"  # worse than integrated and than no resize
    assert findings[2].verdict.checks > 0 and findings[2].verdict.held < findings[2].verdict.checks / 4
    assert findings[3].verdict == "not confirmed"  # linear wins everywhere
    assert findings[5].verdict == "not confirmed"
    # Far above chance everywhere, but the ResNet and MobileNet destinations keep under 75% of their accuracy.
    assert findings[1].verdict == "partly confirmed" and findings[1].verdict.held == 2
    low = judge(_summary(bottleneck=12.0, linear=11.0, integrated=11.0, into_vit=9.0), ORIGINALS, chance=10.0)
    assert low[0].verdict == "partly confirmed"  # only the ViT -> ResNet and ResNet -> MobileNet pairs work
    assert "72.0 ± 0.5 (n=3)" in str(low[0].table)


def test_each_rule_tests_what_its_sentence_claims():
    """Finding 2 counts only downsample against integrated, and needs downsample ahead beyond noise; finding 3 asks
    every nonlinear adapter at every large gap; finding 5 counts a ViT -> ViT stitch as a stitch into a ViT."""
    close = [{**r, "top1_mean": 70.5} if r["method"] == "downsample_bottleneck" and r["dst"] == R and r["src"] == R
             else r for r in _summary(integrated=70.0)]
    finding2 = judge(close, ORIGINALS, chance=10.0)[1]
    assert finding2.verdict.checks == 2 and finding2.verdict.held == 0  # ahead by 0.5 with 0.7 standard error
    rows = _summary() + [_row(R, R, "1:4", "downsample_linear_relu", 61.0)]  # linear + ReLU: not beyond noise
    finding3 = judge(rows, ORIGINALS, chance=10.0)[2]
    assert finding3.verdict.checks == 6 and finding3.verdict.held == 5
    rows = _summary() + [_row(V, V, gap, "vit_block", 64.0) for gap in ("1:2", "1:4")]  # keeps 98% of the ViT's
    assert judge(rows, ORIGINALS, chance=10.0)[4].verdict != "confirmed"


def test_findings_file_errors(tmp_path, monkeypatch):
    with pytest.raises(StitchkitError, match="does not exist; pass the path of a findings file"):
        load_findings_file(tmp_path / "none.yaml")
    monkeypatch.chdir(tmp_path)  # the default file, from outside the repository: the checkout's own is read
    assert "blocks" in load_findings_file("configs/findings/fashion_mnist.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: {models: [resnet18], images: 10, epochs: 1}\nstitches: {images: 10, epochs: 1}\n"
                   "blocks: {b: {pairs: [[resnet18, resnet50]], gaps: ['1:2'], methods: [downsample_linear]}}\n")
    with pytest.raises(StitchkitError, match="not among sources.models"):
        findings_sweeps(load_findings_file(bad), tmp_path)
    bad.write_text("sources: {}\nstitchs: {}\n")
    with pytest.raises(StitchkitError, match="unknown key 'stitchs'"):
        load_findings_file(bad)


def test_the_findings_grid_covers_what_the_issue_asks(tmp_path):
    spec = load_findings_file(FILE)
    sweeps = findings_sweeps(spec, tmp_path)
    cells = [c for s in sweeps[1:] for c in s.runnable]
    assert len(spec["seeds"]) == 3 and {c.seed for c in cells} == {0, 1, 2}
    assert {c.method for c in cells} >= {"noresize_bottleneck", "downsample_linear", "downsample_linear_relu",
                                         "downsample_conv3x3_relu", "downsample_bottleneck", "integrated_bottleneck",
                                         "vit_block"}
    assert {c.gap for c in cells} >= {"1:1", "1:2", "1:3", "1:4", "2:3"}
    assert set(spec["sources"]["models"]) == {R, V, M}  # a CNN, a plain ViT, a hierarchical mobile network
    assert all(c.settings["model"].get("gap") for c in cells)
    # Every source is trained with every seed, and the stitch of seed s joins the seed-s sources.
    sources = {(c.src, c.seed): c.name for c in sweeps[0].cells}
    assert {seed for _, seed in sources} == {0, 1, 2}
    for c in cells:
        model = c.settings["model"]
        fronts = c.src.split("+")  # a parallel stitch (finding 6): one checkpoint per source
        checkpoints = model["src_checkpoint"] if len(fronts) > 1 else [model["src_checkpoint"]]
        assert all(sources[s, c.seed] in path for s, path in zip(fronts, checkpoints))
        assert sources[c.dst, c.seed] in model["dst_checkpoint"]
    assert {c.method for c in cells if "+" in c.src} == {"parallel_sum_bottleneck", "parallel_gate_bottleneck",
                                                       "parallel_concat_bottleneck"}
    assert all(len({c.seed for c in s.cells}) == 3 for s in sweeps[1:])  # one sweep: the report averages the seeds
    # Each run folder once in the whole study, and at 1:1 (where the three resize modes build the same network) one
    # run per adapter, not one per resize mode.
    names = [c.name for s in sweeps[1:] for c in s.cells]
    assert len(names) == len(set(names))
    within = [c.method for c in cells if c.gap == "1:1" and c.src == c.dst == R]
    assert sorted(within) == sorted(["downsample_linear", "downsample_linear_relu", "downsample_conv3x3_relu",
                                     "downsample_bottleneck"] * 3)


def test_a_stitch_two_blocks_ask_for_trains_once_in_the_first(tmp_path):
    spec = load_findings_file(FILE)
    spec["blocks"] = {"first": {"pairs": [[R, R]], "gaps": ["1:4"], "methods": ["downsample_linear"]},
                      "overlapping": {"pairs": [[R, R]], "gaps": ["1:3", "1:4"], "methods": ["downsample_linear"]},
                      "repeated": {"pairs": [[R, R]], "gaps": ["1:4"], "methods": ["downsample_linear"]}}
    sweeps = findings_sweeps(spec, tmp_path)
    assert [s.name.split("_")[1] for s in sweeps[1:]] == ["first", "overlapping"]  # the repeat adds no sweep
    assert {c.gap for c in sweeps[1].cells} == {"1:4"} and {c.gap for c in sweeps[2].cells} == {"1:3"}
    assert len(sweeps[1].cells) == len(sweeps[2].cells) == 3  # every seed


@pytest.mark.slow
def test_findings_end_to_end_at_smoke_size(tmp_path, capsys):
    try:
        find_fashion_mnist(None)
    except StitchkitError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    doc = tmp_path / "docs" / "findings.md"
    findings = run_findings(FILE, tmp_path / "runs", doc, smoke=True, threads=1)
    assert [f.number for f in findings] == [1, 2, 3, 4, 5, 6]  # the paper's five and parallel stitching's
    text = doc.read_text()
    for number in range(1, 7):
        assert f"## Finding {number}:" in text
    assert text.count("**Verdict at this scale:") == 6 and "(n=2)" in text
    assert "gate (bottleneck)" in text  # finding 6's table
    assert "stitchkit findings configs/findings/fashion_mnist.yaml" in text
    figures = list((tmp_path / "docs" / "findings").glob("*.png"))
    assert figures and all(f"findings/{p.name}" in text for p in figures)
    # Resumable: a second run trains nothing again.
    run_findings(FILE, tmp_path / "runs", doc, smoke=True, threads=1)
    for log in (tmp_path / "runs").rglob("attempts.log"):
        assert log.read_text().count("start") == 1


def test_finding_6_judges_fused_fronts_against_the_better_single_front():
    """Beyond the paper: a parallel stitch counts only when it is ahead of the better of its single fronts (same
    adapter, same gap) beyond 2 SE; the strong form needs 1 point more; the page states the cost ratio."""
    fused = "resnet18+vit_micro_patch4_32"
    rows = _summary() + [_row(fused, R, "1:4", "parallel_gate_bottleneck", 74.0, gmacs=1.6),   # +2.0 vs V -> R 72
                         _row(fused, R, "1:2", "parallel_gate_bottleneck", 72.5, gmacs=4.5)]   # +0.5: noise
    findings = judge(rows, ORIGINALS, chance=10.0)
    assert [f.number for f in findings] == [1, 2, 3, 4, 5, 6]
    six = findings[5]
    # R -> R (80) is the better single front at both gaps: the fusion (74, 72.5) does not beat it
    assert six.verdict == "not confirmed" and (six.verdict.held, six.verdict.checks) == (0, 2)
    weak = [r if r["src"] != R or r["dst"] != R or r["method"] != "downsample_bottleneck" else {**r, "top1_mean": 70.0}
            for r in rows]
    six = judge(weak, ORIGINALS, chance=10.0)[5]  # now V -> R (72) is the better front
    assert (six.verdict.held, six.verdict.checks) == (1, 2)
    row = next(r for r in six.table[1:] if r[1] == "1:4")
    assert row[4] == V and row[7:] == ["yes", "no", "1.60x"]  # +2.0 ± 0.7: beyond 2 SE, not by 1 point more
    assert "met in 0 of 2" in six.notes[0]
    assert len(judge(_summary(), ORIGINALS, chance=10.0)) == 5  # no parallel block: the paper's five


def test_a_parallel_block_gives_each_source_its_seed_checkpoint(tmp_path):
    spec = load_findings_file(FILE)
    spec["blocks"] = {"fused": {"pairs": [[[R, V], R]], "gaps": ["1:4"], "methods": ["parallel_gate_bottleneck"]}}
    sweeps = findings_sweeps(spec, tmp_path)
    sources = {(c.src, c.seed): c.name for c in sweeps[0].cells}
    cells = sweeps[1].runnable
    assert len(cells) == 3 and {c.src for c in cells} == {f"{R}+{V}"}
    for c in cells:
        model = c.settings["model"]
        assert model["src"] == [R, V] and model["fusion"] == "gate"
        assert [sources[R, c.seed] in model["src_checkpoint"][0], sources[V, c.seed] in model["src_checkpoint"][1]] \
            == [True, True]
        assert sweeps[1].config(c, tmp_path).model.parallel


def test_the_page_names_what_its_numbers_depend_on(monkeypatch):
    """Runs repeat to the digit only with the same versions, thread count and CPU kernels: the page names them as
    its runs recorded them, and says so when a study was resumed elsewhere or its runs recorded nothing."""
    import os
    import platform

    import timm
    import torch

    from stitchkit import findings
    from stitchkit.training import runtime
    from stitchkit.version import __version__

    line = findings.environment(1)  # no runs: this process
    for part in (f"stitchkit {__version__}", f"torch {torch.__version__}", f"timm {timm.__version__}",
                 "1 torch thread(s) per run", f"torch's {torch.backends.cpu.get_cpu_capability()} kernels"):
        assert part in line
    monkeypatch.setattr(runtime, "cpu_model", lambda: None)  # not Linux: the architecture instead
    assert f"2 torch thread(s) per run, {os.cpu_count()} CPU cores ({platform.machine()}, torch's" in \
        findings.environment(2)

    versions = {"stitchkit": "0.9.1", "torch": "2.14.1", "timm": "1.0.31", "python": "3.11.7"}
    here = {"threads": 1, "cores": 2, "cpu": "Test CPU", "cpu_kernels": "AVX2"}
    run = {"versions": versions, "machine": here}
    one = findings.environment(1, [run, run])
    assert one == ("stitchkit 0.9.1, torch 2.14.1, timm 1.0.31, 1 torch thread(s) per run, 2 CPU cores (Test CPU, "
                   "torch's AVX2 kernels), Python 3.11.7")
    elsewhere = {"versions": versions, "machine": {**here, "cpu_kernels": "AVX512"}}
    mixed = findings.environment(1, [run, run, elsewhere])
    assert mixed.startswith("runs made in more than one environment: " + one + " (2 runs); ")
    assert mixed.endswith("torch's AVX512 kernels), Python 3.11.7 (1 run)")
    unrecorded = findings.environment(1, [run, {}])
    assert unrecorded.startswith(one + " (1 run); not recorded by 1 run (made before stitchkit 0.9.1; the process")
    assert findings.environment(1, [{}, {}]).startswith("not recorded by 2 runs")
    gpu = findings.environment(1, [{"versions": versions, "machine": {**here, "gpu": "NVIDIA H100"}}])
    assert "kernels), GPU NVIDIA H100, Python" in gpu


# --- too few seeds -------------------------------------------------------------------------------------------------

def test_a_side_with_one_seed_is_not_measured_never_a_zero_standard_error():
    """With one finished seed a cell has no standard error. Taken as zero, a 0.1-point difference 'beat' by more
    than 2 standard errors and findings 2 and 3 came out confirmed on noise (seeds: [0], or every seed but one
    failed). Such a comparison is not measured: out of the verdict, and shown as such."""
    from stitchkit.findings import _beats, _diff, findings_markdown

    rows = []
    for gap in ("1:2", "1:3", "1:4"):
        rows += [_row(R, R, gap, m, top1, se=None, n=1) for m, top1 in (
            ("downsample_bottleneck", 80.1), ("integrated_bottleneck", 80.0), ("downsample_conv3x3_relu", 80.0),
            ("integrated_conv3x3_relu", 79.9), ("downsample_linear", 79.95), ("downsample_linear_relu", 80.05))]
    assert _beats(rows[0], rows[1]) is None and _diff(rows[0], rows[1]) is None
    assert _beats(rows[0], _row(R, R, "1:4", "x", 80.0, se=3.0, n=3)) is None  # one side is enough
    assert _beats(_row(R, R, "1:4", "x", 80.1, se=0.01, n=2), _row(R, R, "1:4", "y", 80.0, se=0.01, n=2))
    findings = {f.number: f for f in judge(rows, {R: {"top1": 85.0}}, chance=10.0)}
    for number, unmeasured in ((2, 6), (3, 6), (4, 3)):  # finding 3: the 1:3 and 1:4 gaps, three adapters each
        verdict = findings[number].verdict
        assert (verdict.checks, verdict.unmeasured) == (0 if number != 4 else 1, unmeasured), number
    assert findings[2].verdict == "not measured" and findings[3].verdict == "not measured"
    table = str(findings[2].table) + str(findings[3].table)
    assert "± 0.0" not in table and "not measured (n=1)" in table and "3 not measured" in table
    assert not findings[2].notes  # no 'clearly ahead' note on single seeds
    spec = load_findings_file(FILE)
    page = findings_markdown(list(findings.values()), {R: {"top1": 85.0}}, spec, "stitchkit findings", [], None)
    assert "**Verdict at this scale: not measured** (0 of 0 comparisons hold; confirmed needs 3 in 4; 6 not " \
           "measured, left out: a side has fewer than 2 finished seeds, so no standard error)" in page
    # Where every cell has its seeds, nothing changes: the paper's pattern is confirmed, nothing unmeasured.
    assert all(f.verdict.unmeasured == 0 for f in judge(_summary(), ORIGINALS, chance=10.0))


def test_a_parallel_stitch_with_one_seed_is_not_measured():
    fused = "resnet18+vit_micro_patch4_32"
    rows = _summary() + [_row(fused, R, "1:4", "parallel_gate_bottleneck", 90.0, se=None, n=1, gmacs=1.6)]
    six = judge(rows, ORIGINALS, chance=10.0)[5]
    assert six.verdict == "not measured" and six.verdict.unmeasured == 1 and six.verdict.checks == 0
    assert six.table[1][6:9] == ["not measured (n=1)", "not measured", "not measured"]


# --- what one invocation judges ------------------------------------------------------------------------------------

def _fake_stages(failing: str | None = None):
    """In place of training: every runnable cell finished with made-up numbers (a stitch's method sets its
    accuracy, the seed moves it a little), ``failing`` (a method) failed; the manifests written as a run writes
    them. Returns what run_stages returns."""
    import json

    from stitchkit.rundir import RunDir
    from stitchkit.sweeps.runner import write_manifest

    top1 = {"scratch": 85.0, "downsample_bottleneck": 80.0, "downsample_conv3x3_relu": 79.0, "vit_block": 70.0,
            "downsample_linear": 60.0, "downsample_linear_relu": 65.0, "integrated_bottleneck": 70.0}

    def run_stages(stages, out, log=print, workers=1):
        failures, count = [], 0
        for sweeps in stages:
            for sweep in sweeps:
                write_manifest(sweep, out)
                for cell in sweep.runnable:
                    run, count = RunDir(out / cell.name), count + 1
                    run.path.mkdir(parents=True, exist_ok=True)
                    if cell.method == failing:
                        run.result.write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom\nmore"}))
                        failures.append(cell.name)
                        continue
                    run.result.write_text(json.dumps({
                        "status": "finished", "mode": cell.kind, "top1": top1.get(cell.method, 50.0) + cell.seed / 4,
                        "top5": 99.0, "gmacs": 0.01 if cell.kind == "stitch" else 0.04, "dataset": "fashion_mnist",
                        "input_size": 32, "epochs": 1, "train_images": 128}))
        return failures, count

    return run_stages


@pytest.fixture
def judged_alone(monkeypatch):
    """run_findings without training, data or report drawing."""
    from stitchkit import findings, reports
    from stitchkit.training import data

    monkeypatch.setattr(data, "find_fashion_mnist", lambda root: None)
    monkeypatch.setattr(reports, "write_report", lambda out: out / "report" / "index.html")
    return lambda failing=None: monkeypatch.setattr(findings, "run_stages", _fake_stages(failing))


def test_only_the_sweeps_this_invocation_built_are_judged(tmp_path, judged_alone):
    """`findings` and `findings --smoke` share an output folder by default. The manifests of sweeps a smoke run
    does not build (blocks cut to one gap, a block since removed) stay there: their runs must not be judged
    beside this run's (a full-size stitch on the smoke run's Pareto front), nor deleted."""
    import json

    judged_alone()
    out = tmp_path / "runs"
    sweeps = findings_sweeps(load_findings_file(FILE, smoke=True), out)
    ours = next(s for s in sweeps if s.name.startswith("findings_resizing"))
    shared = next(c for c in ours.runnable if c.method == "downsample_bottleneck")
    stale_run = out / "stitch" / "old" / "seed0-full"
    stale_run.mkdir(parents=True)
    (stale_run / "result.json").write_text(json.dumps({"status": "finished", "top1": 99.0, "gmacs": 0.001}))
    (out / "sweeps").mkdir(parents=True)
    stale = {"kind": "stitch", "src": R, "dst": R, "gap": "1:2", "method": "downsample_bottleneck", "seed": 0,
             "lr": None, "skip_reason": None}
    # A removed block's manifest, sorted before this run's: one cell of its own, and one this run asks for too.
    (out / "sweeps" / "findings_a_removed_block.json").write_text(json.dumps(
        {"sweep": "findings_a_removed_block", "cells": [{**stale, "name": "stitch/old/seed0-full"},
                                                        {**shared.describe()}]}))
    doc = tmp_path / "findings.md"
    findings = run_findings(FILE, out, doc, smoke=True)
    four = findings[3]
    assert all(row[0] == "1:4" for row in four.table[1:]), four.table  # the 1:2 point at 99% is not judged
    assert "99.0" not in str([f.table for f in findings])
    three = findings[2]
    bottleneck = next(row for row in three.table[1:] if row[0] == f"{R} -> {R}" and row[1] == "1:4")
    assert "(n=2)" in bottleneck[5]  # the shared cell's seeds average in this run's sweep
    text = doc.read_text()
    assert "Left out of the verdicts and tables: 1 sweep in the output folder that is not this findings file's" in text
    assert "findings_a_removed_block" in text
    assert (out / "sweeps" / "findings_a_removed_block.json").is_file() and stale_run.is_dir()  # nothing deleted


def test_failed_runs_are_listed_on_the_page(tmp_path, judged_alone):
    judged_alone(failing="downsample_linear_relu")
    doc = tmp_path / "findings.md"
    with pytest.raises(StitchkitError, match="runs failed"):
        run_findings(FILE, tmp_path / "runs", doc, smoke=True)
    text = doc.read_text()
    assert "**2 runs failed** and are missing from every number below" in text
    assert text.count("downsample_linear_relu/seed") == 2 and text.count(": RuntimeError: boom\n") == 2
