"""Build supported models by name, with pretrained weights or a local checkpoint file.

Names round-trip with their libraries: timm names with an optional pretrained tag (``resnet50.a1_in1k``), and
torchvision classification models as ``torchvision:NAME`` with an optional weights tag
(``torchvision:swin_t.IMAGENET1K_V1``).
"""
from __future__ import annotations

import fnmatch
import functools
import json
import os
import sys
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from ..formats import Format
from ..errors import IncompatibleError, StitchkitError, UnknownNameError, WeightsUnavailableError, unknown_name
from .families import Family, families, family_of
from .metadata import TORCHVISION_PREFIX, ModelName
from .weights import FIX, require_timm_weights, require_url_weights

GRAPH_FAMILY = "graph"  # the family that splits any other model's exported graph (stitchkit.zoo.graph)


def _timm_names() -> dict[str, str]:
    """Every timm model name a hand-written family cuts, mapped to the family's name (computed again when a family
    is registered: the cache is keyed by the families there are)."""
    return _timm_names_of(tuple(families()))


@functools.lru_cache(maxsize=8)
def _timm_names_of(registered: tuple[Family, ...]) -> dict[str, str]:
    names = {}
    for family in registered:
        for module in family.timm_modules:
            for name in timm.list_models(module=module):
                names.setdefault(name, family.name)
    return names


@functools.lru_cache(maxsize=None)
def _torchvision_classifiers() -> tuple[str, ...]:
    """torchvision's classification models (``torchvision:resnet50``), which the graph split serves by default."""
    return tuple(TORCHVISION_PREFIX + n for n in torchvision.models.list_models(module=torchvision.models))


@functools.lru_cache(maxsize=None)
def _coverage_status() -> dict[str, str | None]:
    """timm model name -> why its class cannot be cut (None: it can), from the measured table in coverage.json
    (written by scripts/model_coverage.py). Names the table does not know (a newer timm) are tried."""
    path = Path(__file__).with_name("coverage.json")
    if not path.is_file():
        return {}
    status = {}
    for entry in json.loads(path.read_text())["timm"].values():
        for name in entry["names"]:
            failed = entry["status"] == "fail"  # "ok", or "unchecked" (the run was stopped before it): try it
            status[name] = (entry["reason"] or "failed the coverage check") if failed else None
    return status


def supported_timm(name: str) -> bool:
    """Whether stitchkit cuts the timm model ``name`` (a hand-written family, or its class passed the check)."""
    if name in _timm_names():
        return True
    # stitchkit's own entrypoints (stitchkit.timm_models) rebuild saved folders; they are not models to cut
    return _coverage_status().get(name) is None and not _registered_by_stitchkit(name)


def _registered_by_stitchkit(name: str) -> bool:
    return timm.is_model(name) and timm.models.model_entrypoint(name).__module__.startswith("stitchkit.")


def unsupported_reason(name: str) -> str | None:
    """Why the timm model ``name`` cannot be cut, if the coverage table says it cannot."""
    return None if name in _timm_names() else _coverage_status().get(name)


