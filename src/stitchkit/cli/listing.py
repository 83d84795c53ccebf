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
        # The pattern's own leading and trailing stars are part of the wider one, not doubled ('zzz*' -> '*zzz*').
        wider = f"*{args.pattern.strip('*')}*"
        hint = (f"try a wider pattern such as {wider!r}" if wider != args.pattern else
                "`stitchkit models` lists them all")
        raise StitchkitError(f"no supported model matches {args.pattern!r}; {hint}")
    print("\n".join(names))
    return 0


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
