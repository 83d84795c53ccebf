"""The training modes, one registry: each mode knows what network it trains, how to check its settings, how its
runs are named and recorded, and whether its runs may share a frozen front. Everything that used to branch on the
mode's name asks its :class:`Mode` instead, as timm's model registry stands in for a chain of ``if name == ...``.

* ``stitch``: frozen source front + trainable adapters + frozen destination back.
* ``finetune``: the paper's fine-tuning baseline: one model cut across the gap, every weight trainable.
* ``scratch``: a whole model from random initialisation (small source models for the demo and the findings).
* ``probe``: one model frozen but for a new head (and its last blocks): the baseline of a stitch for a new task.
"""
from __future__ import annotations

import io
from typing import Callable

import torch
from torch import nn

from ..adapters import list_adapters
from ..chain import RESIZE_MODES, gap_cuts, parse_gap
from ..errors import StitchkitError, unknown_name
from ..files import atomic_write_bytes
from ..finetune import FinetuneBaseline, create_finetune_baseline
from ..probe import HeadProbe, create_probe
from ..registry import Registry
from ..rundir import RunDir
from ..starts import get_start
from ..network import Network
from ..parallel import FUSIONS, ParallelStitchedModel, create_parallel
from ..stitching import StitchedModel, create_stitched
from ..zoo import input_channels
from ..zoo.metadata import preprocessing
from ..zoo.models import create_model, fit_head, num_outputs
from .settings import Config

Calibration = Callable[[str, int], torch.Tensor]

# The model settings that shape a stitch besides its models, gap, method, weights and heads, named as
# create_stitched and create_parallel take them. Training builds with them (Stitch.build, ParallelStitch.build) and
# a sweep's dry run prices with them (stitchkit.sweeps.dryrun), so a setting listed here reaches both; the heads'
# settings (num_classes, new_head, train_head, unfreeze_last) reach the dry run through its Heads.
STITCH_SETTINGS = ("prefix_out", "prefix_in", "readd_pos_embed", "frozen_mode", "adapter_norm", "token_adapters")


# The model settings only some modes use (Mode.uses says which). One set away from its default in a mode that does
# not use it is refused (Mode.refuse_unused): it would be accepted, saved in config.yaml and silently ignored.
OPTIONAL_MODEL_SETTINGS = ("gap", "adapter", "resize", "fusion", *STITCH_SETTINGS, "init_images")
# Defaults of earlier versions (0.5 changed these), which every run of then recorded, whatever its mode, and which
# its checkpoint's digest holds: such a run is resumed with them given, so they are not refused either.
# init_images was 256 until 0.12 (now null: the start chooses, docs/calibration_images.md).
EARLIER_DEFAULTS = {"adapter_norm": ("lstsq",), "prefix_in": ("mean",), "init_images": (256,)}


def stitch_settings(model_config) -> dict:
    """``{name: value}`` of :data:`STITCH_SETTINGS` in a :class:`~stitchkit.training.settings.ModelConfig`."""
    return {name: getattr(model_config, name) for name in STITCH_SETTINGS}


