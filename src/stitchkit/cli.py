"""The ``stitchkit`` command line.

Every command is a function of parsed arguments that returns an exit code, and :func:`main` takes ``argv`` so tests
call it in-process. User errors (:class:`~stitchkit.errors.StitchkitError`) print one message and exit with code 2;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from .errors import StitchkitError

EXIT_USER_ERROR = 2


def _cmd_models(args) -> int:
    from .zoo import list_models

    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        raise StitchkitError(f"no supported model matches {args.pattern!r}; try a wider pattern such as '*{args.pattern}*'")
    print("\n".join(names))
    return 0


def _cmd_adapters(args) -> int:
    from .adapters import get_adapter, list_adapters

    for name in list_adapters():
        kind = get_adapter(name)
        print(f"{name:14s} {kind.layout:7s} {kind.description}")
    return 0


def _cmd_stages(args) -> int:
    from .zoo import create_model, model_spec

    model = create_model(args.model, pretrained=args.pretrained, input_size=args.input_size)
    spec = model_spec(model, args.input_size, args.model)
    rows = [
        {"stage": c.stage, "position": c.position, "after": c.module, "format": str(c.feature.format),
         "shape": list(c.feature.shape), "prefix_tokens": c.feature.num_prefix_tokens}
        for c in spec.cut_points
    ]
    if args.json:
        print(json.dumps({"model": args.model, "family": spec.family, "input_size": args.input_size, "cuts": rows}, indent=2))
        return 0
    print(f"{args.model} ({spec.family}) at {args.input_size}x{args.input_size}")
    print(f"{'stage':>5}  {'position':8}  {'after':24}  {'format':6}  shape")
    for c in spec.cut_points:
        print(f"{c.stage:>5}  {c.position:8}  {c.module:24}  {str(c.feature.format):6}  {c.feature.describe().split(' ', 1)[1]}")
    return 0


def _cmd_inspect(args) -> int:
    from .compute import count_macs, count_params
    from .stitching import create_stitched
    from .zoo import create_model

    if args.finetune:
        return _inspect_finetune(args)
    model = create_stitched(
        args.src, args.dst, gap=args.gap, adapter=args.adapter, resize=args.resize, pretrained=args.pretrained,
        input_size=args.input_size, prefix_out=args.prefix_out, prefix_in=args.prefix_in,
        readd_pos_embed=args.readd_pos_embed,
    )
    size = (3, args.input_size, args.input_size)
    macs = count_macs(model, size)
    src_macs = count_macs(create_model(args.src, input_size=args.input_size), size)
    dst_macs = src_macs if args.dst == args.src else count_macs(create_model(args.dst, input_size=args.input_size), size)
    x, y = model.config.gap
    report = {
        "src": args.src,
        "dst": args.dst,
        "gap": f"{x}:{y}",
        "adapter": args.adapter,
        "resize": args.resize,
        "input_size": args.input_size,
        "src_cut": {"stage": x, "position": "first", "after": model.src_spec.cut(*model.config.src_cut).module,
                    "feature": model.bridge.src.describe()},
        "dst_cut": {"stage": model.config.dst_cut[0], "position": model.config.dst_cut[1],
                    "after": model.dst_spec.cut(*model.config.dst_cut).module,
                    "feature": model.dst_spec.cut(*model.config.dst_cut).feature.describe()},
        "adapters": [
            {"in": [s.in_channels, *s.in_size], "out": [s.out_channels, *s.out_size], "resize": s.resize,
             "stride": s.stride}
            for s in model.steps
        ],
        "params": count_params(model),
        "trainable_params": count_params(model, trainable_only=True),
        "gmacs": macs / 1e9,
        "gmacs_src": src_macs / 1e9,
        "gmacs_dst": dst_macs / 1e9,
        "macs_vs_src": macs / src_macs,
        "macs_vs_dst": macs / dst_macs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.src} stage {x} -> {args.dst} stage {y}   adapter={args.adapter} resize={args.resize} "
          f"input={args.input_size}px")
    print(f"  source cut      after {report['src_cut']['after']:20s} {report['src_cut']['feature']}")
    print(f"  destination cut after {report['dst_cut']['after']:20s} {report['dst_cut']['feature']}")
    print(f"  adapter chain ({len(model.steps)}):")
    for i, step in enumerate(model.steps, start=1):
        print(f"    {i}. {step.describe()}")
    print(f"  parameters      {report['params'] / 1e6:.2f} M total, {report['trainable_params'] / 1e6:.3f} M trainable")
    print(f"  compute         {report['gmacs']:.3f} GMACs = {100 * report['macs_vs_src']:.1f}% of {args.src} "
          f"({report['gmacs_src']:.3f}), {100 * report['macs_vs_dst']:.1f}% of {args.dst} ({report['gmacs_dst']:.3f})")
    return 0


def _inspect_finetune(args) -> int:
    from .compute import count_macs, count_params
    from .finetune import create_finetune_baseline
    from .zoo import create_model

    if args.src != args.dst:
        raise StitchkitError(
            f"the fine-tuning baseline cuts one model and keeps its own blocks, so --src and --dst must be the same "
            f"model (got {args.src} and {args.dst}); to join two models, drop --finetune and pick an --adapter"
        )
    baseline = create_finetune_baseline(args.src, args.gap, pretrained=args.pretrained, input_size=args.input_size)
    size = (3, args.input_size, args.input_size)
    macs, full = count_macs(baseline, size), count_macs(create_model(args.src, input_size=args.input_size), size)
    report = {"model": args.src, "gap": args.gap, "kept_blocks": list(baseline.kept_blocks),
              "removed_blocks": list(baseline.removed_blocks), "params": count_params(baseline),
              "gmacs": macs / 1e9, "macs_vs_model": macs / full}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"fine-tuning baseline of {args.src}, gap {args.gap}: every weight trains, no adapter")
    print(f"  kept from the gap  {', '.join(baseline.kept_blocks) or '(none)'}")
    print(f"  removed            {', '.join(baseline.removed_blocks) or '(none)'}")
    print(f"  parameters         {report['params'] / 1e6:.2f} M")
    print(f"  compute            {report['gmacs']:.3f} GMACs = {100 * report['macs_vs_model']:.1f}% of {args.src}")
    return 0


def _split_config_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG.yaml] key=value ...`` -> (config path or None, overrides)."""
    items = list(items)
    path = items.pop(0) if items and "=" not in items[0] else None
    stray = [i for i in items if "=" not in i]
    if stray:
        raise StitchkitError(f"expected key=value overrides after the config file, got {stray[0]!r}")
    return path, items


