"""The paper's optimizer and schedule: AdamW over the trainable parameters, cosine annealing to 0 stepped per
optimizer step, after a linear warm-up where the adapters' start asks for one (the paper's recipe has none)."""
from __future__ import annotations

import math
from fnmatch import fnmatch

import torch
from torch import nn

from ..stitching import Bridge
from .settings import OptimConfig


def cosine_with_warmup(total_steps: int, warmup_steps: int):
    """LR factor at optimizer step ``s``: linear warm-up, then cosine annealing to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """One group, every trainable parameter decayed (the paper's recipe); ``no_decay_norm_bias``: norms, biases
    and what the model names in ``no_weight_decay()`` (a ViT's class token and position embedding, a bridge's
    learned tokens, a fusion's mixing weights; timm's rule: patterns, ``fnmatch``) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    exempt = _no_weight_decay(model)
    decay = [p for p in params if p.dim() > 1 and id(p) not in exempt]
    other = [p for p in params if p.dim() <= 1 or id(p) in exempt]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def _no_weight_decay(model: nn.Module) -> set[int]:
    """The parameters (by id) that ``model.no_weight_decay()`` names, as timm's optimizer factory matches them."""
    declared = getattr(model, "no_weight_decay", None)
    patterns = set(declared()) if callable(declared) else set()
    return {id(p) for name, p in model.named_parameters() if any(fnmatch(name, pattern) for pattern in patterns)}


def warmup_steps(model: nn.Module, o: OptimConfig, total_steps: int) -> int:
    """Optimizer steps of linear warm-up: ``optim.warmup_steps`` when given, else ``optim.warmup`` of the run, else
    what the adapters' start asks for (:meth:`stitchkit.starts.Start.warmup`; the largest over a model's bridges,
    none for a model without adapters)."""
    if o.warmup_steps:
        return o.warmup_steps
    share = o.warmup
    if share is None:
        share = max((m.warmup() for m in model.modules() if isinstance(m, Bridge)), default=0.0)
    return round(share * total_steps)


def build_optimizer(model: nn.Module, o: OptimConfig, total_steps: int, device: torch.device,
                    warmup: int | None = None):
    """``(AdamW, LambdaLR)`` for ``model``'s trainable parameters (fused AdamW on CUDA), the schedule warmed up
    over ``warmup`` steps (default: :func:`warmup_steps`)."""
    optimizer = torch.optim.AdamW(param_groups(model, o.weight_decay, o.no_decay_norm_bias), lr=o.lr,
                                  betas=(o.beta1, o.beta2), fused=device.type == "cuda")
    warmup = warmup_steps(model, o, total_steps) if warmup is None else warmup
    schedule = cosine_with_warmup(total_steps, warmup)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