def _torchvision_names() -> dict[str, str]:
    names = {name: GRAPH_FAMILY for name in _torchvision_classifiers()}
    names.update({name: family.name for family in families() for name in family.model_names})
    return names


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names of the supported models matching the glob ``pattern``.

    Args:
        pattern: shell-style pattern, e.g. ``"resnet*"`` or ``"*swin*"``.
        pretrained: list timm names with their pretrained tags (``resnet50.a1_in1k``) instead of bare names.

    Example:
        >>> "resnet50" in stitchkit.list_models("resnet5*")
        True
    """
    if pretrained:
        timm_names = [n for n in timm.list_models(pretrained=True) if supported_timm(n.split(".")[0])]
    else:
        timm_names = [n for n in timm.list_models() if supported_timm(n)]
    names = timm_names + list(_torchvision_names())
    wanted = pattern.lower()  # names are lower case; 'ResNet18' means resnet18
    return sorted(n for n in names if fnmatch.fnmatchcase(n.lower(), wanted))


def family_for_name(name: str) -> Family:
    """The family of a model name, raising a helpful error for unknown or unsupported names."""
    by_name = {f.name: f for f in families()}
    parsed = ModelName.parse(name)
    if parsed.is_torchvision:
        tv = _torchvision_names()
        if parsed.key not in tv:
            raise unknown_name("torchvision model", parsed.key, tv, "stitchkit models '*torchvision*' lists them")
        if parsed.tag:  # here, so that a config naming a tag torchvision lacks fails before any run starts
            check_torchvision_tag(parsed.key, parsed.base, parsed.tag)
        return by_name[tv[parsed.key]]
    base = parsed.base
    if parsed.tag and timm.is_model(base):  # here, so that a config naming a tag timm lacks fails before any run
        check_timm_tag(base, parsed.tag)
    supported = _timm_names()
    if base in supported:
        return by_name[supported[base]]
    if timm.is_model(base):
        reason = unsupported_reason(base)
        if reason is not None:
            raise StitchkitError(
                f"stitchkit cannot cut timm model {base!r}: {reason} (found by the coverage check of its class; "
                "docs/models.md lists every architecture; register a Family for its class to cut it by hand)"
            )
        return by_name[GRAPH_FAMILY]
    raise unknown_name("model", name, list_models(), "`stitchkit models PATTERN` lists them")


def create_model(
    name: str,
    pretrained: bool | str = False,
    checkpoint_path: str | os.PathLike | None = None,
    input_size: int | tuple[int, int] | None = None,
    num_classes: int | None = None,
    **kwargs,
) -> nn.Module:
    """Create a supported model by name, in eval mode.

    Args:
        name: a timm name (``resnet50.a1_in1k``) or ``torchvision:NAME[.WEIGHTS]``.
        pretrained: load the library's pretrained weights (timm: from the Hugging Face hub cache, honouring
            ``HF_HUB_OFFLINE``; torchvision: its weights enum, ``DEFAULT`` unless the name has a tag).
        checkpoint_path: a local state-dict file (``.pt``/``.pth``/``.safetensors``) loaded after construction; it
            replaces every weight, so ``pretrained`` is ignored when it is given.
        input_size: image size the model will see. Models built for one size (ViT, timm Swin) are built for it;
            others accept any size anyway.
        num_classes: size of the classifier head (default: the library's, 1000 for ImageNet).
        **kwargs: passed to the library's model constructor.
    """
    family = family_for_name(name)
    if checkpoint_path is not None:
        pretrained = False  # the checkpoint replaces every weight: fetching the library's first would be wasted
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    parsed = ModelName.parse(name)
    if parsed.is_torchvision:
        base, tag = parsed.base, parsed.tag
        weights = (tag or "DEFAULT") if pretrained else None
        if isinstance(pretrained, str):
            weights = pretrained
        if weights is not None:
            _require_torchvision_weights(name, base, weights)
        try:
            model = torchvision.models.get_model(base, weights=weights, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            raise StitchkitError(f"cannot build {name} with weights {weights}: {err}") from err
        model = _torchvision_vit_at_size(model, base, input_size, kwargs)
    else:
        if input_size is not None and (family.fixed_input_size or _timm_fixed_size(name)):
            kwargs.setdefault("img_size", input_size)
        if pretrained:
            require_timm_weights(name)
        try:
            try:
                model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
            except TypeError as err:
                if "img_size" not in str(err) or "img_size" not in kwargs:
                    raise
                # Built for one size but without an img_size argument (it adapts to, or fixes, its own size).
                kwargs.pop("img_size")
                model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
        except (OSError, RuntimeError) as err:
            raise WeightsUnavailableError(f"cannot load pretrained weights for {name}: {str(err).splitlines()[0]}",
                                          FIX) from err
    if checkpoint_path is not None:
        state = read_state_dict(checkpoint_path)
        classes = _checkpoint_classes(model, state)
        if num_classes is None and classes is not None and classes != num_outputs(model):
            # A checkpoint trained on another dataset (e.g. a source model made with mode=scratch): build its head.
            return create_model(name, False, checkpoint_path, input_size, classes, **kwargs)
        load_checkpoint(model, checkpoint_path, state)
    if input_size is not None:  # what splitting it later cuts for, when no size is given then (see default_input_size)
        from .spec import as_size

        model.stitchkit_input_size = as_size(input_size)
    return model.eval()


def require_weights(name: str) -> None:
    """Return when ``name``'s pretrained weights are cached or can be downloaded; otherwise one line naming the
    fix (:mod:`stitchkit.zoo.weights`)."""
    parsed = ModelName.parse(name)
    if parsed.is_torchvision:
        _require_torchvision_weights(name, parsed.base, parsed.tag or "DEFAULT")
    else:
        require_timm_weights(name)


def check_torchvision_tag(key: str, base: str, tag: str) -> None:
    """Raise one line listing the weights tags torchvision has for ``base`` when ``tag`` is not one of them.
    torchvision itself fails with a bare ``KeyError`` from its weights enum, and only once the model is built. Reads
    the enum alone: nothing is downloaded."""
    tags = list(torchvision.models.get_model_weights(base).__members__)  # with the DEFAULT alias
    if tag not in tags:
        raise UnknownNameError(f"torchvision has no weights {tag!r} for {key}; use one of its tags: {', '.join(tags)} "
                               f"(or no tag, which means DEFAULT)")


def check_timm_tag(base: str, tag: str) -> None:
    """Raise one line listing the pretrained tags timm has for ``base`` when ``tag`` is not one of them. timm itself
    refuses the name only once the model is built (with a RuntimeError, even with pretrained=False). Reads timm's
    registry alone: nothing is downloaded."""
    tags = [name.partition(".")[2] for name in timm.list_pretrained(f"{base}.*") if name.partition(".")[0] == base]
    if tag not in tags:
        raise UnknownNameError(f"timm has no pretrained tag {tag!r} for {base}; use one of {', '.join(tags)} "
                               f"(or no tag, for timm's default)" if tags else
                               f"timm has no pretrained tag {tag!r} for {base} (it has no pretrained weights); name "
                               f"it without a tag")


def _require_torchvision_weights(name: str, base: str, weights: str) -> None:
    tag = weights.rpartition(".")[2]  # torchvision also takes the enum's own spelling, ResNet50_Weights.IMAGENET1K_V2
    check_torchvision_tag(TORCHVISION_PREFIX + base, base, tag)
    require_url_weights(name, torchvision.models.get_model_weights(base)[tag].url)


def _torchvision_vit_at_size(model: nn.Module, base: str, input_size, kwargs: dict) -> nn.Module:
    """torchvision's ViTs are built for one image size (224 for the ImageNet weights) and assert it. For another
    size, build one for that size and give it the weights with the position embedding resampled to its grid
    (torchvision's own ``interpolate_embeddings``), as timm does for ``img_size``."""
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    if input_size is None or not isinstance(model, VisionTransformer):
        return model
    size = input_size if isinstance(input_size, int) else int(input_size[0])
    if isinstance(input_size, (tuple, list)) and len(set(input_size)) != 1:
        raise StitchkitError(f"torchvision's ViTs take square images only, got input size {tuple(input_size)}")
    if size == model.image_size:
        return model
    if size % model.patch_size:
        raise StitchkitError(f"input size {size} is not a multiple of {base}'s patch size {model.patch_size}; "
                             f"use a multiple such as {max(1, round(size / model.patch_size)) * model.patch_size}")
    resized = torchvision.models.get_model(base, weights=None, image_size=size, **kwargs)
    resized.load_state_dict(interpolate_embeddings(size, model.patch_size, model.state_dict()))
    return resized


def _timm_fixed_size(name: str) -> bool:
    """Whether a timm model is built for one input size (its pretrained config says so; ViT-like models)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(ModelName.parse(name).base, allow_unregistered=True)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


def _classifier_name(model: nn.Module) -> str | None:
    """Qualified name of the classifier layer: timm declares it in the pretrained config; otherwise (torchvision)
    it is the model's last ``nn.Linear`` (``fc``, ``classifier.1``, ``heads.head``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifier = cfg.get("classifier")
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0]
    if classifier and isinstance(_get(model, classifier), nn.Module):
        return classifier
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def classifier_layer(model: nn.Module) -> nn.Module | None:
    """The layer that computes the logits: what the model's own ``get_classifier()`` returns (timm's models,
    stitchkit's networks), else the layer :func:`num_outputs` reads (torchvision); None where there is no one layer
    (a distilled DeiT's two classifiers, a model without a head)."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            layer = get()
        except (StitchkitError, AttributeError):
            return None
    else:
        name = _classifier_name(model)
        layer = _get(model, name) if name else None
    return layer if isinstance(layer, nn.Module) else None


def _classifier_key(model: nn.Module) -> str | None:
    """State-dict key of the classifier weight."""
    name = _classifier_name(model)
    return f"{name}.weight" if name else None


def _checkpoint_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    key = _classifier_key(model)
    return int(state[key].shape[0]) if key in state else None


def num_outputs(model: nn.Module) -> int:
    """Number of classes the model's head predicts."""
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int):
        return classes
    name = _classifier_name(model)
    layer = _get(model, name) if name else None
    if isinstance(layer, nn.Linear):
        return layer.out_features
    raise StitchkitError(f"cannot tell how many classes {type(model).__name__} predicts")