class Mode:
    """One way of training. Subclasses set the flags and implement :meth:`build`."""

    name: str = ""
    description: str = ""
    joins_models: bool = False  # a destination model (model.dst) and an adapter chain
    has_gap: bool = True  # the model is cut across model.gap
    shares_front: bool = False  # its runs may train in one pass over a shared frozen front
    sweeps_lr: bool = False  # a sweep's baselines list learning rates for it (they name its cells)
    chooses_trained: bool = False  # model.train_head / model.unfreeze_last choose what trains besides the new part
    loads_pretrained: bool = True  # model.pretrained applies (to the models without a checkpoint)
    uses: frozenset[str] = frozenset()  # the OPTIONAL_MODEL_SETTINGS it uses
    # The class of the network it builds (its model folder's kind); None: a whole library model.
    network: type[Network] | None = None

    def validate(self, config: Config) -> None:
        """Settings this mode needs or cannot honour; each error names the fix."""
        m = config.model
        if self.has_gap:
            for gap in m.source_gaps():
                parse_gap(gap)

    def unused_settings(self, m) -> list[str]:
        """The model settings (field names of ``m``, a model config) this mode would ignore, set away from their
        defaults (and from earlier versions' defaults, :data:`EARLIER_DEFAULTS`): model.train_head and
        model.unfreeze_last where it trains every weight, and the :data:`OPTIONAL_MODEL_SETTINGS` it does not use."""
        from .settings import ModelConfig

        defaults = ModelConfig()
        unused = [] if self.chooses_trained else [key for key in ("train_head", "unfreeze_last")
                                                  if getattr(m, key) != getattr(defaults, key)]
        return unused + [key for key in OPTIONAL_MODEL_SETTINGS if key not in self.uses and getattr(m, key) not in
                         (getattr(defaults, key), *EARLIER_DEFAULTS.get(key, ()))]

    def refuse_unused(self, config: Config) -> None:
        """Refuse the :meth:`unused_settings`, naming the mode and the keys. Not asked of a run's saved config.yaml,
        which records every setting, used or not; a sweep leaves its base's out of the cells of modes that do not
        use them (:meth:`stitchkit.sweeps.grid.Sweep.config`)."""
        m = config.model
        unused = self.unused_settings(m)
        if {"train_head", "unfreeze_last"} & set(unused):
            raise StitchkitError(f"model.train_head and model.unfreeze_last choose what a stitch or a probe trains; "
                                 f"mode={self.name} trains every weight: remove them, or use mode=stitch or probe")
        if not unused:
            return
        users = [name for name in MODES.names() if any(key in MODES.get(name).uses for key in unused)]
        where = f"mode={' or '.join(users)}" if users else "a parallel stitch (model.src=[A, B])"
        listed = ", ".join(f"model.{key}={getattr(m, key)}" for key in unused)
        one = len(unused) == 1
        raise StitchkitError(f"mode={self.name} does not use {listed} ({'it' if one else 'they'} would be ignored): "
                             f"remove {'it' if one else 'them'}, or use {where}")

    def build(self, config: Config, num_data_classes: int, calibration: Calibration | None = None,
              device: torch.device | None = None) -> nn.Module:
        """The network to train; its head predicts ``num_data_classes`` classes."""
        raise NotImplementedError

    def build_for_pricing(self, src: nn.Module, dst: nn.Module, gap: str | None, adapter: str, resize: str,
                          input_size: int) -> nn.Module:
        """The network from already built models (on the meta device for a sweep's dry run), for MACs and
        parameters; its trainable parameters are the ones that require grad."""
        raise NotImplementedError

    def run_dir_parts(self, config: Config) -> list[str]:
        """The parts of a run's default folder name (``runs/<parts joined by ->-seed<N>``)."""
        m = self.model_settings(config)
        models = f"{m['src']}--{m['dst']}" if self.joins_models else m["src"]
        parts = [self.name, models.replace(":", "_").replace("/", "_")]
        if self.has_gap:
            parts.append(m["gap"].replace(":", "to"))
        if self.joins_models:
            parts += [m["adapter"], m["resize"]]
        return parts

    def model_settings(self, config: Config) -> dict:
        """What ``result.json`` records of the model: the settings this mode uses, None for the others."""
        m = config.model
        stitch = self.joins_models
        return {"src": m.src, "dst": (m.dst or m.src) if stitch else m.src, "gap": m.gap if self.has_gap else None,
                "adapter": m.adapter if stitch else None, "resize": m.resize if stitch else None,
                "adapter_norm": m.adapter_norm if stitch else None, "frozen_mode": m.frozen_mode if stitch else None,
                "num_classes": m.num_classes}


MODES: Registry[Mode] = Registry("mode", "modes are stitch, finetune, scratch and probe")


def register_mode(mode: Mode) -> Mode:
    return MODES.add(mode.name, mode)


def get_mode(name: str) -> Mode:
    return MODES.get(name)


