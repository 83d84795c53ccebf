"""The training configuration: typed defaults (the paper's recipe), then a YAML file, then ``key=value`` overrides.

Layering and type checking are OmegaConf's (structured configs from these dataclasses); unknown keys are errors
that suggest the closest valid key. The resolved config is saved as ``config.yaml`` in the run directory and is
what ``--resume`` compares against.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ..errors import StitchkitError
# The settings themselves (typed defaults with their help and class) live in settings.py; loading them is here.
from .settings import Config, _fields

DATASETS = ("imagefolder", "fashion_mnist", "synthetic")
AMP_MODES = ("auto", "none", "bf16", "fp16")
AUGMENT_ON = ("cpu", "device")
LOADERS = ("torch", "gpu", "dali")


def _all_keys() -> list[str]:
    return [key for key, _ in _fields()]


def _unknown_key_error(key: str, source: str) -> StitchkitError:
    section, _, leaf = key.rpartition(".")
    same_leaf = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == leaf]  # right name, wrong section: "train.lr"
    siblings = [k.rsplit(".", 1)[-1] for k in _all_keys() if k.rpartition(".")[0] == section]
    if siblings:  # a known section: compare the leaf alone, or "optim." alone would make everything look close
        prefix = f"{section}." if section else ""
        close = [prefix + m for m in difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(key, _all_keys(), n=3, cutoff=0.6)
    matches = (same_leaf + [k for k in close if k not in same_leaf])[:3]
    section = key.split(".")[0]
    if matches:
        hint = f"did you mean {' or '.join(matches)}?"
    else:
        section = key.split(".")[0]
        in_section = [k.split(".", 1)[1] for k in _all_keys() if k.startswith(section + ".")]
        sections = sorted({k.split(".")[0] for k in _all_keys() if "." in k})
        hint = (f"valid keys under {section}: {', '.join(in_section)}" if in_section else
                f"settings are mode or under {', '.join(sections)}")
    return StitchkitError(f"unknown config key {key!r} in {source}; {hint}")


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as err:
        raise _unknown_key_error(err.full_key or str(err.key), source) from None
    except ValidationError as err:
        raise StitchkitError(_type_error(err, source)) from None
    except OmegaConfBaseException as err:
        raise StitchkitError(f"invalid config in {source}: {err}") from None


def _setting_type(key: str):
    """The declared type of a dotted setting (``train.epochs`` -> int), or None."""
    import dataclasses
    import typing

    owner: Any = Config
    hint = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(owner):
            return None
        hints = typing.get_type_hints(owner)
        if part not in hints:
            return None
        hint = owner = hints[part]
    return hint


def _type_words(hint) -> str | None:
    """How a setting's type reads in an error: ``an integer``, ``true or false``, ``a number or null``."""
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = typing.get_origin(hint) is typing.Union and len(args) == 1
    base = args[0] if optional else hint
    origin = typing.get_origin(base) or base
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping"}.get(origin)
    if words is None:
        return None
    return f"{words} or null" if optional else words


def _type_error(err: ValidationError, source: str) -> str:
    """One line: ``train.epochs must be an integer, got 'two' (in the command line)``; OmegaConf's own message where
    the expected type cannot be named."""
    key = str(err.full_key)
    expected = _type_words(_setting_type(key))
    if expected is None:
        return f"bad value for {key!r} in {source}: {(err.msg or str(err)).splitlines()[0]}"
    found = re.search(r"Value '(.*?)' (?:of type|could not|is not)", err.msg or "")
    got = f", got {found.group(1)!r}" if found else ""
    return f"{key} must be {expected}{got} (in {source})"


