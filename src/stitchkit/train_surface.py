"""What timm's training code asks of a model besides its head, for stitchkit's networks: ``no_weight_decay()`` (the
names its optimizer factory exempts from weight decay).

:class:`TrainSurface` is mixed into :class:`~stitchkit.network.Network`; each kind says where its own parts are.
"""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Iterable

from torch import nn


def mapped_no_weight_decay(network: nn.Module, models: Iterable[nn.Module]) -> tuple[str, ...]:
    """The names, in ``network``, of the parameters that ``models`` (the timm models it was cut from) exempt from
    weight decay through their own ``no_weight_decay()``.

    Matched by identity when the network is built, the only time the whole models are at hand: a network holds
    their blocks and views of them (:func:`stitchkit.zoo.anatomy.view`), and a view answers ``no_weight_decay()``
    for its own parameters at most (Swin lists the position-bias tables of its blocks, which no view holds). The
    names are patterns as timm reads them (``fnmatch``)."""
    ours = {id(p): name for name, p in network.named_parameters()}
    found: set[str] = set()
    for model in dict.fromkeys(models):  # a model stitched to itself counts once
        declared = getattr(model, "no_weight_decay", None)
        if not callable(declared):
            continue
        patterns = set(declared())
        for name, p in model.named_parameters():
            if id(p) in ours and any(fnmatch(name, pattern) for pattern in patterns):
                found.add(ours[id(p)])
    return tuple(sorted(found))


def prefixed(prefix: str, names: Iterable[str]) -> set[str]:
    return {f"{prefix}.{name}" for name in names}


class TrainSurface:
    """timm's training surface over a network's own parameter names (mixed into
    :class:`~stitchkit.network.Network`)."""

    # The names that the timm models a network was cut from exempt from weight decay, as the network calls them
    # (:func:`mapped_no_weight_decay`); set where the network is built.
    _mapped_no_weight_decay: tuple[str, ...] = ()

    def no_weight_decay(self) -> set[str]:
        """The parameters that should not be weight-decayed, by name (timm's ``create_optimizer_v2`` reads them;
        so does ``stitchkit train`` with ``optim.no_decay_norm_bias=true``): whatever the timm models inside
        exempt (a ViT's ``cls_token`` and ``pos_embed``, a Swin's position-bias tables), named as this network
        holds them, and stitchkit's own tokens and mixing weights (a bridge's learned prefix tokens, a parallel
        stitch's fusion weights), which, like a ViT's class token, decay would only pull towards zero."""
        return set(self._mapped_no_weight_decay) | self._own_no_weight_decay()

    def _own_no_weight_decay(self) -> set[str]:
        """Parameters of stitchkit's own modules that no weight decay should pull (by name in the network)."""
        return set()
