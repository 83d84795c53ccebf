"""How many calibration images should a fitted start see? ``model.init_images`` side by side, on real data, with
seeds: the measurement behind its default.

A start that needs images (the default, ``fitted``) measures both models' features on ``model.init_images``
training images and fits the chain's last adapter to the destination's own features by ridge least squares (then
600 steps of feature matching on the same features). How many rows that fit gets per input channel is images x the
fitted map's output positions / its input channels: ResNet-18 to itself at 1:3 fits 128 channels on a 2 x 2 grid,
1/32 of a row per channel per image, so 256 images give it 8 rows per channel; at 1:4 it fits 256 channels on one
position, 1 row per channel. Before training, accuracy grows with that count up to about 16-32 rows per channel;
this study asks whether the difference survives training.

The recipe and the source models are scripts/adapter_start_study.py's (Fashion-MNIST at 32 px; stitches trained
with the paper's recipe, shortened: AdamW 2e-3, 4,000 images, 2 epochs, 2,000 test images; 3 seeds), so its sources
can be reused: ``--sources`` names that study's output folder (read only); without it they are trained into
``--out`` first. Each arm is one ``model.init_images``; every stitch is evaluated before training (the start alone)
and at the end. A pass records the wall seconds of its stitches' starts (``seconds.calibration`` in each run's
result.json: loading the images once, measuring both models on them and fitting each start); the table gives them
per stitch.

Every stitch from one source model is a cell of one sweep, trained in passes over the shared source front (one pass
per seed and arm: ``init_images`` is shared by a pass), so the study resumes where it stopped; ``--workers 2`` trains
two passes at a time (one thread each). ``--doc`` rewrites the part of the page between its ``<!-- study -->``
markers (or the whole file, when it has none).

    python scripts/calibration_images_study.py --out runs/calibration_images \\
        --sources runs/adapter_start --doc docs/calibration_images.md --workers 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from stitchkit.demo import fashion_mnist_base, run_stages, threads_per_run
from stitchkit.findings import environment
from stitchkit.reports.collect import standard_error
from stitchkit.rundir import RunDir
from stitchkit.sweeps.grid import Sweep, expand, merge_settings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling study, also when loaded by path (tests)
# Its recipe (the source models are shared, so their settings and names must be its own), its passes over a source
# front, its results reader, mean ± SE and their text, its page writer and its clock
from adapter_start_study import (BATCH, MICRO, MNV3, PICO, R18, SOURCE_EPOCHS, SOURCE_IMAGES,  # noqa: E402
                                 STITCH_EPOCHS, STITCH_IMAGES, VAL_IMAGES, _fmt, _stats, _stitch_base,
                                 add_study_time, finished_sources, results, write_doc)
from adapter_start_study import by_source as passes_by_source  # noqa: E402

SOURCES = [R18, MNV3, PICO, MICRO]  # a subset of scripts/adapter_start_study.py's (the same settings and names)

DEFAULT = 256  # the fixed default until 0.12 (since, model.init_images null: the start chooses; see chosen())
ARMS = [64, 256, 1024, 2048]  # model.init_images
BLOCKS = [  # (pairs, gaps, methods): the cells with the fewest rows per channel, and two controls
    ([(R18, R18)], ["1:3", "1:4"], ["downsample_linear", "downsample_bottleneck"]),
    ([(R18, PICO)], ["1:3"], ["downsample_linear", "downsample_bottleneck"]),  # the demo's
    ([(MNV3, MNV3)], ["1:4"], ["downsample_bottleneck"]),
    ([(R18, R18)], ["1:1"], ["downsample_linear"]),  # control: 1 row per channel per image
    ([(MICRO, MICRO)], ["1:4"], ["downsample_linear"]),  # control: tokens, 1 row per channel per image
]


def sweeps(out: Path, sources_dir: Path, seeds: list[int], arms: list[int],
           threads: int | None) -> tuple[Sweep, list[tuple[int, Sweep]]]:
    """The sources' sweep (scripts/adapter_start_study.py's cells, in ``sources_dir``), and per arm and source
    model a sweep of every stitch from that source."""
    sources = expand({"base": fashion_mnist_base(SOURCE_IMAGES, SOURCE_EPOCHS, VAL_IMAGES, BATCH, threads),
                      "baselines": {"scratch": {"models": SOURCES}}, "seeds": [0]}, name="start_sources")
    checkpoint = {cell.src: str((RunDir(sources_dir / cell.name).model_weights).resolve()) for cell in sources.cells}
    found = []
    for arm in arms:
        for pairs, gaps, methods in BLOCKS:
            for src, dst in pairs:
                base = merge_settings(_stitch_base(threads, checkpoint[src]),
                                      {"model": {"dst_checkpoint": checkpoint[dst], "init_images": arm}})
                found.append((arm, expand({"base": base, "pairs": [[src, dst]], "gaps": gaps, "methods": methods,
                                           "seeds": seeds}, name=f"calib_{arm}_{src}_{dst}")))
    return sources, found


def by_source(arm_sweeps: list[tuple[int, Sweep]], threads: int | None) -> list[Sweep]:
    """One sweep per source model holding every arm's stitches from it, each with its arm's model.init_images; its
    passes split by seed and arm (both are shared by a pass), and share the source front within one."""
    return passes_by_source(arm_sweeps, threads, lambda arm: {"model": {"init_images": arm}}, "calib_from")


def rows_per_channel(src: str, dst: str, gap: str, method: str) -> float:
    """Rows the least-squares fit of the chain's last fitted map gets per input channel, per calibration image: its
    output positions over its input channels (:func:`stitchkit.starts.fit_shape`, on the meta device)."""
    import torch

    from stitchkit import create_stitched
    from stitchkit.starts import fit_shape

    with torch.device("meta"):
        bridge = create_stitched(src, dst, gap, method.removeprefix("downsample_"), input_size=32, check=False).bridge
    rows, columns = fit_shape(bridge)
    return rows / columns if columns else float("nan")


def chosen(src: str, dst: str, gap: str, method: str) -> int:
    """The calibration images the default start asks for in this cell (``model.init_images`` null)."""
    import torch

    from stitchkit import create_stitched
    from stitchkit.starts import DEFAULT_START, get_start

    with torch.device("meta"):
        bridge = create_stitched(src, dst, gap, method.removeprefix("downsample_"), input_size=32, check=False).bridge
    return get_start(DEFAULT_START).images_wanted(bridge)


def time_starts(sources_dir: Path, arms: list[int], repeats: int = 2) -> str:
    """Wall seconds of the default start alone (``start_seconds``: measuring both models on the images, the fits,
    the feature matching) per cell and count, one thread, on random images (the time does not depend on them);
    the fastest of ``repeats``."""
    import torch

    from stitchkit import create_stitched

    torch.set_num_threads(1)
    sources = expand({"base": fashion_mnist_base(SOURCE_IMAGES, SOURCE_EPOCHS, VAL_IMAGES, BATCH, 1),
                      "baselines": {"scratch": {"models": SOURCES}}, "seeds": [0]}, name="start_sources")
    checkpoint = {c.src: RunDir(sources_dir / c.name).model_weights for c in sources.cells}
    cells = [(R18, R18, "1:3", "linear"), (R18, R18, "1:4", "bottleneck"), (R18, PICO, "1:3", "linear"),
             (MNV3, MNV3, "1:4", "bottleneck")]
    lines = ["| pair | gap | adapter | " + " | ".join(f"{a} images" for a in arms) + " |",
             "|---" * (3 + len(arms)) + "|"]
    for src, dst, gap, adapter in cells:
        row = []
        for count in arms:
            images = torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(0))
            seconds = min(create_stitched(src, dst, gap, adapter, input_size=32, src_checkpoint=checkpoint[src],
                                          dst_checkpoint=checkpoint[dst], calibration_images=images).start_seconds
                          for _ in range(repeats))
            row.append(f"{seconds:.1f}")
        lines.append(f"| {src} -> {'itself' if src == dst else dst} | {gap} | {adapter} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# --- reading the results -------------------------------------------------------------------------------------------


def arm_cell(runs: list[dict]) -> dict:
    """End and start (before training) accuracy, and the start's wall seconds, of one arm in one cell."""
    return {"end": _stats([r["top1"] for r in runs]),
            "start": _stats([r["top1_at_start"] for r in runs if r.get("top1_at_start") is not None]),
            # A pass's runs share its clock: its calibration seconds are those of all its stitches' starts.
            "seconds": _stats([(r.get("seconds") or {}).get("calibration", 0.0) / (r.get("group_size") or 1)
                               for r in runs]),
            "by_seed": {r["seed"]: r["top1"] for r in runs}}


