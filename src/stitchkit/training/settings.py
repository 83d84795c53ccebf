"""Every training setting: its type, default (the paper's recipe), help text and class, declared once on its
dataclass field. Loading, layering and validating them is :mod:`stitchkit.training.config`."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, List, Optional


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
            factory: Any = MISSING, since: str | None = None, earlier_default: Any = MISSING):
    """A config field with its help text and class. ``per_run``: runs trained in one pass over a shared front
    (stitchkit.training.grouped) may each choose their own value; every other setting is shared by the group.
    ``since``: the version that added it. At its default such a setting is left out of every digest, so adding a
    setting does not rename existing sweep cells or orphan existing checkpoints. ``earlier_default``: a stitch's
    setting whose default changed: at its default it is digested as this in the runs of every other mode, which
    do not use it, so that the change renames no scratch, finetune or probe run (stitches, whose results it
    changes, get new names)."""
    assert kind in KINDS, kind
    metadata = {"help": help, "kind": kind, "per_run": per_run, "since": since}
    if earlier_default is not MISSING:
        metadata["earlier_default"] = earlier_default
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def per_source(value: Any, src: Any) -> list:
    """A setting that is one value for every source or a list with one per source (``model.gap``,
    ``model.src_checkpoint``), as a list with one entry per source of ``src`` (a name, or a parallel stitch's
    list); also for flat settings, where there is no :class:`ModelConfig`."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * (len(src) if isinstance(src, (list, tuple)) else 1)


@dataclass
class ModelConfig:
    src: Any = setting("resnet50.a1_in1k", "source model (its lower layers); for finetune and scratch, the model. "
                                           "mode=stitch with a list [A, B, ...]: a parallel stitch, each source's "
                                           "front with its own adapters, fused (model.fusion) into model.dst")
    dst: Optional[str] = setting(None, "destination model (its upper layers and head); default: model.src",
                                 per_run=True)
    gap: Any = setting("1:3", "X:Y, source stage X to destination stage Y; a parallel stitch: one gap for every "
                              "source or a list, one per source, all entering the destination at stage Y",
                       per_run=True)
    adapter: str = setting("bottleneck", "adapter ('stitchkit adapters' lists them)", per_run=True)
    resize: str = setting("bilinear", "none, bilinear, area (a box filter) or integrated (a strided conv in the "
                                     "adapter)", per_run=True)
    pretrained: bool = setting(True, "load the library's pretrained weights for src and dst")
    src_checkpoint: Any = setting(None, "local weights for model.src (.pt, .pth, .safetensors); a parallel stitch: a "
                                        "list, one per source (null where a source has none)")
    dst_checkpoint: Optional[str] = setting(None, "local weights for model.dst", per_run=True)
    num_classes: Optional[int] = setting(None, "classes of the head (a stitch's destination, finetune, scratch, "
                                               "probe): a new head when it differs from the model's own; default: "
                                               "the model's own", per_run=True)
    new_head: bool = setting(False, "a freshly initialised head even when model.num_classes equals the model's own "
                                    "(a new task with as many classes)", per_run=True, since="0.4")
    train_head: Optional[bool] = setting(None, "stitch: train the destination's head with the adapters; default: "
                                               "true exactly when the head is new", per_run=True, since="0.4")
    unfreeze_last: int = setting(0, "stitch, probe: train this many blocks at the end of the (destination) model "
                                    "too", per_run=True, since="0.4")
    prefix_out: str = setting("concat", "class token out of a ViT: concat, drop, add", per_run=True)
    prefix_in: Optional[str] = setting(None, "class token into a ViT: mean, zeros, learned, projected; default: the "
                                             "start's (projected for the default start, mean for the paper's)",
                                       per_run=True)
    readd_pos_embed: bool = setting(False, "re-add the destination ViT's position embedding", per_run=True)
    frozen_mode: str = setting("eval", "frozen parts in eval mode (BatchNorm statistics fixed) or train mode")
    adapter_norm: str = setting("fitted", "where adapters start ('stitchkit starts' lists them): fitted, "
                                          "fitted_quick, lstsq, dst_stats, paper_code or paper_text", per_run=True)
    init_images: Optional[int] = setting(None, "training images a start that needs them (fitted, lstsq, dst_stats) "
                                               "measures both models' features on; null: as many as give the "
                                               "least-squares fit of the chain's last fitted map 64 rows per input "
                                               "channel, from 256 to 2048 (256 until 0.12; "
                                               "docs/calibration_images.md)", earlier_default=256)
    # sum: the best mean in the first measurement (3 configurations x 3 seeds on Fashion-MNIST, 0.7: sum 76.4, gate
    # 76.4, concat 76.1; every difference within noise) and the fewest parameters (one weight per source).
    fusion: str = setting("sum", "parallel stitch: how the sources' adapter outputs are joined: sum (a learned "
                                 "weight per source), concat (concatenated, projected by a 1x1 map) or gate (a "
                                 "learned per-channel mix); each starts as their mean", per_run=True, since="0.7")
    token_adapters: bool = setting(True, "ViT to ViT: linear adapters on every token, class token kept (the paper's "
                                         "code); false: via an image", per_run=True)

    # Several sources (a parallel stitch) are lists; these read either form as lists, one entry per source.
    @property
    def parallel(self) -> bool:
        """model.src lists several sources (validation requires two or more, and mode=stitch)."""
        return isinstance(self.src, (list, tuple))

    def sources(self) -> list[str]:
        return list(self.src) if self.parallel else [self.src]

    def source_gaps(self) -> list[str]:
        return per_source(self.gap, self.src)

    def source_checkpoints(self) -> list[Optional[str]]:
        return per_source(self.src_checkpoint, self.src)

    def checkpoint_files(self) -> dict[str, Optional[str]]:
        """The weight files these settings name, by setting: ``model.src_checkpoint`` (``.0``, ``.1``, ... for a
        parallel stitch's list) and ``model.dst_checkpoint``."""
        if isinstance(self.src_checkpoint, (list, tuple)):
            files = {f"model.src_checkpoint.{i}": c for i, c in enumerate(self.src_checkpoint)}
        else:
            files = {"model.src_checkpoint": self.src_checkpoint}
        return {**files, "model.dst_checkpoint": self.dst_checkpoint}

    @property
    def pixel_source(self) -> str:
        """The model whose preprocessing (normalisation, crop) the images get: the source, or a parallel stitch's
        first source (the others' fronts renormalise on the way in)."""
        return self.sources()[0]


