"""``stitchkit demo``: the whole method, offline, on a laptop CPU, in minutes.

1. Fashion-MNIST at 32 px (RGB by channel replication), from Debian's ``dataset-fashion-mnist`` or a local copy.
2. Two source models of different families trained from scratch: a ResNet-18 and a small ViT with 4-pixel patches
   (``vit_pico_patch4_32``). They are ordinary sweep cells, so a second demo run finds and reuses them.
3. A mini version of the paper: the ResNet stitched to itself from Stage 1 to Stages 1-4, and the ResNet stitched to
   the ViT from Stage 1 to Stages 2-3, with Linear and Bottleneck adapters and bilinear resizing; plus the
   fine-tuning baseline for one gap. The stitches of each pair train in one pass over their shared Stage-1 front
   (``group_by_front``), which computes what separate runs would.
4. The report (results, summary, figures, Table 1, HTML) and a compact table in the terminal.

Every number is measured in this run: nothing is precomputed or downloaded.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import StitchkitError
from .rundir import RunDir
from .sweeps.grid import Sweep, expand
from .sweeps.runner import run_group, write_manifest

RESNET, VIT = "resnet18", "vit_pico_patch4_32"


@dataclass(frozen=True)
class DemoScale:
    """How much data and training each part of the demo gets."""

    source_images: int
    source_epochs: int
    stitch_images: int
    stitch_epochs: int
    val_images: int
    batch_size: int = 128


FULL = DemoScale(source_images=16000, source_epochs=2, stitch_images=6000, stitch_epochs=2, val_images=2000)
FAST = DemoScale(source_images=5000, source_epochs=2, stitch_images=2500, stitch_epochs=2, val_images=1000)


def fashion_mnist_base(images: int, epochs: int, val_images: int, batch_size: int, threads: int | None) -> dict:
    """Sweep base settings for small CPU runs on Fashion-MNIST at 32 px (no crops or AutoAugment on 28 px images)."""
    return {
        "data": {"name": "fashion_mnist", "input_size": 32, "random_resized_crop": False, "auto_augment": False,
                 "crop_pct": 1.0, "limit_train": images, "limit_val": val_images},
        "optim": {"batch_size": batch_size},
        "train": {"batch_size": batch_size, "epochs": epochs, "workers": 0, "threads": threads,
                  "log_every": 20, "checkpoint_every": 100},
        "model": {"pretrained": False},
    }


def _base(scale: DemoScale, images: int, epochs: int, threads: int | None) -> dict:
    return fashion_mnist_base(images, epochs, scale.val_images, scale.batch_size, threads)


def demo_sweeps(out: Path, scale: DemoScale, threads: int | None = None) -> list[Sweep]:
    """The demo's four sweeps: sources, ResNet -> ResNet, ResNet -> ViT, and the fine-tuning baseline."""
    sources = expand({"base": _base(scale, scale.source_images, scale.source_epochs, threads),
                      "baselines": {"scratch": {"models": [RESNET, VIT]}}, "seeds": [0]}, name="demo_sources")
    checkpoint = {cell.src: str(RunDir(out / cell.name).model_weights) for cell in sources.cells}
    stitch_base = _base(scale, scale.stitch_images, scale.stitch_epochs, threads)
    methods = ["downsample_linear", "downsample_bottleneck"]

    def stitched(name: str, dst: str, gaps: list[str], extra: dict | None = None) -> Sweep:
        base = {**stitch_base, "model": {"pretrained": False, "src_checkpoint": checkpoint[RESNET],
                                         "dst_checkpoint": checkpoint[dst]}}
        # Every stitch starts at the ResNet's Stage 1: each sweep trains its stitches in one pass over that front.
        return expand({"base": base, "pairs": [[RESNET, dst]], "gaps": gaps, "seeds": [0], "group_by_front": True,
                       **(extra or {})}, name=name)

    return [
        sources,
        stitched("demo_resnet_resnet", RESNET, ["1:1", "1:2", "1:3", "1:4"], {"methods": methods}),
        stitched("demo_resnet_vit", VIT, ["1:2", "1:3"], {"methods": methods}),
        stitched("demo_finetune", RESNET, ["1:3"], {"methods": [], "baselines": {"finetune": {"lrs": [0.002]}}}),
    ]


def _progress(total: int):
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="runs", unit="run", position=0)
    return None


def run_passes(sweeps: list[Sweep], out: Path, log=print, workers: int = 1) -> tuple[list[str], int]:
    """Run every cell of ``sweeps``, each sweep's passes together, with a progress bar on a terminal (log lines
    otherwise); returns the failed cells' names and the number of cells. The cells of one call must not depend on
    each other (train the sources in one call, the stitches that read them in the next).

    ``workers`` > 1 starts that many processes in all (give each run one thread): the helpers take the passes from
    the end, this process from the start, and the cells' locks keep any cell from running twice."""
    passes = [(sweep, group) for sweep in sweeps for group in sweep.groups(sweep.runnable)]
    cells = [cell for _, group in passes for cell in group]
    for sweep in sweeps:
        write_manifest(sweep, out)
    helpers = []
    if workers > 1:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no thread pools inherited
        helpers = [context.Process(target=_help, args=(sweeps, str(out)), daemon=True) for _ in range(workers - 1)]
        for helper in helpers:
            helper.start()
    bar = _progress(len(cells))
    done = 0
    try:
        for sweep, group in passes:
            cell = group[0]
            label = f"{cell.kind} {cell.pair}" + (f" {cell.gap} {cell.method}" if len(group) == 1 and cell.gap else "")
            label += f" ({len(group)} stitches in one pass)" if len(group) > 1 else ""
            span = f"{done + 1}" if len(group) == 1 else f"{done + 1}-{done + len(group)}"
            (bar.set_postfix_str(label) if bar else log(f"[{span}/{len(cells)}] {label}"))
            run_group(sweep, group, out)
            done += len(group)
            if bar:
                bar.update(len(group))
        for helper in helpers:
            helper.join()
    finally:
        for helper in helpers:
            if helper.is_alive():
                helper.terminate()
        if bar:
            bar.close()
    failures = [cell.name for cell in cells if RunDir(out / cell.name).state() == "failed"]
    return failures, len(cells)


