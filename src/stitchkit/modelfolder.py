"""One self-contained folder per model: ``config.json``, ``model.safetensors`` and a ``README.md`` model card.

The layout is the Hugging Face Hub's (what ``huggingface_hub.PyTorchModelHubMixin`` writes), so a folder can be
pushed to the Hub as it is and loaded back from a repository id. ``config.json`` is timm's: ``architecture`` (a
model name timm knows), ``num_classes``, ``num_features``, ``label_names``, ``model_args`` and ``pretrained_cfg``,
so ``timm.create_model("local-dir:FOLDER", pretrained=True)`` opens it (a whole timm model with timm alone; a
stitch, fine-tuning baseline or probe once stitchkit is imported, which registers ``stitchkit_stitch`` and its
siblings with timm). stitchkit's own record sits under the key ``stitchkit``: what to build (``kind`` and
``architecture``: model names, gap, adapters, every stitch option), how to feed it (``preprocessing``), what it
predicts (``class_names``) and what it scored (``result``; left out once the classifier that scored it has changed,
and ``untrained_head`` while a head from ``reset_classifier`` has not trained). ``model.safetensors`` holds every
weight the model needs, frozen parts included, so loading needs neither the network nor the original checkpoints. A
model saved without a classifier (after timm's ``reset_classifier(0)``) records ``num_classes`` 0 (timm's keys and
every kind's ``architecture``, as timm's own folders do) and loads as one that returns its pooled features. Nothing
in a folder names a path of the machine that wrote it. Folders of format 1 (stitchkit 0.4 and 0.5, the record at the
top level) still load.

This module knows the folder; what each kind builds is its class's business (:class:`SavesPretrained`), and
:func:`stitchkit.pretrained.load_pretrained` picks the class from ``kind``.

Writing is safe to kill: a new folder is assembled under a temporary name and renamed whole; an existing model
folder has its ``config.json`` removed first and written last, so a folder without one is known to be incomplete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import faults
from .errors import StitchkitError
from .files import atomic_write_json, atomic_write_text
from .temps import make_temp_dir, remove_own_temps

FORMAT = "stitchkit.model"
FORMAT_VERSION = 3  # raise when a reader of this version could not build what a newer writer describes
# 2: timm's keys at the top level, stitchkit's record under "stitchkit" (1: the record alone); 3: a stitch (or a
# fine-tuning baseline, a probe) with a model whose cuts changed in 0.13.0 (stitchkit.saved_cuts), which readers of 2
# would rebuild at their cuts. Every other folder is still written as 2 (its networks record their cuts too, which
# readers of 2 ignore): what they build alike, they still load.
CHANGED_CUTS_FORMAT_VERSION = 3
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
EXPORT_MODEL_DIR = "model"  # the model folder inside an export's folder, beside the deployment files
PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name on the Hugging Face Hub
WHOLE_MODEL = "model"  # the kind of a folder holding a whole model (mode=scratch, or any supported model)
# The names under which stitchkit registers its networks with timm (stitchkit.timm_models): what config.json's
# "architecture" says for every kind timm has no name of its own for.
TIMM_ARCHITECTURES = {"stitch": "stitchkit_stitch", "parallel": "stitchkit_parallel", "finetune": "stitchkit_finetune",
                      "probe": "stitchkit_probe",
                      WHOLE_MODEL: "stitchkit_model"}


def folder_config(kind: str, architecture: dict, preprocessing: dict, class_names: list[str] | None = None,
                  **info: Any) -> dict:
    """The ``config.json`` of a model folder; ``info`` (``result``, ``trained``, ``evaluation``, ``provenance``)
    is stored as given, None values left out."""
    from .version import __version__

    missing = [k for k in PREPROCESSING_KEYS if preprocessing.get(k) is None]
    if missing:
        raise StitchkitError(f"the model's preprocessing lacks {', '.join(missing)}; pass preprocessing= with "
                             f"{', '.join(PREPROCESSING_KEYS)}")
    prep = {k: preprocessing[k] for k in PREPROCESSING_KEYS}
    prep["input_size"] = list(prep["input_size"]) if isinstance(prep["input_size"], (tuple, list)) else [
        3, prep["input_size"], prep["input_size"]]
    prep["mean"], prep["std"] = list(prep["mean"]), list(prep["std"])
    config = {"format": FORMAT, "format_version": _format_version(kind, architecture), "stitchkit_version": __version__,
              "kind": kind,
              "architecture": architecture, "preprocessing": prep,
              "class_names": list(class_names) if class_names else None}
    config.update({k: v for k, v in info.items() if v is not None})
    return {k: v for k, v in config.items() if v is not None}


def _format_version(kind: str, architecture: dict) -> int:
    """The lowest format whose readers rebuild the network ``architecture`` describes as it is (see FORMAT_VERSION)."""
    from .saved_cuts import needs_new_format

    singles = architecture.get("stitches", []) if kind == "parallel" else [architecture] if kind == "stitch" else []
    names = [a.get(end) for a in singles for end in ("src", "dst")]
    if kind in ("finetune", "probe"):  # cut from one model too (which blocks go, which train)
        names.append(architecture.get("model"))
    return CHANGED_CUTS_FORMAT_VERSION if needs_new_format(names) else 2


def model_config(model: nn.Module, kind: str, architecture: dict, preprocessing: dict | None = None,
                 **info: Any) -> dict:
    """:func:`folder_config` for ``model``: the preprocessing of its ``pretrained_cfg`` and what it was loaded with
    (``stitchkit_info``: class names, result, ...) where it still describes the model, unless given (None values
    count as not given); ``untrained_head`` where its classifier is the one ``reset_classifier`` made, unchanged."""
    from .zoo.models import classes_or_none

    names, classes = info.get("class_names"), classes_or_none(model)
    if names is not None and classes is not None and len(names) != classes:
        # a name per output, in the order of the outputs: predict and the Hub's widget read them so
        raise StitchkitError(f"class_names lists {len(names)} names but the model predicts {classes} classes; give one "
                             "name per class, in the order of its outputs")
    known = _still_true(model, classes)
    known.update((k, v) for k, v in info.items() if v is not None)
    if classifier_unchanged(model, getattr(model, "_fresh_classifier", None)):
        known["untrained_head"] = True
    _check_channels(model, kind)
    prep = preprocessing or getattr(model, "pretrained_cfg", None) or {}
    _check_built_size(architecture, prep)
    return folder_config(kind, architecture, prep, **known)


def _check_channels(model: nn.Module, kind: str) -> None:
    """Refuse, before anything is written, a model of other than 3-channel images (timm's ``in_chans=1``): a folder
    rebuilds its models by name, with 3 channels, and its weights would not load into them."""
    from .zoo import input_channels

    channels = input_channels(model)
    if channels != 3:
        raise StitchkitError(f"this {kind} model takes {channels}-channel images, and a model folder rebuilds its "
                             "models by name with 3: it cannot be saved as one yet; save model.state_dict() with "
                             f"torch.save and load it into the model built again with in_chans={channels}")


def _check_built_size(architecture: dict, preprocessing: dict) -> None:
    """Refuse preprocessing for another image size than the one the network is built for (``architecture``'s
    ``input_size``; a parallel stitch's in its sources' records): the folder would rebuild the network at the one and
    tell every reader (predict, eval, timm's data config) to feed it the other."""
    built = architecture.get("input_size")
    if built is None and architecture.get("stitches"):
        built = architecture["stitches"][0].get("input_size")
    size = preprocessing.get("input_size")
    if built is None or size is None:
        return
    side = tuple(size)[-2:] if isinstance(size, (tuple, list)) else (size, size)
    if tuple(side) != (built, built):
        raise StitchkitError(f"the preprocessing's input_size is {side[0]}x{side[1]} but the model is built for "
                             f"{built}x{built} images; pass preprocessing with input_size {built} (the model's "
                             f"pretrained_cfg has it), or build the model for {side[0]} px")


def _still_true(model: nn.Module, classes: int | None) -> dict:
    """What the model was loaded with (``stitchkit_info``), less what no longer describes it: the result, where the
    weights that scored it have changed since (trained further, its adapters alone included; given another head by
    timm's own reset_classifier on a whole model; cast to a dtype that rounds them), and class names that number
    other than its outputs (``classes``; None: no classifier). A stitchkit network's ``reset_classifier`` drops both
    itself."""
    known = dict(getattr(model, "stitchkit_info", None) or {})
    scored = getattr(model, "_scored_weights", None)
    if "result" in known and scored is not None and weights_digest(model, scored[1])[0] != scored[0]:
        del known["result"]
    names = known.get("class_names")
    if names and classes is not None and len(names) != classes:
        known.pop("class_names")
        known.pop("result", None)
    return known


def weights_digest(model: nn.Module, dtypes: dict[str, torch.dtype] | None = None) -> tuple[str, dict]:
    """A digest of every weight and buffer of ``model`` (``state_dict``), and each one's dtype: to tell later whether
    the model still computes what a recorded result measured. Given ``dtypes`` (an earlier digest's), each tensor is
    cast back to its dtype first, so a cast that loses nothing (float32 to float64 and back) changes no digest, and
    one that rounds (to bfloat16) does, as does training any part, BatchNorm statistics included."""
    import hashlib

    digest, seen = hashlib.sha1(), {}
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach()
        if dtypes is not None and name in dtypes:
            tensor = tensor.to(dtypes[name])
        seen[name] = tensor.dtype
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest(), seen


def classifier_snapshot(model: nn.Module) -> list[torch.Tensor] | None:
    """A copy, on the CPU, of the weights of ``model``'s classifier, to tell later whether they changed; None where
    the model has no one classifier layer."""
    from .zoo.models import classifier_layer

    layer = classifier_layer(model)
    return None if layer is None else [p.detach().to("cpu", copy=True) for p in layer.parameters()]


def classifier_unchanged(model: nn.Module, snapshot: list[torch.Tensor] | None) -> bool:
    """Whether ``model``'s classifier holds the weights of ``snapshot`` (:func:`classifier_snapshot`), in whatever
    dtype and device the model has since been moved to (a cast of the snapshot is what the model's cast made)."""
    from .zoo.models import classifier_layer

    layer = classifier_layer(model) if snapshot is not None else None
    if layer is None:
        return False
    now = [p.detach() for p in layer.parameters()]
    return len(now) == len(snapshot) and all(
        a.shape == b.shape and torch.equal(b.to(a.dtype), a.cpu()) for a, b in zip(now, snapshot))


def write_model_folder(directory: str | os.PathLike, config: dict, model: nn.Module) -> Path:
    """Write ``config`` (stitchkit's record, :func:`folder_config`) and ``model``'s weights (every one, in
    safetensors) with a model card into ``directory``, a new or empty folder or an earlier model folder (replaced)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise StitchkitError(f"{str(directory)!r} is a file; save the model into a folder")
    present = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    existing = bool(present)
    others = sorted(present - {CONFIG_FILE, WEIGHTS_FILE, CARD_FILE})
    if others:  # a user's files, or an export's (model.onnx would no longer match the new weights)
        raise StitchkitError(f"{str(directory)!r} holds other files ({', '.join(others[:3])}); save the model into a "
                             "new or empty folder, or into an earlier save_pretrained folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_own_temps(directory.parent)  # the staging folder of a save killed before
    staging = make_temp_dir(directory)
    try:
        write_files(staging, config, model)
        if not existing:
            if directory.exists():
                directory.rmdir()
            os.rename(staging, directory)
        else:  # an earlier save: no config.json while the weights change, so a kill leaves a folder known incomplete
            (directory / CONFIG_FILE).unlink(missing_ok=True)
            for name in (WEIGHTS_FILE, CARD_FILE, CONFIG_FILE):
                os.replace(staging / name, directory / name)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def write_files(folder: Path, config: dict, model: nn.Module) -> None:
    """The three files of a model folder, written into ``folder`` (the caller makes the folder appear whole);
    ``config.json`` last. A whole model's weights are its state dict, as timm loads it; a network cut from parts
    also keeps the buffers its parts keep out of theirs (see :func:`_every_buffer`)."""
    from safetensors.torch import save_model

    was_training = model.training
    try:
        with _every_buffer(model) if config["kind"] != WHOLE_MODEL else nullcontext():
            save_model(model.eval(), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    finally:
        model.train(was_training)
    faults.point(f"write:{WEIGHTS_FILE}")
    atomic_write_text(folder / CARD_FILE, model_card(config, model))
    atomic_write_json(folder / CONFIG_FILE, hub_config(config, model))
    apply_umask(folder)


def apply_umask(folder: Path) -> None:
    """Files and the folder as any new file of the user's would be: tempfile makes them private (0600, 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)


def timm_name(config: dict) -> str:
    """config.json's ``architecture``: the timm name of a whole timm model, else the name stitchkit registers the
    kind under with timm (:mod:`stitchkit.timm_models`)."""
    if config["kind"] == WHOLE_MODEL:
        from .zoo.metadata import ModelName

        parsed = ModelName.parse(config["architecture"]["name"])
        if not parsed.is_torchvision:
            return parsed.base
    return TIMM_ARCHITECTURES[config["kind"]]


def hub_config(config: dict, model: nn.Module) -> dict:
    """The file config.json: timm's keys (what ``timm.create_model("local-dir:...")`` reads, written as timm's own
    ``save_config_for_hf`` writes them) around stitchkit's record (``config``) under ``"stitchkit"``."""
    from .zoo.models import num_outputs

    prep = config["preprocessing"]
    name = timm_name(config)
    classes = num_outputs(model)
    own = getattr(model, "pretrained_cfg", None) or {}
    pretrained_cfg = {"input_size": list(prep["input_size"]), "fixed_input_size": True,
                      "interpolation": prep["interpolation"], "crop_pct": prep["crop_pct"], "crop_mode": "center",
                      "mean": list(prep["mean"]), "std": list(prep["std"]), "num_classes": classes}
    if name not in TIMM_ARCHITECTURES.values():  # a timm model's own keys, which timm's builder reads
        for key in ("first_conv", "classifier", "license"):
            if own.get(key):
                pretrained_cfg[key] = own[key]
        # to timm, fixed_input_size also says that the model's constructor takes img_size
        pretrained_cfg["fixed_input_size"] = bool(own.get("fixed_input_size", False))
    hub = {"architecture": name, "num_classes": classes}
    # timm's meaning: forward_features' width (timm's own save_config_for_hf writes it, and no head_hidden_size)
    width = getattr(model, "num_features", None)
    if isinstance(width, int):
        hub["num_features"] = width
    if config.get("class_names") and len(config["class_names"]) == classes:
        hub["label_names"] = list(config["class_names"])
    if name not in TIMM_ARCHITECTURES.values():  # what timm's factory passes to the model's constructor again
        args = {k: v for k, v in getattr(model, "_model_args", {}).items() if _is_json(v)}
        args["num_classes"] = classes
        hub["model_args"] = args
    hub["pretrained_cfg"] = pretrained_cfg
    hub["stitchkit"] = config
    return hub


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


@contextmanager
def _every_buffer(model: nn.Module):
    """Buffers a module keeps out of its state dict (``persistent=False``) count as state while the folder is
    written and read: some are computed from weights a folder does not rebuild (a stitch's re-added position
    embedding comes from the destination's), so the folder must hold them too."""
    hidden = [(m, set(m._non_persistent_buffers_set)) for m in model.modules()]
    for module, _ in hidden:
        module._non_persistent_buffers_set.clear()
    try:
        yield
    finally:
        for module, names in hidden:
            module._non_persistent_buffers_set.update(names)


def read_model_config(directory: str | os.PathLike) -> dict:
    """The checked ``config.json`` of a model folder; every problem is one message that names the fix."""
    directory = Path(directory)
    hint = "pass a folder written by `stitchkit export` or save_pretrained"
    if not directory.is_dir():
        raise StitchkitError(f"{str(directory)!r} is not a folder; {hint}")
    path = directory / CONFIG_FILE
    if not path.is_file():
        if (directory / WEIGHTS_FILE).exists():
            # Saving writes config.json last, so an interrupted save looks like this; so does a removed file.
            raise StitchkitError(f"{str(directory)!r} has weights but no config.json (an interrupted save, or the "
                                 "file was removed); export or save the model again")
        raise StitchkitError(f"{str(directory)!r} is not a stitchkit model folder (no config.json); {hint}")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise StitchkitError(f"{str(path)!r} is not valid JSON ({err}); export or save the model again") from None
    if isinstance(config, dict) and isinstance(config.get("stitchkit"), dict):
        config = config["stitchkit"]  # format 2: timm's keys around stitchkit's record
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise StitchkitError(f"{str(path)!r} does not describe a stitchkit model (no \"format\": \"{FORMAT}\"); "
                             f"{hint}")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise StitchkitError(f"{str(path)!r} has no valid format_version; export or save the model again")
    if version > FORMAT_VERSION:
        raise StitchkitError(
            f"{str(directory)!r} was written by a newer stitchkit ({config.get('stitchkit_version', '?')}, model "
            f"format {version}; this one reads up to {FORMAT_VERSION}): upgrade with pip install -U stitchkit")
    for key in ("kind", "architecture", "preprocessing"):
        if key not in config:
            raise StitchkitError(f"{str(path)!r} lacks {key!r}; export or save the model again")
    if not (directory / WEIGHTS_FILE).is_file():
        raise StitchkitError(f"{str(directory)!r} has no {WEIGHTS_FILE}; copy the whole folder, or export it again")
    return config


def load_weights(model: nn.Module, directory: str | os.PathLike, device: str | torch.device = "cpu") -> None:
    """Load the folder's weights into ``model``: every weight must be there with its shape, and nothing else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(directory) / WEIGHTS_FILE
    keys = _saved_keys(path)
    bridge = getattr(model, "bridge", None)
    if hasattr(bridge, "conform_to_saved") and keys is not None:  # a stitch saved by an earlier version
        bridge.conform_to_saved({k[len("bridge."):] for k in keys if k.startswith("bridge.")})  # stays that network
    try:
        with _every_buffer(model) if _holds_hidden_buffers(model, keys) else nullcontext():
            load_model(model, str(path), strict=True, device=str(device))
    except SafetensorError as err:
        raise StitchkitError(f"{str(path)!r} is not a readable safetensors file ({err}); copy it again or export "
                             "the model again") from None
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise StitchkitError(f"the weights in {str(path)!r} do not match the model its config.json describes "
                             f"({detail[:300]}); the two files come from different models: export the folder again"
                             ) from None


def _saved_keys(path: Path) -> set[str] | None:
    """The names the weights file holds; None where it cannot be read (the load that follows says why)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return set(f.keys())
    except (SafetensorError, OSError):
        return None


def _holds_hidden_buffers(model: nn.Module, keys: set[str] | None) -> bool:
    """Whether the file (its ``keys``) keeps the buffers ``model``'s parts keep out of their state dicts (every
    folder of a network cut from parts, and whole-model folders of format 1) or not (whole-model folders since
    format 2)."""
    hidden = {f"{prefix}.{name}" if prefix else name for prefix, m in model.named_modules()
              for name in m._non_persistent_buffers_set if getattr(m, name, None) is not None}
    if not hidden:
        return False
    return keys is None or bool(hidden & keys)  # unreadable: load_model says what is wrong with the file


def no_classifier(folder: str | os.PathLike, doing: str) -> StitchkitError:
    """The error for ``doing`` (predict, evaluate) with a model saved without a classifier."""
    return StitchkitError(f"the model in {str(folder)!r} has no classifier (it was saved after reset_classifier(0), "
                          f"and returns features): it cannot {doing}; give it a head and train it, e.g. "
                          f"timm.create_model('local-dir:FOLDER', pretrained=True, num_classes=N)")


def apply_config(model: nn.Module, config: dict) -> nn.Module:
    """What a loaded model carries besides its weights: a timm ``pretrained_cfg`` (so ``timm.data`` gives its
    preprocessing) and ``stitchkit_info`` (class names, result; kept when it is saved again)."""
    from .zoo.models import classes_or_none

    prep = config["preprocessing"]
    classes = config.get("class_names")
    model.pretrained_cfg = {  # a whole model's architecture is the name that rebuilds it (save_pretrained reads it)
        "architecture": config["architecture"].get("name") or timm_name(config),
        "input_size": tuple(prep["input_size"]),
        "fixed_input_size": True, "mean": tuple(prep["mean"]), "std": tuple(prep["std"]),
        "interpolation": prep["interpolation"], "crop_pct": prep["crop_pct"], "crop_mode": "center",
        # What the loaded head predicts, read from the head itself: the records differ by kind (a stitch's
        # head_classes, a parallel stitch's inside each source's record), and a reader of one kind's missed another's
        "num_classes": classes_or_none(model),
        "label_names": list(classes) if classes else None,
    }
    model.stitchkit_info = {k: config[k] for k in ("class_names", "result", "trained", "sources", "evaluation",
                                                   "provenance") if k in config}
    # The weights the result was measured with, and (a head from reset_classifier, saved before it trained) the
    # classifier still untrained: a later save tells from them whether either still describes the model
    model._scored_weights = weights_digest(model) if config.get("result") else None
    model._fresh_classifier = classifier_snapshot(model) if config.get("untrained_head") else None
    return model


def local_folder(path_or_repo: str | os.PathLike, revision: str | None = None, **hub: Any) -> Path:
    """A local folder as it is (an export's folder: the model folder inside it); otherwise a Hugging Face Hub
    repository id (``owner/name``), downloaded (which needs the network unless ``local_files_only``). ``hub``:
    ``snapshot_download``'s keywords (``cache_dir``, ``local_files_only``, ``token``, ``force_download``, ...).
    A repository id may pin its revision as timm's ``hf-hub:`` names do (``owner/name@v1``)."""
    path = Path(path_or_repo)
    refuse_timm_prefix(path_or_repo)
    repo, at, pinned = str(path_or_repo).partition("@")
    if at and not path.exists() and _REPO_ID.match(repo):
        if revision is not None and revision != pinned:
            raise StitchkitError(f"{str(path_or_repo)!r} pins revision {pinned!r} and revision={revision!r} was "
                                 "also given; give one of them")
        path_or_repo, revision, path = repo, pinned, Path(repo)
    if path.exists() or not _REPO_ID.match(str(path_or_repo)):
        if (path / EXPORT_MODEL_DIR / CONFIG_FILE).is_file() and not (path / CONFIG_FILE).exists():
            return path / EXPORT_MODEL_DIR  # `stitchkit export --out DIR` puts the model folder in DIR/model
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_repo), revision=revision,
                                      allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE], **hub))
    except Exception as err:  # offline, no such repository, no access: one line that says so
        first = str(err).splitlines()[0] if str(err) else ""
        raise StitchkitError(f"{str(path_or_repo)!r} is not a local folder and could not be downloaded from the "
                             f"Hugging Face Hub ({type(err).__name__}: {first}); pass a model folder") from None