def judge(cells: dict, arms: list[int], reference=lambda key: DEFAULT) -> list[tuple]:
    """Per cell and arm other than the cell's ``reference`` arm (default: the fixed default, 256): the end
    accuracy's difference to the reference's, paired by seed (mean, standard error, seeds), and whether it is ahead
    by more than its standard error (and by more than two)."""
    verdicts = []
    for key in sorted(cells):
        by, ref = cells[key], reference(key)
        if ref not in by:
            continue
        base = arm_cell(by[ref])["by_seed"]
        for arm in arms:
            if arm == ref or arm not in by:
                continue
            other = arm_cell(by[arm])["by_seed"]
            diffs = [other[s] - base[s] for s in sorted(base) if s in other]
            if not diffs:
                continue
            mean, se = statistics.fmean(diffs), standard_error(diffs)
            verdicts.append((key, arm, mean, se, len(diffs),
                             se is not None and mean > se, se is not None and mean > 2 * se))
    return verdicts


def _ahead(verdicts: list[tuple]) -> str:
    ahead = [v for v in verdicts if v[5]]
    return "none." if not ahead else "; ".join(
        f"{_label(k).replace(' | ', ' ')} with {a} images +{m:.1f} ± {se:.1f}"
        + (" (more than 2 standard errors)" if two else "") for k, a, m, se, _, _, two in ahead) + "."