class _YamlLoader(yaml.SafeLoader):
    """YAML without YAML 1.1's base-60 integers, which would read a gap such as ``1:3`` as the number 63."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+)$"), list("-+0123456789")
)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise StitchkitError(f"{source} is not valid YAML{where}: {problem}; fix the file's syntax") from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                layers: Sequence[tuple[str, dict]] = (), saved: bool = False) -> Config:
    """Defaults, then the YAML file at ``path`` (optional), then ``layers`` (``(source, dict)`` pairs, e.g. a sweep's
    base settings and a cell's), then ``key=value`` overrides; validated. ``saved``: ``path`` is a run's own
    config.yaml, which records every setting, so settings its mode does not use are not refused (see
    :meth:`~stitchkit.training.modes.Mode.refuse_unused`).

    Example:
        >>> cfg = load_config(None, ["mode=scratch", "model.src=resnet18", "train.epochs=2"])
        >>> cfg.train.epochs
        2
    """
    merged = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise StitchkitError(f"config file {str(path)!r} does not exist; check the path")
        loaded = _parse_yaml(path.read_text(), f"config file {str(path)!r}")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise StitchkitError(f"config file {str(path)!r} must hold a mapping of settings")
        merged = _merge(merged, loaded, str(path))
    for source, layer in layers:
        merged = _merge(merged, layer, source)
    for item in overrides:
        if "=" not in item:
            raise StitchkitError(f"override {item!r} is not of the form key=value, e.g. train.epochs=2")
        key = item.split("=", 1)[0]
        if key not in _all_keys():
            raise _unknown_key_error(key, "the command line")
        value = _parse_yaml(item.split("=", 1)[1], f"the value of {key}")
        for part in reversed(key.split(".")):
            value = {part: value}
        merged = _merge(merged, value, "the command line")
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config, saved=saved)
    return config


def validate(config: Config, saved: bool = False) -> None:
    """Check values that types alone do not catch; each error names the fix. The mode checks its own settings,
    and (unless ``saved``: a run's config.yaml) refuses those it would ignore."""
    from ..errors import unknown_name
    from .modes import check_sources, mode_for

    check_sources(config)  # model.src / gap / src_checkpoint as one value or lists that agree
    mode = mode_for(config)  # an unknown mode names the valid ones
    if config.data.name not in DATASETS:
        raise unknown_name("dataset", config.data.name, DATASETS)
    if config.data.augment_on not in AUGMENT_ON:
        raise unknown_name("data.augment_on", config.data.augment_on, AUGMENT_ON)
    if config.data.loader not in LOADERS:
        raise unknown_name("data.loader", config.data.loader, LOADERS)
    if config.data.loader == "gpu" and not (config.data.name == "imagefolder" or
                                            (config.data.name == "synthetic" and config.data.synthetic_jpeg)):
        raise StitchkitError(f"data.loader=gpu decodes JPEG files on the training device: it needs "
                             f"data.name=imagefolder (or synthetic with data.synthetic_jpeg=true), not "
                             f"{config.data.name}; use data.loader=torch")
    if config.data.loader == "dali":
        for ok, message in [
            (config.data.name == "imagefolder", f"data.loader=dali reads image files: it needs data.name=imagefolder, "
                                                f"not {config.data.name}; use data.loader=torch"),
            (not config.data.skip_corrupt, "data.skip_corrupt works with data.loader=torch only; remove corrupt "
                                           "files or use the default loader"),
            (config.data.augment_on == "cpu", "data.loader=dali runs the whole augmentation in DALI; drop "
                                              "data.augment_on=device"),
        ]:
            if not ok:
                raise StitchkitError(message)
    if config.train.amp not in AMP_MODES:
        raise unknown_name("train.amp", config.train.amp, AMP_MODES)
    from ..zoo.models import family_for_name

    for key, name in [*(("model.src", s) for s in config.model.sources()), ("model.dst", config.model.dst)]:
        if name:  # checked here, with its close matches, before data or preprocessing look anything up by it
            try:
                family_for_name(name)
            except StitchkitError as err:
                raise type(err)(f"{key}: {err}") from None
    mode.validate(config)
    if not saved:
        mode.refuse_unused(config)
    checks = [
        (config.optim.lr > 0, f"optim.lr must be positive, got {config.optim.lr}"),
        (config.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {config.optim.weight_decay}"),
        (config.train.epochs >= 0, f"train.epochs must be 0 or more (0: the start alone, evaluated and saved "
                                   f"without a training step), got {config.train.epochs}"),
        (config.train.max_steps is None or config.train.max_steps >= 1, "train.max_steps must be at least 1"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.optim.batch_size >= 1, "optim.batch_size must be at least 1"),
        (config.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (config.optim.warmup is None or 0 <= config.optim.warmup < 1,
         f"optim.warmup is a share of the run's steps, from 0 to below 1, got {config.optim.warmup}"),
        (0 <= config.data.holdout_fraction < 1, "data.holdout_fraction must be in [0, 1)"),
        (config.data.input_size >= 8, f"data.input_size must be at least 8 pixels, got {config.data.input_size}"),
        (config.train.checkpoint_every >= 1, "train.checkpoint_every must be at least 1"),
        (config.train.log_every >= 1, "train.log_every must be at least 1"),
        (config.train.workers is None or config.train.workers >= 0, "train.workers must be >= 0 (or null: auto)"),
        # A library model checkpoints itself (timm's own flag), BatchNorm statistics updated again in each second
        # run: the results would change. stitchkit's networks keep them (stitchkit.train_surface).
        (not config.train.grad_checkpointing or mode.network is not None,
         f"train.grad_checkpointing is for stitchkit's networks (mode=stitch, finetune, probe); mode={config.mode} "
         "trains a whole library model: drop train.grad_checkpointing"),
        (config.data.limit_train is None or config.data.limit_train >= 1, "data.limit_train must be at least 1"),
        (config.data.limit_val is None or config.data.limit_val >= 1, "data.limit_val must be at least 1"),
        (config.model.init_images is None or config.model.init_images >= 1,
         f"model.init_images must be at least 1 (the training images a start such as the default measures both "
         f"models on), or null (the start chooses), got {config.model.init_images}"),
    ]
    for ok, message in checks:
        if not ok:
            raise StitchkitError(message)


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_yaml_file(path: str | Path) -> Config:
    """A saved ``config.yaml`` (as written into a run directory) back into a :class:`Config`."""
    return load_config(path, saved=True)


def flatten(config: Config) -> dict[str, Any]:
    """``{"train.epochs": 10, ...}``: for comparing configs and for result rows."""
    container = OmegaConf.to_container(OmegaConf.structured(config))

    def walk(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(container))