class Stitch(Mode):
    name = "stitch"
    network = StitchedModel
    description = "train adapters between a frozen source front and a frozen destination back"
    joins_models = True
    shares_front = True
    chooses_trained = True
    uses = frozenset({"gap", "adapter", "resize", *STITCH_SETTINGS, "init_images"})

    def validate(self, config: Config) -> None:
        super().validate(config)
        get_start(config.model.adapter_norm)
        if config.model.adapter not in list_adapters():
            raise unknown_name("adapter", config.model.adapter, list_adapters())
        if config.model.resize not in RESIZE_MODES:
            raise unknown_name("resize mode", config.model.resize, RESIZE_MODES)

    def build(self, config, num_data_classes, calibration=None, device=None):
        """The destination's head must predict the data's classes: its own (frozen unless ``model.train_head``), or
        a new one of ``model.num_classes`` that trains with the adapters (with ``model.unfreeze_last`` blocks)."""
        m, size = config.model, config.data.input_size
        images = None
        if calibration is not None and get_start(m.adapter_norm).needs_images:
            dst = m.dst or m.src

            def start_images(bridge) -> tuple[torch.Tensor, torch.Tensor]:  # once the chain is built: its count
                count = calibration_count(m, bridge)
                src_images = calibration(m.src, count)
                return src_images, (src_images if preprocessing(dst) == preprocessing(m.src) else
                                    calibration(dst, count))
            images = start_images
        model = create_stitched(
            m.src, m.dst or m.src, gap=m.gap, adapter=m.adapter, resize=m.resize, pretrained=m.pretrained,
            input_size=size, src_checkpoint=m.src_checkpoint, dst_checkpoint=m.dst_checkpoint, **stitch_settings(m),
            num_classes=m.num_classes or (num_data_classes if m.new_head else None),  # new_head: for this data
            new_head=m.new_head or None, train_head=m.train_head,
            unfreeze_last=m.unfreeze_last,
            calibration_images=images, calibration_device=device if images is not None else None,
        )
        _check_classes(model, m, size, num_data_classes)
        return model

    def build_for_pricing(self, src, dst, gap, adapter, resize, input_size):
        return create_stitched(src, dst, gap, adapter, resize, input_size=input_size, check=False)


class ParallelStitch(Stitch):
    """``mode=stitch`` with several sources (``model.src=[A, B]``): each source's front with its own adapter chain to
    the destination's cut, the chains fused by ``model.fusion``, the destination's back after (see
    :mod:`stitchkit.parallel`). Chosen by :func:`mode_for`; not a mode name of its own."""

    network = ParallelStitchedModel
    description = "train adapters from several frozen source fronts, fused into one frozen destination back"
    uses = Stitch.uses | {"fusion"}

    def validate(self, config: Config) -> None:
        super().validate(config)
        m = config.model
        if m.fusion not in FUSIONS:
            raise unknown_name("fusion", m.fusion, FUSIONS)
        gaps = m.source_gaps()
        entries = {gap_cuts(*parse_gap(g))[1] for g in gaps}
        if len(entries) > 1:
            raise StitchkitError(
                f"the sources of a parallel stitch must meet {m.dst} at one cut, but model.gap={gaps} enters it at "
                f"{len(entries)} places; give every source the same destination stage Y, with X < Y for all sources "
                "or X == Y for all")

    def build(self, config, num_data_classes, calibration=None, device=None):
        m, size = config.model, config.data.input_size
        images = None
        if calibration is not None and get_start(m.adapter_norm).needs_images:
            def chain(src: str):  # each source's chain, once built: its start's count, drawn once per model
                return lambda bridge: (calibration(src, count := calibration_count(m, bridge)),
                                       calibration(m.dst, count))

            images = [chain(s) for s in m.sources()]
        model = create_parallel(
            m.sources(), m.dst, m.source_gaps(), fusion=m.fusion, adapter=m.adapter, resize=m.resize,
            pretrained=m.pretrained, input_size=size, src_checkpoints=m.source_checkpoints(),
            dst_checkpoint=m.dst_checkpoint, num_classes=m.num_classes or (num_data_classes if m.new_head else None),
            new_head=m.new_head or None, train_head=m.train_head, unfreeze_last=m.unfreeze_last,
            **stitch_settings(m), calibration_images=images, calibration_device=device if images is not None else None,
        )
        _check_classes(model, m, size, num_data_classes)
        return model

    def build_for_pricing(self, src, dst, gap, adapter, resize, input_size):
        raise StitchkitError("a parallel stitch is priced from its settings (stitchkit inspect), not from two models")

    def model_settings(self, config: Config) -> dict:
        """Several sources are recorded joined (``"A+B"``; one gap, or the gaps joined), and listed."""
        m = config.model
        gaps = m.source_gaps()
        return {**super().model_settings(config), "src": "+".join(m.sources()),
                "gap": gaps[0] if len(set(gaps)) == 1 else "+".join(gaps),
                "srcs": m.sources(), "fusion": m.fusion}


