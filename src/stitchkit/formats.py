"""Tensor layouts at cut points and conversions between them.

Three layouts occur in the supported models:

* ``NCHW``: convolutional networks (ResNet, MobileNet, ConvNeXt, RegNet).
* ``NHWC``: Swin (timm and torchvision) keeps channels last between its blocks.
* ``NLC``: token sequences (ViT), optionally led by prefix tokens (class token, registers) that carry no position.

A :class:`FeatureSpec` describes one tensor at a cut point (per sample, batch dimension excluded). Conversions go
through NCHW, the layout of the convolutional adapters. Prefix tokens need a policy in each direction, because an
image has no place for them:

* out of a token sequence (:data:`PREFIX_OUT_POLICIES`): ``concat`` the class token to every patch token as extra
  channels (the paper), ``drop`` it, or ``add`` it to every patch token. Registers are never merged: they hold no
  summary of the image (the head reads the class token, or averages the patch tokens), so prefix tokens that are
  all registers (timm's ``class_token=False, reg_tokens=N``) leave nothing to concat or add, and only ``drop``
  applies to them;
* into a token sequence (:data:`PREFIX_IN_POLICIES`): the ``mean`` of the patch tokens (the paper), ``zeros``, a
  ``learned`` token, or a learned affine map of the patch tokens' mean (``projected``: the destination's class
  token at a cut depends on the image, which a constant cannot follow and the plain mean does not resemble).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .errors import IncompatibleError, StitchkitError, unknown_name

PREFIX_OUT_POLICIES = ("concat", "drop", "add")
PREFIX_IN_POLICIES = ("mean", "zeros", "learned", "projected")


class Format(str, enum.Enum):
    """Memory layout of a feature tensor (batch first)."""

    NCHW = "NCHW"
    NHWC = "NHWC"
    NLC = "NLC"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FeatureSpec:
    """One feature tensor at a cut point: layout, channels, spatial grid and prefix tokens.

    For ``NLC`` the grid is the patch grid; the sequence length is ``num_prefix_tokens + height * width``.
    ``class_token``: whether the first prefix token is a class token (timm's ``has_class_token``); False when they
    are all registers.
    """

    format: Format
    channels: int
    height: int
    width: int
    num_prefix_tokens: int = 0
    class_token: bool = True

    def __post_init__(self):
        if self.num_prefix_tokens and self.format is not Format.NLC:
            raise ValueError(f"only NLC features carry prefix tokens, got {self.format} with {self.num_prefix_tokens}")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape in the spec's own layout."""
        if self.format is Format.NCHW:
            return (self.channels, self.height, self.width)
        if self.format is Format.NHWC:
            return (self.height, self.width, self.channels)
        return (self.num_prefix_tokens + self.height * self.width, self.channels)

    @property
    def is_tokens(self) -> bool:
        return self.format is Format.NLC

    def with_(self, **changes) -> "FeatureSpec":
        return replace(self, **changes)

    def describe(self) -> str:
        """Short human-readable form, e.g. ``NCHW [256, 56, 56]`` or ``NLC [1+196, 384] (14x14)``."""
        if self.format is Format.NLC:
            prefix = f"{self.num_prefix_tokens}+" if self.num_prefix_tokens else ""
            return f"NLC [{prefix}{self.height * self.width}, {self.channels}] ({self.height}x{self.width})"
        return f"{self.format} [{', '.join(str(d) for d in self.shape)}]"

    @classmethod
    def from_tensor(
        cls, x: torch.Tensor, fmt: Format, num_prefix_tokens: int = 0, grid: tuple[int, int] | None = None,
        class_token: bool = True,
    ) -> "FeatureSpec":
        """Describe a batched tensor ``x`` whose layout is ``fmt``.

        Token grids are taken from ``grid`` when given, otherwise assumed square.
        """
        if x.dim() != (3 if fmt is Format.NLC else 4):
            raise ValueError(f"a {fmt} tensor must have {3 if fmt is Format.NLC else 4} dims, got shape {tuple(x.shape)}")
        if fmt is Format.NCHW:
            return cls(fmt, x.shape[1], x.shape[2], x.shape[3])
        if fmt is Format.NHWC:
            return cls(fmt, x.shape[3], x.shape[1], x.shape[2])
        patches = x.shape[1] - num_prefix_tokens
        if grid is None:
            side = math.isqrt(patches)
            if side * side != patches:
                raise ValueError(f"cannot infer a square token grid from {patches} patch tokens; pass grid=")
            grid = (side, side)
        if grid[0] * grid[1] != patches:
            raise ValueError(f"grid {grid} does not hold {patches} patch tokens")
        return cls(fmt, x.shape[2], grid[0], grid[1], num_prefix_tokens, class_token)


def channels_after_prefix_out(spec: FeatureSpec, policy: str) -> int:
    """Channels of the image that :func:`to_nchw` makes from ``spec`` under prefix policy ``policy``."""
    check_prefix_out(spec, policy)
    if spec.num_prefix_tokens and policy == "concat":
        return 2 * spec.channels
    return spec.channels


def check_policy(policy: str, choices: tuple[str, ...], direction: str) -> None:
    if policy not in choices:
        raise unknown_name(f"class-token policy {direction}", policy, choices)


def check_prefix_out(spec: FeatureSpec, policy: str) -> None:
    """``policy`` is a prefix policy out of tokens that ``spec``'s prefix tokens allow: ``concat`` and ``add`` merge
    the class token, which prefix tokens that are all registers do not hold (the first register was taken for it)."""
    check_policy(policy, PREFIX_OUT_POLICIES, "out of tokens")
    if spec.num_prefix_tokens and not spec.class_token and policy != "drop":
        raise IncompatibleError(
            f"prefix_out={policy!r} merges the class token into every patch token, but these features "
            f"({spec.describe()}) have no class token: their {spec.num_prefix_tokens} prefix tokens are registers "
            "(timm's class_token=False), which summarise nothing of the image; use prefix_out='drop' (the patch "
            "tokens alone; registers are never merged)")


def to_nchw(x: torch.Tensor, spec: FeatureSpec, prefix_policy: str = "concat") -> torch.Tensor:
    """Convert a batched tensor described by ``spec`` to NCHW.

    Prefix tokens are merged into the image by ``prefix_policy``; with several prefix tokens (class token plus
    registers) only the first, the class token, is used; without a class token only ``drop`` is allowed.
    """
    if spec.format is Format.NCHW:
        return x
    if spec.format is Format.NHWC:
        return x.permute(0, 3, 1, 2)
    check_prefix_out(spec, prefix_policy)
    batch = x.shape[0]
    prefix, patches = x[:, : spec.num_prefix_tokens], x[:, spec.num_prefix_tokens :]
    if spec.num_prefix_tokens and prefix_policy == "concat":
        patches = torch.cat([patches, prefix[:, :1].expand(-1, patches.shape[1], -1)], dim=2)
    elif spec.num_prefix_tokens and prefix_policy == "add":
        patches = patches + prefix[:, :1]
    return patches.transpose(1, 2).reshape(batch, patches.shape[2], spec.height, spec.width)


def from_nchw(
    x: torch.Tensor,
    spec: FeatureSpec,
    prefix_policy: str = "mean",
    learned_prefix: torch.Tensor | None = None,
    prefix_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Convert a batched NCHW tensor to the layout of ``spec``.

    The image must already have ``spec``'s channels and grid. Prefix tokens are made by ``prefix_policy``;
    ``learned`` takes them from ``learned_prefix`` of shape ``(1, num_prefix_tokens, C)``; ``projected`` applies
    ``prefix_map`` to the patch tokens' mean ``(B, 1, C)``, which returns ``(B, num_prefix_tokens, C)`` (without a
    map it is the mean).
    """
    if spec.format is Format.NCHW:
        return x
    if spec.format is Format.NHWC:
        return x.permute(0, 2, 3, 1)
    tokens = x.flatten(2).transpose(1, 2)
    n = spec.num_prefix_tokens
    if not n:
        return tokens
    check_policy(prefix_policy, PREFIX_IN_POLICIES, "into tokens")
    if prefix_policy == "projected" and prefix_map is not None:
        prefix = prefix_map(tokens.mean(dim=1, keepdim=True))
    elif prefix_policy in ("mean", "projected"):
        prefix = tokens.mean(dim=1, keepdim=True).expand(-1, n, -1)
    elif prefix_policy == "zeros":
        prefix = tokens.new_zeros(tokens.shape[0], n, tokens.shape[2])
    else:
        if learned_prefix is None:
            raise StitchkitError("prefix policy 'learned' needs the learned token tensor")
        prefix = learned_prefix.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
    return torch.cat([prefix, tokens], dim=1)


def convert(
    x: torch.Tensor,
    src: FeatureSpec,
    dst: FeatureSpec,
    prefix_out: str = "concat",
    prefix_in: str = "mean",
    learned_prefix: torch.Tensor | None = None,
    prefix_map: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Convert ``x`` from layout ``src`` to layout ``dst`` (channels and grid must already agree); the prefix
    tokens ``dst`` needs are made as :func:`from_nchw` makes them (``learned_prefix``, ``prefix_map``: its).

    Token sequences with the same number of prefix tokens pass through untouched.
    """
    if src.format is Format.NLC and dst.format is Format.NLC and src.num_prefix_tokens == dst.num_prefix_tokens:
        return x
    return from_nchw(to_nchw(x, src, prefix_out), dst, prefix_in, learned_prefix, prefix_map)
