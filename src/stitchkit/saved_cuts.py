"""Where a saved stitch was cut: recorded when it is saved, checked when it is loaded.

A stitch is rebuilt from its saved config (an adapter file, :meth:`~stitchkit.stitching.StitchedModel.save_adapters`;
a model folder, ``save_pretrained``): the models, the gap, the adapters. Where the gap's stages cut each model comes
from the model's split (a hand-written family, or the generic graph split of :mod:`stitchkit.zoo.graph`), computed
again at load time. A split that changes (0.13.0 cut torchvision's ViT, inverted-residual models, RegNet and ConvNeXt
elsewhere) would rebuild a saved stitch at other cuts: where the features' shapes agree its trained weights would load
into a different network without a word. So every stitch records, per part, the module after which it is cut
(``cuts``: ``{"src": "layer1.0", "dst": "layer3.0"}``, the source's front ending after ``src``, the destination's back
starting after ``dst``, as ``stitchkit inspect`` shows them), and loading compares them with the cuts rebuilt:

* recorded and different: refused (:class:`CutsChangedError`), naming the model, both cuts, the version that wrote
  the file and the fix (load it with that version, or retrain the stitch with this one); nothing on disk changes;
* not recorded (written before 0.13.0) and a part is a model whose split changed since (:data:`SPLIT_CHANGES`):
  refused the same way, unless the caller vouches that the stitch's cuts did not change (``trust_cuts=True``); files
  whose models all kept their cuts load as before.

A file that describes a model whose cuts changed is written with a newer format (:func:`needs_new_format`), so that
stitchkit 0.12 and earlier, which cannot rebuild that network, refuse it instead of rebuilding it at their cuts.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Iterable, NamedTuple

from .errors import StitchkitError

CUTS_RECORDED_SINCE = "0.13.0"  # files of earlier versions record no cuts
LAST_UNRECORDED = "0.12.0"  # the version to install to load such a file as it was written

# Models whose cuts stitchkit changed, by version: torchvision models by name (glob of the name without its weights
# tag), timm models by the timm module that defines them. Only models the generic graph split cuts count (a model a
# hand-written family cuts never changed): a saved stitch of one of these that records no cuts cannot be trusted to
# be rebuilt as it was trained.
SPLIT_CHANGES: dict[str, dict[str, tuple[str, ...]]] = {
    # Merge fix-graph: torchvision's ViT cut after its encoder layers (stage 1 held none), MobileNetV2/V3,
    # EfficientNet and MNASNet after whole blocks (inside them before), RegNet and ConvNeXt after every block (only
    # at stage ends before); timm classes whose graph split moved too (docs/models.md rows regenerated then).
    "0.13.0": {
        "torchvision": ("vit_*", "mobilenet_v2", "mobilenet_v3_*", "efficientnet*", "mnasnet*", "regnet_*",
                        "convnext_*"),
        "timm": ("deepseek_vit", "edgenext", "gemma4_vit", "hgnet", "inception_resnet_v2", "inception_v4",
                 "lcnetv2", "selecsls", "shvit", "tresnet", "xcit"),
    },
}


# resize='integrated' strides its adapters where a padded stride maps a size onto the next exactly though it does
# not divide it (a CNN's odd sizes: 25 -> 13, 7 -> 4, at 100 or 112 px); earlier versions resized such steps
# bilinearly before a stride-1 adapter. The weights have the same shapes either way, so a file of such a stitch
# written before this version is refused rather than loaded into the strided network (:func:`check_cuts`).
STRIDES_CHANGED = "0.13.1"


class CutsChangedError(StitchkitError):
    """A saved stitch that this version would rebuild at other cuts than it was trained at (or might: it records
    none, and a model in it is one whose cuts changed)."""


class Part(NamedTuple):
    """One stitch of a saved file to check: its config (:class:`~stitchkit.stitching.StitchConfig`), the cuts this
    version made (``{"src": module, "dst": module}``), the cuts the file records (None: none recorded) and the
    chain of adapters this version built (its :class:`~stitchkit.chain.Step` s; none for a model without one)."""

    config: object
    now: dict[str, str]
    recorded: dict | None
    steps: tuple = ()


def split_changed(name: str) -> str | None:
    """The version that changed where the generic graph split cuts model ``name``, or None (never changed, or cut
    by a hand-written family)."""
    from .zoo.metadata import ModelName
    from .zoo.models import GRAPH_FAMILY, family_for_name

    if not isinstance(name, str):
        return None
    parsed = ModelName.parse(name)
    try:
        if family_for_name(name).name != GRAPH_FAMILY:
            return None
        module = None
        if not parsed.is_torchvision:
            import timm

            module = timm.models.model_entrypoint(parsed.base).__module__.rpartition(".")[2]
    except Exception:  # a name this stitchkit cannot build: its loader says so
        return None
    for version, changed in SPLIT_CHANGES.items():
        if parsed.is_torchvision and any(fnmatch.fnmatchcase(parsed.base, p) for p in changed["torchvision"]):
            return version
        if module is not None and module in changed["timm"]:
            return version
    return None


def needs_new_format(names: Iterable[str]) -> bool:
    """Whether a file describing a stitch of models ``names`` must be unreadable to stitchkit before 0.13.0: it would
    rebuild one of them at other cuts."""
    return any(split_changed(n) for n in names)


def _describe_version(written_by: str | None) -> str:
    return f"stitchkit {written_by}" if written_by else "an earlier stitchkit"


def _install(written_by: str | None) -> str:
    return f"pip install stitchkit=={written_by}" if written_by and re.fullmatch(r"[\w.+-]+", written_by) else \
        f"pip install stitchkit=={LAST_UNRECORDED}"


def _remedy(fix: str | None, written_by: str | None, noun: str) -> str:
    """What a refusal ends with: the caller's ``fix`` (``{install}``: the pip command), else load the file with the
    version that wrote it or retrain the ``noun``."""
    if fix:
        return fix.format(install=_install(written_by))
    return f"Load it with the stitchkit that wrote it ({_install(written_by)}), or retrain the {noun} with this version"


def _this_version() -> str:
    from .version import __version__

    return __version__


_ROLES = {"src": ("source", "front ends", "its front ended"), "dst": ("destination", "back starts", "its back started")}


class CutModel(NamedTuple):
    """A network cut from one model (a fine-tuning baseline, a probe), as :func:`check_cuts` names it: the ``config``
    of its :class:`Part`, whose ``now`` and ``recorded`` have the keys of ``ends``.

    ``model``: the model's name; ``noun``: what the network is ("fine-tuning baseline"); ``ends``: per cut (``src``,
    ``dst``), ``(role, what, was, where)``: what the model is to the network ("model"), what begins or ends at the
    cut ("blocks it trains begin"), the same in the past tense ("its trained blocks began") and where this version
    cuts it ("at stage 1 (first)", "to train its last 2 blocks")."""

    model: str
    noun: str
    ends: dict[str, tuple[str, str, str, str]]


def _describe(config, end: str) -> tuple[str, str, str, str, str, str]:
    """``(model, role, what, was, where, noun)`` of one end of a part's ``config`` (a
    :class:`~stitchkit.stitching.StitchConfig`, or a :class:`CutModel`), for the messages."""
    if isinstance(config, CutModel):
        return (config.model, *config.ends[end], config.noun)
    model = config.src if end == "src" else config.dst
    stage, position = config.src_cut if end == "src" else config.dst_cut
    return (model, *_ROLES[end], f"at stage {stage} ({position})", "stitch")


def check_cuts(parts: list[Part], *, source: str, written_by: str | None, trust_cuts: bool = False,
               trust_hint: str = "trust_cuts=True", fix: str | None = None) -> None:
    """Refuse a saved stitch (``source``: how the file is named in the message) whose rebuilt cuts differ from its
    recorded ones, or that records none while a model in it is one whose cuts changed (unless ``trust_cuts``).
    ``written_by``: the stitchkit version that wrote the file, where it says; ``trust_hint``: how the caller passes
    ``trust_cuts``; ``fix``: what the message ends with instead of loading it with the version that wrote it or
    retraining it (a run folder: finish it with that version, or start it again), where ``{install}`` stands for
    ``pip install stitchkit==VERSION``. A part's ends are the keys of its ``now`` cuts (``src`` and ``dst`` for a
    stitch; a :class:`CutModel` names its own)."""
    for part in parts:
        config, now, recorded, _ = part
        if recorded is None:
            continue
        for end in now:
            saved = recorded.get(end)
            if saved is None or saved == now[end]:
                continue
            model, role, what, _, where, noun = _describe(config, end)
            remedy = _remedy(fix, written_by, noun)
            raise CutsChangedError(
                f"{source} was saved by {_describe_version(written_by)} with its {role} {model} cut after {saved!r} "
                f"(where the {what}), but this stitchkit ({_this_version()}) cuts {model} {where} after "
                f"{now[end]!r}: its trained weights belong to another network, so it is not loaded (nothing was "
                f"changed). {remedy}")
    _check_strides(parts, source, written_by, fix)
    if trust_cuts:
        return
    for part in parts:
        config, now, recorded, _ = part
        if recorded is not None:
            continue
        for end in now:
            model, role, _, was, where, noun = _describe(config, end)
            changed = split_changed(model)
            if changed is None:
                continue
            written = f"stitchkit {written_by}" if written_by else "a stitchkit"
            one_model = isinstance(config, CutModel)
            same = "names the same modules" if one_model else f"names the same module {where}"
            recording = f"where a {noun} cuts its model" if one_model else f"where a {noun}'s models are cut"
            remedy = fix.format(install=_install(written_by)) if fix else (
                f"Load it with the stitchkit that wrote it ({_install(written_by)}), or retrain the {noun} with this "
                f"version; if you know its cuts did not change (`stitchkit stages {model}` {same} in both "
                f"versions), load it with {trust_hint} and save it again, which records them")
            raise CutsChangedError(
                f"{source} records no cuts (written by {written} before {CUTS_RECORDED_SINCE}, which began recording "
                f"{recording}), and {changed} changed where the graph split cuts {model} (its "
                f"{role}): this version cuts it {where} after {now[end]!r}, which may not be "
                f"where {was} when the {noun} was trained, so it is not loaded (nothing was changed). {remedy}")


def _older(written_by: str | None, version: str) -> bool:
    """Whether ``written_by`` (None: a version that did not say) is a stitchkit before ``version``."""
    def key(v: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", v)[:3])

    return written_by is None or key(written_by) < key(version)


def _check_strides(parts: list[Part], source: str, written_by: str | None, fix: str | None) -> None:
    """Refuse a stitch with resize='integrated' written before :data:`STRIDES_CHANGED` whose chain now strides a
    step that version resized bilinearly (a stride that does not divide the size)."""
    if not _older(written_by, STRIDES_CHANGED):
        return
    for part in parts:
        if getattr(part.config, "resize", None) != "integrated":
            continue
        moved = [s for s in part.steps if s.resize == "stride" and any(a % b for a, b in zip(s.in_size, s.out_size))]
        if moved:
            step = moved[0]
            remedy = _remedy(fix, written_by, "stitch")
            raise CutsChangedError(
                f"{source} was saved by {_describe_version(written_by)}, which resized its features from "
                f"{step.in_size[0]}x{step.in_size[1]} to {step.out_size[0]}x{step.out_size[1]} bilinearly before a "
                f"stride-1 adapter, where this stitchkit ({_this_version()}) strides that adapter by {step.stride} "
                f"(resize='integrated' at sizes a stride does not divide): its trained weights belong to another "
                f"network, so it is not loaded (nothing was changed). {remedy}")
