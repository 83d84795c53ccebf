"""Small Vision Transformers for small images (32 px), registered in timm's own model registry.

timm's smallest ViTs use 16-pixel patches: at 32 px they see a 2x2 grid. These keep ViT's structure (class token,
absolute position embedding, 12 or 6 pre-norm blocks) with 4-pixel patches, so a 32 px image is an 8x8 grid.
ViT-Micro and ViT-Nano have ViT-S's 12 blocks, so their four stitching stages are 3 blocks each as in the paper;
ViT-Pico's 6 blocks split 2 + 2 + 1 + 1, so a stitch into its stage 4 keeps none of its blocks. They
have no pretrained weights: train them with ``mode=scratch`` (the demo does). ViT-Micro-GAP has no class token
(its head averages the patch tokens): the token model without prefix tokens that the adapter-start study stitches
into. Because they live in timm's registry, their names work everywhere a timm name does, and checkpoints rebuild
them by name.
"""
from __future__ import annotations

from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import _create_vision_transformer


def _cfg(**kwargs) -> dict:
    return {"url": "", "num_classes": 10, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0,
            "interpolation": "bilinear", "fixed_input_size": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
            "first_conv": "patch_embed.proj", "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({"vit_pico_patch4_32": _cfg(), "vit_micro_patch4_32": _cfg(),
                                     "vit_nano_patch4_32": _cfg(), "vit_micro_gap_patch4_32": _cfg()})


@register_model
def vit_pico_patch4_32(pretrained: bool = False, **kwargs):
    """ViT-Pico/4: 96 channels, 6 blocks, 3 heads, MLP ratio 2; 0.46 M parameters, 34 MMACs at 32 px."""
    args = dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0, num_classes=10)
    return _create_vision_transformer("vit_pico_patch4_32", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def vit_micro_patch4_32(pretrained: bool = False, **kwargs):
    """ViT-Micro/4: 64 channels, 12 blocks (ViT-S's depth), 2 heads, MLP ratio 2; 0.42 M parameters, 32 MMACs at 32 px."""
    args = dict(img_size=32, patch_size=4, embed_dim=64, depth=12, num_heads=2, mlp_ratio=2.0, num_classes=10)
    return _create_vision_transformer("vit_micro_patch4_32", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def vit_micro_gap_patch4_32(pretrained: bool = False, **kwargs):
    """ViT-Micro/4 without a class token: its head averages the patch tokens (a token model with no prefix tokens,
    as timm's ``*_gap`` ViTs); 0.42 M parameters at 32 px."""
    args = dict(img_size=32, patch_size=4, embed_dim=64, depth=12, num_heads=2, mlp_ratio=2.0, num_classes=10,
                class_token=False, global_pool="avg", fc_norm=False)
    return _create_vision_transformer("vit_micro_gap_patch4_32", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def vit_nano_patch4_32(pretrained: bool = False, **kwargs):
    """ViT-Nano/4: 128 channels, 12 blocks, 4 heads; 2.4 M parameters at 32 px."""
    args = dict(img_size=32, patch_size=4, embed_dim=128, depth=12, num_heads=4, mlp_ratio=4.0, num_classes=10)
    return _create_vision_transformer("vit_nano_patch4_32", pretrained=pretrained, **dict(args, **kwargs))
