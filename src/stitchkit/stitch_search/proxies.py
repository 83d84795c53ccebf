"""Training-free proxies: how good a stitch will be after training, guessed from its start and a few hundred images.

Every proxy is measured on *probe* images the stitch's start was not fitted on (it is fitted on the calibration
images), most on the stitch as it starts:

* ``init_accuracy``: top-1 of the stitch before any training, at stitchkit's default start (SN-Net's observation:
  a least-squares start is already a working network).
* ``init_accuracy_quick``: the same at the default start with an eighth of its feature-matching steps, at a larger
  learning rate (``fitted_quick``), about four times cheaper.
* ``lstsq_accuracy``: the same at the least-squares start alone (``lstsq``: SN-Net's start, no feature-matching
  steps), a hundred times cheaper.
* ``fit_residual``: what the start leaves unexplained of the destination's features at its cut,
  ``|bridge(front(x)) - dst_front(x)|^2 / |dst_front(x) - mean|^2`` (lower is better).
* ``cka``: linear CKA between the source's features at its cut and the destination's at its cut (Kornblith et al.
  2019; DeRy and StitchNet choose by it); it ignores the adapter.
* ``kl``: the mean KL divergence from the destination's own predictions to the stitch's (KLAS ranks by a KL;
  lower is better).
* ``naswot``: the zero-cost NAS score of Mellor et al. 2021 (DeRy's default): the log-determinant of the kernel of
  binary ReLU codes over a batch, on the whole stitched network with its adapters at initialisation.

:data:`PROXIES` says for each whether higher is better; :func:`score` turns a measurement into "higher is better".
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StitchkitError
from ..starts import DEFAULT_START, get_start
from ..stitching import StitchConfig, StitchedModel, UncalibratedWarning, build_stitch
from ..sweeps.methods import get_method
from ..zoo import dissect, front_part
from ..zoo.models import classes_or_none, fit_head, resolve_model, wants_new_head
from .candidates import Candidate

# proxy -> +1 where higher predicts a better stitch, -1 where lower does
PROXIES = {"init_accuracy": 1, "init_accuracy_quick": 1, "fit_residual": -1, "lstsq_accuracy": 1, "cka": 1, "kl": -1, "naswot": 1}
# what each proxy needs measured (parts of measure(); features at each cut are measured once per search)
PROXY_COSTS = {"init_accuracy": ("features", "fitted"), "fit_residual": ("features", "fitted"),
               "kl": ("features", "fitted"), "init_accuracy_quick": ("features", "fitted_quick"),
               "lstsq_accuracy": ("features", "lstsq"), "cka": ("features",),
               "naswot": ("naswot",)}
# the starts proxies fit on calibration images (a proxy each: init_accuracy, init_accuracy_quick, lstsq_accuracy)
CALIBRATED_STARTS = (DEFAULT_START, "fitted_quick", "lstsq")
PROXY_VERSION = 2  # raise when what measure() returns changes: cached proxies of another version are measured again
# Raise one proxy's revision when only it changes (its start's settings, say): the cache then measures that proxy
# again and keeps the others. Unlisted proxies are at revision 1.
PROXY_REVISIONS = {"init_accuracy_quick": 2}  # 2: fitted_quick at 80 steps, lr 3.5e-3 (was 100 at 1e-3)
NASWOT_IMAGES = 64  # the batch the NAS score is measured on (Mellor et al. use 128 at 32 px)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.Mish)
# timm builds some activations from classes of its own (timm.layers.activations.GELU in ConvNeXt): known by name
_ACTIVATION_NAMES = {"ReLU", "ReLU6", "GELU", "GELUTanh", "QuickGELU", "SiLU", "Swish", "HardSwish", "Hardswish",
                     "LeakyReLU", "Mish", "HardMish"}


def proxy_revision(name: str) -> int:
    return PROXY_REVISIONS.get(name, 1)


def _is_activation(module: nn.Module) -> bool:
    """A unit-wise activation whose sign pattern NASWOT reads (gates such as Hardsigmoid are not)."""
    return isinstance(module, _ACTIVATIONS) or type(module).__name__ in _ACTIVATION_NAMES


def score(name: str, value: float | None) -> float | None:
    """``value`` of proxy ``name`` oriented so that higher predicts a better stitch."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return PROXIES[name] * value


