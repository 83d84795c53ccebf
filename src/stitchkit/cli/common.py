"""What every subcommand shares: the help format, the global options, ``[CONFIG.yaml] key=value`` arguments."""
from __future__ import annotations

import argparse
import os
from typing import Sequence

from ..errors import StitchkitError

EXIT_USER_ERROR = 2


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps descriptions' line breaks (examples, settings lists)."""

    def _get_help_string(self, action):
        # No "(default: None)", "(default: False)" or "(default: [])" noise for optional values, flags and repeatable
        # options; of the positionals only an optional one (nargs="?") has a default worth showing.
        if action.default in (None, False, argparse.SUPPRESS) or action.default == [] or (
                not action.option_strings and action.nargs != argparse.OPTIONAL):
            return action.help
        return super()._get_help_string(action)


def global_options() -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand (``stitchkit --threads 2 demo`` and ``stitchkit demo
    --threads 2``). After the subcommand they default to SUPPRESS, so they do not undo one given before it."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parent.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice)")
    return parent


def command_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    parent.add_argument("--threads", type=int, default=argparse.SUPPRESS, metavar="N",
                        help="torch CPU threads (default: torch's choice)")
    return parent


def add_command(subparsers, name: str, run, help: str, description: str | None = None,
                parser_class: type[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    """A subcommand parser with the shared format and options; ``run(args)`` is what it does."""
    default_class = subparsers._parser_class  # argparse takes the class per subparsers object, not per parser
    subparsers._parser_class = parser_class or default_class
    try:
        parser = subparsers.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".",
                                       formatter_class=HelpFormatter, parents=[command_options()])
    finally:
        subparsers._parser_class = default_class
    parser.set_defaults(run=run)
    return parser


def split_config_args(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[CONFIG.yaml] key=value ...`` -> (config path or None, overrides)."""
    items = list(items)
    path = items.pop(0) if items and "=" not in items[0] else None
    stray = [i for i in items if "=" not in i]
    if stray:
        raise StitchkitError(f"expected key=value overrides after the config file, got {stray[0]!r}")
    return path, items


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type for counts that must be at least 1 (images per step, timed repetitions)."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type for counts that may be 0 (untimed steps, data-loader workers)."""
    return _whole_number(text, 0)


def available_device(text: str) -> str:
    """An argparse type for ``--device``: a device torch knows that this machine has (cpu, cuda, cuda:N, mps),
    refused at parsing in one line rather than as a traceback at the first tensor placed on it."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text}: stitchkit runs on cpu, cuda or mps")
    return text
