"""Published ImageNet-1k top-1 accuracies, used only when a runs folder has no measurement of its own.

Every value carries its source, and reports label such numbers as model-card figures, not measurements.
"""
from __future__ import annotations

# (top-1 %, source). The paper quotes these for its source models and its Table 1 baselines.
MODEL_CARDS = {
    "resnet50.a1_in1k": (80.4, "timm model card (paper)"),
    "mobilenetv3_large_100.ra_in1k": (75.8, "timm model card (paper)"),
    "vit_small_patch16_224.augreg_in1k": (78.8, "timm model card (paper)"),
    "resnet18": (71.5, "paper Table 1 (model card)"),
    "resnet34": (76.4, "paper Table 1 (model card)"),
}


def model_card(name: str) -> tuple[float, str] | None:
    """ImageNet top-1 and its source, from the table above or torchvision's weight metadata."""
    if name in MODEL_CARDS:
        return MODEL_CARDS[name]
    if name.startswith("torchvision:"):
        import torchvision

        base, _, tag = name.removeprefix("torchvision:").partition(".")
        try:
            weights = torchvision.models.get_weight(f"{torchvision.models.get_model_weights(base).__name__}.{tag or 'DEFAULT'}")
        except (ValueError, KeyError):
            return None
        return weights.meta["_metrics"]["ImageNet-1K"]["acc@1"], f"torchvision weights metadata ({weights})"
    return None
