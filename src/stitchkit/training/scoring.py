"""Top-1 / top-5 accuracy and mean loss over a whole evaluation split, for one model or for several that share a
front (the runs of one pass)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .. import faults
from ..errors import StitchkitError
from . import distributed
from .runtime import Runtime


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, runtime: Runtime) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean loss over a whole split, summed over ranks."""
    was_training = model.training
    model.eval()
    try:
        return evaluate_heads(None, [model], loader, runtime)[0]
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_heads(front: nn.Module | None, heads: list[nn.Module], loader: DataLoader,
                   runtime: Runtime) -> list[dict[str, float]]:
    """:func:`evaluate` for several models that share ``front`` (``None``: the heads see the images), in one pass.

    Each head maps the front's output to logits; the caller puts the models in evaluation mode.
    """
    device = runtime.device
    totals = [torch.zeros(4, dtype=torch.float64, device=device) for _ in heads]  # correct@1, @5, loss sum, count
    skipped = torch.zeros((), dtype=torch.float64, device=device)  # images skipped as corrupt (data.skip_corrupt)
    for images, labels, batch_skipped, _ in loader:
        skipped += batch_skipped
        if images.numel() == 0:
            continue
        images, labels = runtime.to_device(images, labels)
        with runtime.autocast():
            inputs = front(images) if front is not None else images
            logits_per_head = [head(inputs) for head in heads]
        faults.point("evaluation")
        for logits, total in zip(logits_per_head, totals):
            loss = F.cross_entropy(logits.float(), labels, reduction="sum")
            k = min(5, logits.shape[-1])
            hits = logits.topk(k, dim=-1).indices.eq(labels[:, None])
            total += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), loss,
                                  torch.tensor(labels.numel(), device=device)]).double()
    results = []
    for total in totals:
        summed = distributed.all_reduce_sum(torch.cat([total, skipped[None]]), runtime.ctx).tolist()
        correct1, correct5, loss_sum, count, lost = summed
        if count == 0:
            raise StitchkitError("the evaluation split yielded no images (all skipped as corrupt?)")
        results.append({"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count,
                        "images": int(count), "skipped": int(lost)})
    return results