class Finetune(Mode):
    name = "finetune"
    network = FinetuneBaseline
    description = "the paper's fine-tuning baseline: one model cut across the gap, every weight trainable"
    sweeps_lr = True
    uses = frozenset({"gap"})

    def validate(self, config: Config) -> None:
        super().validate(config)
        if config.model.dst not in (None, config.model.src):
            raise StitchkitError(
                f"the fine-tuning baseline cuts one model, so model.dst must be empty or equal model.src (got "
                f"{config.model.src} and {config.model.dst}); use mode=stitch to join two models"
            )
        if config.model.dst_checkpoint not in (None, config.model.src_checkpoint):
            raise StitchkitError("mode=finetune trains one model from model.src_checkpoint; another "
                                 "model.dst_checkpoint means nothing here: remove it, or use mode=stitch")

    def build(self, config, num_data_classes, calibration=None, device=None):
        """``model.num_classes`` gives it a new head."""
        m, size = config.model, config.data.input_size
        model = create_model(m.src, pretrained=m.pretrained, checkpoint_path=m.src_checkpoint, input_size=size)
        _match_head(model, m.num_classes, num_data_classes, m.src, m.new_head)
        return create_finetune_baseline(model, m.gap, input_size=size, name=m.src)

    def build_for_pricing(self, src, dst, gap, adapter, resize, input_size):
        return create_finetune_baseline(src, gap, input_size=input_size)


class Scratch(Mode):
    name = "scratch"
    description = "a whole model from random initialisation"
    has_gap = False
    loads_pretrained = False  # a new network: model.pretrained does not apply

    def validate(self, config: Config) -> None:
        super().validate(config)
        m = config.model
        if m.src_checkpoint is not None:
            raise StitchkitError("mode=scratch trains model.src from random initialisation, so it cannot load "
                                 "model.src_checkpoint: remove it, or use mode=finetune to train from those weights")
        if m.dst is not None or m.dst_checkpoint is not None:
            raise StitchkitError("mode=scratch trains one model (model.src); model.dst and model.dst_checkpoint mean "
                                 "nothing here: remove them, or use mode=stitch")

    def build(self, config, num_data_classes, calibration=None, device=None):
        """A head for the data's classes unless ``model.num_classes`` says otherwise (``model.pretrained`` is
        ignored)."""
        m = config.model
        return create_model(m.src, pretrained=False, input_size=config.data.input_size,
                            num_classes=m.num_classes or num_data_classes)

    def build_for_pricing(self, src, dst, gap, adapter, resize, input_size):
        return src


class Probe(Mode):
    name = "probe"
    network = HeadProbe
    description = "one model frozen but for a new head (and model.unfreeze_last blocks): a new task's baseline"
    has_gap = False
    chooses_trained = True

    def validate(self, config: Config) -> None:
        super().validate(config)
        m = config.model
        if m.dst is not None or m.dst_checkpoint is not None:
            raise StitchkitError("mode=probe trains a head on one model (model.src, model.src_checkpoint); "
                                 "model.dst and model.dst_checkpoint mean nothing here: remove them, or use mode=stitch")
        if m.train_head is False:
            raise StitchkitError("a probe trains its head; remove model.train_head=false")

    def build(self, config, num_data_classes, calibration=None, device=None):
        """A head for the data's classes (new unless the model's own has that size; ``model.num_classes`` must
        agree with the data)."""
        m = config.model
        if m.num_classes not in (None, num_data_classes):
            raise StitchkitError(f"model.num_classes={m.num_classes} but the data has {num_data_classes} classes")
        return create_probe(m.src, num_classes=num_data_classes, new_head=m.new_head or None,
                            unfreeze_last=m.unfreeze_last,
                            pretrained=m.pretrained, input_size=config.data.input_size,
                            checkpoint_path=m.src_checkpoint)

    def build_for_pricing(self, src, dst, gap, adapter, resize, input_size):
        return create_probe(src, input_size=input_size)