@dataclass
class DataConfig:
    name: str = setting("imagefolder", "imagefolder, fashion_mnist or synthetic")
    root: Optional[str] = setting(None, "dataset folder (imagefolder: train/ and val/ inside)", kind="location")
    input_size: int = setting(224, "image size the models see (pixels)")
    holdout_fraction: float = setting(0.0, "carved from train (same images for every seed) for model selection")
    holdout_seed: int = setting(0, "which images the holdout takes")
    limit_train: Optional[int] = setting(None, "number of training images, for quick runs")
    limit_val: Optional[int] = setting(None, "number of validation images: a fixed random subset (drawn with "
                                             "holdout_seed, the same for every seed); also caps the holdout")
    random_resized_crop: bool = setting(True, "random-resized-crop training images")
    hflip: bool = setting(True, "random horizontal flips")
    auto_augment: bool = setting(True, "AutoAugment (ImageNet policy)")
    augment_on: str = setting("cpu", "where training augmentation runs: cpu (data-loader workers) or device (flips, "
                                     "AutoAugment and normalisation on batches on the training device)")
    loader: str = setting("torch", "what decodes and augments: torch (DataLoader workers), gpu (workers read files; "
                                   "JPEG decoding, crops and augmentation on the training device, batched; image "
                                   "folders) or dali (NVIDIA DALI, when installed; see stitchkit.training.dali)")
    crop_pct: Optional[float] = setting(None, "evaluation crop fraction; default: the source model's pretrained config")
    skip_corrupt: bool = setting(False, "skip unreadable images (each named on stderr, counted in result.json) "
                                        "instead of stopping")
    synthetic_train_size: int = setting(256, "synthetic data: training images")
    synthetic_val_size: int = setting(64, "synthetic data: validation images")
    synthetic_classes: int = setting(10, "synthetic data: classes")
    synthetic_jpeg: bool = setting(False, "synthetic data as JPEG bytes (quality 90), decoded like image files, so "
                                          "data.loader=gpu can be exercised and timed without a folder", since="0.6")
    classes: Optional[List[int]] = setting(None, "train and evaluate on these classes only (their indices in the "
                                                 "dataset), numbered 0..k-1 in this order: a task of its own",
                                           since="0.3")


