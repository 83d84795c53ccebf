"""Architecture families: how each kind of model is laid out as an :class:`~stitchkit.zoo.anatomy.Anatomy`.

A family is chosen by the model's class (never by its name), so any depth or width of a supported architecture
works, and so does a model instance the user built. Stage boundaries come from the model's own structure: its stage
containers (``layer1``, ``stages``, ``layers``, ``features``) or its declared ``feature_info`` reductions. Only
ViT, which has no stages, is grouped by rule: its blocks split into four equal groups (ViT-S/16: 4 x 3).

Register a new family with :func:`register_family`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import StitchkitError
from ..formats import Format
from ..registry import Registry
from .anatomy import (Anatomy, Call, SequentialHead, TooFewBlocks, has_class_token, qualified_names, split_evenly,
                      view)


@dataclass(frozen=True)
class Family:
    """How to dissect one kind of model.

    Attributes:
        name: short family name shown to users.
        classes: model classes handled (matched with ``isinstance``).
        dissect: builds the anatomy of a model instance.
        timm_modules: timm model modules whose registered names this family serves (for ``list_models``).
        model_names: extra names served outside timm (e.g. ``torchvision:swin_t``).
        fixed_input_size: the model is built for one input size, so ``create_model`` passes ``img_size``.
        token_extras: for token models, returns ``(cls_token, pos_embed, num_pos_prefix, pos_grid)`` of a model
            so that adapters can initialise a learned class token or re-add the position embedding.
        sized: ``dissect`` takes the input size as a second argument (its parts are specialised to it).
        fallback: tried only after every other family (the generic graph split, which accepts any module).
    """

    name: str
    classes: tuple[type, ...]
    dissect: Callable[[nn.Module], Anatomy]
    timm_modules: tuple[str, ...] = ()
    model_names: tuple[str, ...] = ()
    fixed_input_size: bool = False
    token_extras: Callable[[nn.Module], tuple] | None = None
    sized: bool = False
    fallback: bool = False


_FAMILIES: Registry[Family] = Registry("model family")


def register_family(family: Family) -> Family:
    """Add a family; a second family with the same name is an error."""
    return _FAMILIES.add(family.name, family)


def families() -> list[Family]:
    return _FAMILIES.values()


def family_of(model: nn.Module) -> Family:
    """The family that handles ``model``; raises a StitchkitError naming the supported classes otherwise.

    Hand-written families come first (also those registered later by a user); the generic graph split last.
    """
    ordered = sorted(_FAMILIES.values(), key=lambda f: f.fallback)
    for family in ordered:
        if isinstance(model, family.classes):
            return family
    supported = ", ".join(sorted(c.__name__ for f in _FAMILIES.values() for c in f.classes))
    raise StitchkitError(
        f"stitchkit cannot cut a {type(model).__name__}; supported model classes are {supported} "
        "(register a Family for others)"
    )


def dissect(model: nn.Module, input_size: tuple[int, int] | None = None) -> Anatomy:
    """The anatomy of ``model``, with qualified block names filled in.

    ``input_size`` ``(H, W)`` matters only to families whose parts are specialised to a size (the graph split);
    without it they use the model's default input size.
    """
    family = family_of(model)
    try:
        if family.sized:
            anatomy = family.dissect(model, input_size or default_input_size(model))
        else:
            anatomy = family.dissect(model)
    except TooFewBlocks as err:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        raise TooFewBlocks(f"cannot cut {cfg.get('architecture') or type(model).__name__} into stages: {err}") from None
    if not anatomy.block_names:
        names = qualified_names(model)
        anatomy.block_names = [[names.get(id(b), type(b).__name__) for b in stage] for stage in anatomy.stages]
    return anatomy


def default_input_size(model: nn.Module) -> tuple[int, int]:
    """The input size a model was built for: the ``input_size`` it was created with by stitchkit (a torchvision
    model has no other record of it), else a timm transformer's patch embedding's size (``img_size=32`` leaves its
    ``pretrained_cfg`` at the weights' 224 px), else timm's pretrained config, else ImageNet's 224."""
    made = getattr(model, "stitchkit_input_size", None)
    if made is not None:
        return (int(made[0]), int(made[1]))
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # None when it takes any size
    if isinstance(built, (tuple, list)) and len(built) == 2:
        return (int(built[0]), int(built[1]))
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return (int(size[-2]), int(size[-1])) if size else (224, 224)


def _join(*modules: nn.Module) -> nn.Module:
    """One block out of several modules, skipping identities (a stem folded into a stage's first block)."""
    kept = [m for m in modules if not isinstance(m, nn.Identity)]
    return kept[0] if len(kept) == 1 else nn.Sequential(*kept)


# --- what the hand-written families call around their blocks -------------------------------------------------------
# Named functions, not lambdas: a stitched model holds them, and it must pickle (torch.save(model), DataLoader
# workers, multiprocessing).


def _head(m, x):
    return m.forward_head(x)


# A head's lead (see Call): what timm's forward_features runs after the last block, so that a network's
# forward_features returns what the model's own does, and its forward_head takes that.


def _conv_head(m, x):  # timm EfficientNet
    return m.bn2(m.conv_head(x))


def _norm_pre(m, x):  # timm ConvNeXt
    return m.norm_pre(x)


def _final_conv(m, x):  # timm RegNet
    return m.final_conv(x)


def _norm(m, x):  # timm ViT, Swin
    return m.norm(x)


# The heads of stitchkit <= 0.9, which ran the lead and forward_head in one function: models pickled whole with
# those versions name them, and unpickle to heads without a lead (Call.lead's class default).
def _conv_head_then_head(m, x):
    return m.forward_head(_conv_head(m, x))


def _norm_pre_then_head(m, x):
    return m.forward_head(_norm_pre(m, x))


def _final_conv_then_head(m, x):
    return m.forward_head(_final_conv(m, x))


def _norm_then_head(m, x):
    return m.forward_head(_norm(m, x))


def _vit_stem(m, x):
    return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))


