"""Stitching for a task neither model was trained for, on real data, offline (issue 14's demonstration).

Two ResNet-18s are trained from scratch on Fashion-MNIST's classes 0-4 (T-shirt, trouser, pullover, dress, coat),
with different seeds: the source A and the destination B. The task is classes 5-9 (sandal, shirt, sneaker, bag,
ankle boot), which neither saw. On it, with the same images and steps:

* B given a new head alone (mode=probe), and with its last block too;
* A stitched to B with a new 5-class head (adapters + head), and with B's last block too;
* A stitched to B keeping B's own head frozen (only the adapters train: they learn to drive the old head);
* controls: the same stitches into an untrained B (bottleneck and linear adapters), which tell how much of a
  stitch's accuracy B's trained stages give and how much the adapters learn on their own;
* the same ResNet-18 trained from scratch on the task (what the budget buys without reused parts).

    python scripts/new_task.py --out runs/new_task            # 3 seeds, about 15 minutes on 2 CPU cores
    python scripts/new_task.py --out runs/new_task --fast     # 1 seed, fewer images, a few minutes

Resumable: finished runs are read back, interrupted ones resumed. Prints a Markdown table (mean +- standard error
over seeds) and writes it with every run's numbers to OUT/results.md and OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from stitchkit.rundir import RunDir
from stitchkit.training import load_config, train

OLD, NEW = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
MODEL = "resnet18"


def _base(images: int, epochs: int, val: int, classes: list[int], threads: int | None) -> list[str]:
    return ["data.name=fashion_mnist", "data.input_size=32", "data.random_resized_crop=false",
            "data.auto_augment=false", "data.crop_pct=1.0", f"data.limit_train={images}", f"data.limit_val={val}",
            f"data.classes=[{','.join(map(str, classes))}]", "optim.batch_size=128", "train.batch_size=128",
            f"train.epochs={epochs}", "train.workers=0", "train.log_every=1000", "model.pretrained=false",
            *([f"train.threads={threads}"] if threads else [])]


def _run(out: Path, name: str, settings: list[str]) -> dict:
    """Train ``name`` unless it finished before (resume it when it was interrupted)."""
    run = RunDir(out / name)
    if run.state() == "finished":
        return run.read_result()
    started = time.time()
    result = train(load_config(None, [*settings, f"output.dir={run.path}"]), resume=run.state() == "interrupted",
                   overwrite=run.state() == "failed")
    print(f"  {name}: top-1 {result['top1']:.2f} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    return result


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs and the results")
    parser.add_argument("--fast", action="store_true", help="one seed, fewer images")
    parser.add_argument("--smoke", action="store_true", help="the same code on a few hundred images (the tests)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="task seeds (default 0 1 2; --fast: 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0] if args.fast or args.smoke else [0, 1, 2])
    src_images, task_images, val = ((256, 128, 64) if args.smoke else (5000, 2000, 1000) if args.fast
                                    else (16000, 4000, 2000))
    sources = _base(src_images, 2, val, OLD, args.threads)
    task = _base(task_images, 2, val, NEW, args.threads)
    began = time.time()

    print(f"sources: {MODEL} x 2 on classes {OLD}", file=sys.stderr)
    a = _run(args.out, "source_a", [*sources, "mode=scratch", f"model.src={MODEL}", "train.seed=0"])
    b = _run(args.out, "source_b", [*sources, "mode=scratch", f"model.src={MODEL}", "train.seed=1"])
    a_weights, b_weights = RunDir(args.out / "source_a").model_weights, RunDir(args.out / "source_b").model_weights
    untrained_b = ["mode=stitch", f"model.src={MODEL}", f"model.dst={MODEL}", f"model.src_checkpoint={a_weights}",
                   "model.gap=1:3", "model.adapter=bottleneck"]
    stitch = [*untrained_b, f"model.dst_checkpoint={b_weights}"]
    probe = ["mode=probe", f"model.src={MODEL}", f"model.src_checkpoint={b_weights}", "model.new_head=true"]
    # (folder name, label, settings); B has 5 classes as the task does, so a new head is asked for explicitly.
    methods = [
        ("probe", "B, new head alone (probe)", probe),
        ("probe_last", "B, new head + last block", [*probe, "model.unfreeze_last=1"]),
        ("stitch_new_head", "A -> B stitch 1:3, new head", [*stitch, "model.new_head=true"]),
        ("stitch_new_head_last", "A -> B stitch 1:3, new head + last block",
         [*stitch, "model.new_head=true", "model.unfreeze_last=1"]),
        ("stitch_old_head", "A -> B stitch 1:3, B's own head kept frozen", stitch),
        # Controls: how much comes from B's trained stages rather than from the adapters themselves.
        ("stitch_untrained_dst", "control: A -> untrained B, 1:3, new head", [*untrained_b, "model.new_head=true"]),
        ("stitch_linear", "A -> B stitch 1:3 linear, new head", [*stitch, "model.adapter=linear", "model.new_head=true"]),
        ("stitch_linear_untrained_dst", "control: A -> untrained B, 1:3 linear, new head",
         [*untrained_b, "model.adapter=linear", "model.new_head=true"]),
        ("scratch", f"{MODEL} from scratch on the task", ["mode=scratch", f"model.src={MODEL}"]),
    ]
    rows, runs = [], {"source_a": a, "source_b": b}
    for slug, label, settings in methods:
        print(f"{label}, seeds {seeds}", file=sys.stderr)
        results = []
        for seed in seeds:
            name = f"{slug}_seed{seed}"
            results.append(_run(args.out, name, [*task, *settings, f"train.seed={seed}"]))
            runs[name] = results[-1]
        top1 = [r["top1"] for r in results]
        mean = sum(top1) / len(top1)
        se = math.sqrt(sum((t - mean) ** 2 for t in top1) / (len(top1) - 1) / len(top1)) if len(top1) > 1 else None
        rows.append({"method": label, "top1_mean": mean, "top1_se": se, "seeds": len(top1),
                     "trainable_params": results[0]["trainable_params"], "gmacs": results[0]["gmacs"],
                     "trained": results[0]["trained"]})

    lines = [f"Sources on classes {OLD}: A top-1 {a['top1']:.2f}, B top-1 {b['top1']:.2f} ({src_images} images, "
             f"2 epochs). Task: classes {NEW}, {task_images} images, 2 epochs, {val} validation images, seeds "
             f"{seeds}.", "", "| method | top-1 (%) | trained | trainable params | GMACs |", "|---|---|---|---|---|"]
    for r in rows:
        shown = f"{r['top1_mean']:.2f}" + (f" ± {r['top1_se']:.2f}" if r["top1_se"] is not None else "")
        lines.append(f"| {r['method']} | {shown} | {', '.join(r['trained'])} | {_count(r['trainable_params'])} "
                     f"| {r['gmacs']:.3f} |")
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "runs": runs}, indent=2, default=str))
    print(table)
    print(f"\n{time.time() - began:.0f} s; runs and results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
