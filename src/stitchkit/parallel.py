"""Parallel stitching: the fronts of several source models into one destination back, their adapter chains fused.

``create_parallel(["resnet18", "vit_small_patch16_224"], "resnet50", gaps="1:3", fusion="gate")`` keeps each source up
to its cut, gives each its own chain of adapters to the destination's cut (one single stitch's bridge each, built
by :func:`~stitchkit.stitching.build_stitch`, so every adapter, resizing and start a single stitch has applies), fuses
the chains' outputs and runs the destination from its cut on. Only the adapters and the fusion train.

Every fusion starts as the mean of the chains' outputs: each chain starts where the destination expects its features
(stitchkit's fitted start), so their mean starts there too, and the fused model starts no worse than its fronts'
average. The fusions (:data:`FUSIONS`):

* ``sum``: a learned weight per source (starting at 1/n), a weighted sum.
* ``concat``: the outputs concatenated along channels and projected back by a 1x1 map (a linear map per token),
  starting as the mean.
* ``gate``: a learned per-channel softmax over the sources (starting uniform): each channel chooses its mix.

The paper names this as future work; its public code carries configurations for it without results.
"""
from __future__ import annotations

import copy
import dataclasses
import numbers
from dataclasses import dataclass, replace

import torch
from torch import nn

from .chain import parse_gap
from .errors import IncompatibleError, StitchkitError, unknown_name
from .formats import FeatureSpec, Format
from .network import Network
from .train_surface import back_units, bridge_units, mapped_no_weight_decay, prefixed, whole_unit
from .starts import DEFAULT_START, get_start
from .stitching import (StitchConfig, StitchedModel, build_stitch, check_choices, square_input_size,
                        stitch_architecture, stitch_cuts, stitch_models, train_back_head)
from .zoo import input_channels, resolve_model
from .zoo.models import classes_or_none, fit_head, num_outputs

FUSIONS = ("sum", "concat", "gate")


@dataclass
class ParallelConfig:
    """Several single stitches into one destination: ``stitches[i]`` is source i's stitch (its gap, adapters and
    start), every one with the same destination, destination cut and head; ``fusion`` joins their bridges."""

    stitches: tuple[StitchConfig, ...]
    fusion: str = "sum"

    def __post_init__(self):
        self.stitches = tuple(self.stitches)
        if len(self.stitches) < 2:
            raise StitchkitError("a parallel stitch needs two sources or more; for one source train a single "
                                 "stitch (model.src=A, not a list)")
        if self.fusion not in FUSIONS:
            raise unknown_name("fusion", self.fusion, FUSIONS)
        first = self.stitches[0]
        for other in self.stitches[1:]:
            if other.dst != first.dst or other.dst_checkpoint != first.dst_checkpoint:
                raise IncompatibleError("every source of a parallel stitch goes into the same destination")
            if other.dst_cut != first.dst_cut:
                raise IncompatibleError(
                    f"the fronts must meet the destination at one cut, but gap {_gap(first)} enters {first.dst} at "
                    f"stage {first.dst_cut[0]} ({first.dst_cut[1]}) and gap {_gap(other)} at stage {other.dst_cut[0]} "
                    f"({other.dst_cut[1]}); give every source the same destination stage y, with x < y for all or "
                    "x == y for all")
            if (other.num_classes, other.train_head, other.unfreeze_last) != (first.num_classes, first.train_head,
                                                                             first.unfreeze_last):
                raise IncompatibleError("every source of a parallel stitch shares the destination's head and back: "
                                        "give them one num_classes, train_head and unfreeze_last")

    @property
    def srcs(self) -> tuple[str, ...]:
        return tuple(s.src for s in self.stitches)

    @property
    def dst(self) -> str:
        return self.stitches[0].dst


def _gap(config: StitchConfig) -> str:
    return f"{config.gap[0]}:{config.gap[1]}"