TIMM_PREFIXES = ("local-dir:", "hf-hub:")


def refuse_timm_prefix(path_or_repo: str | os.PathLike) -> None:
    """timm's model-name prefixes (``local-dir:FOLDER``, ``hf-hub:OWNER/NAME``) given to stitchkit, which takes the
    folder or repository id itself: one line saying what to pass (without it, a folder that exists was called no
    folder)."""
    text = str(path_or_repo)
    prefix = next((p for p in TIMM_PREFIXES if text.startswith(p)), None)
    if prefix is not None and not Path(text).exists():
        raise StitchkitError(f"{text!r} is a timm model name ({prefix} is timm.create_model's prefix); stitchkit "
                             f"takes the folder itself (load_pretrained also a Hub repository id), without the "
                             f"prefix: {text[len(prefix):]!r}")


def push_folder(directory: Path, repo_id: str, private: bool | None = None, token: str | None = None,
                commit_message: str = "Upload stitchkit model") -> str:
    """Upload a model folder to a Hugging Face Hub repository (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))


class SavesPretrained:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a model class that can describe itself
    (:meth:`architecture`) and build itself from that description (:meth:`from_architecture`)."""

    folder_kind: str = ""

    def architecture(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_architecture(cls, architecture: dict) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def describe(cls, architecture: dict, head: str) -> str:
        """One sentence for the model card: what this network is, given its :meth:`architecture` and a phrase for
        its head (``its own 10-class head, frozen``, ``a new 5-class head, trained``)."""
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike, *, class_names: list[str] | None = None,
                        preprocessing: dict | None = None, result: dict | None = None, **info: Any) -> Path:
        """Write the model into ``directory`` (see :mod:`stitchkit.modelfolder`). ``preprocessing`` defaults to the
        model's ``pretrained_cfg``; class names and result to what it was loaded with; what trains to the model's
        own ``trained_parts()``."""
        if callable(getattr(self, "trained_parts", None)):
            info.setdefault("trained", self.trained_parts())
        config = model_config(self, self.folder_kind, self.architecture(), preprocessing, class_names=class_names,
                              result=result, **info)
        return write_model_folder(directory, config, self)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None, **save) -> str:
        """Save the model into a temporary folder and upload it to the Hugging Face Hub (needs the network and a
        token); ``save`` goes to :meth:`save_pretrained`."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", **save)
            return push_folder(folder, repo_id, private=private, token=token)

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, device: str | torch.device = "cpu",
                        revision: str | None = None, *, trust_cuts: bool = False, **hub: Any) -> nn.Module:
        """The model saved in a folder (or a Hugging Face Hub repository), in eval mode on ``device``; ``hub``:
        the Hub's usual keywords (``cache_dir``, ``local_files_only``, ``token``); ``trust_cuts``: as for
        :func:`stitchkit.load_pretrained`."""
        directory = local_folder(path_or_repo, revision, **hub)
        config = read_model_config(directory)
        if config["kind"] != cls.folder_kind:
            raise StitchkitError(f"{str(path_or_repo)!r} holds a {config['kind']} model, not a {cls.folder_kind}; "
                                 "load it with stitchkit.load_pretrained")
        return finish_loading(cls.from_architecture(config["architecture"]), directory, config, device,
                              trust_cuts=trust_cuts)


def check_folder_cuts(model: nn.Module, directory: Path, config: dict, trust_cuts: bool = False) -> None:
    """Refuse a folder's stitch that this version rebuilt at other cuts than the folder records, or that records
    none while a model in it is one whose cuts changed (unless ``trust_cuts``; :mod:`stitchkit.saved_cuts`). Networks
    that cut nothing (a whole model) have nothing to check."""
    check = getattr(model, "check_saved_cuts", None)
    if check is not None:
        check(config["architecture"], source=f"the model folder {str(directory)!r}",
              written_by=config.get("stitchkit_version"), trust_cuts=trust_cuts,
              trust_hint="stitchkit.load_pretrained(FOLDER, trust_cuts=True)")


def finish_loading(model: nn.Module, directory: Path, config: dict, device: str | torch.device = "cpu", *,
                   trust_cuts: bool = False) -> nn.Module:
    """Load the weights into a freshly built ``model`` and attach what the folder says about it; first refuse a
    stitch rebuilt at other cuts than it was saved with (:func:`check_folder_cuts`), whose weights would otherwise
    load where their shapes agree."""
    check_folder_cuts(model, directory, config, trust_cuts)
    _check_device(device)  # else the weights' load fails there, and its error would blame the folder
    load_weights(model, directory, device)
    return apply_config(model.to(device).eval(), config)


def _check_device(device: str | torch.device) -> None:
    """Refuse a device this machine does not have (``cuda`` without a GPU, ``cuda:3`` on a machine with two) in
    one line that says so."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise StitchkitError(f"cannot load the model onto device {str(device)!r}: this machine does not have it "
                             f"({detail[:200]}); pass device='cpu' or a device it has") from None


