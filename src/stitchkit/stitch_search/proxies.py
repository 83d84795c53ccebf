"""Training-free proxies: how good a stitch will be after training, guessed from its start and a few hundred images.

Every proxy is measured on the stitch as it starts (stitchkit's default start, fitted to the destination's own
features on the calibration images), on *probe* images it was not fitted on:

* ``init_accuracy``: top-1 of the stitch before any training (SN-Net's observation: a least-squares start is
  already a working network).
* ``fit_residual``: what the start leaves unexplained of the destination's features at its cut,
  ``|bridge(front(x)) - dst_front(x)|^2 / |dst_front(x) - mean|^2`` (lower is better).
* ``cka``: linear CKA between the source's features at its cut and the destination's at its cut (Kornblith et al.
  2019; DeRy and StitchNet choose by it); it ignores the adapter.
* ``kl``: the mean KL divergence from the destination's own predictions to the stitch's (KLAS ranks by a KL;
  lower is better).
* ``naswot``: the zero-cost NAS score of Mellor et al. 2021 (DeRy's default): the log-determinant of the kernel of
  binary ReLU codes over a batch, on the whole stitched network.

:data:`PROXIES` says for each whether higher is better; :func:`score` turns a measurement into "higher is better".
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import StitchkitError
from ..starts import DEFAULT_START, get_start
from ..stitching import StitchConfig, StitchedModel, build_stitch
from ..sweeps.methods import get_method
from ..zoo import dissect, front_part
from ..zoo.models import fit_head, resolve_model
from .candidates import Candidate

# proxy -> +1 where higher predicts a better stitch, -1 where lower does
PROXIES = {"init_accuracy": 1, "fit_residual": -1, "cka": 1, "kl": -1, "naswot": 1}
NASWOT_IMAGES = 64  # the batch the NAS score is measured on (Mellor et al. use 128 at 32 px)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU)


def score(name: str, value: float | None) -> float | None:
    """``value`` of proxy ``name`` oriented so that higher predicts a better stitch."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return PROXIES[name] * value


@dataclass
class Zoo:
    """The search's models with their weights, and the images proxies are measured on, loaded once.

    ``images(name, split)``: ``calibration`` images (what the start is fitted on) or ``probe`` images (what the
    proxies are measured on), preprocessed as ``name`` sees pixels; ``labels``: the probe images' classes."""

    input_size: int
    checkpoints: dict[str, str]
    pretrained: bool
    images: callable
    labels: torch.Tensor
    num_classes: int | None = None  # every stitch with a new head of this size (model.num_classes); None: the dst's
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


def stitch_config(candidate: Candidate, zoo: Zoo) -> StitchConfig:
    method = get_method(candidate.method)
    return StitchConfig(candidate.src, candidate.dst, candidate.gap, adapter=method.adapter, resize=method.resize,
                        input_size=zoo.input_size, adapter_norm=DEFAULT_START,
                        prefix_in=get_start(DEFAULT_START).prefix_in, pretrained=zoo.pretrained,
                        src_checkpoint=zoo.checkpoints.get(candidate.src),
                        dst_checkpoint=zoo.checkpoints.get(candidate.dst), num_classes=zoo.num_classes,
                        train_head=zoo.num_classes is not None)


def measure(candidate: Candidate, zoo: Zoo, seed: int = 0) -> dict:
    """Every proxy of ``candidate`` (and the seconds each part took)."""
    began = time.perf_counter()
    src, dst = zoo.model(candidate.src), zoo.model(candidate.dst)
    torch.manual_seed(seed)
    if zoo.num_classes is not None:  # a new head: the stitch must not change the zoo's shared destination
        dst = copy.deepcopy(dst)
        src = dst if candidate.src == candidate.dst else src
        fit_head(dst, zoo.num_classes, new_head=True)
    stitch = build_stitch(stitch_config(candidate, zoo), src, dst, check=False,
                          calibration_images=(zoo.images(candidate.src, "calibration"),
                                              zoo.images(candidate.dst, "calibration")))
    stitch.eval()
    start_seconds = time.perf_counter() - began
    probe_src = zoo.images(candidate.src, "probe")
    probe_dst = zoo.images(candidate.dst, "probe")
    with torch.no_grad():
        features = zoo.cached(("front", candidate.src, stitch.config.src_cut),
                              lambda: _batched(stitch.front, probe_src))
        target = zoo.cached(("front", candidate.dst, stitch.config.dst_cut),
                            lambda: _batched(_dst_front(stitch, dst), probe_dst))
        bridged = _batched(stitch.bridge, features)
        logits = _batched(stitch.back, bridged)
    labels = zoo.labels
    accuracy = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    residual = ((bridged - target) ** 2).sum() / ((target - target.mean(0, keepdim=True)) ** 2).sum().clamp_min(1e-12)
    kl = None  # with a new head there are no destination predictions to compare with
    if zoo.num_classes is None:
        reference = F.log_softmax(zoo.logits(candidate.dst), 1)
        kl = F.kl_div(F.log_softmax(logits, 1), reference, log_target=True, reduction="batchmean").item()
    cka = zoo.cached(("cka", candidate.src, stitch.config.src_cut, candidate.dst, stitch.config.dst_cut),
                     lambda: torch.tensor(linear_cka(features, target))).item()
    naswot = naswot_score(stitch, probe_src[:NASWOT_IMAGES])
    return {"init_accuracy": accuracy, "fit_residual": residual.item(), "cka": cka, "kl": kl, "naswot": naswot,
            "start_seconds": start_seconds, "seconds": time.perf_counter() - began}


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

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _ACTIVATIONS)]
    if not handles:
        raise StitchkitError(f"{type(model).__name__} has no activation layers for the NASWOT score")
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if sign > 0 else float("nan")


def calibration_and_probe(data_config, models: list[str], calibration: int, probe: int, seed: int):
    """The images proxies need, from the training split of ``data_config`` (a :class:`DataConfig`): ``calibration``
    images to fit each start on and ``probe`` other images, with labels, to measure on; each preprocessed as the
    model that reads it expects (cached per model). Returns ``(images(name, split), labels)``."""
    from ..training.data import build_splits, build_transforms
    from ..zoo.metadata import preprocessing

    splits = build_splits(data_config, preprocessing(models[0]), seed)
    train = splits.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    if len(order) < calibration + probe:
        raise StitchkitError(f"the training split has {len(order)} images; the search needs {calibration} to start "
                             f"the adapters and {probe} others to measure proxies on: lower --calibration-images / "
                             "--probe-images or add data")
    picked = {"calibration": order[:calibration], "probe": order[calibration:calibration + probe]}
    raw = {split: [train.source.load(train.indices[i]) for i in positions] for split, positions in picked.items()}
    labels = torch.tensor([label for _, label in raw["probe"]])
    cache: dict[tuple[str, str], torch.Tensor] = {}

    def images(name: str, split: str) -> torch.Tensor:
        prep = preprocessing(name)
        key = (repr(prep), split)  # models with the same preprocessing share the tensors
        if key not in cache:
            transform = build_transforms(data_config, prep, train=False)
            cache[key] = torch.stack([transform(image) for image, _ in raw[split]])
        return cache[key]

    return images, labels


def proxy_path(folder: Path, candidate: Candidate) -> Path:
    return folder / f"{candidate.key}.json"
