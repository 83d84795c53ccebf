"""A model laid out as a straight line: stem, four stages of blocks, head.

Stitching needs to run "the model up to block k" and "the model from block k on". Classification networks do not
offer that, so each supported architecture family (see :mod:`stitchkit.zoo.families`) describes its model as an
:class:`Anatomy`. The anatomy's modules are the model's own submodules (shared, not copied): running
``stem``, every block, then ``head`` equals ``model(x)``, which the parity tests check for every cut point.

Where a family's stem or head is not a plain module (a ViT's position embedding, a timm ``forward_head``), it is a
:func:`view` of the model: a shallow copy that owns only the submodules and parameters that part needs, so the
model's own methods run unchanged and no parameter belongs to two parts.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import StitchkitError
from ..formats import Format


def view(model: nn.Module, modules: Iterable[str], params: Iterable[str] = (), buffers: Iterable[str] = ()) -> nn.Module:
    """A shallow copy of ``model`` that owns only the named child modules, parameters and buffers.

    Methods of the model (``forward_head``, ``_pos_embed``) can be called on the view; one that touches a part the
    view does not own fails loudly with an AttributeError instead of silently using weights of another part.
    """
    modules, params, buffers = set(modules), set(params), set(buffers)
    part = copy.copy(model)
    part._modules = {k: v for k, v in model._modules.items() if k in modules}
    part._parameters = {k: v for k, v in model._parameters.items() if k in params}
    part._buffers = {k: v for k, v in model._buffers.items() if k in buffers}
    part._non_persistent_buffers_set = set(model._non_persistent_buffers_set) & buffers
    return part


class Call(nn.Module):
    """Runs ``fn(owner, x)`` where ``owner`` is a registered module (usually a :func:`view`).

    A head may have a ``lead``: it runs ``fn(owner, lead(owner, x))``, where ``lead`` is what the model's own
    ``forward_features`` still runs after the last block (timm's final ``norm``) and ``fn`` its ``forward_head``.
    The cut points stay before the lead (the paper cuts at blocks); :func:`stitchkit.zoo.split.split_head` gives
    the two apart.
    """

    lead = None  # what a Call pickled by stitchkit <= 0.9, which had no lead, reads

    def __init__(self, owner: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], name: str = "call",
                 lead: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.owner = owner
        self.fn = fn
        self.label = name
        self.lead = lead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.owner, self.lead(self.owner, x) if self.lead is not None else x)

    def extra_repr(self) -> str:
        return self.label


class SequentialHead(nn.Sequential):
    """A head of plain modules run in order, whose first ``lead`` modules are what the model's own features end
    with (torchvision Swin's final norm, before its pooling). State-dict keys are a ``Sequential``'s."""

    def __init__(self, *modules: nn.Module, lead: int = 0):
        super().__init__(*modules)
        self.lead = lead  # (a slice of the head is a SequentialHead without a lead)


class TooFewBlocks(StitchkitError):
    """A model that does not split into four non-empty stages (:class:`Anatomy`); :func:`~stitchkit.zoo.families.
    dissect` names the model."""


@dataclass
class Anatomy:
    """A model as ``stem -> stages[0] blocks -> ... -> stages[3] blocks -> head``.

    Attributes:
        stem: runs before the first block of stage 1 (``nn.Identity`` when the stage's first block is the stem).
        stages: four lists of blocks. Block 0 of every stage is the block that changes resolution (a strided
            residual block, a patch-merging layer, a patch embedding), so "after the first block" is the paper's
            cut point directly after the stage's downsampling.
        head: runs after the last block of stage 4 and returns logits. What the model's own ``forward_features``
            still runs after that block (a final norm) may lead it: a :class:`Call` with a ``lead``, a
            :class:`SequentialHead`, a graph head with a ``FeaturesEnd`` marker (:mod:`stitchkit.zoo.graph`); a
            network's ``forward_features`` then ends with it.
        formats: layout of the activations between blocks of each stage.
        num_prefix_tokens: prefix (class, register) tokens of token layouts.
        class_token: whether the first prefix token is a class token (:func:`has_class_token`); False when they are
            all registers.
        token_grid: for token layouts, the patch grid for an input size ``(H, W)``.
        block_names: qualified module names of the blocks, parallel to ``stages``, for display.
        reductions: for anatomies cut from a graph, each stage's reduction (input size / feature size); token grids
            of hierarchical token models follow from it.
        stage_prefix_tokens: for anatomies cut from a graph, each stage's prefix tokens (CaiT adds its class token
            only in its last blocks); otherwise ``num_prefix_tokens`` holds for every stage.
        token_order: for models that keep their tokens in another order than row by row (Hiera's mask units), the
            order after ``n`` blocks: ``order(n)[p]`` is the token at row-major position ``p`` (None: row-major).
            A front ends and a back starts with the reordering (:mod:`stitchkit.zoo.split`), so the tokens between
            two models are always row by row.
    """

    stem: nn.Module
    stages: list[list[nn.Module]]
    head: nn.Module
    formats: list[Format]
    num_prefix_tokens: int = 0
    class_token: bool = True
    token_grid: Callable[[tuple[int, int]], tuple[int, int]] | None = None
    block_names: list[list[str]] = field(default_factory=list)
    reductions: list[int] | None = None
    stage_prefix_tokens: list[int] | None = None
    token_order: Callable[[int], torch.Tensor | None] | None = None

    def __post_init__(self):
        if len(self.stages) != 4 or any(len(s) == 0 for s in self.stages):
            sizes = [len(s) for s in self.stages]
            raise TooFewBlocks(
                f"it splits into blocks per stage {sizes}, and a stitch needs four stages of at least one block "
                "each (a model with fewer than four blocks, such as a ViT of depth < 4, cannot be cut: use a "
                "deeper one)")
        if len(self.formats) != 4:
            raise ValueError("an anatomy needs one format per stage")

    def blocks(self) -> list[nn.Module]:
        """All blocks in execution order."""
        return [b for stage in self.stages for b in stage]

    def block_index(self, stage: int, position: str) -> int:
        """Number of blocks run before cutting at ``stage`` (1-based) ``position`` (``first`` or ``end``)."""
        before = sum(len(s) for s in self.stages[: stage - 1])
        return before + (1 if position == "first" else len(self.stages[stage - 1]))

    def prefix_tokens(self, stage: int) -> int:
        """Prefix (class, register) tokens of the token layout at ``stage`` (1-based)."""
        return self.stage_prefix_tokens[stage - 1] if self.stage_prefix_tokens else self.num_prefix_tokens

    def grid(self, stage: int, input_hw: tuple[int, int]) -> tuple[int, int] | None:
        """The patch grid of a token layout at ``stage`` (1-based) for images of ``input_hw``, if known."""
        if self.reductions is not None:
            r = self.reductions[stage - 1]
            return (-(-input_hw[0] // r), -(-input_hw[1] // r))
        return self.token_grid(input_hw) if self.token_grid else None


def has_class_token(model: nn.Module) -> bool:
    """Whether ``model``'s first prefix token is a class token: timm's ``has_class_token`` where the model says it
    (ViT), otherwise whether a ``cls_token`` it declares is set (timm's EVA, whose registers-only variants set it to
    None). Models that declare neither (torchvision's ViT, CaiT's late class token) have one, as before."""
    declared = getattr(model, "has_class_token", None)
    if isinstance(declared, bool):
        return declared
    return getattr(model, "cls_token", True) is not None


def split_evenly(items: Sequence, parts: int) -> list[list]:
    """Split ``items`` into ``parts`` consecutive groups whose sizes differ by at most one (larger groups first)."""
    base, extra = divmod(len(items), parts)
    groups, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        groups.append(list(items[start : start + size]))
        start += size
    return groups


def qualified_names(model: nn.Module) -> dict[int, str]:
    """Map ``id(module)`` to its qualified name inside ``model``."""
    return {id(m): name for name, m in model.named_modules(remove_duplicate=False)}


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's weights (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def input_channels(model: nn.Module) -> int:
    """Input image channels (3 for every ImageNet model, 1 for e.g. a grayscale variant).

    timm models declare it as ``in_chans``; that comes first because the first convolution can see something else
    (TResNet rearranges the image into 48 channels before its first convolution), and before ``pretrained_cfg``,
    which timm leaves at 3 for ``create_model(..., in_chans=1)``. Then ``pretrained_cfg``'s ``input_size`` (a
    stitchkit network records its source's channels there), then the first convolution's input channels, else 3.
    """
    declared = getattr(model, "in_chans", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size") or ()) if isinstance(cfg, dict) else ()
    if len(size) == 3:
        return size[0]
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3
