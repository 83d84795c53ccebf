"""Where a bridge's adapters start: calibrated norms and least-squares fits, measured on a batch of images.

A frozen destination expects its own features at its cut. Adapters that start far from them spend a short training
run getting back, or never do: a trailing BatchNorm at gamma=1, beta=0 hands a ReLU network standardised features
(about half negative) where it expects non-negative ones, and AdamW moves beta by only ~lr per step. So a stitch
looks at a batch of training images once, before training:

* ``dst_stats``: every outer norm's running statistics come from the batch (train and eval mode agree from the
  first step), and the last adapter's output norm starts at the destination's own per-channel mean and standard
  deviation at its cut.
* ``lstsq`` ("direct matching"): the output map (the 1x1 map of a linear adapter, the centre tap of a 3x3 one, a
  bottleneck's projection shortcut, a ViT block's output projection) of the chain's last adapter that has one
  starts as the ridge-regularised least-squares map from what it receives to the destination's own features at its
  cut (resized to that adapter's output). Adapters before it have no destination features of their shape, so they
  start as maps that keep the information: identity on the first channels (and its negation, where there is room,
  so that a ReLU keeps the sign), or the leading principal directions where channels shrink. Adapters after it
  start as identities (a bottleneck between equal shapes). A chain with no output map at all (a bottleneck within
  one stage of one model) starts as an exact identity.

Both work across different models: the targets are measured through the destination's own front, on the same
images preprocessed as the destination expects.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import CALIBRATED_NORMS, image_rows

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


def _has_output_map(block: nn.Module) -> bool:
    return hasattr(block, "fit_inputs") and block.has_output_map()


def _rows(x: torch.Tensor, tokens: bool) -> torch.Tensor:
    """An NLC token batch or an NCHW image batch as rows of channels."""
    return x.reshape(-1, x.shape[-1]) if tokens else image_rows(x)


def channel_stats(x: torch.Tensor, tokens: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of an NCHW image batch or an NLC token batch."""
    rows = _rows(x, tokens)
    return rows.mean(0), rows.var(0, unbiased=False)


@torch.no_grad()
def _set_norm(norm: nn.Module, x: torch.Tensor, tokens: bool, affine: tuple | None = None) -> None:
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


def _resize_target(target: torch.Tensor, size: tuple[int, int], out_size: tuple[int, int], tokens: bool,
                   num_prefix_tokens: int) -> torch.Tensor:
    """The destination's features (grid ``size``) at the last step's output grid (they differ only with
    ``resize='none'``)."""
    if tuple(size) == tuple(out_size):
        return target
    if tokens:
        from .chain import TokenResize

        return TokenResize(size, out_size, num_prefix_tokens)(target)
    return F.interpolate(target, size=out_size, mode="bilinear", align_corners=False)


@torch.no_grad()
def calibrate(bridge: nn.Module, src_features: torch.Tensor, dst_features: torch.Tensor) -> None:
    """Start ``bridge``'s adapters as its ``adapter_norm`` says, from the source's features at its cut and the
    destination's own features at its cut, both for the same images (see the module docstring).

    Does nothing for norms that need no data (``paper_text``, ``paper_code``).
    """
    norm = bridge.adapter_norm
    if norm not in CALIBRATED_NORMS:
        return
    was_training = bridge.training
    bridge.eval()  # calibrated running statistics are what the forward passes below must use
    try:
        tokens = bridge.tokens
        x = bridge.enter(src_features)
        target = bridge.target(dst_features)
        prefix = bridge.enter_spec.num_prefix_tokens
        last = len(bridge.adapters) - 1
        if norm == "lstsq":  # the fit goes to the last adapter with an output map; later ones are identities
            mapped = [i for i, step in enumerate(bridge.adapters) if _has_output_map(step.adapter.block)]
            last = mapped[-1] if mapped else last
        for i, step in enumerate(bridge.adapters):
            x = step.resize(x)
            adapter = step.adapter
            goal = _resize_target(target, bridge.dst.size, bridge.steps[i].out_size, tokens, prefix) if i == last else None
            if norm == "dst_stats" or not hasattr(adapter.block, "fit_inputs"):  # (no fit: calibrated output norm)
                _set_norm(adapter.norm_in, x, tokens)
                z = adapter.block(adapter.norm_in(x))
                affine = None
                if goal is not None:
                    mean, var = channel_stats(goal, tokens)
                    affine = (torch.sqrt(var), mean)
                _set_norm(adapter.norm_out, z, tokens, affine)
            elif _has_output_map(adapter.block):  # lstsq
                rows = adapter.block.fit_inputs(x)
                out_channels = bridge.steps[i].out_channels
                weight, bias = ridge_fit(rows, _rows(goal, tokens)) if goal is not None else lift(rows, out_channels)
                adapter.block.set_output_map(weight, bias, rows)
            x = adapter(x)
        bridge.calibrated = True
    finally:
        bridge.train(was_training)
