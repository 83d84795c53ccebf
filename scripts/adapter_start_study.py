"""Where should adapters start? Every ``model.adapter_norm`` (and the paper code's ``frozen_mode=train``) side by
side, on real data, with seeds: the measurement behind stitchkit's default.

Fashion-MNIST at 32 px, the demo's two sources trained from scratch (a ResNet-18 and a small ViT), three pairs
(ResNet -> ResNet, ResNet -> ViT, ViT -> ResNet), gaps 1:1 to 1:4, linear and bottleneck adapters with bilinear
resizing, the demo's stitch training (6,000 images, 2 epochs, AdamW 2e-3), 3 seeds. Every arm is an ordinary sweep
in one folder, so the study resumes where it stopped. Writes a markdown table of top-1 after each epoch (mean and
standard error over seeds) to ``--doc``.

    python scripts/adapter_start_study.py --out runs/adapter_start --doc docs/adapter_start.md   # ~45 min, 2 cores
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from stitchkit.demo import FULL, RESNET, VIT, _base, demo_sweeps
from stitchkit.reports.collect import standard_error
from stitchkit.sweeps.grid import expand
from stitchkit.sweeps.runner import run_group, write_manifest

ARMS = {  # name: the settings that differ
    "lstsq": {"adapter_norm": "lstsq"},
    "dst_stats": {"adapter_norm": "dst_stats"},
    "paper_code": {"adapter_norm": "paper_code"},
    "paper_text": {"adapter_norm": "paper_text"},
    "paper_text + frozen_mode=train": {"adapter_norm": "paper_text", "frozen_mode": "train"},
}
PAIRS = [(RESNET, RESNET), (RESNET, VIT), (VIT, RESNET)]
GAPS = ["1:1", "1:2", "1:3", "1:4"]
METHODS = ["downsample_linear", "downsample_bottleneck"]


def sweeps(out: Path, seeds: list[int], arms: list[str], threads: int | None):
    sources = demo_sweeps(out, FULL, threads)[0]
    checkpoint = {cell.src: str(out / cell.name / "model.pt") for cell in sources.cells}
    found = [sources]
    for arm in arms:
        for src, dst in PAIRS:
            base = _base(FULL, FULL.stitch_images, FULL.stitch_epochs, threads)
            base["model"] = {"pretrained": False, "src_checkpoint": checkpoint[src], "dst_checkpoint": checkpoint[dst],
                             **ARMS[arm]}
            name = f"start_{arm.split()[0]}{'_frozen_train' if 'frozen_mode' in ARMS[arm] else ''}_{src}_{dst}"
            found.append((arm, expand({"base": base, "pairs": [[src, dst]], "gaps": GAPS, "methods": METHODS,
                                       "seeds": seeds, "group_by_front": True}, name=name)))
    return found


def epoch_accuracies(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    evals = sorted((r for r in records if r.get("type") == "eval" and r.get("split", "val") == "val"),
                   key=lambda r: r["step"])
    return [r["top1"] for r in evals]


def _fmt(values: list[float], seeds: int = 3) -> str:
    if not values:
        return "-"
    se = standard_error(values)
    n = f" (n={len(values)})" if len(values) != seeds else ""
    return f"{statistics.fmean(values):.1f}" + (f" ± {se:.1f}" if se is not None else "") + n


def arm_means(out: Path, arm_sweeps) -> dict[str, float]:
    """Each arm's mean final top-1 over the cells every arm has finished (the default is the arm with the highest)."""
    finals: dict[tuple, dict[str, list[float]]] = {}
    for arm, sweep in arm_sweeps:
        for cell in sweep.runnable:
            if (out / cell.name / "result.json").is_file():
                accs = epoch_accuracies(out / cell.name)
                if accs:
                    finals.setdefault((cell.src, cell.dst, cell.gap, cell.method), {}).setdefault(arm, []).append(accs[-1])
    arms = [arm for arm, _ in _unique_arms(arm_sweeps)]
    shared = [cell for cell, by_arm in finals.items() if all(by_arm.get(a) for a in arms)]
    return {a: statistics.fmean(statistics.fmean(finals[c][a]) for c in shared) for a in arms} if shared else {}


def table(out: Path, arm_sweeps) -> str:
    lines = ["| pair | gap | adapter | " + " | ".join(arm for arm, _ in _unique_arms(arm_sweeps)) + " |",
             "|---|---|---|" + "---|" * len(_unique_arms(arm_sweeps))]
    cells: dict[tuple, dict[str, list[list[float]]]] = {}
    for arm, sweep in arm_sweeps:
        for cell in sweep.runnable:
            path = out / cell.name
            if not (path / "result.json").is_file():
                continue
            key = (cell.src, cell.dst, cell.gap, cell.method)
            cells.setdefault(key, {}).setdefault(arm, []).append(epoch_accuracies(path))
    for (src, dst, gap, method), arms in sorted(cells.items(), key=lambda kv: (PAIRS.index(kv[0][:2]), kv[0][2:])):
        row = []
        for arm, _ in _unique_arms(arm_sweeps):
            runs = arms.get(arm, [])
            final = [r[-1] for r in runs if r]
            first = [r[0] for r in runs if len(r) > 1]
            row.append(f"{_fmt(final)} (ep1 {_fmt(first)})" if first else _fmt(final))
        dst_label = "itself" if src == dst else dst
        lines.append(f"| {src} -> {dst_label} | {gap} | {method.removeprefix('downsample_')} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _unique_arms(arm_sweeps):
    seen = {}
    for arm, sweep in arm_sweeps:
        seen.setdefault(arm, sweep)
    return list(seen.items())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/adapter_start")
    parser.add_argument("--doc", default=None, help="write the markdown table here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--table-only", action="store_true", help="train nothing: the table of what is finished")
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.time()
    sources, *arm_sweeps = sweeps(out, args.seeds, args.arms, args.threads)
    for sweep in [] if args.table_only else [sources] + [s for _, s in arm_sweeps]:
        write_manifest(sweep, out)
        for group in sweep.groups(sweep.runnable):
            print(f"[{time.time() - start:6.0f} s] {sweep.name}: {len(group)} run(s)", flush=True)
            run_group(sweep, group, out)
    text = table(out, arm_sweeps)
    means = arm_means(out, arm_sweeps)
    if means:
        text += "\n\nMean final top-1 over all cells: " + ", ".join(f"{arm} {value:.1f}" for arm, value in
                                                             sorted(means.items(), key=lambda kv: -kv[1]))
    print(text)
    if args.doc:
        Path(args.doc).write_text(text + "\n")
    print(f"{time.time() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
