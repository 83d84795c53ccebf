"""The training configuration: typed defaults (the paper's recipe), then a YAML file, then ``key=value`` overrides.

Layering and type checking are OmegaConf's (structured configs from these dataclasses); unknown keys are errors
that suggest the closest valid key. The resolved config is saved as ``config.yaml`` in the run directory and is
what ``--resume`` compares against.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ..errors import StitchkitError

DATASETS = ("imagefolder", "fashion_mnist", "synthetic")
AMP_MODES = ("auto", "none", "bf16", "fp16")
AUGMENT_ON = ("cpu", "device")
LOADERS = ("torch", "dali")


# What a setting is, declared once on its field (``setting(...)``) and read by everything that needs to know:
#   result    changes what is trained or measured: part of a run's identity; a resumed run must keep it.
#   speed     changes how fast, not what is computed (beyond float rounding): a resume may change it, and a sweep
#             cell keeps its folder when it changes. Still part of ``settings_id``: reports do not average a bf16
#             run with an fp32 one.
#   location  where the data lives: not part of a sweep cell's identity (move the data, keep the cells); a resume
#             must keep it (an interrupted run continues on the same files).
#   run       how this process runs and reports (device, workers, logging, output folder): may change on resume,
#             part of no identity.
KINDS = ("result", "speed", "location", "run")


def setting(default: Any = MISSING, help: str = "", *, kind: str = "result", per_run: bool = False,
            factory: Any = MISSING):
    """A config field with its help text and class. ``per_run``: runs trained in one pass over a shared front
    (stitchkit.training.grouped) may each choose their own value; every other setting is shared by the group."""
    assert kind in KINDS, kind
    metadata = {"help": help, "kind": kind, "per_run": per_run}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    src: str = setting("resnet50.a1_in1k", "source model (its lower layers); for finetune and scratch, the model")
    dst: Optional[str] = setting(None, "destination model (its upper layers and head); default: model.src",
                                 per_run=True)
    gap: str = setting("1:3", "X:Y, source stage X to destination stage Y", per_run=True)
    adapter: str = setting("bottleneck", "adapter ('stitchkit adapters' lists them)", per_run=True)
    resize: str = setting("bilinear", "none, bilinear or integrated (a strided conv in the adapter)", per_run=True)
    pretrained: bool = setting(True, "load the library's pretrained weights for src and dst")
    src_checkpoint: Optional[str] = setting(None, "local weights for model.src (.pt, .pth, .safetensors)")
    dst_checkpoint: Optional[str] = setting(None, "local weights for model.dst", per_run=True)
    num_classes: Optional[int] = setting(None, "a new head of this size (scratch, finetune); default: the model's own",
                                         per_run=True)
    prefix_out: str = setting("concat", "class token out of a ViT: concat, drop, add", per_run=True)
    prefix_in: str = setting("mean", "class token into a ViT: mean, zeros, learned", per_run=True)
    readd_pos_embed: bool = setting(False, "re-add the destination ViT's position embedding", per_run=True)
    frozen_mode: str = setting("eval", "frozen parts in eval mode (BatchNorm statistics fixed) or train mode")
    adapter_norm: str = setting("lstsq", "where adapters start: lstsq, dst_stats, paper_code or paper_text",
                                per_run=True)
    init_images: int = setting(256, "training images that lstsq / dst_stats measure both models' features on")
    token_adapters: bool = setting(True, "ViT to ViT: linear adapters on every token, class token kept (the paper's "
                                         "code); false: via an image", per_run=True)


@dataclass
class DataConfig:
    name: str = setting("imagefolder", "imagefolder, fashion_mnist or synthetic")
    root: Optional[str] = setting(None, "dataset folder (imagefolder: train/ and val/ inside)", kind="location")
    input_size: int = setting(224, "image size the models see (pixels)")
    holdout_fraction: float = setting(0.0, "carved from train (same images for every seed) for model selection")
    holdout_seed: int = setting(0, "which images the holdout takes")
    limit_train: Optional[int] = setting(None, "number of training images, for quick runs")
    limit_val: Optional[int] = setting(None, "number of validation images")
    random_resized_crop: bool = setting(True, "random-resized-crop training images")
    hflip: bool = setting(True, "random horizontal flips")
    auto_augment: bool = setting(True, "AutoAugment (ImageNet policy)")
    augment_on: str = setting("cpu", "where training augmentation runs: cpu (data-loader workers) or device (flips, "
                                     "AutoAugment and normalisation on batches on the training device)")
    loader: str = setting("torch", "what decodes and augments: torch (DataLoader workers) or dali (NVIDIA DALI, when "
                                   "installed; see stitchkit.training.dali)")
    crop_pct: Optional[float] = setting(None, "evaluation crop fraction; default: the source model's pretrained config")
    skip_corrupt: bool = setting(False, "skip unreadable images (each named in the log) instead of stopping")
    synthetic_train_size: int = setting(256, "synthetic data: training images")
    synthetic_val_size: int = setting(64, "synthetic data: validation images")
    synthetic_classes: int = setting(10, "synthetic data: classes")


@dataclass
class OptimConfig:
    lr: float = setting(0.002, "peak learning rate (AdamW, cosine schedule)", per_run=True)
    weight_decay: float = setting(0.05, "AdamW weight decay", per_run=True)
    batch_size: int = setting(512, "effective batch size, reached by gradient accumulation")
    warmup_steps: int = setting(0, "linear warm-up steps before the cosine decay", per_run=True)
    no_decay_norm_bias: bool = setting(False, "no weight decay on norms and biases", per_run=True)
    beta1: float = setting(0.9, "AdamW beta1", per_run=True)
    beta2: float = setting(0.999, "AdamW beta2", per_run=True)


@dataclass
class TrainConfig:
    epochs: int = setting(10, "passes over the training data")
    max_steps: Optional[int] = setting(None, "stop after this many optimizer steps")
    batch_size: int = setting(64, "images per process per micro-batch")
    seed: int = setting(0, "random seed (data order, augmentation, adapter start)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N", kind="run")
    threads: Optional[int] = setting(None, "torch CPU threads", kind="run")
    amp: str = setting("auto", "autocast: auto (bf16 on CUDA, off on CPU), none, bf16, fp16", kind="speed")
    channels_last: bool = setting(False, "channels-last memory format for images and models", kind="speed")
    compile: bool = setting(False, "torch.compile the trained model", kind="speed")
    workers: int = setting(4, "data-loader worker processes", kind="run")
    checkpoint_every: int = setting(500, "optimizer steps between checkpoints", kind="run")
    log_every: int = setting(50, "optimizer steps between progress lines", kind="run")
    wandb: bool = setting(False, "log to Weights & Biases (pip install 'stitchkit[wandb]')", kind="run", per_run=True)
    wandb_project: str = setting("stitchkit", "W&B project", kind="run", per_run=True)
    wandb_entity: Optional[str] = setting(None, "W&B entity (team or user); default: yours", kind="run", per_run=True)
    wandb_group: Optional[str] = setting(None, "W&B group; default: the sweep's name for sweep cells", kind="run",
                                         per_run=True)
    tensorboard: bool = setting(False, "write TensorBoard logs to RUN_DIR/tensorboard (pip install "
                                       "'stitchkit[tensorboard]')", kind="run", per_run=True)


@dataclass
class OutputConfig:
    dir: Optional[str] = setting(None, "run folder; default runs/<mode>-<models>-<gap>-<adapter>-<resize>-seed<N>",
                                 kind="run", per_run=True)


@dataclass
class Config:
    mode: str = setting("stitch", "stitch, finetune (the baseline) or scratch (train a model from scratch)")
    model: ModelConfig = setting(factory=ModelConfig)
    data: DataConfig = setting(factory=DataConfig)
    optim: OptimConfig = setting(factory=OptimConfig)
    train: TrainConfig = setting(factory=TrainConfig)
    output: OutputConfig = setting(factory=OutputConfig)


def _fields(cls=Config, prefix: str = ""):
    """``(dotted key, field)`` of every setting."""
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            yield from _fields(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def keys_of_kind(*kinds: str) -> frozenset[str]:
    """The settings of these classes (see KINDS), e.g. ``keys_of_kind("run", "speed")``."""
    return frozenset(k for k, f in _fields() if f.metadata["kind"] in kinds)


def per_run_keys() -> frozenset[str]:
    return frozenset(k for k, f in _fields() if f.metadata["per_run"])


def describe_settings() -> str:
    """Every setting with its default and help, one per line (``stitchkit train --help``)."""
    lines, section = [], None
    for key, f in _fields():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            lines.append(f"  {head or 'top level'}:")
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        value = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        lines.append(f"    {key}={value}  {f.metadata['help']}")
    return "\n".join(lines)


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
        raise StitchkitError(f"bad value for {err.full_key!r} in {source}: {err.msg}") from None
    except OmegaConfBaseException as err:
        raise StitchkitError(f"invalid config in {source}: {err}") from None


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
                layers: Sequence[tuple[str, dict]] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (optional), then ``layers`` (``(source, dict)`` pairs, e.g. a sweep's
    base settings and a cell's), then ``key=value`` overrides; validated.

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
    validate(config)
    return config


def validate(config: Config) -> None:
    """Check values that types alone do not catch; each error names the fix. The mode checks its own settings."""
    from ..errors import unknown_name
    from .modes import get_mode

    mode = get_mode(config.mode)  # an unknown mode names the valid ones
    if config.data.name not in DATASETS:
        raise unknown_name("dataset", config.data.name, DATASETS)
    if config.data.augment_on not in AUGMENT_ON:
        raise unknown_name("data.augment_on", config.data.augment_on, AUGMENT_ON)
    if config.data.loader not in LOADERS:
        raise unknown_name("data.loader", config.data.loader, LOADERS)
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

    for key, name in (("model.src", config.model.src), ("model.dst", config.model.dst)):
        if name:  # checked here, with its close matches, before data or preprocessing look anything up by it
            try:
                family_for_name(name)
            except StitchkitError as err:
                raise type(err)(f"{key}: {err}") from None
    mode.validate(config)
    checks = [
        (config.optim.lr > 0, f"optim.lr must be positive, got {config.optim.lr}"),
        (config.optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {config.optim.weight_decay}"),
        (config.train.epochs >= 1, f"train.epochs must be at least 1, got {config.train.epochs}"),
        (config.train.max_steps is None or config.train.max_steps >= 1, "train.max_steps must be at least 1"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.optim.batch_size >= 1, "optim.batch_size must be at least 1"),
        (config.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0"),
        (0 <= config.data.holdout_fraction < 1, "data.holdout_fraction must be in [0, 1)"),
        (config.data.input_size >= 8, f"data.input_size must be at least 8 pixels, got {config.data.input_size}"),
        (config.train.checkpoint_every >= 1, "train.checkpoint_every must be at least 1"),
        (config.train.log_every >= 1, "train.log_every must be at least 1"),
        (config.train.workers >= 0, "train.workers must be >= 0"),
        (config.data.limit_train is None or config.data.limit_train >= 1, "data.limit_train must be at least 1"),
        (config.data.limit_val is None or config.data.limit_val >= 1, "data.limit_val must be at least 1"),
        (config.model.init_images >= 1, "model.init_images must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise StitchkitError(message)


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_yaml_file(path: str | Path) -> Config:
    """A saved ``config.yaml`` (as written into a run directory) back into a :class:`Config`."""
    return load_config(path)


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
