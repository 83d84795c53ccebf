"""Adapters: the small trainable blocks that join a source's features to a destination's.

An adapter maps ``in_channels`` to ``out_channels``. Image adapters work on NCHW tensors and may take a ``stride``
(for integrated downsampling); token adapters work on NLC sequences. :func:`create_adapter` wraps the registered
block in an :class:`Adapter` whose norms depend on ``norm`` (see :data:`ADAPTER_NORMS`): where an adapter starts
decides what a short training run can reach, because the frozen destination expects its own feature statistics at
its cut and a trailing norm that starts at gamma=1, beta=0 hands it standardised features instead.

Add your own with :func:`register_adapter`::

    @stitchkit.register_adapter("depthwise", layout="image")
    def depthwise(in_channels, out_channels, stride=1):
        return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels),
                             nn.Conv2d(in_channels, out_channels, 1))

A block that also offers ``fit_inputs(x)`` and ``set_output_map(weight, bias, rows)`` (see :class:`ConvAdapter`)
can start from a least-squares fit (``norm="lstsq"``); register it with ``fits=True``. Other blocks get an output
norm under ``lstsq`` that starts at the destination's per-channel statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .registry import Registry

LAYOUTS = ("image", "tokens")

# Where an adapter starts. Measured side by side in docs/adapter_start.md, which also gives the rule that chose the
# default; the others stay available to reproduce the paper or compare.
ADAPTER_NORMS = {
    "lstsq": "no outer norms; the output map of the chain's last adapter that has one starts as a least-squares fit "
             "from what it receives to the destination's own features at its cut, on a batch of training images "
             "(direct matching, as SN-Net initialises its stitching layers); earlier adapters start as "
             "information-keeping lifts; where the destination's features take negative values, the adapters from "
             "the fitted one on end without their output ReLU",
    "dst_stats": "a norm before and after each adapter, calibrated on a batch of training images: the last output "
                 "norm starts at the destination's own per-channel mean and spread at its cut",
    "paper_code": "as the paper's public code: no outer norms around bottleneck and ViT-block adapters (a "
                  "bottleneck between equal shapes starts as an exact identity), BatchNorm + LeakyReLU(0.1) after "
                  "the others",
    "paper_text": "as the paper's text: BatchNorm (LayerNorm for tokens) before and after each adapter, at their "
                  "default initialisation (stitchkit's default before 0.2)",
}
DEFAULT_ADAPTER_NORM = "lstsq"
CALIBRATED_NORMS = ("lstsq", "dst_stats")  # need a batch of images to start where they should


@dataclass(frozen=True)
class AdapterType:
    """A registered adapter: its builder ``(in_channels, out_channels, stride) -> nn.Module`` and layout.

    Attributes:
        residual: the block is residual (bottleneck, ViT block): the paper's code puts no norms around it.
        fits: the block takes ``fit_ready=True`` (and ``needs_map``: have an output map even between equal shapes)
            and then offers ``has_output_map()``, ``fit_inputs`` and ``set_output_map``, so ``norm="lstsq"`` can
            start it.
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
    token_form: Callable[..., nn.Module] | None = None  # the same map on token sequences (per-pixel adapters)


_ADAPTERS: Registry[AdapterType] = Registry("adapter")


def register_adapter(name: str, layout: str = "image", description: str = "", residual: bool = False,
                     fits: bool = False, token_form: Callable[..., nn.Module] | None = None):
    """Decorator that registers an adapter builder under ``name``; registering a name twice is an error."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = description or next(iter((build.__doc__ or "").strip().splitlines()), "")
        _ADAPTERS.add(name, AdapterType(name, build, layout, doc, residual, fits, token_form))
        return build

    return decorate


def list_adapters() -> list[str]:
    return _ADAPTERS.names()


def get_adapter(name: str) -> AdapterType:
    return _ADAPTERS.get(name)


def check_adapter_norm(norm: str) -> None:
    from .errors import unknown_name

    if norm not in ADAPTER_NORMS:
        raise unknown_name("adapter norm", norm, tuple(ADAPTER_NORMS))


class Adapter(nn.Module):
    """One adapter of a chain: ``act(norm_out(block(norm_in(x))))``; absent parts are identities.

    Attributes:
        block: the registered adapter block.
        norm_in, norm_out: BatchNorm2d (image) or LayerNorm (tokens), or identities.
        act: LeakyReLU(0.1) after the norm (``paper_code`` for non-residual blocks), or an identity.
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