# Hugging Face Hub ids of the datasets stitchkit reads by name (the card's ``datasets`` metadata).
HUB_DATASETS = {"fashion_mnist": "zalando-datasets/fashion_mnist", "cifar10": "uoft-cs/cifar10",
                "cifar100": "uoft-cs/cifar100", "imagenet": "ILSVRC/imagenet-1k"}


def _head_record(config: dict) -> tuple[dict, str]:
    """The architecture record that describes the head, and its kind: a parallel stitch's sources share the
    destination's head, and any one's single-stitch record says which."""
    arch, kind = config["architecture"], config["kind"]
    return (arch["stitches"][0], "stitch") if kind == "parallel" else (arch, kind)


def _without_classifier(config: dict) -> bool:
    """Whether the folder's model was saved without a classifier: every kind records that (reset_classifier(0)) as
    0 classes."""
    return _head_record(config)[0].get("num_classes") == 0


def describe_head(config: dict) -> str:
    """The card's phrase for the head: new or the destination's own, how many classes, whether it trains and, as
    far as the folder records, whether it was trained."""
    arch, kind = _head_record(config)
    if _without_classifier(config):
        return "no classifier (it returns the pooled features a classifier would read; give it one with " \
            "reset_classifier(num_classes))"
    trains = "head" in (config.get("trained") or []) or "all" in (config.get("trained") or [])
    classes = arch.get("head_classes") or arch.get("num_classes")
    size = f"{classes}-class " if classes else ""
    if kind == "stitch":
        whose = f"a new {size}head" if arch.get("num_classes") or arch.get("new_head") else \
            f"{arch['dst']}'s own {size}head"
    else:
        whose = f"its {size}head"
    if config.get("untrained_head"):
        return whose + ", untrained (random weights from reset_classifier: train it before use)"
    if config.get("trained") is None:  # a whole model saved without a record of its training: nothing to say
        return whose
    if not trains:
        return whose + ", frozen"
    done = _training_done(config.get("result") or {})
    if done is None:  # saved without a training run's result: it trains, whether it was trained is not recorded
        return whose + ", trainable"
    return whose + (", trained" if done else ", untrained (its run took 0 optimizer steps)")