for _mode in (Stitch(), Finetune(), Scratch(), Probe()):
    register_mode(_mode)
PARALLEL_STITCH = ParallelStitch()


def mode_for(config: Config) -> Mode:
    """The :class:`Mode` that trains ``config``: its mode's, or the parallel stitch when a stitch lists several
    sources (``model.src=[A, B]``)."""
    mode = get_mode(config.mode)
    return PARALLEL_STITCH if mode.joins_models and config.model.parallel else mode


def check_sources(config: Config) -> None:
    """``model.src``, ``model.gap`` and ``model.src_checkpoint`` are one value each, or (a parallel stitch) lists
    with one entry per source; each error names the fix."""
    m = config.model
    if m.parallel:
        if config.mode != "stitch":
            raise StitchkitError(f"model.src lists {len(m.src)} sources, which only a parallel stitch (mode=stitch) "
                                 f"joins; mode={config.mode} trains one model: give model.src one name")
        if len(m.src) < 2:
            raise StitchkitError(f"model.src lists {'one source' if m.src else 'no source'}: a parallel stitch "
                                 "needs two or more; for a single "
                                 f"stitch write model.src={m.src[0] if m.src else 'NAME'} (not a list)")
        if not all(isinstance(s, str) and s for s in m.src):
            raise StitchkitError(f"model.src must list model names, got {list(m.src)!r}")
        if not m.dst:
            raise StitchkitError("a parallel stitch fuses its sources into one destination: set model.dst=NAME")
    elif not isinstance(m.src, str) or not m.src:
        raise StitchkitError(f"model.src must be a model name (or, for a parallel stitch, a list of names), got "
                             f"{m.src!r}")
    for key, value, kind in (("model.gap", m.gap, str), ("model.src_checkpoint", m.src_checkpoint, (str, type(None)))):
        entries = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)):
            if not m.parallel:
                raise StitchkitError(f"{key} is a list but model.src names one source; give one value (lists are for "
                                     "a parallel stitch, one entry per source)")
            if len(value) != len(m.src):
                raise StitchkitError(f"{key} lists {len(value)} entries for {len(m.src)} sources: give one per source"
                                     + (", or one gap for all" if key == "model.gap" else ""))
        if not all(isinstance(e, kind) for e in entries):
            what = "a gap X:Y" if key == "model.gap" else "a file path or null"
            raise StitchkitError(f"{key} must be {what} (or a list of them, one per source), got {value!r}")


def build_model(config: Config, num_data_classes: int, calibration: Calibration | None = None,
                device: torch.device | None = None) -> nn.Module:
    """The model for ``config.mode`` (see each :class:`Mode`'s ``build``).

    ``calibration(model_name, count)`` returns ``count`` training images preprocessed for that model (the same
    first ones for every count); a stitch whose ``model.adapter_norm`` starts from data measures both models'
    features on them (as many as :func:`calibration_count` says), on ``device``.
    """
    return mode_for(config).build(config, num_data_classes, calibration, device)


def calibration_count(m, bridge) -> int:
    """How many calibration images the chain ``bridge`` (built: :func:`~stitchkit.stitching.build_stitch` passes it to
    the function it was given for its images) starts from: ``m.init_images`` (``m``: a model config) when given,
    otherwise as many as its start asks for from the chain's shapes (:meth:`~stitchkit.starts.Start.images_wanted`)."""
    return m.init_images if m.init_images is not None else get_start(m.adapter_norm).images_wanted(bridge)


def _check_classes(model: nn.Module, m, size: int, num_data_classes: int) -> None:
    """The stitch's head predicts the data's classes, or the error says how to give it a head that does."""
    classes = _classes_of_back(model, size)
    if classes != num_data_classes:
        if m.num_classes is not None:
            raise StitchkitError(f"model.num_classes={m.num_classes} but the data has {num_data_classes} classes")
        raise StitchkitError(
            f"the destination {m.dst or m.src} predicts {classes} classes but the data has {num_data_classes}; "
            f"set model.num_classes={num_data_classes} to give the stitch a new head that trains with the "
            "adapters, or pass a destination trained on this data as model.dst_checkpoint"
        )


