"""stitchkit's networks in timm's model registry, so timm opens every model folder stitchkit writes.

A whole timm model's folder names the timm model in config.json and timm needs nothing else. A stitch, a fine-tuning
baseline, a probe, or a whole torchvision model has no timm name of its own: its folder names one of the entrypoints
below (``stitchkit_stitch``, ``stitchkit_finetune``, ``stitchkit_probe``, ``stitchkit_model``), registered when
stitchkit is imported::

    import stitchkit, timm
    model = timm.create_model("local-dir:my-stitch", pretrained=True)            # the trained model
    model = timm.create_model("hf-hub:someone/my-stitch", pretrained=True)       # from the Hub
    model = timm.create_model("local-dir:my-stitch", pretrained=True, num_classes=5)   # a new 5-class head

``pretrained=False`` builds the same network with random weights (as timm does). Without stitchkit imported timm
refuses the folder with "Unknown model (stitchkit_stitch)". What timm's scripts pass to every model (``in_chans=3``,
drop rates of 0, ``global_pool`` of the pooling it does) is taken, so ``train.py`` and ``validate.py`` run with
``--model local-dir:FOLDER``; ``device`` and ``dtype`` move it, ``pretrained_cfg_overlay`` changes its
preprocessing; what would change the network (another ``in_chans`` or image size, dropout, ``features_only``) is
refused, naming what to do instead.
"""
from __future__ import annotations

from pathlib import Path

import torch
from timm.models import register_model
from torch import nn

# Only modules that never import timm: this module runs as timm's own import finishes (stitchkit.__init__), when
# stitchkit.zoo may itself be half-way through importing timm.
from .errors import StitchkitError
from .modelfolder import (TIMM_ARCHITECTURES, WEIGHTS_FILE, WHOLE_MODEL, apply_config, check_folder_cuts, local_folder,
                          read_model_config)


# What timm's factory and scripts pass to every model they build (validate.py: in_chans; train.py: in_chans and
# the drop rates; create_model: cache_dir, pretrained_cfg_overlay; a folder's model_args: pretrained_model_args).
# A folder rebuilds the network it holds, so these are taken where they ask for that network and refused, naming what
# to do instead, where they would change it.
_DROP_RATES = ("drop_rate", "drop_path_rate", "drop_block_rate")
# pretrained_cfg keys that say where weights come from: a folder's are its model.safetensors
_WEIGHT_SOURCES = ("file", "url", "hf_hub_id", "hf_hub_filename")


