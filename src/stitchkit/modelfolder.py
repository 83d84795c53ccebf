"""One self-contained folder per model: ``config.json``, ``model.safetensors`` and a ``README.md`` model card.

The layout is the Hugging Face Hub's (what ``huggingface_hub.PyTorchModelHubMixin`` writes), so a folder can be
pushed to the Hub as it is and loaded back from a repository id. ``config.json`` says what to build (``kind`` and
``architecture``: model names, gap, adapters, every stitch option), how to feed it (``preprocessing``), what it
predicts (``class_names``) and what it scored (``result``); ``model.safetensors`` holds every weight the model
needs, frozen parts included, so loading needs neither the network nor the original checkpoints.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import faults
from .errors import StitchkitError
from .files import atomic_write_json, atomic_write_text, remove_own_temps

FORMAT = "stitchkit.model"
FORMAT_VERSION = 1  # raise when a reader of this version could not build what a newer writer describes
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name on the Hugging Face Hub


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
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "stitchkit_version": __version__, "kind": kind,
              "architecture": architecture, "preprocessing": prep,
              "class_names": list(class_names) if class_names else None}
    config.update({k: v for k, v in info.items() if v is not None})
    return {k: v for k, v in config.items() if v is not None}


def model_config(model: nn.Module, kind: str, architecture: dict, preprocessing: dict | None = None,
                 **info: Any) -> dict:
    """:func:`folder_config` for ``model``: the preprocessing of its ``pretrained_cfg`` and what it was loaded with
    (``stitchkit_info``: class names, result, ...), unless given (None values count as not given)."""
    known = dict(getattr(model, "stitchkit_info", {}))
    known.update((k, v) for k, v in info.items() if v is not None)
    return folder_config(kind, architecture, preprocessing or getattr(model, "pretrained_cfg", None) or {}, **known)


def write_model_folder(directory: str | os.PathLike, config: dict, model: nn.Module) -> Path:
    """Write ``config`` and ``model``'s weights (every one, in safetensors) with a model card into ``directory``,
    a new or empty folder or an earlier model folder (replaced)."""
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
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
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
    ``config.json`` last."""
    from safetensors.torch import save_model

    was_training = model.training
    try:
        with _every_buffer(model):
            save_model(model.eval(), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    finally:
        model.train(was_training)
    faults.point(f"write:{WEIGHTS_FILE}")
    atomic_write_text(folder / CARD_FILE, model_card(config))
    atomic_write_json(folder / CONFIG_FILE, config)


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
    try:
        with _every_buffer(model):
            load_model(model, str(path), strict=True, device=str(device))
    except SafetensorError as err:
        raise StitchkitError(f"{str(path)!r} is not a readable safetensors file ({err}); copy it again or export "
                             "the model again") from None
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise StitchkitError(f"the weights in {str(path)!r} do not match the model its config.json describes "
                             f"({detail[:300]}); the two files come from different models: export the folder again"
                             ) from None


def apply_config(model: nn.Module, config: dict) -> nn.Module:
    """What a loaded model carries besides its weights: a timm ``pretrained_cfg`` (so ``timm.data`` gives its
    preprocessing) and ``stitchkit_info`` (class names, result; kept when it is saved again)."""
    prep = config["preprocessing"]
    model.pretrained_cfg = {  # a whole model's architecture is the name that rebuilds it (save_pretrained reads it)
        "architecture": config["architecture"].get("name") or config.get("name") or config["kind"],
        "input_size": tuple(prep["input_size"]),
        "fixed_input_size": True, "mean": tuple(prep["mean"]), "std": tuple(prep["std"]),
        "interpolation": prep["interpolation"], "crop_pct": prep["crop_pct"], "crop_mode": "center",
        # a stitch's head_classes is what its head predicts (num_classes only says whether the head is new)
        "num_classes": config["architecture"].get("head_classes") or config["architecture"].get("num_classes"),
    }
    model.stitchkit_info = {k: config[k] for k in ("class_names", "result", "trained", "evaluation", "provenance")
                            if k in config}
    return model


def local_folder(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as it is; otherwise a Hugging Face Hub repository id (``owner/name``), downloaded (which needs
    the network)."""
    path = Path(path_or_repo)
    if path.exists() or not _REPO_ID.match(str(path_or_repo)):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_repo), revision=revision,
                                      allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]))
    except Exception as err:  # offline, no such repository, no access: one line that says so
        first = str(err).splitlines()[0] if str(err) else ""
        raise StitchkitError(f"{str(path_or_repo)!r} is not a local folder and could not be downloaded from the "
                             f"Hugging Face Hub ({type(err).__name__}: {first}); pass a model folder") from None


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

    def save_pretrained(self, directory: str | os.PathLike, *, class_names: list[str] | None = None,
                        preprocessing: dict | None = None, result: dict | None = None, **info: Any) -> Path:
        """Write the model into ``directory`` (see :mod:`stitchkit.modelfolder`). ``preprocessing`` defaults to the
        model's ``pretrained_cfg``; class names and result to what it was loaded with."""
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
                        revision: str | None = None) -> nn.Module:
        """The model saved in a folder (or a Hugging Face Hub repository), in eval mode on ``device``."""
        directory = local_folder(path_or_repo, revision)
        config = read_model_config(directory)
        if config["kind"] != cls.folder_kind:
            raise StitchkitError(f"{str(path_or_repo)!r} holds a {config['kind']} model, not a {cls.folder_kind}; "
                                 "load it with stitchkit.load_pretrained")
        return finish_loading(cls.from_architecture(config["architecture"]), directory, config, device)


def finish_loading(model: nn.Module, directory: Path, config: dict, device: str | torch.device = "cpu") -> nn.Module:
    """Load the weights into a freshly built ``model`` and attach what the folder says about it."""
    load_weights(model, directory, device)
    return apply_config(model.to(device).eval(), config)


def model_card(config: dict) -> str:
    """A README.md for the Hub: what the model is, how it sees images, what it scored, how to load it."""
    arch, prep, result = config["architecture"], config["preprocessing"], config.get("result") or {}
    if config["kind"] == "stitch":
        what = (f"A stitched network: **{arch['src']}** up to the first block of its stage {arch['gap'][0]}, "
                f"{arch['adapter']} adapters ({arch['resize']} resizing), then **{arch['dst']}** from stage "
                f"{arch['gap'][1]} on, with its head.")
    elif config["kind"] == "finetune":
        what = f"The fine-tuning baseline of **{arch['model']}** for gap {arch['gap'][0]}:{arch['gap'][1]}."
    elif config["kind"] == "probe":
        what = (f"**{arch['model']}**, frozen but for its head" + (f" and its last {arch['unfreeze_last']} blocks"
                                                                   if arch.get("unfreeze_last") else "") + ".")
    else:
        what = f"**{arch.get('name', '?')}**."
    trained = config.get("trained")
    classes = config.get("class_names") or []
    lines = ["---", "library_name: stitchkit", "pipeline_tag: image-classification",
             "tags:", "- image-classification", "- model-stitching", "- stitchkit", "---", "",
             f"# {config.get('name') or config['kind']}", "", what, ""]
    if trained:
        lines += [f"Trained: {', '.join(trained)}.", ""]
    lines += ["## Preprocessing", "",
              f"{prep['input_size'][1]} x {prep['input_size'][2]} px RGB, {prep['interpolation']} resize to "
              f"{prep['input_size'][1]} / {prep['crop_pct']} px and centre crop, normalised with mean "
              f"{prep['mean']} and std {prep['std']}.", ""]
    if classes:
        lines += [f"## Classes ({len(classes)})", "", ", ".join(map(str, classes[:50])) +
                  (" ..." if len(classes) > 50 else ""), ""]
    if result:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        lines += ["## Result", "", shown, ""]
    lines += ["## Use", "", "```python", "import stitchkit", "",
              'model = stitchkit.load_pretrained("path/to/this/folder")  # or a Hub repository id',
              "```", "", "```bash", "stitchkit predict path/to/this/folder image.jpg", "```", ""]
    return "\n".join(lines)