@torch.no_grad()
def _classes_of_back(model: nn.Module, size: int) -> int:
    """Classes the stitched model predicts (its destination head may be a timm ``forward_head`` call)."""
    was_training = model.training
    image = torch.zeros(1, input_channels(model), size, size, device=next(model.parameters()).device)
    classes = model.eval()(image).shape[-1]
    model.train(was_training)
    return classes


def _match_head(model: nn.Module, num_classes: int | None, num_data_classes: int, name: str,
                new_head: bool = False) -> None:
    if new_head:
        num_classes = num_classes or num_data_classes
    if num_classes is not None:
        if num_classes != num_data_classes:
            raise StitchkitError(f"model.num_classes={num_classes} but the data has {num_data_classes} classes")
        fit_head(model, num_classes, new_head or None)
    elif num_outputs(model) != num_data_classes:
        raise StitchkitError(
            f"{name} predicts {num_outputs(model)} classes but the data has {num_data_classes}; set "
            f"model.num_classes={num_data_classes} to give it a new head"
        )


# How a run folder that cannot be rebuilt at its cuts (stitchkit.saved_cuts) is put right: resumed, and loaded to be
# evaluated, exported or predicted with ({install}: pip install stitchkit==VERSION, the version that wrote it).
RESUME_CUTS_FIX = ("Finish the run with the stitchkit that started it ({install}), or start it again with this version "
                   "in a new output.dir (or with --overwrite)")
LOAD_CUTS_FIX = ("Use the run with the stitchkit that trained it ({install}), or train it again with this version in a "
                 "new output.dir (or with --overwrite)")


def cuts_record(model: nn.Module) -> dict | None:
    """What a run's checkpoint and ``result.json`` record of its network for :func:`check_run_cuts`: its
    architecture (plain values), which says where it cuts its models (:mod:`stitchkit.saved_cuts`). None for a
    network that cuts none (a whole model)."""
    if getattr(model, "check_saved_cuts", None) is None:
        return None
    import json

    return json.loads(json.dumps(model.architecture()))


def check_run_cuts(model: nn.Module, record: dict | None, *, source: str, written_by: str | None,
                   fix: str) -> None:
    """Refuse a run's trained weights for ``model`` (rebuilt from the run's settings) where the ``record``
    (:func:`cuts_record`; None: a run of stitchkit before 0.13.0) says its models were cut elsewhere, or says nothing
    while one of them is a model whose cuts changed (:func:`stitchkit.saved_cuts.check_cuts`). A run has no
    ``trust_cuts``: ``fix`` says what to do instead (:data:`RESUME_CUTS_FIX`, :data:`LOAD_CUTS_FIX`)."""
    check = getattr(model, "check_saved_cuts", None)
    if check is not None:
        check(record if isinstance(record, dict) else {}, source=source, written_by=written_by, fix=fix)


def trainable_state(model: nn.Module) -> dict:
    """What a checkpoint must hold to restore training: what a stitch or a probe trains (adapters, a trained head
    and blocks), everything otherwise."""
    return model.trained_state_dict() if isinstance(model, Network) else model.state_dict()


def load_trainable_state(model: nn.Module, state: dict) -> None:
    if isinstance(model, Network):
        model.load_trained_state_dict(state)
    else:
        model.load_state_dict(state)


def trained_parts(model: nn.Module) -> list[str]:
    """What training changed, for the record: a stitch's or a probe's ``trained_parts()``, else everything."""
    return model.trained_parts() if isinstance(model, Network) else ["all"]


def export_weights(model: nn.Module, run: RunDir) -> None:
    """The trained weights on their own: ``adapters.pt`` for a stitch (see :func:`stitchkit.load_stitched`),
    ``model.pt`` (a plain state dict) otherwise: a scratch model's is usable as ``model.src_checkpoint``; a
    fine-tuning baseline's and a probe's load into the same build (``stitchkit export`` makes any of them a
    portable model folder)."""
    buffer = io.BytesIO()
    if isinstance(model, StitchedModel):
        model.save_adapters(buffer)
        atomic_write_bytes(run.adapter_weights, buffer.getvalue())
    else:
        torch.save(model.state_dict(), buffer)
        atomic_write_bytes(run.model_weights, buffer.getvalue())
