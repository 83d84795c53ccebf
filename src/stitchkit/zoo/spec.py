"""Cut points of a model and the feature each one carries, for a given input size.

Shapes are measured, not tabulated: :func:`model_spec` runs the model's anatomy once on a zero image of the
requested size and records the layout and shape after every block. That keeps the spec true for any depth, width
and input size the model accepts.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import GapError, StitchkitError, unknown_name
from ..formats import FeatureSpec, Format
from .anatomy import Anatomy, input_channels, model_device
from .families import dissect, family_of

POSITIONS = ("first", "end")
STAGES = (1, 2, 3, 4)


@dataclass(frozen=True)
class CutPoint:
    """A place to cut a model.

    Attributes:
        stage: 1..4.
        position: ``first`` (directly after the stage's first, downsampling block) or ``end`` (end of the stage).
        blocks: number of blocks (stem excluded) that run before the cut.
        module: qualified name of the last block before the cut, e.g. ``layer1.0``.
        feature: the tensor at the cut.
        nonnegative: the feature never takes negative values (it comes out of a ReLU), measured on a random image.
            Adapters that start from a fit keep their output ReLU only in front of such a cut.
    """

    stage: int
    position: str
    blocks: int
    module: str
    feature: FeatureSpec
    nonnegative: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """Everything stitching needs to know about one model at one input size."""

    name: str
    family: str
    input_size: tuple[int, int]
    cut_points: tuple[CutPoint, ...]
    block_features: tuple[FeatureSpec, ...]  # the output of each block, in execution order
    block_names: tuple[str, ...]
    stage_of_block: tuple[int, ...]

    def cut(self, stage: int, position: str) -> CutPoint:
        check_cut(stage, position)
        return next(c for c in self.cut_points if c.stage == stage and c.position == position)


def check_cut(stage: int, position: str) -> None:
    if position not in POSITIONS:
        raise unknown_name("cut position", position, POSITIONS)
    if not isinstance(stage, int) or stage not in STAGES:
        raise GapError(f"stage must be 1, 2, 3 or 4, got {stage!r}")


def as_size(input_size: int | tuple[int, ...]) -> tuple[int, int]:
    """``(H, W)`` from ``224``, ``(224, 224)`` or ``(3, 224, 224)``."""
    if isinstance(input_size, int):
        return (input_size, input_size)
    size = tuple(int(s) for s in input_size)
    return size[-2:] if len(size) in (2, 3) else _bad_size(input_size)


def _bad_size(input_size) -> tuple[int, int]:
    raise StitchkitError(f"input size must be N, (H, W) or (C, H, W), got {input_size!r}")


def _describe(x: torch.Tensor, anatomy: Anatomy, stage: int, input_hw: tuple[int, int]) -> FeatureSpec:
    fmt = anatomy.formats[stage - 1]
    grid = anatomy.grid(stage, input_hw) if fmt is Format.NLC else None
    return FeatureSpec.from_tensor(x, fmt, anatomy.prefix_tokens(stage) if fmt is Format.NLC else 0, grid,
                                   anatomy.class_token)


# Specs depend only on the model's structure, not its weights: remember them per model, keyed by input size and
# the identity of every submodule, so a model whose blocks were swapped is measured again.
_SPECS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def model_spec(model: nn.Module, input_size: int | tuple[int, ...] = 224, name: str | None = None) -> ModelSpec:
    """Measure the cut points of ``model`` for images of ``input_size``.

    Example:
        >>> spec = model_spec(timm.create_model("resnet50"), 224)
        >>> spec.cut(1, "first").feature.shape
        (256, 56, 56)
    """
    key = (as_size(input_size), name, tuple(id(m) for m in model.modules()))
    cached = _SPECS.setdefault(model, {})
    if key not in cached:
        cached[key] = _measure(model, input_size, name)
    return cached[key]


@torch.no_grad()
def _measure(model: nn.Module, input_size: int | tuple[int, ...], name: str | None) -> ModelSpec:
    family = family_of(model)
    hw = as_size(input_size)
    anatomy = dissect(model, hw)
    was_training = model.training
    model.eval()
    try:
        # A fixed random image: shapes do not depend on it, and a feature that is signed shows negative values.
        image = torch.randn(1, input_channels(model), *hw, generator=torch.Generator().manual_seed(0))
        x = anatomy.stem(image.to(model_device(model)))
        blocks, names, stage_of, nonnegative = [], [], [], []
        for stage, (stage_blocks, stage_names) in enumerate(zip(anatomy.stages, anatomy.block_names), start=1):
            for block, block_name in zip(stage_blocks, stage_names):
                x = block(x)
                blocks.append(_describe(x, anatomy, stage, hw))
                # (unknown on the meta device, where dry runs price models: only the MACs matter there)
                nonnegative.append(x.device.type != "meta" and bool((x >= 0).all()))
                names.append(block_name)
                stage_of.append(stage)
    except (RuntimeError, AssertionError, ValueError) as err:  # (timm asserts a fixed-size model's image size)
        raise StitchkitError(
            f"{name or type(model).__name__} does not accept {hw[0]}x{hw[1]} images: {err}; build the model for this "
            "size (a name instead of a model object is built for it; timm: img_size=) or stitch at the size it was "
            "built for") from err
    finally:
        model.train(was_training)
    cuts = []
    for stage in STAGES:
        for position in POSITIONS:
            n = anatomy.block_index(stage, position)
            cuts.append(CutPoint(stage, position, n, names[n - 1], blocks[n - 1], nonnegative[n - 1]))
    return ModelSpec(
        name=name or getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__),
        family=family.name,
        input_size=hw,
        cut_points=tuple(cuts),
        block_features=tuple(blocks),
        block_names=tuple(names),
        stage_of_block=tuple(stage_of),
    )