def run_stages(stages: list[list[Sweep]], out: Path, log=print, workers: int = 1) -> tuple[list[str], int]:
    """:func:`run_passes` for each stage in turn (the source models, then the stitches that read them); a stage
    with failures ends it, since what follows depends on it. Returns the failed cells and the cells run."""
    failures, cells = [], 0
    for sweeps in stages:
        more_failures, more_cells = run_passes(sweeps, out, log, workers)
        failures, cells = failures + more_failures, cells + more_cells
        if failures:
            break
    return failures, cells


def read_study_file(path: str | Path, what: str, keys: tuple[str, ...], required: tuple[str, ...],
                    example: str, smoke: dict | None = None) -> dict:
    """A study file (findings, search study): a YAML mapping with only ``keys``, the ``required`` ones present; with
    ``smoke``, its sections merged over the file's (a toy-size run of the same code)."""
    from .training.config import _parse_yaml  # YAML that reads a gap such as 1:3 as text, not base-60

    path = Path(path)
    if not path.is_file() and path == Path(example):
        # The default file, asked for outside the repository root: a source checkout still has it, next to src/.
        in_checkout = Path(__file__).resolve().parents[2] / example
        path = in_checkout if in_checkout.is_file() else path
    if not path.is_file():
        raise StitchkitError(f"{what} file {str(path)!r} does not exist; pass the path of a {what} file, such as "
                             f"{example} in stitchkit's repository (a relative path is read from the current folder)")
    spec = _parse_yaml(path.read_text(), f"{what} file {str(path)!r}") or {}
    unknown = set(spec) - set(keys)
    if unknown:
        raise StitchkitError(f"unknown key {sorted(unknown)[0]!r} in {str(path)!r}; keys are {', '.join(keys)}")
    missing = [k for k in required if k not in spec]
    if missing:
        raise StitchkitError(f"{str(path)!r} has no {missing[0]!r}; see {example}")
    if smoke:
        spec = {**spec, **{k: ({**spec[k], **v} if isinstance(v, dict) and isinstance(spec.get(k), dict) else v)
                           for k, v in smoke.items()}}
    return spec


def threads_per_run(threads: int | None, workers: int) -> int | None:
    """Torch threads each run uses: as asked, else one when several workers share the cores (else torch's default)."""
    return threads or (1 if workers > 1 else None)


def _help(sweeps: list[Sweep], out: str) -> None:
    """A helper process of :func:`run_passes`: the passes from the last, skipping cells another process holds."""
    for sweep in sweeps[::-1]:
        for group in sweep.groups(sweep.runnable)[::-1]:
            run_group(sweep, group, Path(out))


def run_demo(out: str | Path = "runs/demo", fast: bool = False, scale: DemoScale | None = None,
             threads: int | None = None, workers: int = 1, log=print) -> Path:
    """Run the demo into ``out`` and return the path of its HTML report; ``workers`` processes train side by side
    (one torch thread each unless ``threads`` says otherwise)."""
    from .reports import write_report
    from .reports.collect import collect, distinct, summarize
    from .training.data import find_fashion_mnist

    find_fashion_mnist(None)  # fail now, with the install command, rather than after the first model is built
    out = Path(out)
    scale = scale or (FAST if fast else FULL)
    start = time.time()
    sources, *stitches = demo_sweeps(out, scale, threads_per_run(threads, workers))
    failures, cells = run_stages([[sources], stitches], out, log, workers)
    index = write_report(out)
    rows, originals = collect(out)
    log("")
    log(summary_table(distinct(summarize(rows)), originals))  # a cell two sweeps share: one line
    log(f"\n{cells} runs in {time.time() - start:.0f} s; report: {index.resolve()}")
    if failures:
        raise StitchkitError(f"{len(failures)} demo runs failed (see their result.json): {', '.join(failures[:3])}")
    return index


def summary_table(summary: list[dict], originals: dict) -> str:
    """The terminal version of the report: each model's accuracy and compute, relative to the source model."""
    source = originals.get(RESNET, {})
    lines = [f"{'model':52} {'top-1':>7} {'GMACs':>8} {'vs ' + RESNET:>14}", "-" * 84]
    for name, original in sorted(originals.items()):
        lines.append(f"{name + ' (trained from scratch)':52} {original['top1']:7.2f} {original['gmacs'] or 0:8.4f}"
                     f" {_ratio(original.get('gmacs'), source.get('gmacs')):>14}")
    for row in summary:
        if row["kind"] == "scratch" or row["top1_mean"] is None:
            continue
        dst = "itself" if row["src"] == row["dst"] else row["dst"]
        label = f"{row['src']} -> {dst} {row['gap']} {row['method']}"
        lines.append(f"{label[:52]:52} {row['top1_mean']:7.2f} {row['gmacs'] or 0:8.4f} "
                     f"{_ratio(row['gmacs'], source.get('gmacs')):>14}")
    return "\n".join(lines)


def _ratio(value, reference) -> str:
    return f"{100 * value / reference:.0f}% compute" if value and reference else "-"