def reset_classifier(model: nn.Module, num_classes: int) -> None:
    """A new, randomly initialised head of ``num_classes`` outputs (timm's own method where it exists); 0: none, the
    model then returns the classifier's input, as timm's models do."""
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return
    name = _classifier_name(model)
    layer = _get(model, name) if name else None
    if not isinstance(layer, nn.Linear):
        raise StitchkitError(f"cannot replace the head of {type(model).__name__}")
    parent, _, attr = name.rpartition(".")
    new = (nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None) if num_classes > 0
           else nn.Identity())  # a torchvision model: nn.Linear(in, 0) would give a zero-width output
    setattr(model.get_submodule(parent) if parent else model, attr, new.to(layer.weight.device))
    if isinstance(getattr(model, "num_classes", None), int):
        model.num_classes = num_classes


def classes_or_none(model: nn.Module) -> int | None:
    """:func:`num_outputs`, or None for a model without a classifier (an encoder)."""
    try:
        return num_outputs(model)
    except StitchkitError:
        return None


def wants_new_head(own: int | None, num_classes: int | None, new_head: bool | None = None) -> bool:
    """Whether a model whose head predicts ``own`` classes (None: it has none) gets a new head when a build asks
    for ``num_classes`` (None: the model's own) with ``new_head`` (None: only where the sizes differ). The one rule
    that :func:`fit_head` applies and that dry runs and search proxies predict without changing a model.
    ``num_classes=0`` (no classifier) never gets one: ``num_classes or own`` would make it a new random head of
    the own size."""
    if num_classes == 0:
        return False
    if new_head is None:
        return num_classes is not None and num_classes != own
    return new_head