def _from_folder(kind: str, pretrained: bool, pretrained_cfg, kwargs: dict) -> nn.Module:
    from .network import forget_old_head, network_class
    from .pretrained import load_described
    from .zoo.models import classes_or_none, create_model, reset_classifier

    cfg = dict(pretrained_cfg or {}) if not hasattr(pretrained_cfg, "to_dict") else pretrained_cfg.to_dict()
    name = TIMM_ARCHITECTURES[kind]
    cache_dir = kwargs.pop("cache_dir", None)
    if cfg.get("source") == "local-dir" and cfg.get("file"):
        folder = Path(cfg["file"])
    elif cfg.get("hf_hub_id"):
        folder = local_folder(cfg["hf_hub_id"], cache_dir=cache_dir)
    else:
        raise StitchkitError(f"{name} is built from a stitchkit model folder: timm.create_model('local-dir:FOLDER') "
                             "or timm.create_model('hf-hub:OWNER/NAME')")
    # None is timm's "the model's default" (its create_model drops such arguments before any model sees them)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kwargs.pop("pretrained_model_args", None)  # what the folder's config.json says it was built with: its own record
    num_classes = kwargs.pop("num_classes", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    device, dtype = kwargs.pop("device", None), _dtype(name, kwargs.pop("dtype", None))
    config = read_model_config(folder)
    if config["kind"] != kind:
        raise StitchkitError(f"{str(folder)!r} holds a {config['kind']} model, not a {kind}")
    pool = kwargs.pop("global_pool", None)
    _check_unchanged(name, config, kwargs, overlay)
    if pretrained:
        model = load_described(folder, config, device or "cpu")
    else:  # timm's meaning of pretrained=False: the architecture with fresh weights
        arch = config["architecture"]
        model = (create_model(arch["name"], input_size=arch["input_size"], num_classes=arch["num_classes"])
                 if kind == WHOLE_MODEL else network_class(kind).from_architecture(arch))
        check_folder_cuts(model, folder, config)  # the folder's network, or none: not one cut elsewhere
        # the folder's result was scored by its weights, not these: a save of this model must not claim it
        model = apply_config(model.eval(), {k: v for k, v in config.items() if k != "result"})
    known = _global_pool(model) if pool is not None else None
    if pool is not None and pool != known:
        pools = f" ({known!r} pooling)" if known is not None else ""
        raise StitchkitError(f"{name} pools as its folder's network does{pools}; it cannot be rebuilt with "
                             f"global_pool={pool!r}: leave global_pool out")
    held = classes_or_none(model)
    if "num_classes" in overlay and overlay["num_classes"] != held:
        raise StitchkitError(f"pretrained_cfg_overlay's num_classes says how many classes the weights predict, and "
                             f"{name}'s folder holds a {held}-class head; leave it out of the "
                             "overlay (num_classes=N asks for a new head of N classes)")
    # timm's meaning: the head the folder holds when it has that many classes, a new one otherwise
    if num_classes is not None and num_classes != held:
        reset_classifier(model, num_classes)
        # A stitchkit network's reset_classifier forgets its old head's record itself; a whole model's (timm's or
        # torchvision's) does not
        forget_old_head(model, num_classes)
    if device is not None or dtype is not None:  # after the new head, which is built in float32
        model.to(device=device, dtype=dtype)
    if overlay:  # what timm.data.resolve_model_data_config reads (a timm model's pretrained_cfg takes it so too)
        model.pretrained_cfg = {**model.pretrained_cfg, **overlay}
    return model


def _check_unchanged(name: str, config: dict, kwargs: dict, overlay: dict) -> None:
    """Refuse, before anything is built, arguments that ask for another network than the folder's; pop the ones
    that ask for the same (``kwargs`` is left with the arguments no rule knows)."""
    size = tuple(config["preprocessing"]["input_size"])  # (channels, height, width) the network was built for
    channels = kwargs.pop("in_chans", size[0])
    if channels != size[0]:
        raise StitchkitError(f"{name} takes {size[0]}-channel images as its folder's network was trained; it cannot "
                             f"be rebuilt for in_chans={channels}: give it {size[0]}-channel images (convert them to "
                             f"RGB) and pass in_chans={size[0]} or leave it out")
    asked = kwargs.pop("img_size", None)
    if asked is None and "input_size" in overlay:
        asked = tuple(overlay["input_size"])[-2:]
    asked = (tuple(asked) if isinstance(asked, (tuple, list)) else (asked, asked)) if asked is not None else None
    if asked is not None and asked != size[1:]:
        raise StitchkitError(f"{name} is built for {size[1]}x{size[2]} images; it cannot be rebuilt for "
                             f"{asked[0]}x{asked[1]}: resize the images to {size[1]}x{size[2]} "
                             "(timm.data.resolve_model_data_config(model) gives its transform), or build and train "
                             "the model again at the new size")
    for rate in _DROP_RATES:
        value = kwargs.pop(rate, 0)
        if value != 0:
            raise StitchkitError(f"{name} keeps the dropout and stochastic depth its parts were trained with; it "
                                 f"cannot be rebuilt with {rate}={value}: pass {rate}=0 or leave it out (train.py: "
                                 "leave out --drop, --drop-path and --drop-block)")
    if kwargs.pop("features_only", False):
        raise StitchkitError(f"{name} cannot be opened as a timm feature extractor (features_only=True); open it "
                             "without features_only and call model.forward_features(x) for the features its head "
                             "reads, or model.forward_head(model.forward_features(x), pre_logits=True) for what its "
                             "classifier reads")
    moved = [k for k in _WEIGHT_SOURCES if overlay.get(k)]
    if moved:
        raise StitchkitError(f"{name}'s weights are its folder's {WEIGHTS_FILE}; pretrained_cfg_overlay cannot take "
                             f"them from elsewhere ({', '.join(moved)}): open the folder that holds the weights, "
                             "timm.create_model('local-dir:FOLDER') (train.py: --model local-dir:FOLDER without "
                             "--pretrained-path)")
    if kwargs:
        raise StitchkitError(f"{name} is rebuilt as its folder describes and cannot take "
                             f"{', '.join(f'{k}={v!r}' for k, v in sorted(kwargs.items()))}; leave "
                             f"{'it' if len(kwargs) == 1 else 'them'} out (it takes num_classes for a new head, "
                             "device, dtype, pretrained_cfg_overlay for its preprocessing, and timm's defaults)")


def _dtype(name: str, dtype) -> torch.dtype | None:
    """``dtype`` as a torch floating-point dtype (timm's scripts pass one; a name such as "bfloat16" also does)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
        raise StitchkitError(f"{name} takes a floating-point dtype (torch.float32, torch.bfloat16, ...), got "
                             f"dtype={dtype!r}")
    return dtype


def _global_pool(model: nn.Module) -> str | None:
    """The pooling type the model's head applies, as timm names it (``avg``, ``token``, ...), where a module of the
    head says (timm's pooling layers and models do); None where none does (a head cut from an exported graph)."""
    head = model.head() if callable(getattr(model, "head", None)) and not isinstance(model.head, nn.Module) else model
    for module in head.modules():
        for attr in ("pool_type", "global_pool"):
            value = getattr(module, attr, None)
            value = getattr(value, "pool_type", value)
            if isinstance(value, str):
                return value
    return None


_DOCS = {
    "stitch": "A stitched network saved by stitchkit (``StitchedModel.save_pretrained``, ``stitchkit export``).",
    "parallel": "Several sources' fronts fused into one destination, saved by stitchkit (``stitchkit.parallel``).",
    "finetune": "A fine-tuning baseline saved by stitchkit.",
    "probe": "A probe (a frozen model with a trained head) saved by stitchkit.",
    WHOLE_MODEL: "A whole model timm has no name for (a torchvision model) saved by stitchkit.",
}


def _entrypoint(kind: str):
    """timm's registry keys an entrypoint by its function's name and module: one function per folder kind."""
    def create(pretrained: bool = False, pretrained_cfg=None, **kwargs) -> nn.Module:
        return _from_folder(kind, pretrained, pretrained_cfg, kwargs)

    create.__name__ = create.__qualname__ = TIMM_ARCHITECTURES[kind]
    create.__doc__ = _DOCS[kind]
    return register_model(create)


for _kind in TIMM_ARCHITECTURES:
    globals()[TIMM_ARCHITECTURES[_kind]] = _entrypoint(_kind)
