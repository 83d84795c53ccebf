"""Save any stitchkit model as one self-contained folder and load it back (:mod:`stitchkit.modelfolder` is the
folder): a stitch, a fine-tuning baseline, or a whole model (trained from scratch, or any supported model).

    model.save_pretrained("my-stitch")                 # a StitchedModel or FinetuneBaseline
    stitchkit.save_pretrained(resnet, "my-resnet", name="resnet18")   # a whole model: say what rebuilds it
    model = stitchkit.load_pretrained("my-stitch")     # or a Hugging Face Hub repository id

A loaded model is in eval mode and carries ``pretrained_cfg`` (``timm.data.resolve_model_data_config(model)`` and
``timm.data.create_transform`` give its preprocessing) and ``stitchkit_info`` (class names, result).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import StitchkitError
from .finetune import FinetuneBaseline  # noqa: F401
from .parallel import ParallelStitchedModel  # noqa: F401
from .modelfolder import (
    CONFIG_FILE,
    EXPORT_MODEL_DIR,
    WEIGHTS_FILE,
    WHOLE_MODEL,
    SavesPretrained,
    finish_loading,
    local_folder,
    model_config,
    read_model_config,
    refuse_timm_prefix,
    write_model_folder,
)
from .network import data_config, network_class, network_kinds
from .probe import HeadProbe  # noqa: F401  (each network class registers its folder kind when imported)
from .stitching import StitchedModel  # noqa: F401
from .zoo.families import default_input_size
from .zoo.models import create_model, instance_name, num_outputs


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, name: str | None = None,
                    input_size: int | None = None, **info) -> Path:
    """Write ``model`` into ``directory`` as a model folder. A stitch or a fine-tuning baseline describes itself;
    for a whole model, ``name`` is what rebuilds it (``resnet18``, ``torchvision:resnet50``; default: timm's
    architecture name) and ``input_size`` the image size it is built for (default: the size it was built for,
    :func:`stitchkit.zoo.default_input_size`).
    ``info``: ``class_names``, ``preprocessing``, ``result`` and other records (see
    :meth:`~stitchkit.modelfolder.SavesPretrained.save_pretrained`)."""
    if isinstance(model, SavesPretrained):
        return model.save_pretrained(directory, **info)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = name or (instance_name(model) if cfg.get("architecture") else None)
    if not name:
        raise StitchkitError(f"cannot tell which model a {type(model).__name__} is; pass name= (e.g. "
                             "'torchvision:resnet50') so that the folder can rebuild it")
    # The size it was built for (a torchvision model built by create_model(input_size=32) has no pretrained_cfg; a
    # timm ViT built for 32 px keeps its weights' 224 in it): a folder of another size would not rebuild it
    size = input_size or default_input_size(model)[-1]
    # a torchvision model has no pretrained_cfg: its weights' transforms say how it sees images
    base = cfg if cfg.get("mean") else data_config(name, name, model, size, None)
    preprocessing = info.pop("preprocessing", None) or {**base, "input_size": [3, size, size]}
    architecture = {"name": name, "input_size": size, "num_classes": num_outputs(model)}
    return write_model_folder(directory, model_config(model, WHOLE_MODEL, architecture, preprocessing, **info), model)


def load_pretrained(path_or_repo: str | os.PathLike, device: str | torch.device = "cpu",
                    revision: str | None = None, *, cache_dir: str | os.PathLike | None = None,
                    local_files_only: bool = False, token: str | bool | None = None, trust_cuts: bool = False,
                    **hub) -> nn.Module:
    """The model in a folder written by :func:`save_pretrained` or ``stitchkit export`` (or a Hugging Face Hub
    repository id, which needs the network unless ``local_files_only``), with every weight, in eval mode on
    ``device``. ``cache_dir``, ``local_files_only``, ``token`` and other ``hub`` keywords go to
    ``huggingface_hub.snapshot_download``.

    A stitch is rebuilt where this version cuts its models: a folder that records other cuts is refused
    (:mod:`stitchkit.saved_cuts`), and so is one written before 0.13.0 (no cuts recorded) with a model whose cuts
    changed in 0.13.0, unless ``trust_cuts``: you know that the stitch's cuts did not change (save it again then,
    which records them)."""
    directory = local_folder(path_or_repo, revision, cache_dir=cache_dir, local_files_only=local_files_only,
                             token=token, **hub)
    return load_described(directory, read_model_config(directory), device, trust_cuts=trust_cuts)


def load_described(directory: Path, config: dict, device: str | torch.device = "cpu", *,
                   trust_cuts: bool = False) -> nn.Module:
    """:func:`load_pretrained` for a local folder whose ``config.json`` the caller has read already
    (:func:`stitchkit.modelfolder.read_model_config`)."""
    kind, arch = config["kind"], config["architecture"]
    try:
        if kind == WHOLE_MODEL:
            model = create_model(arch["name"], input_size=arch["input_size"], num_classes=arch["num_classes"])
        elif network_class(kind) is not None:
            model = network_class(kind).from_architecture(arch)
        else:
            raise StitchkitError(f"{str(directory)!r} holds a model of kind {kind!r}, which this stitchkit does "
                                 f"not know (it knows {', '.join([*network_kinds(), WHOLE_MODEL])}): upgrade "
                                 "stitchkit")
    except KeyError as err:
        raise StitchkitError(f"the architecture in {str(directory / 'config.json')!r} lacks {err}; export or save "
                             "the model again") from None
    return finish_loading(model, Path(directory), config, device, trust_cuts=trust_cuts)


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is meant as a model folder (a config.json or weights, no run's config.yaml): what reads it
    then says exactly what is wrong with it, instead of calling it no run."""
    path = Path(path)
    if (path / EXPORT_MODEL_DIR / CONFIG_FILE).is_file():
        path = path / EXPORT_MODEL_DIR  # an export's folder
    return not (path / "config.yaml").is_file() and any((path / name).is_file() for name in (CONFIG_FILE,
                                                                                             WEIGHTS_FILE))


def folder_or_run(path: str | os.PathLike) -> str:
    """``"folder"`` for a model folder, ``"run"`` for a run folder; for anything else the one error naming both."""
    if is_model_folder(path):
        return "folder"
    refuse_timm_prefix(path)
    if not (Path(path) / "config.yaml").is_file():
        raise StitchkitError(f"{str(path)!r} is neither a run folder (config.yaml) nor a model folder "
                             "(config.json); pass the output.dir of a run or a folder written by export")
    return "run"
