"""``stitchkit inspect``: a stitched model (or the fine-tuning baseline) before training it."""
from __future__ import annotations

import json

from ..errors import StitchkitError
from .common import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "inspect", run, "show a stitched model: adapter chain, parameters, GMACs",
                    "Build the stitch of --src's lower layers and --dst's upper layers (random weights unless "
                    "--pretrained) and show its cuts, adapter chain, parameters and compute.")
    p.add_argument("--src", required=True, nargs="+", metavar="SRC",
                   help="source model (its lower layers); two or more: a parallel stitch, their fronts fused")
    p.add_argument("--dst", required=True, help="destination model (its upper layers and head)")
    p.add_argument("--gap", default=["1:3"], nargs="+", metavar="X:Y",
                   help="X:Y, source stage X to destination stage Y (a parallel stitch: one for all or one per "
                        "source)")
    p.add_argument("--fusion", default="sum", help="a parallel stitch's fusion: sum, concat or gate")
    p.add_argument("--adapter", default="bottleneck", help="adapter name ('stitchkit adapters' lists them)")
    p.add_argument("--resize", default="bilinear", help="how the feature map's size is matched: none, bilinear, "
                                                       "area (a box filter) or integrated (a strided conv in the "
                                                       "adapter)")
    p.add_argument("--input-size", type=int, default=224, metavar="PX", help="image size")
    p.add_argument("--prefix-out", default="concat", help="class token out of a ViT: concat, drop, add")
    p.add_argument("--prefix-in", default=None,
                   help="class token into a ViT: mean, zeros, learned, projected (default: the start's)")
    p.add_argument("--adapter-norm", default=None,
                   help="where the adapters start (`stitchkit starts` lists them; default: stitchkit's default)")
    p.add_argument("--readd-pos-embed", action="store_true", help="re-add the destination ViT's position embedding")
    p.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="a new head of N classes for the destination (a new task)")
    p.add_argument("--new-head", action="store_true", help="a new head even when N equals the destination's")
    p.add_argument("--train-head", action="store_true", help="train the destination's own head too")
    p.add_argument("--unfreeze-last", type=int, default=0, metavar="K",
                   help="train the destination's last K blocks too")
    p.add_argument("--pretrained", action="store_true", help="load pretrained weights (needs them cached or network)")
    p.add_argument("--finetune", action="store_true", help="show the fine-tuning baseline instead (src == dst)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args) -> int:
    from ..errors import WeightsUnavailableError

    try:
        return _run(args)
    except WeightsUnavailableError as err:
        raise err.with_fix("leave out --pretrained: the cuts, parameters and compute shown do not depend on the "
                           "weights") from None


def _run(args) -> int:
    from ..starts import get_start
    from ..stitching import create_stitched
    from ..summary import describe_stitch

    if len(args.src) > 1:
        return _parallel(args)
    if len(args.gap) > 1:
        raise StitchkitError(f"{len(args.gap)} gaps for one source: give one --gap (several are for a parallel "
                             "stitch, one per --src)")
    args.src, args.gap = args.src[0], args.gap[0]
    if args.finetune:
        return _finetune(args)
    model = create_stitched(
        args.src, args.dst, gap=args.gap, adapter=args.adapter, resize=args.resize, pretrained=args.pretrained,
        input_size=args.input_size, prefix_out=args.prefix_out, prefix_in=args.prefix_in,
        **({"adapter_norm": args.adapter_norm} if args.adapter_norm else {}), readd_pos_embed=args.readd_pos_embed, num_classes=args.num_classes, new_head=args.new_head or None,
        train_head=args.train_head or None, unfreeze_last=args.unfreeze_last,
    )
    report = describe_stitch(model, args.src, args.dst, args.input_size)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    x, y = model.config.gap
    print(f"{args.src} stage {x} -> {args.dst} stage {y}   adapter={args.adapter} resize={args.resize} "
          f"input={args.input_size}px")
    print(f"  source cut      after {report['src_cut']['after']:20s} {report['src_cut']['feature']}")
    print(f"  destination cut after {report['dst_cut']['after']:20s} {report['dst_cut']['feature']}")
    print(f"  adapter chain ({len(model.steps)}):")
    for i, step in enumerate(model.steps, start=1):
        print(f"    {i}. {step.describe()}")
    start = get_start(report["start"])
    when = " (fitted on training images when it trains)" if start.needs_images else ""
    print(f"  start           {report['start']}{when}")
    print(f"  parameters      {report['params'] / 1e6:.2f} M total, {report['trainable_params'] / 1e6:.3f} M trainable "
          f"({', '.join(report['trained'])})")
    shares = [f"{100 * report['macs_vs_src']:.1f}% of {args.src} ({report['gmacs_src']:.3f})"]
    if args.dst != args.src:  # a model stitched to itself: the same share twice says nothing more
        shares.append(f"{100 * report['macs_vs_dst']:.1f}% of {args.dst} ({report['gmacs_dst']:.3f})")
    print(f"  compute         {report['gmacs']:.3f} GMACs = {', '.join(shares)}")
    if report["note"]:
        print(f"  note            {report['note']}")
    return 0


def _parallel(args) -> int:
    from ..parallel import create_parallel
    from ..starts import get_start
    from ..summary import describe_parallel

    if args.finetune:
        raise StitchkitError("the fine-tuning baseline cuts one model: give one --src with --finetune")
    model = create_parallel(
        args.src, args.dst, args.gap[0] if len(args.gap) == 1 else args.gap, fusion=args.fusion,
        adapter=args.adapter, resize=args.resize, pretrained=args.pretrained, input_size=args.input_size,
        prefix_out=args.prefix_out, prefix_in=args.prefix_in, readd_pos_embed=args.readd_pos_embed,
        **({"adapter_norm": args.adapter_norm} if args.adapter_norm else {}), num_classes=args.num_classes,
        new_head=args.new_head or None, train_head=args.train_head or None, unfreeze_last=args.unfreeze_last,
    )
    report = describe_parallel(model, args.input_size)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"parallel stitch: {' + '.join(args.src)} -> {args.dst} stage {report['dst_cut']['stage']}   "
          f"fusion={args.fusion} adapter={args.adapter} resize={args.resize} input={args.input_size}px")
    for i, front in enumerate(report["fronts"], start=1):
        print(f"  front {i}: {front['src']} stage {front['src_cut']['stage']} (gap {front['gap']}), cut after "
              f"{front['src_cut']['after']} {front['src_cut']['feature']}")
        for j, step in enumerate(front["steps"], start=1):
            print(f"    {j}. {step}")
    print(f"  destination cut after {report['dst_cut']['after']:20s} {report['dst_cut']['feature']}")
    when = " (fitted on training images when it trains)" if get_start(report["start"]).needs_images else ""
    print(f"  start           {report['start']}{when}; the fusion starts as the mean of the fronts' chains")
    print(f"  parameters      {report['params'] / 1e6:.2f} M total, {report['trainable_params'] / 1e6:.3f} M trainable "
          f"({', '.join(report['trained'])}; fusion {report['fusion_params']})")
    sources = ", ".join(f"{f['src']} {f['gmacs_src']:.3f}" for f in report["fronts"])
    print(f"  compute         {report['gmacs']:.3f} GMACs = {100 * report['macs_vs_dst']:.1f}% of {args.dst} "
          f"({report['gmacs_dst']:.3f}); the sources whole: {sources}")
    return 0