def fit_head(model: nn.Module, num_classes: int | None, new_head: bool | None = None) -> bool:
    """Give ``model`` a new, randomly initialised head of ``num_classes`` when that differs from what its head
    predicts (as timm's ``create_model(num_classes=...)`` keeps a pretrained head of the same size), or whenever
    ``new_head`` asks for one (of the model's own size when ``num_classes`` is None). Returns whether it did.
    ``num_classes=0`` (timm's no classifier) leaves the head as it is: the caller drops it once the model is cut
    (``reset_classifier(0)`` on the network; a torchvision classifier has no 0-wide replacement here)."""
    own = classes_or_none(model)
    new_head = wants_new_head(own, num_classes, new_head)
    if new_head:
        if (num_classes or own) is None:
            raise IncompatibleError(f"{type(model).__name__} has no classifier to replace; pass num_classes= for the "
                                 "new head")
        reset_classifier(model, num_classes or own)
    return new_head


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file, unwrapping the usual containers (``state_dict``, ``model``, DDP)."""
    path = Path(path)
    if path.is_dir():
        inside = next((path / name for name in ("model.pt", "model.safetensors") if (path / name).is_file()), None)
        raise StitchkitError(f"checkpoint {str(path)!r} is a folder, not a weights file; pass the file (.pt, .pth, "
                             f".safetensors){f', e.g. {str(inside)!r}' if inside else ''}")
    if not path.is_file():
        raise StitchkitError(f"checkpoint file {str(path)!r} does not exist; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unpickling and safetensors raise many types; all mean "not a usable checkpoint"
        # One line, and never torch's advice to retry with weights_only=False: unpickling a file runs its code.
        raise StitchkitError(
            f"{str(path)!r} is not a weights-only PyTorch checkpoint or a safetensors file (stitchkit does not "
            "unpickle arbitrary objects); pass a state dict saved with torch.save(model.state_dict(), PATH) or a "
            ".safetensors file"
        ) from None
    if isinstance(state, dict) and str(state.get("format", "")).startswith("stitchkit.adapters"):
        # A stitch's adapters.pt: the trained parts between two models, which it rebuilds by name, not a model.
        run = str(path.parent) if (path.parent / "config.yaml").is_file() else "RUN_DIR"  # in its run folder?
        raise StitchkitError(f"{str(path)!r} holds a stitch's adapters, not a model's weights; evaluate the stitch "
                             f"with `stitchkit eval {run}` (the run that trained it), or load it with "
                             "stitchkit.load_stitched")
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StitchkitError(f"checkpoint {str(path)!r} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_checkpoint(model: nn.Module, path: str | os.PathLike, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a local state-dict file into ``model`` (strictly: every key must match)."""
    state = read_state_dict(path) if state is None else state
    own = model.state_dict()
    if any(k in own and own[k].shape != v.shape for k, v in state.items()):
        # A checkpoint made at another input size (ViT position embeddings, Swin attention tables): let the
        # model's own timm filter resample it, as timm does for its pretrained weights.
        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, model)
        elif isinstance(model, torchvision.models.VisionTransformer) and "encoder.pos_embedding" in state:
            # torchvision's ViT has no such filter: its own resampling, as its pretrained weights get at this size
            # (_torchvision_vit_at_size).
            from torchvision.models.vision_transformer import interpolate_embeddings

            state = interpolate_embeddings(model.image_size, model.patch_size, state)
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    mismatched = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {', '.join(sorted(keys)[:3])})")
        raise StitchkitError(
            f"checkpoint {str(path)!r} does not fit {type(model).__name__}: {'; '.join(details)}. "
            "Check that it was saved from the same model name and number of classes"
        )
    model.load_state_dict(state)


