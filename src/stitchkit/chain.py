"""Plan the chain of adapters across a gap, and resize between them.

A gap from stage x to stage y crosses ``y - x`` changes of scale, so it gets ``max(y - x, 1)`` adapters. The
chain walks from the source feature to the destination feature in equal steps: channels double (or halve) per step
and the spatial size halves (or doubles) per step, each clamped at the destination's value; the last step lands
exactly on the destination. Example, ResNet-50 stage 1 -> stage 4 at 224 px::

    256@56 -> 512@28 -> 1024@14 -> 2048@7

Resize modes decide where the spatial change happens:

* ``none``: never; the destination runs at the source's resolution (the prior literature; costly on big gaps).
* ``bilinear``: bilinear interpolation to the adapter's output size just before each adapter (the paper's
  "Downsample").
* ``area``: like ``bilinear``, but downsampling averages every input pixel (box filter), so a 4x step does not
  skip three pixels in four; upsampling stays bilinear.
* ``integrated``: the adapter's own convolution strides by ``in_size / out_size`` (the paper's "Integrated
  Downsample"). Steps that upsample or do not divide evenly fall back to bilinear resizing.
"""
from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GapError, unknown_name

RESIZE_MODES = ("none", "bilinear", "area", "integrated")


@dataclass(frozen=True)
class Step:
    """One adapter of a chain.

    Attributes:
        in_channels, out_channels: channels into and out of the adapter.
        in_size: spatial size of the tensor arriving at this step.
        out_size: spatial size the adapter outputs.
        resize: how the step changes size: ``none``, ``bilinear``, ``area`` (before the adapter) or ``stride``.
        stride: the adapter's stride (1 unless ``resize == "stride"``).
    """

    in_channels: int
    out_channels: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    resize: str
    stride: int = 1

    def describe(self) -> str:
        how = f"stride {self.stride}" if self.resize == "stride" else self.resize
        src = f"{self.in_channels}@{self.in_size[0]}x{self.in_size[1]}"
        dst = f"{self.out_channels}@{self.out_size[0]}x{self.out_size[1]}"
        return f"{src} -> {dst} ({how})" if self.in_size != self.out_size else f"{src} -> {dst}"


def gap_cuts(x: int, y: int) -> tuple[tuple[int, str], tuple[int, str]]:
    """Where a gap from stage ``x`` to stage ``y`` cuts the two models, as ``(stage, position)`` for
    :meth:`~stitchkit.zoo.ModelSpec.cut`: the source after the first block of stage x; the destination after the
    first block of stage y (its back runs from there on), or, when x == y, at the end of stage x (the paper's
    stage-x-to-stage-x stitch skips the rest of stage x). The one rule for stitches and the fine-tuning baseline
    alike."""
    return (x, "first"), ((y, "first") if y > x else (x, "end"))


def num_adapters(x: int, y: int) -> int:
    """Adapters for a gap from stage ``x`` to stage ``y``: one per change of scale, at least one."""
    return max(y - x, 1)


def _toward(start: int, end: int, k: int, factor: int = 2) -> int:
    """``start`` moved ``k`` steps toward ``end``, each step a factor of ``factor``, clamped at ``end``."""
    if start < end:
        return min(start * factor**k, end)
    return max(math.ceil(start / factor**k), end)


def plan_chain(
    in_channels: int,
    in_size: tuple[int, int],
    out_channels: int,
    out_size: tuple[int, int],
    adapters: int,
    resize: str,
) -> tuple[Step, ...]:
    """The steps of a chain of ``adapters`` adapters from ``in_channels@in_size`` to ``out_channels@out_size``.

    With ``resize == "none"`` every step keeps ``in_size`` and the chain ends at ``out_channels@in_size``.
    """
    if resize not in RESIZE_MODES:
        raise unknown_name("resize mode", resize, RESIZE_MODES)
    target = in_size if resize == "none" else out_size
    points = []
    for k in range(adapters + 1):
        channels = _toward(in_channels, out_channels, k)
        size = tuple(_toward(a, b, k) for a, b in zip(in_size, target))
        points.append((channels, size))
    points[-1] = (out_channels, tuple(target))
    steps = []
    for (c_in, s_in), (c_out, s_out) in zip(points, points[1:]):
        how, stride = "none", 1
        if s_in != s_out:
            shrinks = all(a > b for a, b in zip(s_in, s_out))
            if resize == "integrated" and shrinks and (stride := integer_stride(s_in, s_out)):
                how = "stride"
            elif resize == "area" and shrinks:
                how = "area"
            else:
                how = "bilinear"
        steps.append(Step(c_in, c_out, s_in, s_out, how, stride))
    return tuple(steps)


def integer_stride(s_in: tuple[int, int], s_out: tuple[int, int]) -> int | None:
    """The integer stride that maps ``s_in`` exactly onto ``s_out`` with a padded 3x3 or a 1x1 kernel, whose output
    is ceil(in / stride), as a CNN's own strided convolutions make odd sizes (25 -> 13, 7 -> 4); None when there is
    none. The smallest stride that can is ceil(in / out); before 0.13.1 only in / out rounded down was tried, so
    sizes a stride does not divide were resized bilinearly instead (:data:`stitchkit.saved_cuts.STRIDES_CHANGED`)."""
    stride = math.ceil(s_in[0] / s_out[0])
    return stride if all(math.ceil(a / stride) == b for a, b in zip(s_in, s_out)) else None


class Resize(nn.Module):
    """Resize NCHW feature maps to a fixed spatial size."""

    def __init__(self, size: tuple[int, int], mode: str = "bilinear"):
        super().__init__()
        self.size = tuple(size)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == self.size:
            return x
        if self.mode == "area":
            return F.interpolate(x, size=self.size, mode="area")
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}"


class TokenResize(nn.Module):
    """Resize the patch grid of a token sequence, leaving its prefix tokens alone."""

    def __init__(self, in_size: tuple[int, int], size: tuple[int, int], num_prefix_tokens: int, mode: str = "bilinear"):
        super().__init__()
        self.in_size = tuple(in_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.resize = Resize(size, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        image = patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.in_size)
        patches = self.resize(image).flatten(2).transpose(1, 2)
        return torch.cat([prefix, patches], dim=1)


PAPER_GAPS = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4), (3, 3), (3, 4))


def parse_gap(gap: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``(x, y)`` from ``"1:4"``, ``"1->4"`` or ``(1, 4)``; checks ``1 <= x <= y <= 4``."""
    raw = gap
    if isinstance(gap, str):
        parts = gap.replace("->", ":").replace("→", ":").split(":")
        try:
            gap = tuple(int(p) for p in parts)
        except ValueError:
            raise GapError(f"gap {raw!r} is not of the form X:Y with stages 1-4, e.g. '1:3'") from None
    # Any whole number names a stage (a numpy integer from a sweep's grid too), but not a bool: True is no stage.
    if not isinstance(gap, (tuple, list)) or len(gap) != 2 or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in gap):
        raise GapError(f"gap {raw!r} is not a pair of stages; write it as X:Y, e.g. '1:3'")
    x, y = (operator.index(s) for s in gap)  # plain ints: the config is saved as JSON
    if not (1 <= x <= 4 and 1 <= y <= 4):
        raise GapError(f"gap {x}:{y} names a stage outside 1-4; models are cut into stages 1, 2, 3 and 4")
    if x > y:
        raise GapError(
            f"gap {x}:{y} goes from a higher stage to a lower one; stitching runs the source's lower layers into the "
            f"destination's higher layers, so write it as {y}:{x} or pick x <= y"
        )
    return (x, y)
