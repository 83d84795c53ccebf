"""The ``stitchkit`` command line: one module per subcommand (or family of listings), each with an
``add_parser(subparsers)`` that registers the subcommand and the function that runs it.

:func:`main` takes ``argv`` so tests call it in-process. User errors (:class:`~stitchkit.errors.StitchkitError`) print
one message and exit with code 2; with ``--debug``, :func:`main` raises the error and the ``stitchkit`` command prints
its traceback, still with code 2. Ctrl-C prints one line and exits with 130 wherever it lands (commands that
checkpoint say more, e.g. where training stopped). Building the parser imports no torch or
timm (``stitchkit --help`` answers at once); each subcommand imports what it needs when it runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Sequence

from .. import __version__
from ..errors import StitchkitError
from . import bench, demo, evaluate, export, inspect, listing, predict, report, search, stages, sweep, train
from .common import EXIT_USER_ERROR, HelpFormatter, global_options

# In the order `stitchkit --help` lists them: find a model, look at it, train, run grids, report, try it.
COMMANDS = (listing.add_models, listing.add_adapters, listing.add_starts, stages.add_parser, inspect.add_parser, train.add_parser,
            evaluate.add_eval, evaluate.add_eval_model, predict.add_parser, export.add_parser, listing.add_methods, sweep.add_parser, search.add_parser, report.add_parser,
            demo.add_demo, demo.add_findings, bench.add_parser)

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "build_parser", "entry_point", "main"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C (stitchkit.training.loop says the same)
INTERRUPTED = "stitchkit: interrupted; rerun the same command"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stitchkit", formatter_class=HelpFormatter, parents=[global_options()],
        description="Stitch frozen parts of vision models together with small trainable adapters.",
        epilog="Run 'stitchkit COMMAND --help' for a command's options. Docs: README.md and docs/.")
    parser.add_argument("--version", action="version", version=f"stitchkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    parser.command_parsers = sub.choices  # name -> parser: main reports a command's stray arguments with its usage
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 on success, 2 on a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse leaves key=value overrides that follow an option (`sweep FILE --out DIR a=b`) unparsed: they are
    # still the command's settings. Anything else left over is an error, as parse_args would say.
    settings = [e for e in extra if "=" in e and not e.startswith("-")]
    if settings and isinstance(getattr(args, "settings", None), list):
        args.settings += settings
        extra = [e for e in extra if e not in settings]
    if extra:
        # After the command name, the stray belongs to that command: show its usage (its options), not the top level's.
        after_command = extra[0] in argv and argv.index(extra[0]) > argv.index(args.command)
        (parser.command_parsers[args.command] if after_command else parser).error(
            f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv  # what a command re-launches itself with (one sweep process per GPU)
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
    except KeyboardInterrupt:
        # Ctrl-C outside what a command handles itself (importing torch, loading data, between a sweep's cells): a
        # stop the user asked for, not a crash, so no traceback. Runs, checkpoints and sweep cells are written
        # atomically, so the same command starts again or continues from what was finished (a run with a checkpoint
        # tells it to pass --resume).
        if args.debug:
            raise
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED


def entry_point() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except StitchkitError:
        # Only --debug lets one out of main (which raises it for a debugger or a test): show the traceback it asked
        # for, and exit as the same mistake does without --debug, so that scripts see one status for it.
        traceback.print_exc()
        code = EXIT_USER_ERROR
    except KeyboardInterrupt as stop:
        # From main with --debug (show where it landed), or from outside main's handler (parsing the arguments):
        # either way the status of a Ctrl-C, not Python's death by SIGINT.
        if "--debug" in sys.argv[1:]:
            traceback.print_exception(type(stop), stop, stop.__traceback__)
        else:
            print(INTERRUPTED, file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`stitchkit models | head`): not an error of ours, and no traceback. Point stdout at
        # devnull so that the interpreter's final flush does not raise again (the recipe in Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