@dataclass
class OptimConfig:
    lr: float = setting(0.002, "peak learning rate (AdamW, cosine schedule)", per_run=True)
    weight_decay: float = setting(0.05, "AdamW weight decay", per_run=True)
    batch_size: int = setting(512, "effective batch size, reached by gradient accumulation")
    warmup_steps: int = setting(0, "linear warm-up steps before the cosine decay (above 0: wins over optim.warmup)",
                                per_run=True)
    warmup: Optional[float] = setting(None, "linear warm-up as a share of the run's optimizer steps (0 to <1); "
                                            "default: the adapters' start's own (model.adapter_norm): a quarter "
                                            "after the fitted start, none after the paper's", per_run=True,
                                      since="0.8")
    no_decay_norm_bias: bool = setting(False, "no weight decay on norms and biases, nor on what the model "
                                                "exempts (no_weight_decay(): a ViT's class token and position "
                                                "embedding, learned prefix tokens, fusion weights)", per_run=True)
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
    grad_checkpointing: bool = setting(False, "activation checkpointing (timm's --grad-checkpointing): the modules "
                                              "that backward goes through keep only their input and run again in "
                                              "it: less device memory, more compute, the same results (stitch, "
                                              "finetune, probe)", kind="speed", since="0.10")
    workers: Optional[int] = setting(None, "data-loader worker processes of each training process; null: 4, or "
                                           "fewer where the process has fewer CPUs (those it may run on, shared "
                                           "among torchrun's processes on the machine)", kind="run")
    eval_at_start: bool = setting(True, "evaluate before the first step too: the accuracy of the start alone "
                                        "(result.json: top1_at_start)", kind="run", since="0.5")
    checkpoint_every: int = setting(500, "optimizer steps between checkpoints", kind="run")
    log_every: int = setting(50, "optimizer steps between progress lines", kind="run")
    count_host_syncs: bool = setting(False, "on CUDA, count the host synchronisations inside the training steps "
                                            "(torch's sync debug mode; result.json: host_syncs_per_step)",
                                     kind="run", since="0.10")
    wandb: bool = setting(False, "log to Weights & Biases (pip install 'stitchkit[wandb]')", kind="run", per_run=True)
    wandb_project: str = setting("stitchkit", "W&B project", kind="run", per_run=True)
    wandb_entity: Optional[str] = setting(None, "W&B entity (team or user); default: yours", kind="run", per_run=True)
    wandb_group: Optional[str] = setting(None, "W&B group; default: the sweep's name for sweep cells", kind="run",
                                         per_run=True)
    tensorboard: bool = setting(False, "write TensorBoard logs to RUN_DIR/tensorboard (pip install "
                                       "'stitchkit[tensorboard]')", kind="run", per_run=True)


@dataclass
class OutputConfig:
    dir: Optional[str] = setting(None, "run folder; default: named from the settings, e.g. runs/stitch-"
                                       "resnet50.a1_in1k--resnet50.a1_in1k-1to3-bottleneck-bilinear-seed0 (mode, "
                                       "source--destination, gap, adapter, resize, seed; ':' and '/' in names become "
                                       "'_'), runs/finetune-resnet50.a1_in1k-1to3-seed0, runs/scratch-resnet18-seed0",
                                 kind="run", per_run=True)


@dataclass
class Config:
    mode: str = setting("stitch", "stitch, finetune (the baseline), scratch (train a model from scratch) or probe "
                                  "(a new head on one frozen model)")
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


def changed_defaults() -> dict[str, tuple[Any, Any]]:
    """``{key: (default, earlier default)}`` of the settings whose default changed (``earlier_default``)."""
    return {k: (_default(f), f.metadata["earlier_default"]) for k, f in _fields() if "earlier_default" in f.metadata}


def added_later() -> dict[str, Any]:
    """Settings added after 0.2, with their defaults (see ``since`` in :func:`setting`)."""
    return {k: _default(f) for k, f in _fields() if f.metadata.get("since")}


def _default(f) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]


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