@dataclass
class Zoo:
    """The search's models with their weights, and the images proxies are measured on, loaded once.

    ``images(name, split, count=None)``: ``calibration`` images (what the start is fitted on; the first ``count``)
    or ``probe`` images (what the proxies are measured on), preprocessed as ``name`` sees pixels; ``labels``: the
    probe images' classes. ``calibration``: how many images each start is fitted on; None: as many as training's
    start would measure for the stitch (:meth:`~stitchkit.starts.Start.images_wanted`)."""

    input_size: int
    checkpoints: dict[str, str]
    pretrained: bool
    images: callable
    labels: torch.Tensor
    # The head of every stitch, as a run builds it: the destination's own, unless num_classes (model.num_classes, or
    # the data's with model.new_head) differs from it or new_head asks for a new one anyway.
    num_classes: int | None = None
    new_head: bool = False
    # The run's settings that shape the stitch (training's STITCH_SETTINGS but the start, which each proxy names, and
    # frozen_mode, moot in eval mode): prefix_out, prefix_in (None: the start's), token_adapters, readd_pos_embed.
    # Without them a proxy scored the default shapes whatever the run would build (a ViT-to-ViT chain on tokens
    # where model.token_adapters=false sends it through an image).
    shape: dict = field(default_factory=dict)
    calibration: int | None = None
    _models: dict[str, nn.Module] = field(default_factory=dict)
    _cache: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def model(self, name: str) -> nn.Module:
        if name not in self._models:
            model, _ = resolve_model(name, self.pretrained, self.checkpoints.get(name), self.input_size)
            self._models[name] = model.eval().requires_grad_(False)
        return self._models[name]

    def cached(self, key: tuple, compute) -> torch.Tensor:
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = compute()
        return self._cache[key]

    def logits(self, name: str) -> torch.Tensor:
        """The whole model's predictions on the probe images."""
        return self.cached(("logits", name), lambda: _batched(self.model(name), self.images(name, "probe")))


def new_head(candidate: Candidate, zoo: Zoo) -> bool:
    """Whether ``candidate``'s run gives its destination a new head (as :func:`~stitchkit.zoo.models.fit_head`
    decides in ``create_stitched``): a destination that already predicts ``model.num_classes`` keeps its own."""
    return wants_new_head(classes_or_none(zoo.model(candidate.dst)), zoo.num_classes, zoo.new_head or None)


def stitch_config(candidate: Candidate, zoo: Zoo, new: bool = False) -> StitchConfig:
    method = get_method(candidate.method)
    return StitchConfig(candidate.src, candidate.dst, candidate.gap, adapter=method.adapter, resize=method.resize,
                        input_size=zoo.input_size, adapter_norm=DEFAULT_START, **_shape_at_start(zoo, DEFAULT_START),
                        pretrained=zoo.pretrained,
                        src_checkpoint=zoo.checkpoints.get(candidate.src),
                        dst_checkpoint=zoo.checkpoints.get(candidate.dst),
                        num_classes=zoo.num_classes if new else None, train_head=new)


def _shape_at_start(zoo: Zoo, start: str) -> dict:
    """The stitch settings of ``zoo.shape`` for a stitch at ``start``: the class token into a ViT as the run sets
    it, or as the start chooses (training's model.prefix_in null)."""
    return {**zoo.shape, "prefix_in": zoo.shape.get("prefix_in") or get_start(start).prefix_in}