def _title(config: dict) -> str:
    arch, kind = config["architecture"], config["kind"]
    if kind == "stitch":
        # one model: both ends are one set of weights, not merely one architecture (two checkpoints of resnet10t)
        same = " (one model)" if arch.get("one_model") else ""
        return (f"{arch['src']} -> {arch['dst']}{same} stitch, stage {arch['gap'][0]} -> {arch['gap'][1]} "
                f"({arch['adapter']} adapters)")
    if kind == "parallel":
        singles = arch["stitches"]
        fronts = " + ".join(f"{a['src']} (stage {a['gap'][0]})" for a in singles)
        return f"{fronts} -> {singles[0]['dst']} parallel stitch, {arch['fusion']} fusion"
    if kind == "finetune":
        return f"{arch['model']} fine-tuning baseline, gap {arch['gap'][0]}:{arch['gap'][1]}"
    if kind == "probe":
        # what the probe is, whether or not it has trained yet (a new or reset head has not)
        return f"{arch['model']} probe (frozen but for its head" + (
            f" and last {_blocks(arch['unfreeze_last'])})" if arch.get("unfreeze_last") else ")")
    return arch.get("name", "model")


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:", *(f"- {json.dumps(v)}" for v in values)] if values else []


def model_card(config: dict, model: nn.Module | None = None, kind_class: type | None = None) -> str:
    """A README.md for the Hub: what the model is, what it scored on how many images, what its parts score and
    cost, its head, how it sees images, how to load it (with stitchkit or timm). Its YAML header is the Hub's
    model metadata (license, datasets, base models, model-index). The sentence saying what the model is comes
    from its class's ``describe``: ``model``'s own, or ``kind_class`` for a card written from a record alone
    (:func:`stitchkit.pretrained.network_class` of its kind; this module sits below the network classes)."""
    arch, prep, result = config["architecture"], config["preprocessing"], config.get("result") or {}
    sources = config.get("sources") or []
    title = _title(config)
    kind_class = type(model) if isinstance(model, SavesPretrained) else kind_class
    describe = kind_class.describe if kind_class else None
    head = describe_head(config)
    what = describe(arch, head) if describe else f"**{arch.get('name', '?')}**, {head}."
    dataset = result.get("dataset")
    licenses = {s.get("license") for s in sources}
    lines = ["---", "library_name: stitchkit",
             f"license: {licenses.pop() if len(licenses) == 1 and None not in licenses else 'unknown'}",
             *_yaml_list("datasets", [HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else []),
             *_yaml_list("base_model", [s["hub_id"] for s in sources if s.get("hub_id")]),
             "pipeline_tag: image-classification", "tags:", "- image-classification", "- model-stitching",
             "- stitchkit", "- timm"]
    selected = _selected_classes(config)
    evaluated = _evaluated_on(result, selected)
    if result.get("top1") is not None:
        metrics = [("accuracy", result["top1"], f"Top-1 accuracy ({evaluated})")]
        if _telling_top5(config):
            metrics.append(("top_5_accuracy", result["top5"], f"Top-5 accuracy ({evaluated})"))
        # a subset of classes is a task of its own: its accuracy is not one on the whole dataset
        task_name = (dataset or "unknown") + (f" ({len(selected)} of its classes)" if selected else "")
        lines += ["model-index:", f"- name: {json.dumps(title)}", "  results:", "  - task:",
                  "      type: image-classification", "    dataset:",
                  f"      name: {json.dumps(task_name)}",
                  f"      type: {json.dumps(HUB_DATASETS.get(dataset, dataset or 'unknown'))}",
                  f"      split: {json.dumps(_split_text(result, selected))}", "    metrics:"]
        for kind, value, name in metrics:
            lines += [f"    - type: {kind}", f"      value: {value:.2f}", f"      name: {json.dumps(name)}"]
    lines += ["---", "", f"# {title}", "", what, ""]
    if config.get("trained"):
        lines += [_trained_sentence(config), ""]
    if result.get("top1") is not None:
        lines += ["## Evaluation", "", _evaluation_sentence(config, evaluated), ""]
    if sources:
        lines += _parts_section(config, sources)
    lines += ["## Preprocessing", "",
              f"{prep['input_size'][1]} x {prep['input_size'][2]} px RGB, {prep['interpolation']} resize to "
              f"{prep['input_size'][1]} / {prep['crop_pct']} px and centre crop, normalised with mean "
              f"{prep['mean']} and std {prep['std']}.", ""]
    classes = config.get("class_names") or []
    if classes:
        lines += [f"## Classes ({len(classes)})", "", ", ".join(map(str, classes[:50])) +
                  (" ..." if len(classes) > 50 else ""), ""]
    timm_arch = timm_name(config)
    lines += ["## Use", "", "```python", "import stitchkit", "",
              'model = stitchkit.load_pretrained("path/to/this/folder")  # or a Hub repository id', "",
              "import timm  # timm opens the folder too" + (f" (after `import stitchkit`, which registers {timm_arch}"
                                                             " with timm)" if timm_arch in
                                                             TIMM_ARCHITECTURES.values() else ""),
              'model = timm.create_model("local-dir:path/to/this/folder", pretrained=True)']
    if _without_classifier(config):  # `stitchkit predict` and `eval` refuse such a folder: say what it is for
        lines += ["", "features = model(images)  # pooled features (it has no classifier)",
                  "maps = model.forward_features(images)  # the features before pooling", "",
                  "# a new head of N classes, to train on your data",
                  'model = timm.create_model("local-dir:path/to/this/folder", pretrained=True, num_classes=N)', "```",
                  "", "It has no classifier, so `stitchkit predict` and `stitchkit eval` refuse it: use its features "
                  "as above, or give it a head and train it.", ""]
    else:
        lines += ["```", "", "```bash", "stitchkit predict path/to/this/folder image.jpg", "```", ""]
    return "\n".join(lines)


def _training_done(result: dict) -> bool | None:
    """Whether the model took any training step: a run's result says how many (``steps``; in a folder of an
    earlier stitchkit, its finished ``epochs``); None where nothing says (save_pretrained without a result)."""
    steps, epochs = result.get("steps"), result.get("epochs")
    if isinstance(steps, int):
        return steps > 0
    return True if isinstance(epochs, int) and epochs > 0 else None


def _trained_sentence(config: dict) -> str:
    """The card's line on what training changed (``trained``), and what stayed as its source left it."""
    trained, result = config["trained"], config.get("result") or {}
    everything = "all" in trained
    parts = "every weight" if everything else ", ".join(trained)
    rest = "" if everything else "; everything else is frozen as its source left it"
    if not everything and _head_record(config)[0].get("frozen_mode") == "train":  # frozen weights, moving statistics
        rest = ("; everything else keeps its source's weights, but its BatchNorm statistics moved with training "
                "(frozen_mode=train)")
    head = "; the head is untrained (random weights from reset_classifier)" if config.get("untrained_head") else ""
    done = _training_done(result)
    if done is False:
        return f"Not trained: its run took 0 optimizer steps, so what trains ({parts}) is as it started{head}{rest}."
    if done is None:  # a model saved without a training run's result: whether anything trained is not known
        return f"What trains: {parts} (no training run is recorded with this model){head}{rest}."
    return f"Trained: {parts}{head}{rest}."


def _start_words(config: dict) -> str:
    """What the model was before its first training step (what its top-1 at start measured), by kind."""
    arch, kind = config["architecture"], config["kind"]
    head, _ = _head_record(config)
    new_head = ", with the new head untrained" if head.get("num_classes") or head.get("new_head") else ""
    if kind == "stitch":
        return f"the adapters as they started{new_head}"
    if kind == "parallel":
        return f"the adapters and the fusion as they started{new_head}"
    if kind == "finetune":
        return f"{arch['model']} cut for gap {arch['gap'][0]}:{arch['gap'][1]}, before any fine-tuning"
    if kind == "probe":
        return f"the frozen {arch['model']} with the probe's initial head"
    if (config.get("provenance") or {}).get("mode") == "scratch":
        return "its random initialisation"
    return "the model as it started"


def _telling_top5(config: dict) -> bool:
    """Whether the result's top-5 says anything: with 5 classes or fewer every image is among the top 5 (the
    evaluation takes the top min(5, classes)), so it is 100% of any model."""
    if (config.get("result") or {}).get("top5") is None:
        return False
    head, _ = _head_record(config)
    classes = len(config.get("class_names") or []) or head.get("head_classes") or head.get("num_classes")
    return not (isinstance(classes, int) and classes <= 5)


def _evaluation_sentence(config: dict, evaluated: str) -> str:
    """The card's line on the model's top-1: on what, after how much training, and what it started from."""
    result = config["result"]
    sentence = f"Top-1 **{result['top1']:.2f}%**" + (
        f", top-5 {result['top5']:.2f}%" if _telling_top5(config) else "") + f" on {evaluated}"
    if _training_done(result) is False:
        return sentence + f", untrained: its run took 0 optimizer steps, so this is {_start_words(config)}."
    epochs, steps, start = result.get("epochs"), result.get("steps"), result.get("top1_at_start")
    if steps:  # epochs counts whole ones: train.max_steps may stop a run part-way through the next
        sentence += f" after {steps:,} optimizer steps" + (f" ({epochs} full epoch(s))" if epochs else "")
    elif epochs:
        sentence += f" after {epochs} epoch(s)"
    if start is not None:
        sentence += f"; {start:.2f}% before training ({_start_words(config)})"
    return sentence + "."


def _parts_section(config: dict, sources: list[dict]) -> list[str]:
    """The card's comparison with the models this one was made from: their compute, and their top-1 beside this
    model's only where it was measured on the same task; a part measured on another task (other classes, other
    images, another image size) is listed below the table with what it was measured on."""
    result = config.get("result") or {}
    lines = ["## Compared with its parts", "", "| model | role | top-1 (%) on this model's task | GMACs | "
             "this model's compute |", "|---|---|---|---|---|"]
    if result.get("gmacs"):
        lines.append(f"| this model | - | {_pct(result.get('top1'))} | {result['gmacs']:.4g} | - |")
    elsewhere = []
    for s in sources:
        same = _same_task(s, config)
        if s.get("top1") is not None and not same:
            elsewhere.append(s)
        top1 = _pct(s.get("top1")) if same else "-"
        share = (f"{100 * result['gmacs'] / s['gmacs']:.0f}% of it" if result.get("gmacs") and s.get("gmacs")
                 else "-")
        lines.append(f"| {s['name']} | {s['role']}, {s.get('weights', 'weights unknown')} | {top1} | "
                     f"{s['gmacs']:.4g} | {share} |" if s.get("gmacs") else
                     f"| {s['name']} | {s['role']} | {top1} | - | - |")
    lines += ["", "A part's top-1 stands beside this model's only where a stitchkit run measured it on this model's "
              "task (the same data, classes and validation images, at the same image size); a pretrained part's "
              "accuracy on this data was not measured.", ""]
    if not elsewhere:
        return lines
    if result.get("top1") is None:  # nothing of this model's to compare with (a reset head)
        lines += ["Measured by the parts' own stitchkit runs (this model has no top-1 recorded):", ""]
    else:
        ours = _task_words(config.get("class_names"), result.get("eval_images"), result.get("dataset"),
                           config["preprocessing"]["input_size"][-1])
        lines += [f"Measured on another task, so not comparable (this model's {result['top1']:.2f}% is on {ours}):",
                  ""]
    for s in elsewhere:
        lines.append(f"- {s['name']} ({s['role']}): {s['top1']:.2f}% top-1 on {_measured_words(s)}")
    return lines + [""]


def _same_task(part: dict, config: dict) -> bool:
    """Whether a part's top-1 was measured on this model's task: by a run that read the same data (dataset, class
    selection, validation subset, image size; ``same_data``, judged at export) and, as this model's result says,
    the same classes and number of images. A part recorded without saying what it was measured on is not."""
    on, result, ours = part.get("measured_on") or {}, config.get("result") or {}, config.get("class_names")
    return (result.get("top1") is not None and on.get("same_data") is True and bool(ours)
            and sorted(map(str, on.get("class_names") or [])) == sorted(map(str, ours))
            and on.get("eval_images") == result.get("eval_images")
            and on.get("input_size") == config["preprocessing"]["input_size"][-1])


def _measured_words(part: dict) -> str:
    """What a part's top-1 was measured on, in words."""
    on = part.get("measured_on")
    if not on:  # recorded by an earlier stitchkit: the dataset and the run's mode alone
        return f"{part.get('top1_on') or 'data'} (its classes and images are not recorded)"
    words = _task_words(on.get("class_names"), on.get("eval_images"), on.get("dataset"), on.get("input_size"))
    if on.get("same_data") is None:
        words += " (whether these were this model's images could not be checked)"
    elif on.get("same_data") is False:
        words += " (not this model's evaluation data: another folder, class selection or validation subset)"
    return words


def _dataset_words(dataset: str | None) -> str:
    """A dataset as the card names it: an image folder is a folder of the user's, not a dataset to look up."""
    return {"imagefolder": "an image folder", "synthetic": "stitchkit's synthetic data", None: "unrecorded data"
            }.get(dataset, dataset)


def _task_words(class_names: list | None, images: int | None, dataset: str | None, size: int | None) -> str:
    """``5 classes (sandal, shirt, ...), 50 validation images of an image folder, at 32 px``."""
    words = []
    if class_names:
        shown = ", ".join(map(str, class_names[:10])) + (", ..." if len(class_names) > 10 else "")
        words.append(f"{len(class_names)} classes ({shown})")
    words.append(f"{images:,} validation images" if images else "validation images (how many is not recorded)")
    return ", ".join(words) + f" of {_dataset_words(dataset)}" + (f", at {size} px" if size else "")


def _pct(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def _selected_classes(config: dict) -> list | None:
    """The classes a run trained and evaluated on where it chose some of its data's (``data.classes``), else None."""
    return ((config.get("evaluation") or {}).get("data") or {}).get("classes") or None


def _split_text(result: dict, selected: list | None = None) -> str:
    images, whole = result.get("eval_images"), result.get("val_split_images")
    split = f"validation, data.classes={selected}" if selected else "validation"
    if images and whole and images < whole:
        return f"{split} ({images:,} of {whole:,} images)"
    return f"{split} ({images:,} images)" if images else split


def _evaluated_on(result: dict, selected: list | None = None) -> str:
    """The images the top-1 was measured on: how many, of which validation split, of which classes."""
    images, whole = result.get("eval_images"), result.get("val_split_images")
    on = _dataset_words(result.get("dataset"))
    if selected:  # a task of its own: its top-1 is not one on the whole dataset
        on += f", {len(selected)} of its classes (data.classes={selected})"
    if images and whole and images < whole:
        return f"{images:,} of the {whole:,} validation images of {on} (a random subset, data.limit_val)"
    if images:
        return f"the {images:,} validation images of {on}"
    return f"the validation images of {on} (how many is not recorded)"


def _blocks(n: int) -> str:
    return f"{n} block" if n == 1 else f"{n} blocks"
