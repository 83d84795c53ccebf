"""Evaluate a trained run again, or an unstitched model, in the same data pipeline as training.

The paper quoted model-card accuracies for its original models; ``evaluate_model`` measures them instead, with the
model's own preprocessing, so stitched and original numbers come from one pipeline.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from ..compute import count_macs, count_params
from ..errors import StitchkitError, WeightsUnavailableError
from ..zoo.models import create_model, num_outputs
from . import distributed
from ..files import atomic_write_json
from ..rundir import RunDir
from .config import Config, load_config
from ..modelfolder import local_folder, no_classifier, read_model_config
from ..pretrained import load_described
from ..zoo.metadata import Preprocessing, preprocessing
from .data import build_splits

from .runtime import Runtime, amp_dtype, loader_workers, machine, package_versions, resolve_device
from .trained import read_run
from .scoring import evaluate
from .stream import evaluation_loaders


def _evaluate_splits(model, splits, config: Config, prep: Preprocessing) -> dict[str, float]:
    """Top-1, top-5 and loss on every evaluation split (``val_*`` keys plain, others prefixed), in one process, read
    as the config's ``data.loader`` reads them in training (``prep``: the model's preprocessing)."""
    dev = resolve_device(config.train.device)
    runtime = Runtime(dev, amp_dtype(config.train.amp, dev), config.train.channels_last, distributed.Dist())
    loaders = evaluation_loaders(config, splits, prep, loader_workers(config.train.workers), dev, runtime.ctx)
    return {(k if split == "val" else f"{split}_{k}"): v
            for split, loader in loaders.items() for k, v in evaluate(model, loader, runtime).items()}


def evaluate_run(run_dir: str | Path, device: str | None = None, workers: int | None = None,
                 locations: Sequence[str] = ()) -> dict:
    """Rebuild a run's model from its ``config.yaml`` and weights (:mod:`stitchkit.training.trained`) and evaluate it
    again: a finished run's final weights, an unfinished (interrupted or failed) run's last checkpoint, said on
    stderr and in the record (``run_status``, ``step`` of ``total_steps``). ``locations``: ``data.root=DIR``
    where the run's data is now (the record says which folder it read: ``data_root``).

    Writes ``eval.json`` next to the run's ``result.json`` and returns it.
    """
    trained = read_run(run_dir, device, workers, locations)
    run, config = trained.run, trained.config
    names = (run.read_result() or {}).get("class_names")  # None: an unfinished run, which has not said yet
    prep = preprocessing(config.model.pixel_source)
    splits = build_splits(config.data, prep, config.train.seed, need_train=False, class_order=names)
    check_classes(f"the run in {str(run_dir)!r}", names, None, splits.classes)  # an unfinished run: no names yet
    model, progress = trained.model(len(splits.classes))
    if not progress.finished:
        # Measuring a run mid-way is useful (is it learning?), so it is evaluated, but never mistaken for the
        # run's result: said here, and recorded in eval.json.
        of = f" of {progress.total_steps}" if progress.total_steps else ""
        how = ("continue the run with `stitchkit train ... --resume`" if progress.run_status == "interrupted"
               else "result.json says why it failed")
        print(f"note: the run in {str(run_dir)!r} is {progress.run_status}, not finished: evaluating its last "
              f"checkpoint, step {progress.step}{of} ({how})", file=sys.stderr)
    record = {"run_dir": str(run.path), "run_status": progress.run_status, "step": progress.step,
              "total_steps": progress.total_steps, "data_root": config.data.root,
              **_evaluate_splits(model, splits, config, prep)}
    run.remove_leftovers()  # a temporary eval.json of an evaluation killed before
    atomic_write_json(run.evaluation, record)
    return record


def evaluate_folder(folder: str | Path, overrides: Sequence[str] = (), device: str | None = None,
                    workers: int | None = None) -> dict:
    """Evaluate a model folder (``stitchkit export``, ``save_pretrained``) on the data its run was evaluated on
    (recorded in its config.json), or on ``data.*`` ``overrides`` (e.g. ``data.root=...`` on another machine);
    with its own preprocessing. Returns the record (nothing is written into the folder)."""
    given, folder = folder, local_folder(folder)
    described = read_model_config(folder)
    recorded = described.get("evaluation") or {}
    layer = {"mode": "scratch", "model": {"src": "resnet18"}}  # validated, never built: the folder holds the model
    if recorded:
        layer.update(data=recorded["data"], train={"seed": recorded.get("seed", 0),
                                                   "batch_size": recorded.get("batch_size", 64),
                                                   "amp": recorded.get("amp", "auto")})
    elif not any(item.startswith("data.") for item in overrides):
        raise StitchkitError(f"{str(given)!r} does not record the data it was evaluated on; name it, e.g. "
                             "data.name=imagefolder data.root=DIR data.input_size=224")
    config = load_config(None, [*overrides, *([f"train.device={device}"] if device else []),
                                *([f"train.workers={workers}"] if workers is not None else [])],
                         layers=[(f"{str(folder)}/config.json", layer)])
    if config.data.name == "imagefolder" and not config.data.root:
        # Export keeps no path of the machine that wrote it, so an image folder is named again wherever it is.
        raise StitchkitError(f"the model in {str(given)!r} was evaluated on an image folder, whose path a model folder "
                             f"does not keep; name it: stitchkit eval {given} data.root=DIR (a folder with "
                             "val/<class>/ inside)")
    prep = described["preprocessing"]
    if config.data.input_size != prep["input_size"][-1]:
        raise StitchkitError(f"the model in {str(given)!r} is built for {prep['input_size'][-1]} px images; "
                             f"remove data.input_size={config.data.input_size}")
    names = described.get("class_names")
    own = Preprocessing(tuple(prep["mean"]), tuple(prep["std"]), prep["interpolation"], prep["crop_pct"])
    splits = build_splits(config.data, own, config.train.seed, need_train=False, class_order=names)
    model = load_described(Path(folder), described, device=resolve_device(config.train.device))
    classes = model.pretrained_cfg.get("num_classes")
    if classes == 0:
        raise no_classifier(given, "be evaluated")
    check_classes(f"the model in {str(given)!r}", names if names and len(names) == classes else None, classes,
                  splits.classes)
    return {"model_dir": str(Path(folder)), "dataset": config.data.name,
            **_evaluate_splits(model, splits, config, own)}


def check_classes(model: str, names: Sequence[str] | None, count: int | None, data_classes: Sequence[str]) -> None:
    """Refuse data whose classes are not the ones ``model`` predicts: by name where it records them (``names``; the
    same names in another order were matched by name already: :func:`~.data.in_class_order`), else by ``count``.
    Scored against other classes, top-1 would be near 0 and say nothing."""
    data_classes = list(data_classes)
    if names is not None and list(names) != data_classes:
        absent = [name for name in names if name not in data_classes]
        foreign = [name for name in data_classes if name not in names]
        differences = "; ".join(part for part in (
            absent and f"its {_first(absent)} not in the data",
            foreign and f"the data's {_first(foreign)} not among its") if part)
        size = (f"predicts {len(names)} classes but the data has {len(data_classes)}" if len(names) != len(data_classes)
                else "predicts other classes than the data has")
        raise StitchkitError(f"{model} {size} ({differences}); evaluate it on the data it was trained for")
    if names is None and count is not None and count != len(data_classes):
        raise StitchkitError(f"{model} predicts {count} classes but the data has {len(data_classes)}; evaluate it on "
                             "the data it was trained for")


def _first(names: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(name) for name in names[:shown]) + more


def _check_result_folder(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse, before measuring anything, to write ``result.json`` where it would replace a training run's (its
    folder then no longer says what its weights are: export and predict need the run's result) or, without
    ``overwrite``, an earlier measurement."""
    out = RunDir(out_dir)
    if out.config.is_file():
        raise StitchkitError(f"{str(out_dir)!r} is a training run's folder (config.yaml); eval-model writes its "
                             "result.json into a folder of its own: choose another --out")
    if out.result.exists() and not overwrite:
        raise StitchkitError(f"{str(out_dir)!r} already holds a result.json; pass --overwrite to replace it, or "
                             "choose another --out")


