"""The report page reads as a page: the story first, headings in words, and no wider than the window in Chromium
at a laptop's and a phone's width, for tables as wide as a real sweep's."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stitchkit.reports import write_report
from stitchkit.reports.page import pair_sentence
from stitchkit.reports.words import plural

# Long names, as real ones are (timm model names, sweep names made of a findings block and its pair): the
# "All runs" table is then well over 2,000 px wide, as the findings report's is.
SRC, DST = "mobilenetv3_large_100_miil_in21k_ft_in1k", "vit_small_patch16_224_augreg_in21k_ft_in1k"
METHODS = ("downsample_bottleneck", "downsample_linear_relu")


def _run(runs: Path, cells: list, name: str, result: dict | None, **cell) -> None:
    """A manifest cell and, unless it is still pending, the result.json its run wrote."""
    cells.append({"name": name, **cell})
    if result is not None:
        (runs / name).mkdir(parents=True)
        (runs / name / "result.json").write_text(json.dumps({**cell, **result}))


def _wide_runs(runs: Path) -> Path:
    """Two stitched pairs (one with three seeds, one with a single seed), the models on their own, one failed and
    one pending cell: every table and figure of the page, with every column filled."""
    cells = []
    common = {"status": "finished", "top5": 99.1, "dataset": "fashion_mnist", "input_size": 32, "epochs": 2,
              "train_images": 16000, "wall_time_s": 123.4, "adapter_norm": 0.8765, "top1_at_start": 41.2,
              "holdout_top1": 77.7}
    for model, top1 in ((SRC, 70.7), (DST, 80.3)):
        for seed in range(3):
            _run(runs, cells, f"sources/{model}/seed{seed}", {**common, "top1": top1 + seed, "gmacs": 0.03,
                 "params": 4214842, "trainable_params": 4214842, "settings_id": f"{model}-sources"},
                 kind="scratch", src=model, dst=model, gap=None, method="scratch", seed=seed, lr=None)
    # The single-seed pair is the more accurate, so Table 1 shows it ("mean of 1 seed").
    for (src, dst), seeds, base in (((SRC, DST), range(3), 75.0), ((DST, SRC), range(1), 80.0)):
        sweep = f"findings_across_architectures_{src}_{dst}"
        for gap in ("1:2", "1:4"):
            for method in METHODS:
                for seed in seeds:
                    _run(runs, cells, f"{sweep}/{gap.replace(':', '-')}/{method}/seed{seed}_0123456789abcdef",
                         {**common, "top1": base + seed + (gap == "1:4"), "gmacs": 0.02 + 0.01 * (gap == "1:2"),
                          "params": 11034074, "trainable_params": 5568, "settings_id": f"{sweep}-{gap}-{method}"},
                         kind="stitch", src=src, dst=dst, gap=gap, method=method, seed=seed, lr=None)
    _run(runs, cells, "failed/1-3/downsample_linear/seed0", {"status": "failed", "error": "loss became NaN at step 3"
         " (lr 1e+30 too high?); lower optim.lr or set train.grad_clip"}, kind="stitch", src=SRC, dst=DST,
         gap="1:3", method="downsample_linear", seed=0, lr=None)
    _run(runs, cells, "pending/2-3/downsample_linear/seed0", None, kind="stitch", src=SRC, dst=DST, gap="2:3",
         method="downsample_linear", seed=0, lr=None)
    (runs / "sweeps").mkdir()
    (runs / "sweeps" / "wide.json").write_text(json.dumps({"sweep": "findings_wide_report", "cells": cells}))
    return runs


@pytest.fixture(scope="module")
def wide_report(tmp_path_factory) -> Path:
    runs = _wide_runs(tmp_path_factory.mktemp("wide") / "runs")
    return write_report(runs)


def test_the_page_tells_the_story_first_in_words(wide_report):
    page = wide_report.read_text()
    # Self-contained and phone-ready: no scripts, every figure inlined, a viewport that follows the device.
    assert "<script" not in page and '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count('src="data:image/png;base64,') == len(list(wide_report.parent.glob("*.png")))
    # Headings in words; field names only as tooltips (title="...") for finding the column in the CSV files.
    for field in ("top1_mean", "top1_se", "n_failed", "holdout_top1_mean", "trainable_params", "run_dir"):
        assert f">{field}<" not in page
    for label in (">top-1 (%)<", ">± SE<", ">failed runs<", ">held-out top-1 (%)<", ">run folder<"):
        assert label in page
    # Figures titled by what they show, not by their file names.
    assert f"<h3>Accuracy vs compute: {SRC} -&gt; {DST}</h3>" in page
    assert f"<h3>Accuracy vs gap: {DST} -&gt; {SRC}</h3>" in page and "<h3>compute_" not in page
    # One line per pair, then the accuracy-vs-compute figures, all before the long tables.
    story = [page.index(text) for text in ("Each pair in one line", "Accuracy vs compute", "<img", "Table 1",
                                           "Summary per cell", "All runs")]
    assert story == sorted(story)
    assert page.count('<ul class="pairs"><li>') == 1 and page.count("</li>") == 2
    assert "mean of 1 seed)" in page and "mean of 3 seeds" in page and " 1 seeds" not in page
    assert "| stitched, mean of 1 seed |" in (wide_report.parent / "table1.md").read_text()


def test_a_pair_in_one_sentence():
    cells = [{"top1_mean": None, "method": "downsample_linear", "n": 0},
             {"top1_mean": 84.44, "top1_se": 0.31, "method": "downsample_bottleneck", "src_stage": 1, "dst_stage": 1,
              "gmacs": 0.0289, "n": 1, "dst": "resnet18"}]
    originals = {"resnet18": {"top1": 88.32, "gmacs": 0.037}}
    assert pair_sentence(cells, originals) == (
        "most accurate stitch: Downsample, Bottleneck at stage 1 -> 1, with 84.4 ± 0.3 % top-1 at 0.0289 GMACs (mean of 1 "
        "seed); that is 3.9 points below resnet18 on its own (88.3 % at 0.037 GMACs), with 78 % of its compute.")
    assert pair_sentence(cells[:1], {}) == "no finished stitches yet (1 cell pending or failed)."
    assert [plural(n, "seed") for n in (0, 1, 3)] == ["0 seeds", "1 seed", "3 seeds"]


def test_an_empty_table_1_says_that_reference_models_are_missing_and_how_to_add_them(tmp_path):
    """Finished stitches but no model on its own to compare them with: table1.md and the page say so and name the
    eval-model command that adds one (not "no finished runs"); once one is measured, it is a row of the table."""
    runs, cells = tmp_path / "runs", []
    for gap, top1 in (("1:2", 70.0), ("1:4", 75.0)):
        _run(runs, cells, f"pair/{gap.replace(':', '-')}/bottleneck/seed0", {"status": "finished", "top1": top1,
             "gmacs": 0.02, "params": 1000, "dataset": "fashion_mnist", "input_size": 32},
             kind="stitch", src=SRC, dst=DST, gap=gap, method="bottleneck", seed=0, lr=None)
    _run(runs, cells, "pair/2-3/bottleneck/seed0", None, kind="stitch", src=SRC, dst=DST, gap="2:3",
         method="bottleneck", seed=0, lr=None)
    (runs / "sweeps").mkdir()
    (runs / "sweeps" / "pair.json").write_text(json.dumps({"sweep": "pair", "cells": cells}))
    report = write_report(runs)
    table = (report.parent / "table1.md").read_text()
    assert table.startswith("| Model |") and "no finished runs" not in table
    assert "No reference models to compare the 2 finished stitched cells with" in table
    assert f"stitchkit eval-model {SRC} --data ... --out {runs / 'originals' / SRC}" in table and DST in table
    assert "No reference models to compare the 2 finished stitched cells with" in report.read_text()
    (runs / "originals" / DST).mkdir(parents=True)
    (runs / "originals" / DST / "result.json").write_text(json.dumps({
        "status": "finished", "mode": "eval", "src": DST, "dst": DST, "top1": 80.0, "gmacs": 0.021,
        "dataset": "fashion_mnist"}))
    table = (write_report(runs).parent / "table1.md").read_text()
    assert f"| {DST} | 80.0 | 0.021 | measured (eval-model) on fashion_mnist |" in table
    assert "No reference models" not in table


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


# Headless Chromium makes no window narrower than 500 px, so the page is measured in a frame of exactly the width
# asked for. A copy of the page gets a script (the page itself has none) that, once the images are laid out,
# sends the page's scroll width, the frame's width and the widest table's width to the frame around it, which
# writes them into its title for --dump-dom to print. Virtual time, not the clock, decides when the dump happens.
MEASURE = """<script>addEventListener("load", () => parent.postMessage([document.documentElement.scrollWidth,
innerWidth, Math.max(...Array.from(document.querySelectorAll("table"), t => t.scrollWidth))].join(" "), "*"));
</script></body>"""
FRAME = """<!doctype html><html><head><title>not measured</title></head><body style="margin:0">
<script>addEventListener("message", e => { document.title = "measured " + e.data; });</script>
<iframe src="page.html" style="width:%dpx;height:900px;border:0"></iframe></body></html>"""


def _measure(page: Path, width: int, workdir: Path) -> tuple[int, int, int]:
    """(page scroll width, frame width, widest table) of ``page`` shown ``width`` CSS pixels wide."""
    chromium = _chromium()
    workdir.mkdir()
    (workdir / "page.html").write_text(page.read_text().replace("</body>", MEASURE))
    (workdir / "frame.html").write_text(FRAME % width)
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={workdir / 'profile'}", f"--window-size={max(width, 500)},900",
                           "--virtual-time-budget=30000", "--dump-dom", (workdir / "frame.html").as_uri()],
                          capture_output=True, text=True, timeout=300)
    found = re.search(r"<title>measured (\d+) (\d+) (\d+)</title>", done.stdout)
    assert found, f"Chromium measured nothing (exit {done.returncode}): {done.stderr[-1500:]}"
    return tuple(int(v) for v in found.groups())


@pytest.mark.parametrize("width", [1280, 390])
def test_the_page_is_no_wider_than_the_window_in_chromium(wide_report, width, tmp_path):
    if _chromium() is None:
        pytest.skip("no Chromium binary (chromium, chromium-browser or google-chrome) on PATH; "
                    "apt-get install chromium (scripts/setup.sh does, as root)")
    scroll_width, window, widest_table = _measure(wide_report, width, tmp_path / "measure")
    assert window == width
    assert widest_table > 1280  # the tables are as wide as a real sweep's: their boxes scroll, not the page
    assert scroll_width <= width, f"the page is {scroll_width} px wide in a {width} px window"
