"""Adapters: the small trainable blocks that join a source's features to a destination's.

An adapter maps ``in_channels`` to ``out_channels``. Image adapters work on NCHW tensors and may take a ``stride``
(for integrated downsampling); token adapters work on NLC sequences. What surrounds an adapter in a chain (norms, an
activation) and where its weights start is the business of the chain's start (:mod:`stitchkit.starts`,
``model.adapter_norm``), not of the adapter.

Add your own with :func:`register_adapter`::

    @stitchkit.register_adapter("depthwise", layout="image")
    def depthwise(in_channels, out_channels, stride=1):
        return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels),
                             nn.Conv2d(in_channels, out_channels, 1))

A block with a linear output map that a start can fit by least squares implements :class:`FitsOutputMap`
(``fit_inputs(x)``, ``set_output_map(weight, bias, rows)``, see :class:`ConvAdapter`); register it with
``fits=True``, and its builder takes ``output_map=True`` to build such a map even between equal shapes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from .registry import Registry

LAYOUTS = ("image", "tokens")


@dataclass(frozen=True)
class AdapterType:
    """A registered adapter: its builder ``(in_channels, out_channels, stride) -> nn.Module`` and layout.

    Attributes:
        residual: the block is residual (bottleneck, ViT block): the paper's code puts no norms around it.
        fits: the capability to be fitted, declared once: the builder takes ``output_map=True`` and the block is a
            :class:`FitsOutputMap`, whose output map a start can set by least squares.
        identity_start: between equal shapes (and without an output map) the block starts as an exact identity
            (a bottleneck with its last BatchNorm at zero gamma), so a start need not fit it.
        token_form: for an image adapter that works on each pixel alone (1x1: linear, linear_relu), a builder of
            the same map on token sequences. Between two token models it runs on every token, the class token
            included, as the paper's code stitches ViT to ViT (instead of going through an image, which replaces
            the class token with the mean of the patch tokens).
    """

    name: str
    build: Callable[..., nn.Module]
    layout: str
    description: str
    residual: bool = False
    fits: bool = False
    identity_start: bool = False
    token_form: Callable[..., nn.Module] | None = None  # the same map on token sequences (per-pixel adapters)

    def on_tokens(self) -> "AdapterType":
        """This type's token form (see :attr:`token_form`)."""
        if self.layout == "tokens":
            return self
        if self.token_form is None:
            raise ValueError(f"adapter {self.name!r} has no token form; it runs on images only")
        return replace(self, build=self.token_form, layout="tokens", token_form=None)

    def create(self, in_channels: int, out_channels: int, stride: int = 1, output_map: bool = False) -> nn.Module:
        """Build one block; ``output_map``: with a fittable output map even between equal shapes (``fits`` only)."""
        if not self.fits:
            return self.build(in_channels, out_channels, stride=stride)
        block = self.build(in_channels, out_channels, stride=stride, output_map=output_map)
        if not isinstance(block, FitsOutputMap):
            raise TypeError(f"adapter {self.name!r} is registered with fits=True, so its blocks must implement "
                            "stitchkit.adapters.FitsOutputMap")
        return block


_ADAPTERS: Registry[AdapterType] = Registry("adapter")