def _cmd_train(args) -> int:
    from .training import RunInterrupted, load_config, train

    path, overrides = _split_config_args(args.settings)
    config = load_config(path, overrides)
    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except RunInterrupted as stop:
        print(f"stitchkit: {stop}", file=sys.stderr)
        return stop.exit_code
    if result.get("world_size", 1) > 1 and not _is_main_process():
        return 0
    print(json.dumps({k: result[k] for k in ("status", "top1", "top5", "gmacs", "trainable_params", "epochs",
                                             "wall_time_s", "images_per_s") if k in result}, indent=2))
    return 0


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _cmd_eval(args) -> int:
    from .training import evaluate_run

    record = evaluate_run(args.run_dir, device=args.device, workers=args.workers)
    print(json.dumps(record, indent=2))
    return 0


def _cmd_eval_model(args) -> int:
    from .training import evaluate_model, load_config

    overrides = [f"data.name={args.data}", f"data.input_size={args.input_size}", f"train.batch_size={args.batch_size}",
                 f"train.workers={args.workers}", f"model.pretrained={str(args.pretrained).lower()}"]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.checkpoint:
        overrides.append(f"model.src_checkpoint={args.checkpoint}")
    if args.limit_val:
        overrides.append(f"data.limit_val={args.limit_val}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    config = load_config(None, overrides + list(args.settings))
    record = evaluate_model(args.model, config, args.out)
    print(json.dumps({k: v for k, v in record.items() if k != "versions"}, indent=2))
    return 0


def _cmd_methods(args) -> int:
    from .sweeps.methods import PAPER_METHODS, list_methods

    for method in list_methods():
        paper = "paper" if method.name in PAPER_METHODS else ""
        print(f"{method.name:26s} adapter={method.adapter:13s} resize={method.resize:10s} {paper:5s} {method.label}")
    return 0


def _cmd_sweep(args) -> int:
    import os
    from pathlib import Path

    from .sweeps.grid import load_sweep
    from .sweeps.runner import run_local, run_local_gpus, submit_slurm, write_manifest
    from .training import RunInterrupted

    sweep = load_sweep(args.sweep, args.settings)
    runs_dir = Path(args.out or Path("runs") / sweep.name)
    if args.dry_run:
        from .sweeps.dryrun import dry_run_table

        print(dry_run_table(sweep, with_costs=not args.no_costs))
        return 0
    write_manifest(sweep, runs_dir)
    if args.executor == "slurm":
        jobs = submit_slurm(sweep, args.sweep, list(args.settings), runs_dir, retry_failed=args.retry_failed,
                            partition=args.partition, time_min=args.time_min, gpus_per_job=args.gpus_per_job,
                            cpus_per_task=args.cpus_per_task, array_parallelism=args.array_parallelism,
                            cluster=args.cluster, wait=args.wait)
        print(f"submitted {len(jobs)} cells" + (f" (job ids {jobs[0].job_id} ...)" if jobs else " (nothing to run)"))
        return 0
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 1 and not os.environ.get("STITCHKIT_SWEEP_WORKER"):
        return run_local_gpus(sys.argv[1:], gpus)
    try:
        counts = run_local(sweep, runs_dir, retry_failed=args.retry_failed,
                           log=lambda line: print(line, file=sys.stderr, flush=True))
    except RunInterrupted as stop:
        print(f"stitchkit: sweep stopped: {stop}; rerun the same command to continue", file=sys.stderr)
        return stop.exit_code
    print(json.dumps({"runs_dir": str(runs_dir), **counts}))
    return 1 if counts.get("failed") or counts.get("skipped-failed") else 0  # failed cells remain: say so


def _cmd_report(args) -> int:
    from .reports import write_report

    index = write_report(args.runs_dir, args.out)
    print(f"report written: {index}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, fast=args.fast, threads=args.threads)
    return 0


def _cmd_findings(args) -> int:
    from .findings import run_findings

    run_findings(args.file, args.out, args.doc, smoke=args.smoke, threads=args.threads)
    return 0


def _cmd_bench(args) -> int:
    from .bench import format_bench, format_group_bench, run_bench, run_group_bench

    if args.data:
        from .bench import format_data_bench, run_data_bench

        result = run_data_bench(args.data_root, args.src, args.input_size, args.train_images, max(args.batch_size, 1),
                                args.repeats or 3)
        print(json.dumps(result, indent=2) if args.json else format_data_bench(result))
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
    columns = tuple(args.columns.split(",")) if args.columns else ("stitchkit", "naive", "full_dst", "lower_bound")
    unknown = set(columns) - {"stitchkit", "naive", "full_dst", "lower_bound"}
    if unknown:
        raise StitchkitError(f"unknown column {sorted(unknown)[0]!r}; columns are stitchkit, naive, full_dst, lower_bound")
    result = run_bench(args.src, args.dst, gap, adapter, args.resize, args.batch_size, args.input_size,
                       args.repeats or 5, args.warmup, args.channels_last, args.threads, args.device, args.amp,
                       args.compile, columns)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stitchkit", description="Stitch frozen parts of vision models together.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list supported model names")
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'resnet*'")
    p.add_argument("--pretrained", action="store_true", help="list timm names with pretrained tags")
    p.set_defaults(run=_cmd_models)

    p = sub.add_parser("adapters", help="list registered adapters")
    p.set_defaults(run=_cmd_adapters)

    p = sub.add_parser("stages", help="show a model's cut points: stage, position, format, shape")
    p.add_argument("model")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_cmd_stages)

    p = sub.add_parser("inspect", help="show a stitched model: adapter chain, parameters, GMACs")
    p.add_argument("--src", required=True, help="source model (its lower layers)")
    p.add_argument("--dst", required=True, help="destination model (its upper layers and head)")
    p.add_argument("--gap", default="1:3", help="X:Y, source stage X to destination stage Y (default 1:3)")
    p.add_argument("--adapter", default="bottleneck")
    p.add_argument("--resize", default="bilinear")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--prefix-out", default="concat", help="class token out of a ViT: concat, drop, add")
    p.add_argument("--prefix-in", default="mean", help="class token into a ViT: mean, zeros, learned")
    p.add_argument("--readd-pos-embed", action="store_true", help="re-add the destination ViT's position embedding")
    p.add_argument("--pretrained", action="store_true", help="load pretrained weights (needs them cached or network)")
    p.add_argument("--finetune", action="store_true", help="show the fine-tuning baseline instead (src == dst)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_cmd_inspect)

    p = sub.add_parser("train", help="train a stitch, the fine-tuning baseline, or a model from scratch",
                       description="stitchkit train [CONFIG.yaml] [key=value ...]: settings are the paper's recipe, "
                                   "then the YAML file, then the overrides (e.g. mode=stitch model.gap=1:3).")
    p.add_argument("settings", nargs="*", metavar="[CONFIG.yaml] key=value")
    p.add_argument("--resume", action="store_true", help="continue the run in output.dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in output.dir")
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run again from its directory")
    p.add_argument("run_dir")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(run=_cmd_eval)

    p = sub.add_parser("eval-model", help="measure an unstitched model in the training pipeline")
    p.add_argument("model")
    p.add_argument("--data", default="imagefolder", help="imagefolder, fashion_mnist or synthetic")
    p.add_argument("--data-root", default=None)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--pretrained", action="store_true")
    p.add_argument("--checkpoint", default=None, help="a local state-dict file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--limit-val", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="folder for result.json")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a further config override, e.g. --set data.crop_pct=1.0 (repeatable)")
    p.set_defaults(run=_cmd_eval_model)

    p = sub.add_parser("methods", help="list stitching methods (adapter x resize) for sweep files")
    p.set_defaults(run=_cmd_methods)

    p = sub.add_parser("sweep", help="run a grid of stitches, resumable, locally or on SLURM")
    p.add_argument("sweep", help="sweep YAML file (see configs/paper/)")
    p.add_argument("settings", nargs="*", metavar="key=value", help="overrides of the sweep's base settings")
    p.add_argument("--out", default=None, help="runs folder (default runs/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="print the cells with GMACs and parameters, run nothing")
    p.add_argument("--no-costs", action="store_true", help="with --dry-run: skip the GMACs and parameter columns")
    p.add_argument("--executor", choices=["local", "slurm"], default="local")
    p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--time-min", type=int, default=24 * 60, help="SLURM time limit per cell (minutes)")
    p.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per cell (torchrun inside the job when > 1)")
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--array-parallelism", type=int, default=64)
    p.add_argument("--cluster", default=None, help="submitit cluster: slurm (default), local or debug (for testing)")
    p.add_argument("--wait", action="store_true", help="wait for the submitted jobs to finish")
    p.set_defaults(run=_cmd_sweep)

    p = sub.add_parser("demo", help="the whole method on Fashion-MNIST on this CPU: sources, stitches, report")
    p.add_argument("--out", default="runs/demo", help="output folder (source models there are reused)")
    p.add_argument("--fast", action="store_true", help="less data and training: about 2 minutes instead of 6")
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("findings", help="the paper's five findings at small scale, with seeds, judged and written up")
    p.add_argument("file", nargs="?", default="configs/findings/fashion_mnist.yaml", help="findings file")
    p.add_argument("--out", default="runs/findings", help="output folder (resumable; finished runs are reused)")
    p.add_argument("--doc", default=None, help="write the findings page here (e.g. docs/findings.md)")
    p.add_argument("--smoke", action="store_true", help="a few hundred images, one gap, two seeds: checks the path")
    p.set_defaults(run=_cmd_findings)

    p = sub.add_parser("bench", help="training images/s: stitchkit vs the paper's naive step vs full model vs bound")
    p.add_argument("--src", default="resnet50")
    p.add_argument("--dst", default=None, help="default: same as --src")
    p.add_argument("--gap", default=None, help="default 1:3 (with --grouped: 3:3,3:4)")
    p.add_argument("--adapter", default=None, help="default bottleneck (with --grouped: linear,bottleneck)")
    p.add_argument("--resize", default="bilinear")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 5); with --grouped, measurements")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--amp", default="none", choices=("none", "bf16"), help="autocast for stitchkit and full_dst")
    p.add_argument("--compile", action="store_true", help="torch.compile stitchkit's and full_dst's model")
    p.add_argument("--columns", default=None, help="comma-separated subset of stitchkit,naive,full_dst,lower_bound")
    p.add_argument("--grouped", action="store_true",
                   help="wall time of whole runs: each (gap, adapter) of the comma-separated --gap and --adapter lists "
                        "trained separately, then all in one pass over their shared front")
    p.add_argument("--train-images", type=int, default=64, help="with --grouped: training images per run")
    p.add_argument("--val-images", type=int, default=32, help="with --grouped: evaluation images per run")
    p.add_argument("--workers", type=int, default=0, help="with --grouped: data-loader workers")
    p.add_argument("--data", action="store_true",
                   help="images/s of one data-loader worker per pipeline stage (decode, CPU augmentation, the worker "
                        "part of data.augment_on=device) and of the device-side augmentation; --train-images images")
    p.add_argument("--data-root", default=None,
                   help="with --data: an ImageNet-layout folder to read (default: generated 500x375 JPEGs)")
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("report", help="results.csv, summary.csv, plots, table1.md and index.html from a runs folder")
    p.add_argument("runs_dir")
    p.add_argument("--out", default=None, help="report folder (default RUNS_DIR/report)")
    p.set_defaults(run=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success, 2 on a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return args.run(args)
    except StitchkitError as err:
        if args.debug:
            raise
        print(f"stitchkit: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


def entry_point() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`stitchkit models | head`): not an error of ours, and no traceback. Point stdout at
        # devnull so that the interpreter's final flush does not raise again (the recipe in Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
