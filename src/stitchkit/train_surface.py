"""What timm's training code asks of a model besides its head, for stitchkit's networks: ``no_weight_decay()`` (the
names its optimizer factory exempts from weight decay), ``group_matcher()`` (its layer-wise learning-rate decay) and
``set_grad_checkpointing()`` (``train.py --grad-checkpointing``).

:class:`TrainSurface` is mixed into :class:`~stitchkit.network.Network`; each kind says where its own parts are. The
runs of modules that stitchkit executes one by one (:class:`~stitchkit.zoo.Part`, a
:class:`~stitchkit.stitching.Bridge`'s adapters) checkpoint through :func:`run_modules`: the timm models inside a
network never run their own ``forward``, so their own checkpointing flags would change nothing.
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from fnmatch import fnmatch
from functools import partial
from typing import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def mapped_no_weight_decay(network: nn.Module, models: Iterable[nn.Module]) -> tuple[str, ...]:
    """The names, in ``network``, of the parameters that ``models`` (the timm models it was cut from) exempt from
    weight decay through their own ``no_weight_decay()``.

    Matched by identity when the network is built, the only time the whole models are at hand: a network holds
    their blocks and views of them (:func:`stitchkit.zoo.anatomy.view`), and a view answers ``no_weight_decay()``
    for its own parameters at most (Swin lists the position-bias tables of its blocks, which no view holds). The
    names are patterns as timm reads them (``fnmatch``). torchvision's models, which declare none, exempt what
    torchvision's reference training script does (:data:`TORCHVISION_EMBEDDINGS`)."""
    ours = {id(p): name for name, p in network.named_parameters()}
    found: set[str] = set()
    for model in dict.fromkeys(models):  # a model stitched to itself counts once
        for name, p in model.named_parameters():
            if id(p) in ours and _exempt(model, name):
                found.add(ours[id(p)])
    return tuple(sorted(found))


# torchvision's models have no no_weight_decay(); its reference training script exempts, by their own attribute
# name, the transformer embeddings under --transformer-embedding-decay: a ViT's class token, a Swin's or MaxViT's
# relative-position bias tables, and a position embedding, which the script calls position_embedding and
# torchvision's ViT holds as encoder.pos_embedding (both names are taken, so the ViT's is exempt as intended).
TORCHVISION_EMBEDDINGS = frozenset({"class_token", "position_embedding", "pos_embedding",
                                    "relative_position_bias_table"})


def _exempt(model: nn.Module, name: str) -> bool:
    declared = getattr(model, "no_weight_decay", None)
    if callable(declared):
        return any(fnmatch(name, pattern) for pattern in set(declared()))
    if type(model).__module__.startswith("torchvision."):
        return name.rsplit(".", 1)[-1] in TORCHVISION_EMBEDDINGS
    return False


def prefixed(prefix: str, names: Iterable[str]) -> set[str]:
    return {f"{prefix}.{name}" for name in names}


def whole_unit(group: str, *prefixes: str) -> tuple[str, str]:
    """One unit of :meth:`TrainSurface._layer_units`: every parameter under ``prefixes`` (none: no parameter)."""
    return group, "|".join(_under(p) for p in prefixes) or "(?!)"


def bridge_units(chains: dict[str, int], coarse: bool) -> list[tuple[str, str]]:
    """The units of adapter chains (``{prefix of a Bridge: its number of adapters}``) that end at one place (a
    stitch's one; a parallel stitch's, which meet at its fusion): fine, one unit per depth counted from their end,
    so the adapters that feed the destination share a learning rate; coarse, one unit. What a bridge holds besides
    its adapters (the prefix tokens it makes, after image adapters or before token adapters, for the destination's
    prefix positions) goes with its last adapter."""
    after = [re.escape(p) + r"\.(?!adapters\.)" for p in chains]
    if coarse:
        return [whole_unit("adapters", *chains)]
    longest = max(chains.values())
    units = []
    for depth in range(longest, 0, -1):  # adapters from the end
        patterns = [_under(f"{p}.adapters.{n - depth}") for p, n in chains.items() if n >= depth]
        units.append((f"adapters.{longest - depth}", "|".join(patterns + (after if depth == 1 else []))))
    return units