class Fusion(nn.Module):
    """Joins n tensors of one shape (the destination's features at its cut) into one; channels on ``dim``."""

    def __init__(self, method: str, sources: int, channels: int, dim: int):
        super().__init__()
        self.method, self.sources, self.channels, self.dim = method, sources, channels, dim
        if method == "sum":
            self.weight = nn.Parameter(torch.full((sources,), 1.0 / sources))
        elif method == "gate":
            self.logits = nn.Parameter(torch.zeros(sources, channels))
        elif method == "concat":
            self.project = nn.Linear(sources * channels, channels)
            with torch.no_grad():  # the mean of the sources, as the other fusions start
                self.project.weight.copy_(torch.cat([torch.eye(channels) / sources] * sources, dim=1))
                self.project.bias.zero_()
        else:
            raise unknown_name("fusion", method, FUSIONS)

    def no_weight_decay(self) -> set[str]:
        """The mixing weights (the sum's per source, the gate's logits) are no layer's weights: decay would shrink
        the sum's (a weaker input to the back) and pull the gate towards equal mixing whatever the data says, so
        they are exempt, as timm exempts its models' scales and tokens. The concat's projection decays as any
        layer."""
        return {"weight"} if self.method == "sum" else {"logits"} if self.method == "gate" else set()

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.movedim(self.dim, -1)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if self.method == "sum":
            return sum(w * p for w, p in zip(self.weight, parts))
        if self.method == "gate":
            gates = torch.softmax(self.logits, dim=0)  # (sources, channels): each channel's mix
            shape = [1] * parts[0].dim()
            shape[self.dim] = self.channels
            return sum(g.view(shape) * p for g, p in zip(gates, parts))
        joined = torch.cat([self._channels_last(p) for p in parts], dim=-1)
        return self.project(joined).movedim(-1, self.dim)


