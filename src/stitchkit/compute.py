"""Compute and size of any model: multiply-accumulates (MACs) and parameters.

MACs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2), which covers convolutions and
matrix products. The paper's "FLOPs" are MACs in this sense (ResNet-50 at 224 px: 4.089 G). Unlike the paper's tool,
attention's two matrix products are counted too: on the CPU, ``scaled_dot_product_attention`` runs as a fused kernel
the stock counter has no formula for, so one is registered here.

Counted: convolutions (grouped and depthwise by their own weights), linear layers, matrix products and attention's
two products. Not counted: biases, norms, activations, softmax, element-wise adds and products, pooling and resizes
(bilinear, area). A count is of one forward pass in eval mode: per image for :func:`count_macs`, for the whole batch
given to :func:`count_macs_on`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .zoo.anatomy import input_channels
from .zoo.families import default_input_size
from .zoo.spec import as_size


def _attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of softmax(Q K^T) V: two batched matrix products, 2 FLOPs per multiply-accumulate."""
    *batch, q_len, dim = query_shape
    k_len, v_dim = key_shape[-2], value_shape[-1]
    b = 1
    for d in batch:
        b *= d
    return 2 * b * q_len * k_len * dim + 2 * b * q_len * k_len * v_dim


def _cpu_flash_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return _attention_flops(query, key, value)


def _custom_formulas() -> dict:
    formulas = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        formulas[op] = _cpu_flash_attention
    return formulas


def count_macs(model: nn.Module, input_size: int | tuple[int, ...] | None = None) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on one image of ``input_size``, in eval mode.

    ``input_size`` defaults to the size the model says it takes (timm's ``pretrained_cfg["input_size"]``: a stitch
    built for 32 px is counted at 32 px, not at the 224 px of its parts' weights), else 224 px.

    Example:
        >>> count_macs(timm.create_model("resnet50")) / 1e9
        4.089...
    """
    if input_size is None:
        input_size = own_input_size(model)
    height, width = as_size(input_size)
    channels = input_size[0] if isinstance(input_size, tuple) and len(input_size) == 3 else input_channels(model)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    return count_macs_on(model, torch.zeros(1, channels, height, width, device=device))


def own_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The ``(channels, height, width)`` that ``model`` was built for: the size of
    :func:`stitchkit.zoo.default_input_size` (stitchkit's own record of it, a timm transformer's patch embedding,
    timm's ``pretrained_cfg``; else ImageNet's 224 px) with its channels (:func:`~stitchkit.zoo.input_channels`)."""
    return (input_channels(model), *default_input_size(model))


def count_macs_on(model: nn.Module, inputs: torch.Tensor) -> int:
    """Multiply-accumulates of ``model(inputs)`` in eval mode: for a part of a model that takes features, not
    images (the front, adapters and back of a stitch are counted separately and add up to the whole)."""
    was_training = model.training
    model.eval()
    # Not under no_grad: torch's module tracker inside FlopCounterMode fails on some models (timm's attention
    # pooling) when autograd is off. One image's graph is small, and on the meta device it costs nothing.
    # nn.MultiheadAttention's fused "fast path" (taken in eval mode when no weight needs a gradient: a frozen part of
    # torchvision's ViT) is one opaque op the counter has no formula for; switched off, the same attention runs as
    # linear layers and scaled_dot_product_attention, which it counts. The arithmetic is the same.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        counter = FlopCounterMode(display=False, custom_mapping=_custom_formulas())
        with counter:
            model(inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once); ``trainable_only`` counts those with ``requires_grad``."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen and (p.requires_grad or not trainable_only):
            seen.add(id(p))
            total += p.numel()
    return total
