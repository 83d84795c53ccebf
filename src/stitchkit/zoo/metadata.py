"""What the zoo knows about a model from its name alone: its library, base name and weights tag; how it expects its
pixels (mean, std, interpolation, crop); its published ImageNet accuracy. Everything outside the zoo asks here, so a
name is parsed in one place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import StitchkitError

TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ModelName:
    """``resnet50.a1_in1k`` -> timm, ``resnet50``, ``a1_in1k``; ``torchvision:resnet50.IMAGENET1K_V2`` ->
    torchvision, ``resnet50``, ``IMAGENET1K_V2``."""

    library: str  # "timm" or "torchvision"
    base: str
    tag: str = ""

    @classmethod
    def parse(cls, name: str) -> "ModelName":
        library = "torchvision" if name.startswith(TORCHVISION_PREFIX) else "timm"
        base, _, tag = name.removeprefix(TORCHVISION_PREFIX).partition(".")
        return cls(library, base, tag)

    @property
    def is_torchvision(self) -> bool:
        return self.library == "torchvision"

    @property
    def key(self) -> str:
        """The name without its weights tag, as the zoo's tables list it (``torchvision:resnet50``, ``resnet50``)."""
        return TORCHVISION_PREFIX + self.base if self.is_torchvision else self.base


def torchvision_weights(name: str | ModelName, tag: str | None = None):
    """The weights enum member of a torchvision model (its tag, or ``DEFAULT``)."""
    import torchvision

    parsed = ModelName.parse(name) if isinstance(name, str) else name
    enum = torchvision.models.get_model_weights(parsed.base)
    return torchvision.models.get_weight(f"{enum.__name__}.{tag or parsed.tag or 'DEFAULT'}")


@dataclass(frozen=True)
class Preprocessing:
    """How the model that sees the pixels expects them."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # bilinear, bicubic
    crop_pct: float


def preprocessing(name: str, model: torch.nn.Module | None = None) -> Preprocessing:
    """Normalisation, interpolation and crop from the model's own pretrained config (timm) or weights (torchvision).
    ``model``, when given, is asked first (timm: its ``pretrained_cfg``)."""
    parsed = ModelName.parse(name)
    if parsed.is_torchvision:
        t = torchvision_weights(parsed).transforms()
        return Preprocessing(tuple(t.mean), tuple(t.std), t.interpolation.value, t.crop_size[0] / t.resize_size[0])
    import timm.data
    import timm.models

    if model is not None:
        cfg = timm.data.resolve_model_data_config(model)
    else:
        try:  # the weights the name's tag asks for (each tag has its own: resnet50.tv_in1k is torchvision's recipe)
            pretrained = timm.models.get_pretrained_cfg(f"{parsed.base}.{parsed.tag}" if parsed.tag else parsed.base)
        except RuntimeError:  # timm: "Invalid pretrained tag"
            raise StitchkitError(f"timm has no weights tagged {parsed.tag!r} for {parsed.base}; check the model name "
                                 "(`stitchkit models PATTERN` lists them)") from None
        if pretrained is None:
            raise StitchkitError(f"timm has no pretrained config for {name!r}; check the model name "
                                 "(`stitchkit models PATTERN` lists them)")
        cfg = timm.data.resolve_data_config({}, pretrained_cfg=pretrained.to_dict())
    return Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), cfg["interpolation"], cfg["crop_pct"])


# (top-1 %, source): published ImageNet-1k accuracies the paper quotes for its source models and its Table 1
# baselines. Reports use them only where a runs folder has no measurement of its own, and label them as such.
MODEL_CARDS = {
    "resnet50.a1_in1k": (80.4, "timm model card (paper)"),
    "mobilenetv3_large_100.ra_in1k": (75.8, "timm model card (paper)"),
    "vit_small_patch16_224.augreg_in1k": (78.8, "timm model card (paper)"),
    "resnet18": (71.5, "paper Table 1 (model card)"),
    "resnet34": (76.4, "paper Table 1 (model card)"),
}


def published_top1(name: str) -> tuple[float, str] | None:
    """ImageNet top-1 and its source, from the table above or torchvision's weight metadata."""
    if name in MODEL_CARDS:
        return MODEL_CARDS[name]
    parsed = ModelName.parse(name)
    if parsed.is_torchvision:
        try:
            weights = torchvision_weights(parsed)
        except (ValueError, KeyError):
            return None
        return weights.meta["_metrics"]["ImageNet-1K"]["acc@1"], f"torchvision weights metadata ({weights})"
    return None
