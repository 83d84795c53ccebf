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
        # No "(default: None)" or "(default: False)" noise for optional values and flags.
        if action.default in (None, False, argparse.SUPPRESS) or action.option_strings == []:
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


def check_device_option(device: str | None) -> None:
    """Refuse ``--device cuda`` where no CUDA device is visible, naming ``--device cpu`` (the library's message
    names the train.device setting, which eval and predict do not take)."""
    if device:
        from ..training.runtime import resolve_device

        resolve_device(device, given_as="--device ")
