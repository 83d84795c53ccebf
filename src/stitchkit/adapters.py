"""Adapters: the small trainable blocks that join a source's features to a destination's.

An adapter maps ``in_channels`` to ``out_channels``. Image adapters work on NCHW tensors and may take a ``stride``
(for integrated downsampling); token adapters work on NLC sequences. :func:`create_adapter` wraps each one in a norm
before and after (BatchNorm for images, LayerNorm for tokens), as in the paper.

Add your own with :func:`register_adapter`::

    @stitchkit.register_adapter("depthwise", layout="image")
    def depthwise(in_channels, out_channels, stride=1):
        return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels),
                             nn.Conv2d(in_channels, out_channels, 1))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .registry import Registry

LAYOUTS = ("image", "tokens")


@dataclass(frozen=True)
class AdapterType:
    """A registered adapter: its builder ``(in_channels, out_channels, stride) -> nn.Module`` and layout."""

    name: str
    build: Callable[..., nn.Module]
    layout: str
    description: str


_ADAPTERS: Registry[AdapterType] = Registry("adapter")


def register_adapter(name: str, layout: str = "image", description: str = ""):
    """Decorator that registers an adapter builder under ``name``; registering a name twice is an error."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = description or next(iter((build.__doc__ or "").strip().splitlines()), "")
        _ADAPTERS.add(name, AdapterType(name, build, layout, doc))
        return build

    return decorate


def list_adapters() -> list[str]:
    return _ADAPTERS.names()


def get_adapter(name: str) -> AdapterType:
    return _ADAPTERS.get(name)


def create_adapter(name: str, in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """The registered adapter ``name`` between a norm on its input and a norm on its output."""
    kind = get_adapter(name)
    core = kind.build(in_channels, out_channels, stride=stride)
    if kind.layout == "image":
        return nn.Sequential(nn.BatchNorm2d(in_channels), core, nn.BatchNorm2d(out_channels))
    return nn.Sequential(nn.LayerNorm(in_channels), core, nn.LayerNorm(out_channels))


@register_adapter("linear", description="1x1 convolution (no padding): a per-pixel linear map")
def linear(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)


@register_adapter("linear_relu", description="1x1 convolution followed by ReLU")
def linear_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride), nn.ReLU(inplace=True))


@register_adapter("conv3x3_relu", description="3x3 convolution followed by ReLU")
def conv3x3_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1), nn.ReLU(inplace=True)
    )


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 reduce to ``out/4``, 3x3 (strided), 1x1 expand, plus a shortcut.

    The shortcut is a 1x1 projection with BatchNorm when the shape changes. The last BatchNorm starts with zero
    gamma, so the block starts as its shortcut (the usual trick for residual blocks).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        width = max(out_channels // 4, 1)
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn3.weight)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(y + self.shortcut(x))


@register_adapter("bottleneck", description="ResNet bottleneck block (width out/4, projection shortcut)")
def bottleneck(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    return Bottleneck(in_channels, out_channels, stride)


class VitBlock(nn.Module):
    """A pre-norm transformer block (timm's ViT ``Block``), then a linear projection when channels change."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        from timm.models.vision_transformer import Block

        # ViT's usual 64 channels per head (ViT-S: 384 -> 6 heads), smaller heads for widths 64 does not divide.
        head_dim = next((d for d in (64, 32, 16, 8) if in_channels % d == 0), in_channels)
        heads = in_channels // head_dim
        self.block = Block(in_channels, num_heads=heads, mlp_ratio=4.0, qkv_bias=True)
        self.proj = nn.Linear(in_channels, out_channels) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.block(x))


@register_adapter("vit_block", layout="tokens", description="Vision Transformer block on token sequences")
def vit_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    if stride != 1:
        raise ValueError("a vit_block adapter cannot stride; use resize='bilinear'")
    return VitBlock(in_channels, out_channels)
