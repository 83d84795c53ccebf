"""Which runs can train in one pass, and the sharing of their frozen parts (the pass itself is
:class:`~stitchkit.training.loop.TrainingPass`, started by :func:`~stitchkit.training.train_group`).

Stitches from the same source cut (the same source model, weights and source stage) that read the same data in the
same order compute the same front output on every batch. A :class:`~stitchkit.training.loop.TrainingPass` runs
that front once per batch and hands its output to every member's adapters and frozen back; each member has its own
optimizer, scheduler, checkpoints and run directory, and members whose frozen backs are identical share one copy in
memory (only in ``frozen_mode=eval``, where a frozen back has no state that a forward pass changes).

Why the results equal separate runs: every member is built exactly as a lone run builds it (the same seed before
the same construction), the data order and augmentation depend only on (seed, epoch, index), the front runs without
autograd in both cases, and nothing in the loop draws random numbers (frozen parts in eval mode have no dropout, and
the adapters have none). On CPU the results are bitwise equal; on GPU, kernels may choose other algorithms for other
memory layouts, so they agree up to floating-point tolerance.

What can share a pass: stitches (``mode=stitch``) in ``frozen_mode=eval`` whose configs agree on every setting except
the per-run ones in :data:`PER_RUN_KEYS` and the destination stage of the gap. Frozen parts in training mode (the
paper's own code) update BatchNorm statistics and draw dropout masks per forward pass, which one shared pass cannot
reproduce for each run.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..chain import parse_gap
from ..errors import StitchkitError
from .config import Config, flatten
from .settings import per_run_keys, per_source

# Settings each member of a group may choose for itself (declared per setting in config.py). Everything else is
# shared: the data, the loop (epochs, batch sizes, seed, device, precision) and the source front.
PER_RUN_KEYS = per_run_keys()


def why_not_groupable(settings: Config | Mapping[str, Any]) -> str | None:
    """Why this run (a config, or its flat ``key: value`` settings) cannot train in a group; None when it can."""
    flat = flatten(settings) if isinstance(settings, Config) else settings
    from .modes import get_mode

    if not get_mode(flat["mode"]).shares_front:
        return f"mode={flat['mode']} trains the whole network, so there is no frozen front to share"
    if flat["model.frozen_mode"] != "eval":
        return ("model.frozen_mode=train updates the frozen parts' BatchNorm statistics in every forward pass, which "
                "one shared pass cannot do for each run")
    return None


def group_key(settings: Config | Mapping[str, Any]) -> tuple | None:
    """Runs with equal keys can train in one pass; None for runs that must train alone. Takes a config or its flat
    ``key: value`` settings (what a sweep has for each cell without building thousands of configs)."""
    flat = flatten(settings) if isinstance(settings, Config) else settings
    if why_not_groupable(flat) is not None:
        return None
    shared = tuple(sorted((k, repr(v)) for k, v in flat.items() if k not in PER_RUN_KEYS))
    gaps = per_source(flat["model.gap"], flat["model.src"])  # a parallel stitch: each source's stage
    return shared + (("source stage", tuple(parse_gap(g)[0] for g in gaps)),)


def check_groupable(configs: Sequence[Config]) -> None:
    """Raise a :class:`StitchkitError` naming the first reason these runs cannot train in one pass."""
    for config in configs:
        reason = why_not_groupable(config)
        if reason is not None:
            raise StitchkitError(f"cannot train {config.output.dir or 'this run'} in a group: {reason}")
    keys = [dict(group_key(c)) for c in configs]
    for config, key in zip(configs[1:], keys[1:]):
        differing = sorted(k for k in key.keys() | keys[0].keys() if key.get(k) != keys[0].get(k))
        if differing:
            raise StitchkitError(
                f"runs in one group must share the data, the loop and the source front, but {differing[0]} differs "
                f"({keys[0].get(differing[0])} vs {key.get(differing[0])}); train them in separate groups"
            )
    dirs = [c.output.dir for c in configs]
    if None in dirs or len(set(dirs)) != len(dirs):
        raise StitchkitError("every run in a group needs its own output.dir")


def partition(keys: Sequence[tuple | None], max_size: int | None = None) -> list[list[int]]:
    """Indices of runs with these :func:`group_key` values in groups that can train together, in order of first
    appearance (a run whose key is None trains alone), at most ``max_size`` per group."""
    by_key: dict[tuple, list[int]] = defaultdict(list)
    groups: list[list[int]] = []
    for i, key in enumerate(keys):
        if key is None:
            groups.append([i])
        else:
            if not by_key[key]:
                groups.append(by_key[key])
            by_key[key].append(i)
    out = []
    for group in groups:
        size = max_size or len(group)
        out += [group[i:i + size] for i in range(0, len(group), size)]
    return out


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules have the same structure, parameters and buffers."""
    if a is b:
        return True
    if type(a) is not type(b) or repr(a) != repr(b):
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def share_frozen_parts(models: Sequence[nn.Module]) -> nn.Module:
    """Make the stitched ``models`` use one front (checked to be identical), and one back wherever their backs are
    identical; returns the front. Parallel stitches share all their fronts (and the renormalisation before each)."""
    from ..parallel import ParallelStitchedModel

    parallel = isinstance(models[0], ParallelStitchedModel)
    names = ("fronts", "inputs") if parallel else ("front",)  # the frozen modules before the adapters
    for model in models[1:]:
        if not all(same_weights(getattr(models[0], n), getattr(model, n)) for n in names):
            what = " + ".join(model.config.srcs) if parallel else f"{model.config.src} at stage {model.config.gap[0]}"
            raise StitchkitError(
                f"the runs of a group must have the same source front, but {what} differs from the first run's "
                "(other weights?); train them in separate groups"
            )
        for n in names:
            setattr(model, n, getattr(models[0], n))
    backs: list[nn.Module] = []
    for model in models:
        if getattr(model, "trained_back", ()):
            continue  # its back trains (a new head, unfreeze_last): its own, or its checkpoint saves another's
        twin = next((b for b in backs if same_weights(b, model.back)), None)
        if twin is None:
            backs.append(model.back)
        else:
            model.back = twin
    return models[0].shared_fronts() if parallel else models[0].front