# --- timm ResNet / ResNeXt / SE-ResNet / Wide ResNet --------------------------------------------------------------


def _resnet(model) -> Anatomy:
    stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    stages = [list(getattr(model, f"layer{i}")) for i in range(1, 5)]
    head = Call(view(model, ["global_pool", "fc"]), _head, "forward_head")
    return Anatomy(stem, stages, head, [Format.NCHW] * 4)


# --- timm EfficientNet / MobileNetV3 ------------------------------------------------------------------------------


def _blocks_by_reduction(model) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """Group ``model.blocks`` by output stride using the model's declared ``feature_info``.

    Each feature_info entry names the last block group of one reduction; a block group belongs to the first entry
    at or after it. Groups at stride 2 join the stem; strides 4, 8, 16, 32 are stages 1-4.
    """
    taps = sorted((int(f["module"].split(".")[1]), f["reduction"]) for f in model.feature_info if f["module"].startswith("blocks."))
    early, stages = [], [[] for _ in range(4)]
    for index, group in enumerate(model.blocks):
        reduction = next(r for i, r in taps if i >= index)
        target = early if reduction <= 2 else stages[min(reduction.bit_length() - 3, 3)]
        target.extend(group.children() if isinstance(group, nn.Sequential) else [group])
    return early, stages


def _efficientnet(model) -> Anatomy:
    early, stages = _blocks_by_reduction(model)
    stem = nn.Sequential(model.conv_stem, model.bn1, *early)
    head = Call(
        view(model, ["conv_head", "bn2", "global_pool", "classifier"]),
        _head,
        "conv_head, bn2, forward_head",
        lead=_conv_head,
    )
    return Anatomy(stem, stages, head, [Format.NCHW] * 4)


def _mobilenetv3(model) -> Anatomy:
    early, stages = _blocks_by_reduction(model)
    stem = nn.Sequential(model.conv_stem, model.bn1, *early)
    head = Call(
        view(model, ["global_pool", "conv_head", "norm_head", "act2", "flatten", "classifier"]),
        _head,
        "forward_head",
    )
    return Anatomy(stem, stages, head, [Format.NCHW] * 4)


# --- timm ConvNeXt ------------------------------------------------------------------------------------------------


def _convnext(model) -> Anatomy:
    # A ConvNeXt stage starts with its own downsample layer (the stem for stage 1): that layer is the first block.
    stages = []
    for i, stage in enumerate(model.stages):
        first = _join(model.stem, stage.downsample) if i == 0 else stage.downsample
        stages.append([first, *stage.blocks])
    head = Call(view(model, ["norm_pre", "head"]), _head, "norm_pre, forward_head", lead=_norm_pre)
    return Anatomy(nn.Identity(), stages, head, [Format.NCHW] * 4)


# --- timm RegNet --------------------------------------------------------------------------------------------------


def _regnet(model) -> Anatomy:
    stages = [list(getattr(model, f"s{i}").children()) for i in range(1, 5)]
    head = Call(view(model, ["final_conv", "head"]), _head, "final_conv, forward_head", lead=_final_conv)
    return Anatomy(model.stem, stages, head, [Format.NCHW] * 4)


# --- timm Vision Transformer (ViT, DeiT) --------------------------------------------------------------------------


def _vit(model) -> Anatomy:
    stem = Call(
        view(
            model,
            ["patch_embed", "pos_drop", "patch_drop", "norm_pre"],
            ["cls_token", "reg_token", "dist_token", "pos_embed"],
        ),
        _vit_stem,
        "patch_embed, _pos_embed, norm_pre",
    )
    head = Call(
        view(model, ["norm", "attn_pool", "fc_norm", "head_drop", "head", "head_dist"]),
        _head,
        "norm, forward_head",
        lead=_norm,
    )
    # ViT has no stages; like the paper, group its blocks into four equal stages (12 blocks: 3 + 3 + 3 + 3).
    return Anatomy(
        stem,
        split_evenly(list(model.blocks), 4),
        head,
        [Format.NLC] * 4,
        num_prefix_tokens=model.num_prefix_tokens,
        class_token=has_class_token(model),
        token_grid=model.patch_embed.dynamic_feat_size,
    )


