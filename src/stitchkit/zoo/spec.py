"""Cut points of a model and the feature each one carries, for a given input size.

Shapes are measured, not tabulated: :func:`model_spec` runs the model's anatomy once on a zero image of the
requested size and records the layout and shape after every block. That keeps the spec true for any depth, width
and input size the model accepts.
"""
from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass

import torch
from torch import fx, nn

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
        nonnegative: the feature never takes negative values (it comes out of a ReLU), measured on a random image
            (on the meta device, where there are no values: whether the block's output comes out of a ReLU-like
            module). Adapters that start from a fit keep their output ReLU only in front of such a cut.
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


# What the meta device can tell of a feature's sign (dry runs price models there, with no values to look at): the
# output of these modules is never negative, and these keep a non-negative input non-negative (in eval mode).
_NONNEGATIVE_OUTPUT = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
_SIGN_KEEPING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout)


class _SignTracker:
    """Follows which tensors of a forward pass come out of a ReLU-like module (or out of a pooling of one): a block
    whose output is such a tensor has a non-negative feature whatever its weights. On real devices the value
    itself is looked at, which also sees what ends in a function (``F.relu``); here a block that does is taken as
    signed, as every block was before. Tensors are held, not just their ids, which a freed tensor's successor may
    reuse."""

    def __init__(self, parts: list[nn.Module]):
        self.nonnegative: dict[int, torch.Tensor] = {}
        modules = {id(m): m for part in parts for m in part.modules()}  # the parts a graph split made hold copies
        self.handles = [m.register_forward_hook(self._seen) for m in modules.values()
                        if isinstance(m, _NONNEGATIVE_OUTPUT + _SIGN_KEEPING)]

    def _seen(self, module, inputs, output) -> None:
        if isinstance(output, torch.Tensor) and (isinstance(module, _NONNEGATIVE_OUTPUT)
                                                 or (inputs and self.knows(inputs[0]))):
            self.nonnegative[id(output)] = output

    def knows(self, x) -> bool:
        """Whether ``x`` is known to be non-negative."""
        return isinstance(x, torch.Tensor) and self.nonnegative.get(id(x)) is x

    def of(self, part: nn.Module, output: torch.Tensor, input_nonnegative: bool) -> bool:
        """Whether ``part``'s ``output`` is known to be non-negative: from the ATen graph of a graph-split part
        (where no module hook fires; ``input_nonnegative``: what is known of its input), else from the hooks."""
        if isinstance(part, fx.GraphModule):
            return _graph_output_nonnegative(part, input_nonnegative)
        return self.knows(output)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.nonnegative.clear()


def _graph_output_nonnegative(part: fx.GraphModule, input_nonnegative: bool) -> bool:
    """Whether a graph-split part's output (an ATen graph, where no module hook fires) is never negative: it comes
    out of a ReLU-like op, or out of ops that keep non-negative inputs so (pooling, reshaping, concatenation, sums
    and products of such), back to the part's input when that is known to be non-negative."""
    aten = torch.ops.aten
    nonnegative_ops = {aten.relu.default, aten.relu_.default, aten.sigmoid.default, aten.sigmoid_.default,
                       aten.hardsigmoid.default, aten.hardsigmoid_.default, aten.softplus.default, aten.abs.default}
    clamps = {aten.hardtanh.default, aten.hardtanh_.default, aten.clamp.default, aten.clamp_.default,
              aten.clamp_min.default, aten.clamp_min_.default}  # non-negative when their lower bound is
    keep_first = {aten.max_pool2d.default, aten.max_pool2d_with_indices.default, aten.avg_pool2d.default,
                  aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default, aten.dropout.default,
                  aten.clone.default, aten.contiguous.default, aten.view.default, aten.reshape.default,
                  aten._unsafe_view.default, aten.permute.default, aten.transpose.int, aten.flatten.using_ints,
                  aten.chunk.default, aten.split.Tensor, aten.mean.dim, operator.getitem}
    keep_all = {aten.cat.default, aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor}
    known: dict[fx.Node, bool] = {}

    def nonnegative(node) -> bool:
        if not isinstance(node, fx.Node):
            return False
        if node not in known:
            known[node] = False  # (a cycle cannot occur in a graph; this only bounds the recursion)
            target, args = node.target, node.args
            if node.op == "placeholder":
                known[node] = input_nonnegative
            elif target in nonnegative_ops:
                known[node] = True
            elif target in clamps:
                known[node] = len(args) > 1 and isinstance(args[1], (int, float)) and args[1] >= 0
            elif target in keep_first:
                known[node] = nonnegative(args[0])
            elif target in keep_all:
                inputs = args[0] if target is aten.cat.default else [a for a in args if isinstance(a, fx.Node)]
                known[node] = bool(inputs) and all(nonnegative(a) for a in inputs)
        return known[node]

    output = next(n for n in part.graph.nodes if n.op == "output")
    result = output.args[0]
    return nonnegative(result[0] if isinstance(result, (tuple, list)) and len(result) == 1 else result)


@torch.no_grad()
def _measure(model: nn.Module, input_size: int | tuple[int, ...], name: str | None) -> ModelSpec:
    family = family_of(model)
    hw = as_size(input_size)
    anatomy = dissect(model, hw)
    was_training = model.training
    model.eval()
    meta = model_device(model).type == "meta"
    signs = _SignTracker([anatomy.stem, *(b for stage in anatomy.stages for b in stage)]) if meta else None
    try:
        # A fixed random image: shapes do not depend on it, and a feature that is signed shows negative values.
        image = torch.randn(1, input_channels(model), *hw, generator=torch.Generator().manual_seed(0))
        x = anatomy.stem(image.to(model_device(model)))
        sign = meta and signs.of(anatomy.stem, x, False)  # on meta: what is known of the last output's sign
        blocks, names, stage_of, nonnegative = [], [], [], []
        for stage, (stage_blocks, stage_names) in enumerate(zip(anatomy.stages, anatomy.block_names), start=1):
            for block, block_name in zip(stage_blocks, stage_names):
                x = block(x)
                blocks.append(_describe(x, anatomy, stage, hw))
                sign = signs.of(block, x, sign) if meta else bool((x >= 0).all())
                nonnegative.append(sign)
                names.append(block_name)
                stage_of.append(stage)
    except (RuntimeError, AssertionError, ValueError) as err:  # (timm asserts a fixed-size model's image size)
        raise StitchkitError(
            f"{name or type(model).__name__} does not accept {hw[0]}x{hw[1]} images: {err}; build the model for this "
            "size (a name instead of a model object is built for it; timm: img_size=) or stitch at the size it was "
            "built for") from err
    finally:
        model.train(was_training)
        if signs is not None:
            signs.close()
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