def _label(key: tuple) -> str:
    src, dst, gap, method = key
    return f"{src} -> {'itself' if src == dst else dst} | {gap} | {method.removeprefix('downsample_')}"


def table(cells: dict, arms: list[int], seeds: int) -> str:
    order = [(s, d, g, m) for pairs, gaps, methods in BLOCKS for s, d in pairs for g in gaps for m in methods]
    head = ["pair", "gap", "adapter", "rows per channel per image", "null chooses"] + [
        f"{a} images" + (" (0.12's default)" if a == DEFAULT else "") for a in arms]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for key in sorted(cells, key=order.index):
        row = []
        for arm in arms:
            runs = cells[key].get(arm, [])
            if not runs:
                row.append("-")
                continue
            s = arm_cell(runs)
            row.append(f"{_fmt(s['end'], seeds)} (start {_fmt(s['start'], seeds)}; {s['seconds'][0]:.1f} s)")
        lines.append(f"| {_label(key)} | {rows_per_channel(*key):.3g} | {chosen(*key)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def report(cells: dict, arms: list[int], seeds: int, minutes: float | None, threads: int | None,
           sources: dict[str, dict] | None = None) -> str:
    """The page's text from the finished runs' records."""
    runs = [*(sources or {}).values(), *(r for by_arm in cells.values() for rs in by_arm.values() for r in rs)]
    lines = [f"Measured by this script with {environment(threads, runs)}"
             + (f"; {minutes:.0f} minutes of wall time over the invocations that finished." if minutes else "."),
             *(["", "Source models (seed 0, trained by scripts/adapter_start_study.py): " + ", ".join(
                 f"{name} {r['top1']:.2f}%" for name, r in sources.items()) + "."] if sources else []),
             "", "Each cell: top-1 at the end (mean ± standard error over seeds), then the accuracy of the start "
             "alone (before any training step) and the start's wall seconds per stitch (mean over seeds: a pass's "
             "calibration time, loading the images once and fitting each of its stitches' starts, over its "
             "stitches). Rows per channel per image: the fitted map's output positions over its input channels; "
             "times the images, the rows its least-squares fit gets per input channel.", "",
             table(cells, arms, seeds), ""]
    verdicts = judge(cells, arms)
    lines.append(f"Paired by seed, an arm ahead of 0.12's default ({DEFAULT}) at the end by more than the standard "
                 "error of the difference: " + _ahead(verdicts))
    behind = [v for v in verdicts if v[3] is not None and v[2] < -v[3]]
    lines.append("")
    lines.append(f"Behind {DEFAULT} by more than the standard error: " + ("none." if not behind else "; ".join(
        f"{_label(k).replace(' | ', ' ')} with {a} images {m:.1f} ± {se:.1f}" for k, a, m, se, *_ in behind) + "."))
    lines += ["", "Paired by seed, an arm ahead of the count the default chooses (`model.init_images` null) by more "
              "than the standard error of the difference: " + _ahead(judge(cells, arms, lambda key: chosen(*key)))]
    means = {a: statistics.fmean(arm_cell(by[a])["end"][0] for by in cells.values())
             for a in arms if cells and all(a in by for by in cells.values())}  # nothing finished: no means
    if means:
        picked = statistics.fmean(arm_cell(by[chosen(*key)])["end"][0] for key, by in cells.items()
                                  if chosen(*key) in by) if all(chosen(*k) in by for k, by in cells.items()) else None
        lines += ["", f"Mean top-1 at the end over the {len(cells)} cells: "
                  + ", ".join(f"{a} images {v:.2f}" for a, v in means.items())
                  + (f", the default's choice {picked:.2f}" if picked is not None else "") + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/calibration_images")
    parser.add_argument("--sources", default=None, help="scripts/adapter_start_study.py's output folder, holding its "
                                                        "source models (read only); default: train them into --out")
    parser.add_argument("--doc", default=None, help="write the results into this page")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", type=int, nargs="+", default=ARMS, help="model.init_images values")
    parser.add_argument("--workers", type=int, default=1, help="processes training passes side by side")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default 1 with workers)")
    parser.add_argument("--table-only", action="store_true", help="train nothing: the table of what is finished")
    parser.add_argument("--time-starts", action="store_true", help="train nothing: time the default start alone "
                                                                   "per count on a few cells, one thread")
    args = parser.parse_args(argv)
    out = Path(args.out)
    sources_dir = Path(args.sources) if args.sources else out
    if args.time_starts:
        print(time_starts(sources_dir, sorted(set(args.arms))))
        return 0
    threads = threads_per_run(args.threads, args.workers)
    arms = sorted(set(args.arms))
    sources, arm_sweeps = sweeps(out, sources_dir, args.seeds, arms, threads)
    missing = [c.src for c in sources.cells if not RunDir(sources_dir / c.name).model_weights.is_file()]
    if missing and args.sources and not args.table_only:
        print(f"no trained source model for {', '.join(missing)} in {sources_dir}: run "
              "scripts/adapter_start_study.py there first, or leave --sources out to train them into --out",
              file=sys.stderr)
        return 2
    start = time.time()
    if not args.table_only:
        stages = ([[sources]] if missing else []) + [by_source(arm_sweeps, threads)]
        failures, _ = run_stages(stages, out, workers=args.workers)
        if failures:
            print(f"{len(failures)} runs failed (see their result.json): {failures[:3]}", file=sys.stderr)
    seconds = add_study_time(out, 0 if args.table_only else time.time() - start)
    finished = finished_sources(sources, sources_dir)
    text = report(results(out, arm_sweeps), arms, len(args.seeds), seconds / 60 if seconds else None, threads,
                  finished)
    print(text)
    if args.doc:
        write_doc(Path(args.doc), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