def _vit_token_extras(model) -> tuple:
    pos_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    return model.cls_token, model.pos_embed, pos_prefix, tuple(model.patch_embed.grid_size)


def token_extras(model: nn.Module) -> tuple | None:
    """``(cls_token, pos_embed, num_pos_prefix, pos_grid)`` of a token model (see :class:`Family`), or None."""
    extras = family_of(model).token_extras
    return extras(model) if extras is not None else _generic_token_extras(model)


def _generic_token_extras(model) -> tuple | None:
    """A token model's class token and position embedding, when it has timm ViT's attributes or is torchvision's
    ViT."""
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        # torchvision adds encoder.pos_embedding to [class_token; patches] once, before its blocks (as timm's ViT
        # without no_embed_class): one prefix position, then the patch grid the model was built for (stitchkit
        # builds it at the input size, the table resampled by torchvision's own interpolate_embeddings).
        side = model.image_size // model.patch_size
        return model.class_token, model.encoder.pos_embedding, 1, (side, side)
    cls_token, pos_embed = getattr(model, "cls_token", None), getattr(model, "pos_embed", None)
    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    if not isinstance(pos_embed, torch.Tensor) or pos_embed.dim() != 3 or grid is None:
        return None
    prefix = 0 if getattr(model, "no_embed_class", False) else pos_embed.shape[1] - grid[0] * grid[1]
    return cls_token, pos_embed, prefix, tuple(grid)


# --- timm Swin ----------------------------------------------------------------------------------------------------


def _timm_swin(model) -> Anatomy:
    # timm puts PatchMerging at the start of layers.k; the patch embedding plays that role for stage 1.
    stages = []
    for i, layer in enumerate(model.layers):
        first = _join(model.patch_embed, layer.downsample) if i == 0 else layer.downsample
        stages.append([first, *layer.blocks])
    head = Call(view(model, ["norm", "head"]), _head, "norm, forward_head", lead=_norm)
    return Anatomy(nn.Identity(), stages, head, [Format.NHWC] * 4)


# --- torchvision Swin ---------------------------------------------------------------------------------------------


def _torchvision_swin(model) -> Anatomy:
    # features = [patch_embed, stage1 blocks, merge, stage2 blocks, merge, stage3 blocks, merge, stage4 blocks]
    f = model.features
    stages = [[f[2 * i], *f[2 * i + 1]] for i in range(4)]
    # The final norm leads the head (a network's forward_features ends with it): torchvision has no
    # forward_features, and its nearest is the normed map before the pooling, channels last as timm's Swin returns
    # it (the permute after it is there for the pooling).
    head = SequentialHead(model.norm, model.permute, model.avgpool, model.flatten, model.head, lead=1)
    return Anatomy(nn.Identity(), stages, head, [Format.NHWC] * 4)


def _register_builtin() -> None:
    from . import small_vit  # noqa: F401  (registers stitchkit's small ViTs in timm's registry)
    from .graph import graph_anatomy
    import timm.models.convnext as convnext
    import timm.models.efficientnet as efficientnet
    import timm.models.mobilenetv3 as mobilenetv3
    import timm.models.regnet as regnet
    import timm.models.resnet as resnet
    import timm.models.swin_transformer as swin
    import timm.models.vision_transformer as vit
    import torchvision.models.swin_transformer as tv_swin

    register_family(Family("resnet", (resnet.ResNet,), _resnet, timm_modules=("resnet",)))
    register_family(Family("efficientnet", (efficientnet.EfficientNet,), _efficientnet, timm_modules=("efficientnet",)))
    register_family(Family("mobilenetv3", (mobilenetv3.MobileNetV3,), _mobilenetv3, timm_modules=("mobilenetv3",)))
    register_family(Family("convnext", (convnext.ConvNeXt,), _convnext, timm_modules=("convnext",)))
    register_family(Family("regnet", (regnet.RegNet,), _regnet, timm_modules=("regnet",)))
    register_family(
        Family(
            "vit",
            (vit.VisionTransformer,),
            _vit,
            timm_modules=("vision_transformer", "deit", "small_vit"),
            fixed_input_size=True,
            token_extras=_vit_token_extras,
        )
    )
    register_family(Family("swin", (swin.SwinTransformer,), _timm_swin, timm_modules=("swin_transformer",), fixed_input_size=True))
    register_family(
        Family(
            "torchvision_swin",
            (tv_swin.SwinTransformer,),
            _torchvision_swin,
            model_names=("torchvision:swin_t", "torchvision:swin_s", "torchvision:swin_b",
                         "torchvision:swin_v2_t", "torchvision:swin_v2_s", "torchvision:swin_v2_b"),
        )
    )
    # Everything else: split the exported graph (see stitchkit.zoo.graph).
    register_family(Family("graph", (nn.Module,), graph_anatomy, sized=True, fallback=True))


_register_builtin()