def evaluate_model(name: str, config: Config, out_dir: str | Path | None = None, *, overwrite: bool = False,
                   checkpoint_option: str = "model.src_checkpoint=PATH",
                   pretrained_option: str = "model.pretrained=false") -> dict:
    """Measure an unstitched model (``name``, with ``config.model.pretrained`` / ``src_checkpoint``) on
    ``config.data``'s val split, with the model's own preprocessing. Writes ``result.json`` into ``out_dir`` (a
    folder that holds one already only with ``overwrite``, and never a training run's folder).
    ``checkpoint_option`` / ``pretrained_option``: how the caller's user gives src_checkpoint / leaves out the
    pretrained weights, for the messages when the head does not fit the data or the weights cannot be had
    (``eval-model --checkpoint PATH``)."""
    if out_dir is not None:
        _check_result_folder(out_dir, overwrite)
    dev = resolve_device(config.train.device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        model = create_model(name, pretrained=config.model.pretrained, checkpoint_path=config.model.src_checkpoint,
                             input_size=config.data.input_size)
    except WeightsUnavailableError as err:
        raise err.with_fix(f"evaluate it without them ({pretrained_option}) or with local weights "
                           f"({checkpoint_option})") from None
    prep = preprocessing(name, model)
    splits = build_splits(config.data, prep, config.train.seed, need_train=False)
    if num_outputs(model) != len(splits.classes):
        raise StitchkitError(
            f"{name} predicts {num_outputs(model)} classes but the data has {len(splits.classes)}; evaluate a model "
            f"trained on this data ({checkpoint_option})"
        )
    gmacs, params = count_macs(model, config.data.input_size) / 1e9, count_params(model)
    model.to(dev)
    record = {"status": "finished", "mode": "eval", "src": name, "dst": name, "dataset": config.data.name,
              "input_size": config.data.input_size, "pretrained": config.model.pretrained,
              "checkpoint": config.model.src_checkpoint, "gmacs": gmacs, "params": params, "trainable_params": 0,
              "versions": package_versions(), "machine": machine(dev),
              **_evaluate_splits(model, splits, config, prep)}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "result.json", record)
    return record
