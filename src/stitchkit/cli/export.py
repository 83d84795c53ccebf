"""``stitchkit export RUN_DIR --out DIR``: a finished run's model as one portable model folder, and as torch.export,
TorchScript and ONNX files checked against it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_command


def add_parser(subparsers) -> None:
    from_list = "safetensors (the model folder alone), torch-export, torchscript, onnx"
    p = add_command(subparsers, "export", run, "export a finished run's model (model folder, torch.export, "
                                               "TorchScript, ONNX)",
                    "Write a finished run's model into a new folder OUT: a self-contained model folder OUT/model "
                    "(config.json, model.safetensors with every weight, README.md) and, beside it, deployment files "
                    "with a dynamic batch size, each checked against the eager model (max abs difference <= 1e-4) and "
                    "stating its preprocessing. timm and the Hugging Face Hub take OUT/model "
                    "(timm.create_model('local-dir:OUT/model', pretrained=True); upload OUT/model); stitchkit's "
                    "load_pretrained, predict, eval and export take OUT or OUT/model. The manifest (export.json) "
                    "goes to stdout, the folder to give timm to stderr.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the output.dir of a finished run (or a model folder, to "
                                                      "export it in other formats)")
    p.add_argument("--out", required=True, help="a new folder for the files (the model folder is OUT/model)")
    p.add_argument("--format", dest="formats", action="append", default=None, metavar="FORMAT",
                   help=f"one of {from_list} (repeatable; default: all; the model folder is always written)")


def run(args) -> int:
    from ..export import FORMATS, export_run

    manifest = export_run(args.run_dir, args.out, tuple(args.formats or FORMATS))
    print(json.dumps(manifest, indent=2))
    # On stderr, so that stdout stays the manifest's JSON for scripts. timm takes the model folder inside, not OUT.
    folder = Path(args.out) / manifest["model_folder"]
    print(f"stitchkit: model folder {folder} (timm: timm.create_model('local-dir:{folder}', pretrained=True); "
          f"the Hub: upload {folder}; stitchkit also takes {args.out})", file=sys.stderr)
    return 0
