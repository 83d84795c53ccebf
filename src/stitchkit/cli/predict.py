"""``stitchkit predict MODEL_DIR_OR_RUN_DIR IMAGE_OR_FOLDER...``: a trained model's answers for image files."""
from __future__ import annotations

import json
import sys

from ..errors import StitchkitError
from .common import add_command, available_device


def add_parser(subparsers) -> None:
    p = add_command(subparsers, "predict", run, "classify image files with a trained model",
                    "Classify image files (or every image in folders) with a model folder (stitchkit export) or the "
                    "model of a finished run, preprocessed as its validation images were. Unreadable files are named "
                    "on stderr and skipped; the exit code is non-zero when no file could be read.")
    p.add_argument("model", metavar="MODEL_DIR_OR_RUN_DIR",
                   help="a model folder (written by stitchkit export) or the output.dir of a finished run")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders of images")
    p.add_argument("--top-k", type=int, default=5, help="classes per image")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", type=available_device, default=None,
                   help="cpu, cuda or cuda:N (default: the run's own setting, the CPU "
                        "where it names CUDA and none is visible; for a model folder the GPU when there is one)")
    p.add_argument("--json", action="store_true", help="print JSON instead of one line per image")


def run(args) -> int:
    from ..predict import Predictor, image_files, predict_files

    if args.top_k < 1 or args.batch_size < 1:
        raise StitchkitError("--top-k and --batch-size must be at least 1")
    files = image_files(args.inputs)
    if not files:
        raise StitchkitError(f"no image files in {', '.join(args.inputs)} ({', '.join(('.jpg', '.png', '...'))})")
    predictor = Predictor(args.model, device=args.device)
    skipped = []

    def say_skipped(item):
        skipped.append(item)
        print(f"stitchkit: skipped {item.file}: not a readable image ({item.reason})", file=sys.stderr)

    results = predict_files(predictor, files, args.top_k, args.batch_size, say_skipped)
    if not results:
        raise StitchkitError(f"none of the {len(files)} files could be read as an image; pass image files")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for item in results:
            answers = ", ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in item["top"])
            print(f"{item['file']}: {answers}")
    return 0