class Renormalize(nn.Module):
    """Pixels normalised for one model (``mean``/``std`` of the first source, as the data gives them) renormalised
    for another: ``(x * std_from + mean_from - mean_to) / std_to``, per channel."""

    def __init__(self, mean_from, std_from, mean_to, std_to):
        super().__init__()
        as_column = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        self.register_buffer("scale", as_column(std_from) / as_column(std_to), persistent=False)
        self.register_buffer("shift", (as_column(mean_from) - as_column(mean_to)) / as_column(std_to),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def _renormalization(source_cfg: dict, pixels_cfg: dict) -> nn.Module:
    """What front ``source_cfg`` needs in front of it when the images are preprocessed as ``pixels_cfg`` says."""
    same = (tuple(source_cfg["mean"]), tuple(source_cfg["std"])) == (tuple(pixels_cfg["mean"]),
                                                                      tuple(pixels_cfg["std"]))
    return nn.Identity() if same else Renormalize(pixels_cfg["mean"], pixels_cfg["std"], source_cfg["mean"],
                                                  source_cfg["std"])


def _run_fronts(inputs: nn.ModuleList, fronts: nn.ModuleList, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every front on the same images, each fed them renormalised as it expects."""
    return tuple(front(prepare(x)) for prepare, front in zip(inputs, fronts))


def _fuse(bridges: nn.ModuleList, fusion: "Fusion", features) -> torch.Tensor:
    """Each source's chain on its front's features, joined by the fusion: what the destination's back receives."""
    return fusion([bridge(h) for bridge, h in zip(bridges, features)])


class Fronts(nn.Module):
    """Every source's front on the same images, each fed them normalised as it expects: a tuple of features. The
    part that runs of one training pass share (their fused chains then differ: fusion, adapters, gaps' ends)."""

    def __init__(self, inputs: nn.ModuleList, fronts: nn.ModuleList):
        super().__init__()
        self.inputs, self.fronts = inputs, fronts

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _run_fronts(self.inputs, self.fronts, x)


class FusedTail(nn.Module):
    """What follows the fronts: each source's chain, the fusion, the destination's back."""

    def __init__(self, bridges: nn.ModuleList, fusion: "Fusion", back: nn.Module):
        super().__init__()
        self.bridges, self.fusion, self.back = bridges, fusion, back

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.back(_fuse(self.bridges, self.fusion, features))


class ParallelStitchedModel(Network, nn.Module):
    """Frozen fronts, one trainable bridge each, a trainable fusion, one frozen destination back."""

    folder_kind = "parallel"

    def __init__(self, stitches: list[StitchedModel], fusion: Fusion, config: ParallelConfig):
        super().__init__()
        self.config = config
        # The images come preprocessed for the first source (its pretrained_cfg is this model's); a front that
        # expects other normalisation gets them renormalised on the way in.
        self.inputs = nn.ModuleList(_renormalization(s.pretrained_cfg, stitches[0].pretrained_cfg) for s in stitches)
        self.fronts = nn.ModuleList(s.front for s in stitches)
        self.bridges = nn.ModuleList(s.bridge for s in stitches)
        self.fusion = fusion
        self.back = stitches[0].back  # every stitch's back is the destination's, cut at the same place
        self.trained_back = stitches[0].trained_back
        self.dst_spec = stitches[0].dst_spec
        self.src_specs = [s.src_spec for s in stitches]  # where each front was cut (stitchkit inspect shows them)
        self._back_parts = stitches[0].trained_parts()[1:]  # the back's trained blocks and head, by name
        self._one_model = [getattr(s, "one_model", False) for s in stitches]
        self.train(self.training)

    def train(self, mode: bool = True) -> "ParallelStitchedModel":
        super().train(mode)
        if self.config.stitches[0].frozen_mode == "eval":
            self.fronts.eval()
            self.back.eval()
            for i in getattr(self, "trained_back", ()):
                self.back[i].train(mode)
        return self

    def tail(self) -> FusedTail:
        """The forward pass after the fronts, sharing this model's parts (as :meth:`StitchedModel.tail
        <stitchkit.stitching.StitchedModel.tail>`): runs of one pass compute the fronts once per batch."""
        return FusedTail(self.bridges, self.fusion, self.back)

    def shared_fronts(self) -> Fronts:
        return Fronts(self.inputs, self.fronts)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """The fused adapter outputs: what the destination's back receives at its cut."""
        with torch.no_grad():
            features = _run_fronts(self.inputs, self.fronts, x)
        return _fuse(self.bridges, self.fusion, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.back(self.fused(x))

    def head(self) -> nn.Module:
        return self.back[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.back[:-1](self.fused(x))

    def features_spec(self) -> FeatureSpec:
        return self.dst_spec.block_features[-1]  # the back ends with the destination's last block (or its cut)

    def trained_parts(self) -> list[str]:
        return ["adapters", "fusion", *self._back_parts]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"bridges.{k}": v for k, v in self.bridges.state_dict().items()}
        state.update({f"fusion.{k}": v for k, v in self.fusion.state_dict().items()})
        for i in self.trained_back:
            state.update({f"back.{i}.{k}": v for k, v in self.back[i].state_dict().items()})
        return state

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.trained_state_dict()
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise RuntimeError(f"the state does not fit this parallel stitch (missing {missing[:3]}, extra "
                               f"{extra[:3]}); it was saved from another one")
        self.load_state_dict(state, strict=False)

    def _layer_units(self, coarse: bool) -> list[tuple[str, str]]:
        chains = {f"bridges.{i}": len(bridge.adapters) for i, bridge in enumerate(self.bridges)}
        return [whole_unit("fronts", "inputs", "fronts"), *bridge_units(chains, coarse), whole_unit("fusion", "fusion"),
                *back_units(self.back, coarse)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's ``train.py --grad-checkpointing``), as a single stitch's: each adapter
        of every chain and every module of the back, its frozen blocks included, keeps only its input and runs
        again during backward. The fronts run without autograd; the fusion holds little."""
        self._checkpoint(enable, *self.bridges, self.back)

    def _own_no_weight_decay(self) -> set[str]:
        names = prefixed("fusion", self.fusion.no_weight_decay())
        for i, bridge in enumerate(self.bridges):
            names |= prefixed(f"bridges.{i}", bridge.no_weight_decay())
        return names

    def _plan_head(self, num_classes: int):
        # As a single stitch's (StitchedModel._plan_head): every source's record says what the shared head is now,
        # and a new classifier trains (and is saved) with the adapters.
        stitches = [replace(s, num_classes=num_classes, train_head=s.train_head or num_classes > 0)
                    for s in self.config.stitches]
        config = replace(self.config, stitches=stitches)

        def record() -> None:
            self.config = config
            if num_classes > 0:
                train_back_head(self)
                if "head" not in self._back_parts:
                    self._back_parts = [*self._back_parts, "head"]
        return record

    def cuts(self) -> list[dict[str, str]]:
        """Where each source's stitch cuts its models (:func:`~stitchkit.stitching.stitch_cuts`): its front, and the
        destination's back (the same for all)."""
        return [stitch_cuts(s, spec, self.dst_spec) for s, spec in zip(self.config.stitches, self.src_specs)]

    def check_saved_cuts(self, architecture: dict, *, source: str, written_by: str | None,
                         trust_cuts: bool = False, trust_hint: str = "trust_cuts=True", fix: str | None = None) -> None:
        """As a single stitch's (:meth:`StitchedModel.check_saved_cuts
        <stitchkit.stitching.StitchedModel.check_saved_cuts>`), for every source's record."""
        from .saved_cuts import Part, check_cuts

        records = architecture.get("stitches") or []
        check_cuts([Part(s, now, (records[i].get("cuts") if i < len(records) else None), bridge.steps)
                    for i, (s, now, bridge) in enumerate(zip(self.config.stitches, self.cuts(), self.bridges))],
                   source=source, written_by=written_by, trust_cuts=trust_cuts, trust_hint=trust_hint, fix=fix)

    def architecture(self) -> dict:
        """What rebuilds it without weights: the fusion and each source's single-stitch architecture (as the model
        is now: a head replaced since it was built is recorded), with where it cuts its models."""
        classes = classes_or_none(self)  # the head itself: pretrained_cfg is the user's to change
        return {"fusion": self.config.fusion, "stitches": [stitch_architecture(s, one, classes, cuts) for s, one, cuts
                                                           in zip(self.config.stitches, self._one_model, self.cuts())]}

    @classmethod
    def from_architecture(cls, architecture: dict) -> "ParallelStitchedModel":
        from .zoo import create_model

        singles = [dict(a) for a in architecture["stitches"]]
        first = singles[0]
        size, classes = first["input_size"], first.get("head_classes")
        dst = create_model(first["dst"], input_size=size, **({"num_classes": classes} if classes else {}))
        srcs = [dst if a.get("one_model") else create_model(a["src"], input_size=size) for a in singles]
        keep = set(StitchConfig.__dataclass_fields__) - {"pretrained", "src_checkpoint", "dst_checkpoint"}
        configs = [StitchConfig(**{k: (tuple(v) if k == "gap" else v) for k, v in a.items() if k in keep})
                   for a in singles]
        model = build_parallel(ParallelConfig(configs, architecture["fusion"]), srcs, dst)
        for bridge in model.bridges:
            bridge.calibrated = True  # the saved weights replace the starting point
        return model

    @classmethod
    def describe(cls, architecture: dict, head: str) -> str:
        fronts = ", ".join(f"**{s['src']}** up to and including the first block of its stage {s['gap'][0]}"
                           for s in architecture["stitches"])
        return (f"A parallel stitch: {fronts}, each with its own adapters, fused by {architecture['fusion']}, then "
                f"**{architecture['stitches'][0]['dst']}** from its cut on, with {head}.")


def _own_models(src_models: list[nn.Module]) -> list[nn.Module]:
    """The source models, a model given for a second source copied: every front its own modules. A module under two
    fronts would be saved once (safetensors keeps one name of a shared tensor) and load into no rebuilt model
    (rebuilt, the fronts are two models; shared again, torch's BatchNorm fills in the second name's
    num_batches_tracked, which safetensors then calls unexpected), and sweeps priced it once. Sharing the
    destination's model with one source stays: front and back are other modules of it."""
    seen, own = set(), []
    for model in src_models:
        own.append(copy.deepcopy(model) if id(model) in seen else model)
        seen.add(id(model))
    return own


def _per_source(calibration_images, sources: int) -> list:
    """``calibration_images`` as one entry per source (None: none for any), checked: the chains are built by zipping
    them, so a list one short would build a stitch without the last front (one too long would drop images) without
    a word, and one batch for all would be cut into single images."""
    if calibration_images is None:
        return [None] * sources
    if isinstance(calibration_images, torch.Tensor) or callable(calibration_images) \
            or len(calibration_images) != sources:
        got = "one batch" if isinstance(calibration_images, torch.Tensor) else "a function" \
            if callable(calibration_images) else f"{len(calibration_images)} entries"
        raise StitchkitError(f"calibration_images takes one entry per source, {sources} here (the images for that "
                             f"source, or a pair: for the source, for the destination), but got {got}; for the "
                             f"same images for every source pass [images] * {sources}")
    return list(calibration_images)


def build_parallel(config: ParallelConfig, src_models: list[nn.Module] | None = None,
                   dst_model: nn.Module | None = None, *, calibration_images=None, calibration_device=None,
                   check: bool = True) -> ParallelStitchedModel:
    """The parallel stitch ``config`` describes. ``calibration_images``: per source, what
    :func:`~stitchkit.stitching.build_stitch` takes (the images for that source, or a (source, destination) pair);
    each chain starts fitted to the destination's features as a single stitch does."""
    first = config.stitches[0]
    if dst_model is None:
        _, dst_model = stitch_models(first)
    if src_models is None:
        src_models = [dst_model if s.src == s.dst and s.src_checkpoint == s.dst_checkpoint else
                      resolve_model(s.src, s.pretrained, s.src_checkpoint, s.input_size)[0] for s in config.stitches]
    if len(src_models) != len(config.stitches):
        raise StitchkitError(f"{len(config.stitches)} sources but {len(src_models)} source models")
    src_models = _own_models(src_models)
    images = _per_source(calibration_images, len(config.stitches))
    # No classifier (num_classes=0) is dropped from the parallel stitch's head below, not from each source's own
    # stitch: the network asks its head for the classifier it dropped.
    singles = [replace(s, num_classes=None) if s.num_classes == 0 else s for s in config.stitches]
    stitches = [build_stitch(s, src, dst_model, calibration_images=im, check=False,
                             calibration_device=calibration_device if im is not None else None)
                for s, src, im in zip(singles, src_models, images)]
    exit_spec = stitches[0].bridge.exit_spec
    for s in stitches[1:]:
        if s.bridge.exit_spec != exit_spec:
            raise IncompatibleError(f"the chains of {first.src} and {s.config.src} hand the destination different "
                                    f"shapes ({exit_spec.shape} vs {s.bridge.exit_spec.shape}): with resize='none' "
                                    "each chain keeps its source's resolution; use resize='bilinear' so that every "
                                    "chain ends at the destination's")
    dim = 1 if exit_spec.format is Format.NCHW else -1
    channels = exit_spec.channels
    model = ParallelStitchedModel(stitches, Fusion(config.fusion, len(stitches), channels, dim), config)
    model._mapped_no_weight_decay = mapped_no_weight_decay(model, [*src_models, dst_model])
    model.start_seconds = sum(s.start_seconds for s in stitches)  # fitting every chain's start (training reports it)
    if calibration_device is not None:
        model.to(calibration_device)
    # pixels reach every front at once: the first source's preprocessing (as a single stitch's, its source's)
    model.pretrained_cfg = {**stitches[0].pretrained_cfg, "architecture": "parallel:" + "+".join(config.srcs)
                            + f"->{config.dst}"}
    if first.num_classes == 0:
        model.reset_classifier(0)
    if check:
        size = first.input_size
        with torch.no_grad():
            model.eval()(torch.zeros(1, input_channels(model), size, size, device=next(model.parameters()).device))
        model.train()
    return model


def create_parallel(srcs: list[str | nn.Module], dst: str | nn.Module, gaps: str | tuple | list = "1:3",
                    fusion: str = "sum", adapter: str = "bottleneck", resize: str = "bilinear",
                    pretrained: bool = False, input_size: int = 224, *, src_checkpoints: list | None = None,
                    dst_checkpoint=None, num_classes: int | None = None, new_head: bool | None = None,
                    train_head: bool | None = None, prefix_in: str | None = None, calibration_images=None,
                    calibration_device=None, check: bool = True, **options) -> ParallelStitchedModel:
    """Fronts of ``srcs`` into the back of ``dst``. ``gaps``: one for all sources, or one per source, all entering
    the destination at the same stage. ``calibration_images``: one entry per source, as
    :func:`~stitchkit.stitching.create_stitched` takes them. ``num_classes``, ``new_head``, ``train_head``,
    ``prefix_in`` and ``options`` (any other :class:`~stitchkit.stitching.StitchConfig` field) mean what they mean
    for :func:`~stitchkit.stitching.create_stitched`; ``check=False`` skips the test image (pricing on the meta
    device).

    Example:
        >>> model = create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3", input_size=32)
    """
    if isinstance(srcs, (str, nn.Module)) or len(srcs) < 2:
        raise StitchkitError("a parallel stitch needs two sources or more; for one source use create_stitched")
    if fusion not in FUSIONS:  # before any model is built
        raise unknown_name("fusion", fusion, FUSIONS)
    _per_source(calibration_images, len(srcs))
    # One gap for all: a string, or a pair of stages (numpy integers too, as parse_gap takes them).
    one_gap = isinstance(gaps, str) or (isinstance(gaps, tuple) and len(gaps) == 2
                                        and all(isinstance(g, numbers.Integral) for g in gaps))
    gaps = [gaps] * len(srcs) if one_gap else list(gaps)
    if len(gaps) != len(srcs):
        raise StitchkitError(f"{len(srcs)} sources but {len(gaps)} gaps: give one gap for all or one per source")
    checkpoints = list(src_checkpoints or [None] * len(srcs))
    if len(checkpoints) != len(srcs):
        raise StitchkitError(f"{len(srcs)} sources but {len(checkpoints)} checkpoints: give one per source (None "
                             "where a source has none)")
    prefix_in = prefix_in or get_start(options.get("adapter_norm", DEFAULT_START)).prefix_in
    # Every name and gap before any model is built (building two or more models first took seconds to say a name
    # was misspelt), as create_stitched checks them.
    fields = {f.name: f.default for f in dataclasses.fields(StitchConfig)}  # (the defaults of the choices)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise StitchkitError(f"create_parallel got unknown option(s) {', '.join(unknown)}; the options are "
                             "StitchConfig's fields: " + ", ".join(sorted(fields)))
    gaps = [parse_gap(g) for g in gaps]
    chosen = {**fields, **options}
    check_choices(adapter, resize, chosen["prefix_out"], prefix_in, chosen["frozen_mode"], chosen["adapter_norm"])
    input_size = square_input_size(input_size)  # before any model is built for it
    dst_model, dst_name = resolve_model(dst, pretrained, dst_checkpoint, input_size)
    new_head = num_classes != 0 and fit_head(dst_model, num_classes, new_head)  # 0: none (build_parallel drops it)
    if new_head:
        num_classes = num_outputs(dst_model)
    train_head = new_head if train_head is None else train_head

    def source(src, checkpoint) -> tuple[nn.Module, str]:
        # A source named as the destination, with its checkpoint, is the destination's model, built once, as
        # create_stitched builds a model stitched to itself and build_parallel rebuilds this config: a second copy
        # cost its memory and time, and its chain started as between two models, not within one.
        if isinstance(src, str) and src == dst and (str(checkpoint) if checkpoint else None) == (
                str(dst_checkpoint) if dst_checkpoint else None):
            return dst_model, dst_name
        return resolve_model(src, pretrained, checkpoint, input_size)

    models, names = zip(*(source(s, c) for s, c in zip(srcs, checkpoints)))
    configs = [StitchConfig(name, dst_name, g, adapter=adapter, resize=resize, input_size=input_size,
                            pretrained=bool(pretrained), src_checkpoint=str(c) if c else None,
                            dst_checkpoint=str(dst_checkpoint) if dst_checkpoint else None,
                            num_classes=num_classes if new_head or num_classes == 0 else None,
                            train_head=bool(train_head),
                            prefix_in=prefix_in, **options)
               for name, g, c in zip(names, gaps, checkpoints)]
    return build_parallel(ParallelConfig(configs, fusion), list(models), dst_model,
                          calibration_images=calibration_images, calibration_device=calibration_device, check=check)


__all__ = ["FUSIONS", "Fronts", "FusedTail", "Fusion", "ParallelConfig", "ParallelStitchedModel", "build_parallel", "create_parallel"]