def back_units(back: nn.Module, coarse: bool) -> list[tuple[str, str]]:
    """The units of a destination's back (``back``: its blocks, then its head)."""
    *blocks, head = (f"back.{key}" for key in back._modules)
    if coarse:
        return [whole_unit("blocks", *blocks), whole_unit("head", head)]
    return [*(whole_unit(f"blocks.{i}", b) for i, b in enumerate(blocks)), whole_unit("head", head)]


def _under(prefix: str) -> str:
    return re.escape(prefix) + r"\."


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

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """timm's parameter groups (what ``create_optimizer_v2(model, ..., layer_decay=...)`` scales learning rates
        by, the first group least): the network's parts in the order its forward pass runs them, as regular
        expressions over its parameter names. Fine (``coarse=False``): the stem, every block, every adapter (a
        parallel stitch's by their distance from the fusion), the fusion and the head each a group; coarse: one
        group per part (stem or front, adapters, blocks, head).

        Only what trains makes a group: a frozen part joins the next group that trains (the last, when none
        follows), so a stitch's frozen front and blocks add no steps to the decay of its adapters' learning rates.
        Asked again after ``requires_grad`` changes, it answers for the new state."""
        units = [(name, re.compile(pattern)) for name, pattern in self._layer_units(coarse)]
        trained = [n for n, p in self.named_parameters() if p.requires_grad]
        trains = [any(pattern.match(n) for n in trained) for _, pattern in units]
        if not any(trains):
            return {"all": r"^"}
        groups: dict[str, list[str]] = {}
        waiting: list[str] = []  # frozen units before the next one that trains
        last = ""
        for (name, pattern), train in zip(units, trains):
            if train:
                groups[name], waiting, last = [*waiting, pattern.pattern], [], name
            else:
                waiting.append(pattern.pattern)
        groups[last].extend(waiting)
        return {name: "^(?:" + "|".join(patterns) + ")" for name, patterns in groups.items()}

    def _layer_units(self, coarse: bool) -> list[tuple[str, str]]:
        """The network's parts in forward order, ``(group name, regular expression that matches the start of their
        parameter names)``: one per block, adapter and head (``coarse``: per part). Every parameter is in one."""
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing, as timm's ``train.py --grad-checkpointing`` asks (each kind says what it
        checkpoints)."""
        raise NotImplementedError

    def _checkpoint(self, enable: bool, *runs: nn.Module) -> None:
        """Checkpoint (or not) the modules of ``runs`` (a :class:`~stitchkit.zoo.Part`, a bridge) as
        :func:`run_modules` says."""
        for run in runs:
            run.grad_checkpointing = bool(enable)
        self.grad_checkpointing = bool(enable)


def run_modules(modules: Iterable[nn.Module], x: torch.Tensor, checkpointed: bool = False) -> torch.Tensor:
    """``x`` through ``modules`` in order. ``checkpointed``: each module that the backward pass goes through (it
    trains, or its input carries a gradient: a frozen block after a trained part) keeps only its input and runs
    again during backward (``torch.utils.checkpoint``, non-reentrant), so its activations are not held; modules
    before anything that trains hold nothing for backward and run as they are. The gradients are those of the
    plain run, and so are buffers such as BatchNorm's running statistics (:class:`_KeepBuffers`)."""
    for module in modules:
        if checkpointed and torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in module.parameters())):
            if torch.compiler.is_compiling():  # a compiled graph updates each buffer once, and takes no context
                x = checkpoint(module, x, use_reentrant=False)
            else:
                x = checkpoint(module, x, use_reentrant=False, context_fn=partial(_contexts, module))
        else:
            x = module(x)
    return x


def _contexts(module: nn.Module) -> tuple:
    return nullcontext(), _KeepBuffers(module)


class _KeepBuffers:
    """Around a checkpointed module's second run: its buffers as its first run left them. A module in training mode
    updates buffers as it runs (BatchNorm's running statistics, once per forward pass); running it twice would
    update them twice, and checkpointing would change the trained model."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> None:
        self.saved = [(b, b.clone()) for m in self.module.modules() if m.training for b in m.buffers(recurse=False)]

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for buffer, value in self.saved:
                buffer.copy_(value)
