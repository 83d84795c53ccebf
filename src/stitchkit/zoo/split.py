"""Cut a model into a front and a back at one of its cut points."""
from __future__ import annotations

import os

from torch import nn

from .anatomy import Anatomy
from .families import dissect
from .models import resolve_model
from .spec import as_size, check_cut


class Part(nn.Sequential):
    """A run of a model's own modules (shared with the model, not copied), applied in order."""


def front_part(anatomy: Anatomy, blocks: int) -> Part:
    """The stem and the first ``blocks`` blocks."""
    return Part(anatomy.stem, *anatomy.blocks()[:blocks])


def back_part(anatomy: Anatomy, blocks: int) -> Part:
    """Every block after the first ``blocks``, then the head."""
    return Part(*anatomy.blocks()[blocks:], anatomy.head)


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
