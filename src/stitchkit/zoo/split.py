"""Cut a model into a front and a back at one of its cut points."""
from __future__ import annotations

import os

import torch
from torch import nn

from ..train_surface import run_modules
from .anatomy import Anatomy, Call, SequentialHead
from .families import dissect
from .graph import split_graph_head
from .models import resolve_model
from .spec import as_size, check_cut


class Part(nn.Sequential):
    """A run of a model's own modules (shared with the model, not copied), applied in order
    (``grad_checkpointing``: checkpointed, see :func:`stitchkit.train_surface.run_modules`)."""

    grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.grad_checkpointing:
            return super().forward(x)
        return run_modules(self, x, checkpointed=True)


class TokenOrder(nn.Module):
    """Tokens ``[B, N, C]`` put in another order: ``x[:, index]`` (no weights; the index is rebuilt with the part)."""

    def __init__(self, index: torch.Tensor):
        super().__init__()
        self.register_buffer("index", index.long(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


def front_part(anatomy: Anatomy, blocks: int) -> Part:
    """The stem and the first ``blocks`` blocks (their tokens row by row, whatever order the model keeps)."""
    order = anatomy.token_order(blocks) if anatomy.token_order else None
    return Part(anatomy.stem, *anatomy.blocks()[:blocks], *([TokenOrder(order)] if order is not None else []))


def back_part(anatomy: Anatomy, blocks: int) -> Part:
    """Every block after the first ``blocks``, then the head (taking tokens row by row)."""
    order = anatomy.token_order(blocks) if anatomy.token_order else None
    return Part(*([TokenOrder(torch.argsort(order))] if order is not None else []), *anatomy.blocks()[blocks:],
                anatomy.head)


def split(
    model: str | nn.Module,
    stage: int,
    position: str = "first",
    pretrained: bool | str = False,
    checkpoint_path: str | os.PathLike | None = None,
    input_size: int | tuple[int, int] | None = None,
) -> tuple[Part, Part]:
    """Cut ``model`` after ``stage``'s first block (``position="first"``) or at its end (``"end"``).

    Returns ``(front, back)`` with ``back(front(x)) == model(x)``. Both share the model's weights.

    Args:
        model: a supported model name (see :func:`list_models`) or instance.
        stage: 1..4.
        position: ``first`` or ``end``.
        pretrained, checkpoint_path, input_size: as for :func:`create_model`, when ``model`` is a name.

    Example:
        >>> front, back = stitchkit.split("resnet50", stage=2, position="first")
        >>> front(torch.randn(1, 3, 224, 224)).shape
        torch.Size([1, 512, 28, 28])
    """
    check_cut(stage, position)
    model, _ = resolve_model(model, pretrained, checkpoint_path, input_size)
    anatomy = dissect(model, as_size(input_size) if input_size is not None else None)
    n = anatomy.block_index(stage, position)
    return front_part(anatomy, n), back_part(anatomy, n)


def split_head(head: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """``(lead, rest)``: the part of ``head`` that the model's own ``forward_features`` runs (None when its features
    end at the last block) and the part after it, ``rest(lead(x)) == head(x)``. Both share ``head``'s modules, and
    ``rest`` names them as ``head`` does (``rest.get_submodule(name)`` is ``head``'s classifier). A head cut from
    an exported graph (:mod:`stitchkit.zoo.graph`) has a lead where it marks one (a ``FeaturesEnd``): two graph
    modules; the lead's ``features_format`` is the layout of its output."""
    if isinstance(head, Call) and getattr(head, "lead", None) is not None:
        return Call(head.owner, head.lead, "lead"), Call(head.owner, head.fn, head.label)
    if isinstance(head, SequentialHead) and head.lead:
        return head[: head.lead], head[head.lead :]
    if isinstance(head, torch.fx.GraphModule):  # a head cut from a graph: a lead where it marks one
        parts = split_graph_head(head)
        if parts is not None:
            return parts
    return None, head
