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
refuses the folder with "Unknown model (stitchkit_stitch)".
"""
from __future__ import annotations

from pathlib import Path

from timm.models import register_model
from torch import nn

# Only modules that never import timm: this module runs as timm's own import finishes (stitchkit.__init__), when
# stitchkit.zoo may itself be half-way through importing timm.
from .errors import StitchkitError
from .modelfolder import TIMM_ARCHITECTURES, WHOLE_MODEL, apply_config, local_folder, read_model_config


def _from_folder(kind: str, pretrained: bool, pretrained_cfg, kwargs: dict) -> nn.Module:
    from .network import network_class
    from .pretrained import load_described
    from .zoo.models import create_model, reset_classifier

    cfg = dict(pretrained_cfg or {}) if not hasattr(pretrained_cfg, "to_dict") else pretrained_cfg.to_dict()
    name = TIMM_ARCHITECTURES[kind]
    if cfg.get("source") == "local-dir" and cfg.get("file"):
        folder = Path(cfg["file"])
    elif cfg.get("hf_hub_id"):
        folder = local_folder(cfg["hf_hub_id"], cache_dir=kwargs.pop("cache_dir", None))
    else:
        raise StitchkitError(f"{name} is built from a stitchkit model folder: timm.create_model('local-dir:FOLDER') "
                             "or timm.create_model('hf-hub:OWNER/NAME')")
    num_classes = kwargs.pop("num_classes", None)
    for ignored in ("cache_dir", "pretrained_cfg_overlay", "global_pool"):
        if kwargs.get(ignored) is None:
            kwargs.pop(ignored, None)
    if kwargs:
        raise StitchkitError(f"{name} takes no model arguments besides num_classes (got {', '.join(sorted(kwargs))}); "
                             "it is rebuilt as its folder describes")
    config = read_model_config(folder)
    if config["kind"] != kind:
        raise StitchkitError(f"{str(folder)!r} holds a {config['kind']} model, not a {kind}")
    if pretrained:
        model = load_described(folder, config)
    else:  # timm's meaning of pretrained=False: the architecture with fresh weights
        arch = config["architecture"]
        model = (create_model(arch["name"], input_size=arch["input_size"], num_classes=arch["num_classes"])
                 if kind == WHOLE_MODEL else network_class(kind).from_architecture(arch))
        model = apply_config(model.eval(), config)
    if num_classes is not None and num_classes != model.pretrained_cfg.get("num_classes"):
        reset_classifier(model, num_classes)
    return model


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
