"""The arithmetic of starting adapters from data: ridge least squares, information-keeping lifts, norms set from
measured statistics, and the destination's features brought to a step's grid.

The strategies that use them (which adapter is fitted to what, what surrounds it) are the registered starts of
:mod:`stitchkit.starts`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import image_rows

MAX_FIT_ROWS = 65536  # pixels or tokens used by one fit; more only costs time
RIDGE = 1e-2  # ridge strength relative to the mean eigenvalue of the inputs' covariance


def ridge_fit(x: torch.Tensor, y: torch.Tensor, ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` with ``x @ weight.T + bias ~ y`` by ridge-regularised least squares over rows.

    The ridge keeps the fit sane when there are few rows per input channel (small feature maps, few images).
    """
    x, y = _subsample(x, y)
    x64, y64 = x.double(), y.double()
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc, yc = x64 - x_mean, y64 - y_mean
    gram = xc.T @ xc
    scale = gram.diagonal().mean().clamp_min(1e-12)
    weight = torch.linalg.solve(gram + ridge * scale * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc).T
    bias = y_mean - weight @ x_mean
    return weight.to(x.dtype), bias.to(x.dtype)


def lift(x: torch.Tensor, out_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An information-keeping map of rows ``x`` (``N x C``) to ``out_channels``: ``[I; -I; 0]`` when there is room
    for both signs (so that a following ReLU keeps them), ``[I; 0]`` when there is room for one, otherwise the
    leading principal directions of ``x`` (uncentred, so non-negative features keep their sign)."""
    c = x.shape[1]
    weight = torch.zeros(out_channels, c, dtype=x.dtype)
    if out_channels >= 2 * c:
        weight[:c] = torch.eye(c)
        weight[c : 2 * c] = -torch.eye(c)
    elif out_channels >= c:
        weight[:c] = torch.eye(c)
    else:
        rows, _ = _subsample(x, x)
        rows = rows.double()
        _, vectors = torch.linalg.eigh(rows.T @ rows / rows.shape[0])
        weight = vectors[:, -out_channels:].flip(1).T.to(x.dtype)  # largest eigenvalue first
    return weight, torch.zeros(out_channels, dtype=x.dtype)


def _subsample(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape[0] <= MAX_FIT_ROWS:
        return x, y
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:MAX_FIT_ROWS]
    return x[keep], y[keep]


def rows_of(x: torch.Tensor, tokens: bool) -> torch.Tensor:
    """An NLC token batch or an NCHW image batch as rows of channels."""
    return x.reshape(-1, x.shape[-1]) if tokens else image_rows(x)


def channel_stats(x: torch.Tensor, tokens: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of an NCHW image batch or an NLC token batch."""
    rows = rows_of(x, tokens)
    return rows.mean(0), rows.var(0, unbiased=False)


@torch.no_grad()
def set_norm(norm: nn.Module, x: torch.Tensor, tokens: bool, affine: tuple | None = None) -> None:
    """BatchNorm: running statistics of ``x``; any norm: affine ``(weight, bias)`` or the identity affine."""
    if isinstance(norm, nn.Identity):
        return
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        mean, var = channel_stats(x, tokens)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        norm.num_batches_tracked.zero_()
    weight, bias = affine if affine is not None else (torch.ones_like(norm.weight), torch.zeros_like(norm.bias))
    norm.weight.copy_(weight)
    norm.bias.copy_(bias)


def resize_target(target: torch.Tensor, bridge: nn.Module, index: int) -> torch.Tensor:
    """The destination's features at its cut (in the adapters' layout) at the output grid of the bridge's step
    ``index`` (they differ only with ``resize='none'``)."""
    size, out_size = bridge.dst.size, bridge.steps[index].out_size
    tokens, num_prefix_tokens = bridge.tokens, bridge.enter_spec.num_prefix_tokens
    if tuple(size) == tuple(out_size):
        return target
    if tokens:
        from .chain import TokenResize

        return TokenResize(size, out_size, num_prefix_tokens)(target)
    return F.interpolate(target, size=out_size, mode="bilinear", align_corners=False)
