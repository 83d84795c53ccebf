"""``stitchkit train [CONFIG.yaml] [key=value ...]``: one stitch, fine-tuning baseline, scratch model or probe."""
from __future__ import annotations

import argparse
import json
import sys

from .common import add_command, is_main_process, split_config_args

_DESCRIPTION = """\
Train one run. Settings are the paper's recipe, then the YAML file, then the key=value overrides, e.g.

  stitchkit train mode=stitch model.src=resnet18 model.dst=resnet34 model.gap=1:3 data.name=fashion_mnist
  stitchkit train model.src=resnet50.a1_in1k model.gap=1:4 data.name=imagefolder data.root=/data/imagenet \\
      train.epochs=2 --print-config

The run folder (output.dir) holds config.yaml, checkpoints, metrics.jsonl and result.json; --resume continues it."""


class _TrainParser(argparse.ArgumentParser):
    """Lists every setting under the options; built only when help is asked for, so parsing stays fast."""

    def format_help(self) -> str:
        from ..training.settings import describe_settings

        return super().format_help() + "\nsettings (key=default  meaning):\n" + describe_settings() + "\n"


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "train", run,
                    "train a stitch, the fine-tuning baseline, a model from scratch or a probe", _DESCRIPTION,
                    parser_class=_TrainParser)
    p.add_argument("settings", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="a YAML file of settings, then overrides")
    p.add_argument("--resume", action="store_true", help="continue the run in output.dir from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in output.dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and stop")


def run(args) -> int:
    from ..training.config import load_config, to_yaml

    path, overrides = split_config_args(args.settings)
    config = load_config(path, overrides)
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    from ..training import RunInterrupted, train

    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except RunInterrupted as stop:
        # The loop says what happened; the way on is this command's: its checkpoint continues with --resume, and a
        # set-up stopped before any checkpoint starts again as it was asked (with --resume too, when it was).
        fix = "continue with --resume" if stop.checkpoints else "rerun the same command"
        print(f"stitchkit: {stop}; {fix}", file=sys.stderr)
        return stop.exit_code
    if result.get("world_size", 1) > 1 and not is_main_process():
        return 0
    print(json.dumps({k: result[k] for k in ("status", "top1", "top5", "gmacs", "trainable_params", "epochs",
                                             "wall_time_s", "images_per_s", "seconds") if k in result}, indent=2))
    return 0