def create_adapter(name: str, in_channels: int, out_channels: int, stride: int = 1,
                   norm: str = DEFAULT_ADAPTER_NORM, needs_map: bool = False, on_tokens: bool = False) -> Adapter:
    """The registered adapter ``name`` with the norms that ``norm`` (a key of :data:`ADAPTER_NORMS`) puts around it.

    ``lstsq`` and ``dst_stats`` adapters start where they should only once calibrated on images (which
    :func:`~stitchkit.create_stitched` does when given ``calibration_images``); uncalibrated, they start at their
    default initialisation. ``needs_map`` (``lstsq``): build an output map to fit even between equal shapes.
    ``on_tokens``: build an image adapter's token form (see :class:`AdapterType`), with LayerNorms.
    """
    check_adapter_norm(norm)
    kind = get_adapter(name)
    if on_tokens and kind.layout == "image":
        if kind.token_form is None:
            raise ValueError(f"adapter {name!r} has no token form; it runs on images only")
        kind = AdapterType(name, kind.token_form, "tokens", kind.description, kind.residual, kind.fits)
    make_norm = nn.BatchNorm2d if kind.layout == "image" else nn.LayerNorm
    if norm == "lstsq":
        if kind.fits:
            return Adapter(kind.build(in_channels, out_channels, stride=stride, fit_ready=True, needs_map=needs_map))
        # A block without a fittable output map: an output norm that calibration starts at the destination's
        # per-channel statistics (as dst_stats does, without the input norm).
        return Adapter(kind.build(in_channels, out_channels, stride=stride), norm_out=make_norm(out_channels))
    block = kind.build(in_channels, out_channels, stride=stride)
    if norm == "paper_text" or norm == "dst_stats":
        return Adapter(block, make_norm(in_channels), make_norm(out_channels))
    if kind.residual:  # paper_code
        return Adapter(block)
    return Adapter(block, norm_out=make_norm(out_channels), act=nn.LeakyReLU(0.1))


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


def _token_linear(relu: bool):
    def build(in_channels: int, out_channels: int, stride: int = 1, fit_ready: bool = False,
              needs_map: bool = False) -> nn.Module:
        if stride != 1:
            raise ValueError("a per-token adapter cannot stride; use resize='bilinear'")
        return TokenLinear(in_channels, out_channels, relu)

    return build


@register_adapter("linear", description="1x1 convolution (no padding): a per-pixel linear map", fits=True,
                  token_form=_token_linear(relu=False))
def linear(in_channels: int, out_channels: int, stride: int = 1, fit_ready: bool = False,
           needs_map: bool = False) -> nn.Module:
    return ConvAdapter(in_channels, out_channels, 1, stride)


@register_adapter("linear_relu", description="1x1 convolution followed by ReLU", fits=True,
                  token_form=_token_linear(relu=True))
def linear_relu(in_channels: int, out_channels: int, stride: int = 1, fit_ready: bool = False,
                needs_map: bool = False) -> nn.Module:
    return ConvAdapter(in_channels, out_channels, 1, stride, relu=True)


@register_adapter("conv3x3_relu", description="3x3 convolution followed by ReLU", fits=True)
def conv3x3_relu(in_channels: int, out_channels: int, stride: int = 1, fit_ready: bool = False,
                 needs_map: bool = False) -> nn.Module:
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
                  residual=True, fits=True)
def bottleneck(in_channels: int, out_channels: int, stride: int = 1, fit_ready: bool = False,
               needs_map: bool = False) -> nn.Module:
    # No projection between equal shapes unless asked: the block is then an exact identity, the fit happens in an
    # earlier adapter of the chain (or nowhere: a self-stitch within one stage), and the MACs stay the paper's.
    return Bottleneck(in_channels, out_channels, stride, project=needs_map)


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
def vit_block(in_channels: int, out_channels: int, stride: int = 1, fit_ready: bool = False,
              needs_map: bool = False) -> nn.Module:
    if stride != 1:
        raise ValueError("a vit_block adapter cannot stride; use resize='bilinear'")
    return VitBlock(in_channels, out_channels, project=fit_ready)