def measure(candidate: Candidate, zoo: Zoo, seed: int = 0, proxies: list[str] | None = None) -> dict:
    """The ``proxies`` of ``candidate`` (default: all; a part measured for one gives its siblings too: the fitted
    start gives init_accuracy, fit_residual and kl), and what each part cost (``part_seconds``: ``features``,
    ``naswot``, ``lstsq``, ``fitted_quick``, ``fitted``; :data:`PROXY_COSTS` says which parts each proxy needs)."""
    wanted = set(proxies or PROXIES)
    parts = {part for name in wanted for part in PROXY_COSTS[name]}
    result: dict = {}
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    src, dst = zoo.model(candidate.src), zoo.model(candidate.dst)
    # A new head only where the run has one: with model.num_classes equal to the destination's own classes the run
    # keeps its trained head, and accuracy at a new random head would be chance for every candidate.
    new = new_head(candidate, zoo)
    if new:  # the stitch must not change the zoo's shared destination
        dst = copy.deepcopy(dst)
        src = dst if candidate.src == candidate.dst else src
        fit_head(dst, zoo.num_classes, new_head=True)
    probe_src, probe_dst = zoo.images(candidate.src, "probe"), zoo.images(candidate.dst, "probe")
    config = stitch_config(candidate, zoo, new)

    counts = []  # the calibration images each start was fitted on

    def start_images(start: str):
        def images(bridge) -> tuple[torch.Tensor, torch.Tensor]:
            # As many images as training's start measures for this chain (model.init_images null: the start asks
            # by its shapes, 256 to 2048): a proxy fitted on fewer images than the run will be predicts a worse
            # start than the run gets, and most so for the cheap stitches into late stages (ResNet-18 to itself at
            # 1:4: the full start's accuracy 79.8% on 256 images, 86.2% on the 2,048 a run measures).
            count = zoo.calibration or get_start(start).images_wanted(bridge)
            pair = zoo.images(candidate.src, "calibration", count), zoo.images(candidate.dst, "calibration", count)
            counts.append(len(pair[0]))
            return pair
        return images

    def build(start: str | None) -> StitchedModel:
        torch.manual_seed(seed)
        images = None if start is None else start_images(start)
        chosen = config if start in (None, DEFAULT_START) else \
            replace(config, adapter_norm=start, prefix_in=_shape_at_start(zoo, start)["prefix_in"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UncalibratedWarning)
            return build_stitch(chosen, src, dst, check=False, calibration_images=images).eval()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - clock
        clock = now

    unstarted = build(None)  # the adapters at their default initialisation: what NASWOT scores (at init)
    lap("naswot" if "naswot" in parts else "features")
    if "naswot" in parts:
        result["naswot"] = naswot_score(unstarted, probe_src[:NASWOT_IMAGES])
        lap("naswot")
    if parts - {"naswot"}:
        features = zoo.cached(("front", candidate.src, config.src_cut), lambda: _batched(unstarted.front, probe_src))
        target = zoo.cached(("front", candidate.dst, config.dst_cut),
                            lambda: _batched(_dst_front(unstarted, dst), probe_dst))
        result["cka"] = zoo.cached(("cka", candidate.src, config.src_cut, candidate.dst, config.dst_cut),
                                   lambda: torch.tensor(linear_cka(features, target))).item()
        lap("features")  # once per (model, cut) in a search: later candidates at the same cuts find them cached
    if "lstsq" in parts:
        result["lstsq_accuracy"] = _started(build("lstsq"), features, target, zoo.labels)["accuracy"]
        lap("lstsq")
    if "fitted_quick" in parts:
        result["init_accuracy_quick"] = _started(build("fitted_quick"), features, target, zoo.labels)["accuracy"]
        lap("fitted_quick")
    if "fitted" in parts:
        fitted = _started(build(DEFAULT_START), features, target, zoo.labels)
        kl = None  # with a new head there are no destination predictions to compare with
        if not new:
            reference = F.log_softmax(zoo.logits(candidate.dst), 1)
            kl = F.kl_div(F.log_softmax(fitted["logits"], 1), reference, log_target=True,
                          reduction="batchmean").item()
        result.update(init_accuracy=fitted["accuracy"], fit_residual=fitted["residual"], kl=kl)
        lap("fitted")
    if counts:
        result["calibration_images"] = max(counts)
    return {**result, "seconds": sum(seconds.values()), "part_seconds": seconds}


def _started(stitch: StitchedModel, features: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 of a started stitch on the probe images, and the share of the destination's features at its cut that
    its bridge leaves unexplained."""
    with torch.no_grad():
        bridged = _batched(stitch.bridge, features)
        logits = _batched(stitch.back, bridged)
    residual = ((bridged - target) ** 2).sum() / ((target - target.mean(0, keepdim=True)) ** 2).sum().clamp_min(1e-12)
    return {"accuracy": 100.0 * (logits.argmax(1) == labels).float().mean().item(), "residual": residual.item(),
            "logits": logits}


def proxy_seconds(name: str, measured: dict) -> float:
    """What measuring proxy ``name`` alone cost for one candidate."""
    parts = measured.get("part_seconds") or {}
    return sum(parts.get(part, 0.0) for part in PROXY_COSTS[name])


def _dst_front(stitch: StitchedModel, dst: nn.Module) -> nn.Module:
    """The destination up to its cut: what the bridge should hand its back."""
    return front_part(dissect(dst, stitch.dst_spec.input_size), stitch.dst_spec.cut(*stitch.config.dst_cut).blocks)


def _batched(module: nn.Module, x: torch.Tensor, batch: int = 128) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(x[i:i + batch]) for i in range(0, len(x), batch)])


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear CKA between two sets of features of the same images (any shape after the batch dimension), computed
    from the images' Gram matrices (cheap when features are wide and images few)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(0, keepdim=True), b - b.mean(0, keepdim=True)
    ka, kb = a @ a.T, b @ b.T
    hsic = (ka * kb).sum()
    norm = torch.sqrt((ka * ka).sum() * (kb * kb).sum())
    return float(hsic / norm) if norm > 0 else float("nan")


def naswot_score(model: nn.Module, images: torch.Tensor) -> float:
    """Mellor et al.'s NASWOT: for each image the binary code of which activation units are positive; the kernel
    counts the units on which two images agree; the score is its log-determinant (higher: the network tells the
    images apart already at its start)."""
    n = len(images)
    kernel = torch.zeros(n, n, dtype=torch.float64)

    def hook(_, inputs, __):
        code = (inputs[0].detach().flatten(1) > 0).double()
        kernel.add_(code @ code.T + (1 - code) @ (1 - code).T)

    handles = [m.register_forward_hook(hook) for m in model.modules() if _is_activation(m)]
    if not handles:  # no score, rather than no candidate: the other proxies still apply
        return float("nan")
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else float("nan")


def calibration_and_probe(data_config, models: list[str], calibration: int | None, probe: int, seed: int):
    """The images proxies need, from the training split of ``data_config`` (a :class:`DataConfig`): up to
    ``calibration`` images to fit each start on (None: up to the most any start asks for, as training's start
    chooses its count) and ``probe`` other images, with labels, to measure on; each preprocessed as the model that
    reads it expects (cached per model). The calibration images are training's own (the same seeded order, a smaller
    count the first of a larger one's), and the probe images come after the most that may be asked for, so they are
    never among them. Returns ``(images(name, split, count=None), labels)``."""
    from ..training.data import build_splits, build_transforms
    from ..zoo.metadata import preprocessing

    splits = build_splits(data_config, preprocessing(models[0]), seed)
    train = splits.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    if calibration is None:  # the most a start asks for, or what the split leaves beside the probe images
        calibration = min(max(get_start(s).fit_images[1] for s in CALIBRATED_STARTS), len(order) - probe)
        fixed = False
    else:
        fixed = True
    if calibration < 1 or len(order) < calibration + probe:
        raise StitchkitError(f"the training split has {len(order)} images; the search needs "
                             f"{calibration if fixed else 'at least 1'} to start the adapters and {probe} others to "
                             "measure proxies on: lower " + ("--calibration-images / " if fixed else "")
                             + "--probe-images or add data")
    picked = {"calibration": order[:calibration], "probe": order[calibration:calibration + probe]}
    raw = {"probe": [train.source.load(train.indices[i]) for i in picked["probe"]], "calibration": []}
    labels = torch.tensor([label for _, label in raw["probe"]])
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def images(name: str, split: str, count: int | None = None) -> torch.Tensor:
        # calibration images are read as far as a start asks (most stitches want 256 of a reserve of 2,048)
        count = min(len(picked[split]), count or len(picked[split]))
        loaded = raw[split]
        if len(loaded) < count:
            loaded += [train.source.load(train.indices[i]) for i in picked[split][len(loaded):count]]
        prep = preprocessing(name)
        key = (repr(prep), split)  # models with the same preprocessing share the tensors
        have = cache.get(key)
        if have is None or len(have) < count:
            transform = build_transforms(data_config, prep, train=False)
            more = torch.stack([transform(image) for image, _ in loaded[0 if have is None else len(have):count]])
            cache[key] = more if have is None else torch.cat([have, more])
        return cache[key][:count]

    return images, labels


def proxy_path(folder: Path, candidate: Candidate) -> Path:
    return folder / f"{candidate.key}.json"
