"""``stitchkit eval RUN_DIR`` (a trained run again) and ``stitchkit eval-model MODEL`` (an unstitched model)."""
from __future__ import annotations

import json

from .common import add_command, available_device


def add_eval(subparsers) -> None:
    p = add_command(subparsers, "eval", _eval, "evaluate a trained run or a model folder again",
                    "Evaluate the run in RUN_DIR again with its own settings and latest weights: a finished run's "
                    "final ones, an unfinished run's last checkpoint (said on stderr, and recorded as run_status and "
                    "step of total_steps; predict and export take finished runs only). Writes eval.json there. Or "
                    "evaluate a model folder written by 'stitchkit export' on the data its run was evaluated on "
                    "(key=value overrides such as data.root=DIR point it elsewhere). A run takes data.root=DIR "
                    "alone, where its data moved. Prints the record.")
    p.add_argument("run_dir", metavar="RUN_DIR_OR_MODEL_DIR",
                   help="a run folder written by 'stitchkit train' or a sweep, or a model folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="for a model folder: data settings, e.g. data.root=/data/val-copy; for a run: where its data "
                        "is now (data.root=DIR; by default the run's own, found as given, where the run recorded it, "
                        "or relative to the run)")
    p.add_argument("--device", type=available_device, default=None,
                   help="cpu, cuda or cuda:N (default: the run's own setting, the CPU "
                        "where it names CUDA and none is visible; a model folder: auto)")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (default: the run's own)")


def _eval(args) -> int:
    from ..pretrained import is_model_folder
    from ..training import evaluate_folder, evaluate_run

    if is_model_folder(args.run_dir):
        record = evaluate_folder(args.run_dir, args.overrides, device=args.device, workers=args.workers)
    else:
        record = evaluate_run(args.run_dir, device=args.device, workers=args.workers, locations=args.overrides)
    print(json.dumps(record, indent=2))
    return 0


def add_eval_model(subparsers) -> None:
    p = add_command(subparsers, "eval-model", _eval_model, "measure an unstitched model in the training pipeline",
                    "Top-1/top-5 of MODEL as it is (pretrained, or a local checkpoint) with the same data pipeline "
                    "that trains and evaluates stitches: the reference a stitch is compared with.")
    p.add_argument("model", help="a timm name or torchvision:NAME")
    p.add_argument("--data", default="imagefolder", help="imagefolder, fashion_mnist or synthetic")
    p.add_argument("--data-root", default=None, help="dataset folder (imagefolder: with val/ inside)")
    p.add_argument("--input-size", type=int, default=224, metavar="PX", help="image size")
    p.add_argument("--pretrained", action="store_true", help="load the library's pretrained weights")
    p.add_argument("--checkpoint", default=None, help="a local state-dict file (.pt, .pth, .safetensors)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader workers (default: 4, or fewer where this machine has fewer CPUs)")
    p.add_argument("--limit-val", type=int, default=None, metavar="N",
                   help="evaluate N validation images only: a random subset, the same on every call (data.limit_val)")
    p.add_argument("--device", type=available_device, default=None, help="cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--out", default=None, help="folder for result.json (not a training run's folder)")
    p.add_argument("--overwrite", action="store_true", help="replace a result.json that --out already holds")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a further config override, e.g. --set data.crop_pct=1.0 (repeatable)")


def _eval_model(args) -> int:
    from ..errors import StitchkitError
    from ..training import evaluate_model, load_config

    for what, given, expected in (("MODEL", args.model, "a model name"), ("--checkpoint", args.checkpoint,
                                                                           "a weights file")):
        trained = _trained_folder(given)
        if trained:  # eval-model measures a model by name; a trained folder is `stitchkit eval`'s
            raise StitchkitError(f"{what} {given!r} is {trained}, not {expected}; evaluate it with "
                                 f"`stitchkit eval {given}`")
    if args.data == "imagefolder" and not args.data_root and not any(s.startswith("data.root=") for s in args.settings):
        raise StitchkitError("eval-model --data imagefolder needs --data-root DIR, a folder with val/<class>/ inside")

    overrides = [f"data.name={args.data}", f"data.input_size={args.input_size}", f"train.batch_size={args.batch_size}",
                 f"model.pretrained={str(args.pretrained).lower()}",
                 *([f"train.workers={args.workers}"] if args.workers is not None else [])]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.checkpoint:
        overrides.append(f"model.src_checkpoint={args.checkpoint}")
    if args.limit_val:
        overrides.append(f"data.limit_val={args.limit_val}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    config = load_config(None, overrides + list(args.settings))
    record = evaluate_model(args.model, config, args.out, overwrite=args.overwrite,
                            checkpoint_option="--checkpoint PATH", pretrained_option="leave out --pretrained")
    print(json.dumps({k: v for k, v in record.items() if k != "versions"}, indent=2))
    return 0


def _trained_folder(path: str | None) -> str | None:
    """What ``path`` is when it is a run folder or a model folder (words for a message), else None."""
    from pathlib import Path

    from ..pretrained import is_model_folder

    if not path or not Path(path).is_dir():
        return None
    if (Path(path) / "config.yaml").is_file():
        return "a training run's folder"
    return "a model folder" if is_model_folder(path) else None
