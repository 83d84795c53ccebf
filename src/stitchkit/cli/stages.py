"""``stitchkit stages MODEL``: a model's eight cut points with their layouts and shapes."""
from __future__ import annotations

import json

from .common import add_command


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "stages", run, "show a model's cut points: stage, position, format, shape",
                    "Show where MODEL can be cut: the first and last block of each of its four stages, the module "
                    "each cut follows, and the feature there (layout and shape) for images of --input-size.")
    p.add_argument("model", help="a timm name (resnet50.a1_in1k) or torchvision:NAME")
    p.add_argument("--input-size", type=int, default=224, metavar="PX", help="image size the shapes are given for")
    p.add_argument("--pretrained", action="store_true", help="load pretrained weights (needs them cached or network)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from ..errors import WeightsUnavailableError
    from ..stitching import square_input_size
    from ..zoo import create_model, model_spec

    args.input_size = square_input_size(args.input_size)  # one line for 0 or -3, as inspect says it
    try:
        model = create_model(args.model, pretrained=args.pretrained, input_size=args.input_size)
    except WeightsUnavailableError as err:
        raise err.with_fix("leave out --pretrained: the cut points and shapes do not depend on the weights") from None
    spec = model_spec(model, args.input_size, args.model)
    if args.json:
        rows = [{"stage": c.stage, "position": c.position, "after": c.module, "format": str(c.feature.format),
                 "shape": list(c.feature.shape), "prefix_tokens": c.feature.num_prefix_tokens}
                for c in spec.cut_points]
        print(json.dumps({"model": args.model, "family": spec.family, "input_size": args.input_size, "cuts": rows},
                         indent=2))
        return 0
    print(f"{args.model} ({spec.family}) at {args.input_size}x{args.input_size}")
    print(f"{'stage':>5}  {'position':8}  {'after':24}  {'format':6}  shape")
    for c in spec.cut_points:
        shape = c.feature.describe().split(" ", 1)[1]
        print(f"{c.stage:>5}  {c.position:8}  {c.module:24}  {str(c.feature.format):6}  {shape}")
    single = [s for s in sorted({c.stage for c in spec.cut_points})
              if spec.cut(s, "first").blocks == spec.cut(s, "end").blocks]
    if len(single) == 1:
        print(f"stage {single[0]} has one block: its first cut is its end (a gap {single[0]}:{single[0]} removes "
              "nothing)")
    elif single:
        print(f"stages {', '.join(str(s) for s in single)} have one block each: their first cut is their end (a gap "
              "x:x there removes nothing)")
    return 0