# The options of a stitch that the fine-tuning baseline (no adapter, every weight trained) has no use for, with the
# value each has when it is not given.
_STITCH_ONLY = (("--adapter", "adapter", "bottleneck"), ("--resize", "resize", "bilinear"),
                ("--prefix-out", "prefix_out", "concat"), ("--prefix-in", "prefix_in", None),
                ("--adapter-norm", "adapter_norm", None), ("--readd-pos-embed", "readd_pos_embed", False),
                ("--train-head", "train_head", False), ("--unfreeze-last", "unfreeze_last", 0), ("--fusion", "fusion", "sum"))


def _finetune(args) -> int:
    from ..finetune import create_finetune_baseline
    from ..summary import describe_finetune
    from ..zoo import create_model
    from ..zoo.models import fit_head

    if args.src != args.dst:
        raise StitchkitError(
            f"the fine-tuning baseline cuts one model and keeps its own blocks, so --src and --dst must be the same "
            f"model (got {args.src} and {args.dst}); to join two models, drop --finetune and pick an --adapter"
        )
    ignored = [flag for flag, key, unset in _STITCH_ONLY if getattr(args, key) != unset]
    if ignored:
        raise StitchkitError(f"{', '.join(ignored)} would be ignored: the fine-tuning baseline has no adapter and "
                             "trains every weight; drop them (or drop --finetune)")
    # Its head as training gives it (mode=finetune, model.num_classes / model.new_head): priced as it will train.
    model = create_model(args.src, pretrained=args.pretrained, input_size=args.input_size)
    if args.num_classes is not None or args.new_head:
        fit_head(model, args.num_classes, args.new_head or None)
    baseline = create_finetune_baseline(model, args.gap, input_size=args.input_size, name=args.src)
    report = describe_finetune(baseline, args.src, args.gap, args.input_size)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"fine-tuning baseline of {args.src}, gap {args.gap}: every weight trains, no adapter")
    print(f"  kept from the gap  {', '.join(baseline.kept_blocks) or '(none)'}")
    print(f"  removed            {', '.join(baseline.removed_blocks) or '(none)'}")
    print(f"  parameters         {report['params'] / 1e6:.2f} M")
    print(f"  compute            {report['gmacs']:.3f} GMACs = {100 * report['macs_vs_model']:.1f}% of {args.src}")
    return 0
