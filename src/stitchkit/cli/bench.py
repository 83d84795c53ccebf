"""``stitchkit bench``: training images/s of stitchkit's step against the paper's naive step, the whole destination
model and a lower bound; ``--grouped`` for whole runs sharing a front, ``--data`` for the input pipeline."""
from __future__ import annotations

import json

from ..errors import StitchkitError
from .common import add_command, available_device, non_negative_int, positive_int

COLUMNS = ("stitchkit", "naive", "full_dst", "lower_bound")


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "bench", run,
                    "training images/s: stitchkit vs the paper's naive step vs full model vs bound",
                    "Measure training speed. Columns are measured in interleaved repetitions, so a noisy machine "
                    "slows them alike and the ratios hold; compare ratios, not absolute images/s.")
    p.add_argument("--src", default="resnet50", help="source model")
    p.add_argument("--dst", default=None, help="destination model (default: same as --src)")
    p.add_argument("--gap", default=None, help="default 1:3 (with --grouped: 3:3,3:4)")
    p.add_argument("--adapter", default=None, help="default bottleneck (with --grouped: linear,bottleneck)")
    p.add_argument("--resize", default="bilinear", help="none, bilinear, area or integrated")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    p.add_argument("--input-size", type=positive_int, default=224, metavar="PX", help="image size")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed steps (default 5; --data: 3); with --grouped, measurements (default 1)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps first")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", type=available_device, default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--amp", default="none", choices=("none", "bf16"), help="autocast for stitchkit and full_dst")
    p.add_argument("--compile", action="store_true", help="torch.compile stitchkit's and full_dst's model")
    p.add_argument("--columns", default=None, help="comma-separated subset of " + ",".join(COLUMNS))
    p.add_argument("--grouped", action="store_true",
                   help="wall time of whole runs: each (gap, adapter) of the comma-separated --gap and --adapter lists "
                        "trained separately, then all in one pass over their shared front")
    p.add_argument("--train-images", type=positive_int, default=64,
                   help="with --grouped, --data or --pipeline: training images per run")
    p.add_argument("--val-images", type=positive_int, default=32, help="with --grouped: evaluation images per run")
    p.add_argument("--workers", type=non_negative_int, default=0, help="with --grouped or --pipeline: data-loader workers")
    p.add_argument("--data", action="store_true",
                   help="images/s of one data-loader worker per pipeline stage (decode, CPU augmentation, the worker "
                        "part of data.augment_on=device) and of the device-side augmentation")
    p.add_argument("--data-root", default=None,
                   help="with --data or --pipeline: an ImageNet-layout folder to read (default: generated 500x375 "
                        "JPEGs)")
    p.add_argument("--pipeline", action="store_true",
                   help="in one run: the loader alone, the training step alone and a whole one-epoch run, and the "
                        "share of the step's speed the run sees")
    p.add_argument("--augment-on", default="cpu", choices=("cpu", "device"), help="with --pipeline: data.augment_on")
    p.add_argument("--loader", default="torch", choices=("torch", "gpu"), help="with --pipeline: data.loader")


def run(args) -> int:
    from ..bench import format_bench, format_group_bench, run_bench, run_group_bench

    if args.data:
        from ..bench import format_data_bench, run_data_bench

        result = run_data_bench(args.data_root, args.src, args.input_size, args.train_images, args.batch_size,
                                args.repeats or 3)
        print(json.dumps(result, indent=2) if args.json else format_data_bench(result))
        return 0
    if args.pipeline:
        from ..bench import format_pipeline_bench, run_pipeline_bench

        result = run_pipeline_bench(args.src, args.dst, args.gap or "1:3", args.adapter or "bottleneck", args.resize,
                                    args.batch_size, args.input_size, args.train_images, args.workers, args.device,
                                    args.amp, args.channels_last, args.compile, args.augment_on, args.data_root,
                                    args.repeats or 5, args.threads, args.loader)
        print(json.dumps(result, indent=2) if args.json else format_pipeline_bench(result))
        return 0
    if args.grouped:
        gaps, adapters = (args.gap or "3:3,3:4").split(","), (args.adapter or "linear,bottleneck").split(",")
        result = run_group_bench(args.src, args.dst, gaps, adapters, args.resize, args.batch_size, args.input_size,
                                 args.train_images, args.val_images, args.workers, args.repeats or 1,
                                 args.channels_last, args.threads)
        print(json.dumps(result, indent=2) if args.json else format_group_bench(result))
        return 0 if result["results_equal"] else 1
    gap, adapter = args.gap or "1:3", args.adapter or "bottleneck"
    if "," in gap + adapter:
        raise StitchkitError("--gap and --adapter take one value each unless --grouped is given")
    columns = tuple(args.columns.split(",")) if args.columns else COLUMNS
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise StitchkitError(f"unknown column {sorted(unknown)[0]!r}; columns are {', '.join(COLUMNS)}")
    result = run_bench(args.src, args.dst, gap, adapter, args.resize, args.batch_size, args.input_size,
                       args.repeats or 5, args.warmup, args.channels_last, args.threads, args.device, args.amp,
                       args.compile, columns)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0