def resolve_model(
    model: str | nn.Module,
    pretrained: bool | str = False,
    checkpoint_path: str | os.PathLike | None = None,
    input_size: int | tuple[int, int] | None = None,
) -> tuple[nn.Module, str]:
    """``(model, name)`` from a name or an instance (an instance is used as it is)."""
    if isinstance(model, nn.Module):
        family_of(model)
        return model, instance_name(model)
    return create_model(model, pretrained=pretrained, checkpoint_path=checkpoint_path, input_size=input_size), model


def instance_name(model: nn.Module) -> str:
    """The name that rebuilds a model instance: timm's ``architecture.tag`` when known, else its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("architecture"):
        return f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]
    return type(model).__name__


def is_token_model(name: str, input_size: int | None = None) -> bool:
    """Whether the model's features are token sequences at every cut (a ViT, BEiT, EVA; not Swin's NHWC maps).

    Token-only adapters (``vit_block``) need them at both ends. A hand-written family says so itself; a model cut by
    the graph split is built (random weights) and dissected at ``input_size`` (default: its own) to find out.
    """
    family = family_for_name(name)
    if family.token_extras is not None:
        return True
    if not family.fallback:
        return False
    from .families import default_input_size, dissect

    model = create_model(name, input_size=input_size)
    size = (input_size, input_size) if input_size else default_input_size(model)
    return all(f is Format.NLC for f in dissect(model, size).formats)

