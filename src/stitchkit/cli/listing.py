"""``stitchkit models``, ``adapters``, ``starts`` and ``methods``: what there is to choose from."""
from __future__ import annotations

from ..errors import StitchkitError
from .common import add_command


def add_models(subparsers) -> None:
    p = add_command(subparsers, "models", _models, "list supported model names",
                    "List the timm and torchvision model names stitchkit can cut (docs/models.md: the measured table).")
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern, e.g. 'resnet*' or '*swin*'")
    p.add_argument("--pretrained", action="store_true", help="list timm names with their pretrained tags")


def _models(args) -> int:
    from ..zoo import list_models

    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        raise StitchkitError(f"no supported model matches {args.pattern!r}{_models_hint(args.pattern, args.pretrained)}")
    print("\n".join(names))
    return 0


def _models_hint(pattern: str, pretrained: bool) -> str:
    """What to try instead of a pattern that matched nothing: only hints that do match something."""
    from ..errors import close_matches
    from ..zoo import list_models

    if pretrained:
        without = list_models(pattern)
        if without:
            return (f" with pretrained weights in timm; {len(without)} match without them (drop --pretrained to list "
                    "them; torchvision's weights are named by tag, e.g. torchvision:resnet50.IMAGENET1K_V2)")
    # The pattern's own leading and trailing stars are part of the wider one, not doubled ('zzz*' -> '*zzz*').
    wider = f"*{pattern.strip('*')}*"
    if wider != pattern and list_models(wider, pretrained):
        return f"; try a wider pattern such as {wider!r}"
    near = close_matches(pattern.strip("*"), list_models("*", pretrained), n=5)
    if near:
        return f"; did you mean: {', '.join(near)}?"
    return "; `stitchkit models` lists them all"


def add_adapters(subparsers) -> None:
    add_command(subparsers, "adapters", _adapters, "list registered adapters (name, layout, description)")


def _adapters(args) -> int:
    from ..adapters import get_adapter, list_adapters

    kinds = {name: get_adapter(name) for name in list_adapters()}
    rows = [[name, kind.layout, kind.description] for name, kind in kinds.items()]
    print("\n".join(_aligned(rows)))
    return 0


def add_starts(subparsers) -> None:
    add_command(subparsers, "starts", _starts, "list where adapters can start (model.adapter_norm), the default first")


def _starts(args) -> int:
    from ..starts import DEFAULT_START, describe_starts

    described = describe_starts()
    print("\n".join(_aligned([[name, "(default)" if name == DEFAULT_START else "", described[name]]
                              for name in sorted(described, key=lambda n: (n != DEFAULT_START, n))])))
    return 0


def add_methods(subparsers) -> None:
    add_command(subparsers, "methods", _methods, "list stitching methods (adapter x resize) for sweep files")


def _methods(args) -> int:
    from ..sweeps.methods import PAPER_METHODS, list_methods

    print("\n".join(_aligned([[m.name, f"adapter={m.adapter}", f"resize={m.resize}",
                              "paper" if m.name in PAPER_METHODS else "", m.label] for m in list_methods()])))
    return 0


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines whose columns line up: each column as wide as its longest cell, one space between
    (fixed widths drift as soon as one name is longer, as parallel_concat_conv3x3_relu is, or a user's registered
    adapter or start)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)] if rows else []
    return [" ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]) for row in rows]