def register_adapter(name: str, layout: str = "image", description: str = "", residual: bool = False,
                     fits: bool = False, token_form: Callable[..., nn.Module] | None = None,
                     identity_start: bool = False):
    """Decorator that registers an adapter builder under ``name``; registering a name twice is an error."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = description or next(iter((build.__doc__ or "").strip().splitlines()), "")
        _ADAPTERS.add(name, AdapterType(name, build, layout, doc, residual, fits, identity_start, token_form))
        return build

    return decorate


def list_adapters() -> list[str]:
    return _ADAPTERS.names()


def get_adapter(name: str) -> AdapterType:
    return _ADAPTERS.get(name)


class Adapter(nn.Module):
    """One adapter of a chain: ``act(norm_out(block(norm_in(x))))``; absent parts are identities.

    Attributes:
        block: the registered adapter block.
        norm_in, norm_out: BatchNorm2d (image) or LayerNorm (tokens), or identities, as the chain's start chose.
        act: an activation after the output norm (``paper_code``: LeakyReLU(0.1) after non-residual blocks), or an
            identity.
    """

    def __init__(self, block: nn.Module, norm_in: nn.Module | None = None, norm_out: nn.Module | None = None,
                 act: nn.Module | None = None):
        super().__init__()
        self.norm_in = norm_in or nn.Identity()
        self.block = block
        self.norm_out = norm_out or nn.Identity()
        self.act = act or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm_out(self.block(self.norm_in(x))))


def create_adapter(name: str, in_channels: int, out_channels: int, stride: int = 1, on_tokens: bool = False,
                   output_map: bool = False) -> nn.Module:
    """One block of the registered adapter ``name`` (its token form with ``on_tokens``), with nothing around it
    (a chain's start adds what it needs, see :mod:`stitchkit.starts`)."""
    kind = get_adapter(name)
    return (kind.on_tokens() if on_tokens else kind).create(in_channels, out_channels, stride, output_map)


def has_output_map(block: nn.Module) -> bool:
    """Whether ``block`` has a linear output map that a start can set (see :class:`FitsOutputMap`)."""
    return isinstance(block, FitsOutputMap) and block.has_output_map()


class FitsOutputMap:
    """What a block offers a least-squares start: which inputs its output map sees, and setting that map."""

    def has_output_map(self) -> bool:
        return True

    def fit_inputs(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def set_output_map(self, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def keep_sign(self) -> None:
        """End without the output ReLU: for a destination whose features take negative values, which a ReLU would
        clip (MobileNet's linear bottlenecks, ViT and Swin tokens). Inner activations stay."""
        if hasattr(self, "act_out"):
            self.act_out = nn.Identity()

    def fit_branch(self, x: torch.Tensor, target: torch.Tensor, fit) -> bool:
        """Start a residual block's branch at what its shortcut misses of ``target`` (the wanted output for input
        ``x``), with ``fit(rows_in, rows_out) -> (weight, bias)``; False for a block without a branch (the
        default)."""
        return False


class ConvAdapter(nn.Module, FitsOutputMap):
    """A convolution (1x1 or 3x3, optionally strided), optionally followed by ReLU.

    Its least-squares start puts the fitted map on the kernel's centre tap, which a strided, padded convolution
    applies at input pixels ``stride * i``: exactly the pixels :meth:`fit_inputs` returns.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, relu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.act_out = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_out(self.conv(x))

    def fit_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The input pixels the output map sees, as rows ``(N * H_out * W_out, C_in)``."""
        return image_rows(x[..., :: self.conv.stride[0], :: self.conv.stride[1]])

    @torch.no_grad()
    def set_output_map(self, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor) -> None:
        k = self.conv.kernel_size[0] // 2
        self.conv.weight.zero_()
        self.conv.weight[:, :, k, k] = weight
        self.conv.bias.copy_(bias)


def image_rows(x: torch.Tensor) -> torch.Tensor:
    """An NCHW tensor as rows of pixels ``(N * H * W, C)``."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class TokenLinear(nn.Module, FitsOutputMap):
    """A linear map on every token (optionally followed by ReLU): the token form of ``linear`` / ``linear_relu``."""

    def __init__(self, in_channels: int, out_channels: int, relu: bool = False):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels)
        self.act_out = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_out(self.linear(x))

    def fit_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])

    @torch.no_grad()
    def set_output_map(self, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor) -> None:
        self.linear.weight.copy_(weight)
        self.linear.bias.copy_(bias)


def token_linear(in_channels: int, out_channels: int, stride: int = 1, output_map: bool = False) -> nn.Module:
    """``linear`` on every token (a named function, not a closure: a stitched model pickles whole)."""
    return _token_linear(in_channels, out_channels, stride, relu=False)


def token_linear_relu(in_channels: int, out_channels: int, stride: int = 1, output_map: bool = False) -> nn.Module:
    """``linear_relu`` on every token."""
    return _token_linear(in_channels, out_channels, stride, relu=True)


def _token_linear(in_channels: int, out_channels: int, stride: int, relu: bool) -> nn.Module:
    if stride != 1:
        raise ValueError("a per-token adapter cannot stride; use resize='bilinear'")
    return TokenLinear(in_channels, out_channels, relu)


@register_adapter("linear", description="1x1 convolution (no padding): a per-pixel linear map", fits=True,
                  token_form=token_linear)
def linear(in_channels: int, out_channels: int, stride: int = 1, output_map: bool = False) -> nn.Module:
    return ConvAdapter(in_channels, out_channels, 1, stride)


@register_adapter("linear_relu", description="1x1 convolution followed by ReLU", fits=True,
                  token_form=token_linear_relu)
def linear_relu(in_channels: int, out_channels: int, stride: int = 1,
                output_map: bool = False) -> nn.Module:
    return ConvAdapter(in_channels, out_channels, 1, stride, relu=True)


@register_adapter("conv3x3_relu", description="3x3 convolution followed by ReLU", fits=True)
def conv3x3_relu(in_channels: int, out_channels: int, stride: int = 1,
                 output_map: bool = False) -> nn.Module:
    return ConvAdapter(in_channels, out_channels, 3, stride, relu=True)


class Bottleneck(nn.Module, FitsOutputMap):
    """ResNet bottleneck block: 1x1 reduce to ``out/4``, 3x3 (strided), 1x1 expand, plus a shortcut.

    The shortcut is a 1x1 projection with BatchNorm when the shape changes (or always, with ``project=True``). The
    last BatchNorm starts with zero gamma, so the block starts as its shortcut (the usual trick for residual
    blocks): between equal shapes an exact identity, otherwise the projection, which a least-squares start sets.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, project: bool = False):
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
        self.act_out = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if project or in_channels != out_channels or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act_out(y + self.shortcut(x))

    def has_output_map(self) -> bool:
        return not isinstance(self.shortcut, nn.Identity)

    def fit_inputs(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.conv2.stride
        return image_rows(x[..., :: stride[0], :: stride[1]])

    @torch.no_grad()
    def fit_branch(self, x: torch.Tensor, target: torch.Tensor, fit) -> bool:
        """Start the residual branch at ``target - shortcut(x)``, keeping the shortcut: the first two convolutions
        keep their random start (their norms calibrated on ``x``), and the last one is fitted by ``fit(rows_in,
        rows_out) -> (weight, bias)`` from the branch's hidden features; the last BatchNorm then passes the fit
        through (instead of starting at zero gamma)."""
        residual = target - self.shortcut(x)
        h = self.act(_calibrated(self.bn1, self.conv1(x)))
        h = self.act(_calibrated(self.bn2, self.conv2(h)))
        rows = image_rows(h)
        weight, bias = fit(rows, image_rows(residual))
        self.conv3.weight.copy_(weight[:, :, None, None])
        z = self.conv3(h)
        zr = image_rows(z)
        mean, var = zr.mean(0), zr.var(0, unbiased=False)
        self.bn3.running_mean.copy_(mean)
        self.bn3.running_var.copy_(var)
        self.bn3.weight.copy_(torch.sqrt(var + self.bn3.eps))
        self.bn3.bias.copy_(mean + bias)
        return True

    @torch.no_grad()
    def set_output_map(self, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor) -> None:
        """Set the projection shortcut to ``weight``, and its BatchNorm to pass the projection through unchanged
        (plus ``bias``) in both modes: running statistics and affine parameters from the projected ``rows``."""
        if isinstance(self.shortcut, nn.Identity):
            raise RuntimeError("a bottleneck with an identity shortcut has no output map to set (build it with "
                               "project=True)")
        conv, bn = self.shortcut
        conv.weight.copy_(weight[:, :, None, None])
        projected = rows @ weight.T
        mean, var = projected.mean(0), projected.var(0, unbiased=False)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean + bias)


@register_adapter("bottleneck", description="ResNet bottleneck block (width out/4, projection shortcut)",
                  residual=True, fits=True, identity_start=True)
def bottleneck(in_channels: int, out_channels: int, stride: int = 1,
               output_map: bool = False) -> nn.Module:
    # No projection between equal shapes unless asked: the block is then an exact identity, the fit happens in an
    # earlier adapter of the chain (or nowhere: a self-stitch within one stage), and the MACs stay the paper's.
    return Bottleneck(in_channels, out_channels, stride, project=output_map)


class VitBlock(nn.Module, FitsOutputMap):
    """A pre-norm transformer block (timm's ViT ``Block``), then a linear projection when channels change (or
    always, with ``project=True``: the projection is what a least-squares start sets)."""

    def __init__(self, in_channels: int, out_channels: int, project: bool = False):
        super().__init__()
        from timm.models.vision_transformer import Block

        # ViT's usual 64 channels per head (ViT-S: 384 -> 6 heads), smaller heads for widths 64 does not divide.
        head_dim = next((d for d in (64, 32, 16, 8) if in_channels % d == 0), in_channels)
        heads = in_channels // head_dim
        self.block = Block(in_channels, num_heads=heads, mlp_ratio=4.0, qkv_bias=True)
        self.proj = nn.Linear(in_channels, out_channels) if project or in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.block(x))

    @torch.no_grad()
    def fit_inputs(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        return h.reshape(-1, h.shape[-1])

    @torch.no_grad()
    def set_output_map(self, weight: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor) -> None:
        if isinstance(self.proj, nn.Identity):
            raise RuntimeError("a ViT block without a projection has no output map to set (build it with project=True)")
        self.proj.weight.copy_(weight)
        self.proj.bias.copy_(bias)


@register_adapter("vit_block", layout="tokens", description="Vision Transformer block on token sequences",
                  residual=True, fits=True)
def vit_block(in_channels: int, out_channels: int, stride: int = 1,
              output_map: bool = False) -> nn.Module:
    if stride != 1:
        raise ValueError("a vit_block adapter cannot stride; use resize='bilinear'")
    return VitBlock(in_channels, out_channels, project=output_map)


@torch.no_grad()
def _calibrated(norm: nn.BatchNorm2d, z: torch.Tensor) -> torch.Tensor:
    """``norm(z)`` after setting its running statistics to ``z``'s (so that it acts the same in both modes)."""
    rows = image_rows(z)
    norm.running_mean.copy_(rows.mean(0))
    norm.running_var.copy_(rows.var(0, unbiased=False))
    return norm(z)
