"""Where a bridge's adapters start: one registered strategy per name (``model.adapter_norm``).

A frozen destination expects its own features at its cut, and where the adapters start decides what a short
training run can reach. A :class:`Start` decides four things, and nothing else in stitchkit branches on its name:

* what it puts around each adapter of a chain (:meth:`Start.wrap`: norms before and after, an activation, or
  nothing) and which adapters get an output map to fit (:meth:`Start.wants_output_map`);
* whether it needs calibration images (:attr:`Start.needs_images`): a batch of training images that both models
  see before training, so the adapters can start from what the two models actually compute on this data;
* how it starts the adapters from those images (:meth:`Start.fit`), given the features both models compute at
  their cuts (:class:`Measured`);
* how gently training should leave the start (:meth:`Start.warmup`): the share of the run's optimizer steps over
  which the learning rate warms up (``optim.warmup``, when not given).

Add one with :func:`register_start`::

    @stitchkit.register_start
    class Zeros(stitchkit.Start):
        name = "zeros"
        description = "every adapter's weights at zero"

        def fit(self, bridge, measured):
            for parameter in bridge.adapters.parameters():
                parameter.data.zero_()

    model = stitchkit.create_stitched("resnet18", "resnet18", "1:3", adapter_norm="zeros")

The measurements behind the default are in ``docs/adapter_start.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from .adapters import Adapter, AdapterType, FitsOutputMap, has_output_map
from .initialization import channel_stats, lift, resize_target, ridge_fit, rows_of, set_norm
from .registry import Registry

if TYPE_CHECKING:  # the bridge is built by stitching, which imports this module
    from .chain import Step
    from .stitching import Bridge


@dataclass(frozen=True)
class ChainContext:
    """What a start may know about the chain it builds, before any data.

    Attributes:
        kind: the adapter type (its token form when the adapters run on tokens).
        steps: the planned steps of the chain.
        within_one_model: source and destination are one model (a self-stitch with shared weights).
        dst_nonnegative: the destination's features at its cut never go negative (they come out of a ReLU).

    Whether the adapters run on tokens is ``kind.layout == "tokens"``.
    """

    kind: AdapterType
    steps: tuple["Step", ...]
    within_one_model: bool
    dst_nonnegative: bool


@dataclass(frozen=True)
class Measured:
    """The features of one batch of calibration images, measured once and shared by a start's fitting steps.

    Attributes:
        source: the source's features at its cut (the source's own layout).
        destination: the destination's own features at its cut (its own layout).
    """

    source: torch.Tensor
    destination: torch.Tensor


class Start:
    """A way to start a bridge's adapters. Subclass it, set :attr:`name` and :attr:`description`, override what
    differs, and register it with :func:`register_start`.

    The defaults build each adapter as registered, with nothing around it, and fit nothing.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_images: ClassVar[bool] = False  # fit() needs calibration images
    prefix_in: ClassVar[str] = "mean"  # the class-token policy into a ViT when none is given (the paper's: the mean)

    def wrap(self, kind: AdapterType, block: nn.Module, step: "Step", index: int, context: ChainContext) -> Adapter:
        """The adapter of step ``index``: ``block`` with what this start puts around it."""
        return Adapter(block)

    def wants_output_map(self, kind: AdapterType, index: int, context: ChainContext) -> bool:
        """Whether the block of step ``index`` should be built with an output map even where its type would not
        need one (between equal shapes); only asked of types registered with ``fits=True``."""
        return False

    def prepare(self, bridge: "Bridge", context: ChainContext) -> None:
        """Adjust the built chain before any data is seen (e.g. drop output ReLUs in front of signed features)."""

    def fit(self, bridge: "Bridge", measured: Measured) -> None:
        """Start the adapters from the features measured on calibration images (called only when
        :attr:`needs_images`; the bridge is in eval mode)."""

    def warmup(self, context: ChainContext) -> float:
        """The share of a training run's optimizer steps over which the learning rate should warm up linearly from
        this start (training's ``optim.warmup`` when it is not given): none for a random start, which has nothing
        to keep."""
        return 0.0

    # How many calibration images a start that needs them asks for (training's model.init_images when it is not
    # given): enough for fit_rows rows per input channel in the least-squares fit of the chain's last fitted map,
    # within fit_images. Each image gives that fit one row per position of the map's output, so small maps need
    # many images: ResNet-18 to itself at 1:3 on 32-pixel images fits 128 channels on a 2 x 2 grid (1/32 of a row
    # per channel per image), at 1:4 256 channels on one position. There 2,048 images ended 1.0-2.5 points above
    # 256 after training (and 0.5-0.6 above 1,024 in two cells of four), MobileNetV3 to itself at 1:4 2.0 points
    # above; where 256 images already gave 170 rows per channel or more, the counts ended within 0.6 points of
    # each other (docs/calibration_images.md). At 224 pixels it asks for more than 256 only into the last stage of
    # a wide CNN, where memory decides instead (fit_memory).
    fit_rows: ClassVar[int] = 64
    fit_images: ClassVar[tuple[int, int]] = (256, 2048)  # never fewer (the fixed default until 0.12), never more
    # Nor more than fit_memory bytes of float32 features at the two cuts (still never fewer than 256 images): the fit
    # holds them, and what the chain makes of them, all at once, on the training device. ResNet-50 to itself at 1:4
    # at 224 pixels (3.6 MB of features an image) took 3.4 GB of memory with 256 images and 13.9 GB with the 1,338
    # the rows alone ask for; the cap gives it 594 images and 7.2 GB (scripts/calibration_memory.py, on a CPU). At
    # 32 pixels no stitch comes near it, so the counts docs/calibration_images.md measured are unchanged.
    fit_memory: ClassVar[int] = 2 * 2**30

    def images_wanted(self, bridge: "Bridge") -> int:
        """The calibration images this start wants for ``bridge`` (built, possibly on the meta device: only its
        shapes are read): :attr:`fit_rows` rows per input channel of the last fitted map, within
        :attr:`fit_images` and :attr:`fit_memory`; the fewest where no map is fitted."""
        least, most = self.fit_images
        rows, columns = fit_shape(bridge)
        if not rows:
            return least
        most = min(most, self.fit_memory // feature_bytes(bridge))
        return max(least, min(most, -(-self.fit_rows * columns // rows)))


_STARTS: Registry[Start] = Registry("adapter start", "model.adapter_norm names where the adapters start")


def register_start(cls: type[Start]) -> type[Start]:
    """Class decorator: register a :class:`Start` subclass under its ``name``; registering a name twice is an
    error."""
    if not (isinstance(cls, type) and issubclass(cls, Start)) or not cls.name:
        raise TypeError("register_start takes a Start subclass with a name")
    _STARTS.add(cls.name, cls())
    return cls


def get_start(name: str) -> Start:
    """The registered start ``name``; an unknown name is an error that lists the choices."""
    if name not in _STARTS:
        from .errors import UnknownNameError

        raise UnknownNameError(f"unknown adapter start {name!r} (model.adapter_norm); choose one of: "
                               f"{', '.join(list_starts())}")
    return _STARTS.get(name)


def list_starts() -> list[str]:
    """The registered starts, the default (:data:`DEFAULT_START`) first, then by name."""
    names = _STARTS.names()
    return sorted(names, key=lambda name: (name != DEFAULT_START, name))


def describe_starts() -> dict[str, str]:
    return {name: _STARTS.get(name).description for name in _STARTS.names()}


def _norm(kind: AdapterType, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind.layout == "image" else nn.LayerNorm(channels)


def _chain_rows(bridge: "Bridge", measured: Measured) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's features in the adapters' layout and the destination's own features at its cut, as the last
    adapter should output them."""
    return bridge.enter(measured.source), bridge.target(measured.destination)


# --- the paper's starts -------------------------------------------------------------------------------------------


def last_mapped(bridge: "Bridge") -> int | None:
    """Index of the chain's last adapter that has an output map to fit (adapters after it are identities), or None."""
    mapped = [i for i, step in enumerate(bridge.adapters) if has_output_map(step.adapter.block)]
    return mapped[-1] if mapped else None


def feature_bytes(bridge: "Bridge") -> int:
    """Bytes of float32 features one calibration image gives at the bridge's two cuts (the source's and the
    destination's own), which a start holds for every image at once."""
    return 4 * (math.prod(bridge.src.shape) + math.prod(bridge.dst.shape))


def fit_shape(bridge: "Bridge") -> tuple[int, int]:
    """``(rows per image, columns)`` of the least-squares fit of the chain's last adapter with an output map: one
    row per position of its output (pixels, or patch tokens), one column per input channel; ``(0, 0)`` when no
    adapter has a map to fit."""
    last = last_mapped(bridge)
    if last is None:
        return 0, 0
    step = bridge.steps[last]
    return step.out_size[0] * step.out_size[1], step.in_channels


@register_start
class PaperText(Start):
    name = "paper_text"
    description = ("as the paper's text: BatchNorm (LayerNorm for tokens) before and after each adapter, at their "
                   "default initialisation (stitchkit's default before 0.2)")

    def wrap(self, kind, block, step, index, context):
        return Adapter(block, _norm(kind, step.in_channels), _norm(kind, step.out_channels))


@register_start
class PaperCode(Start):
    name = "paper_code"
    description = ("as the paper's public code: no outer norms around bottleneck and ViT-block adapters (a "
                   "bottleneck between equal shapes starts as an exact identity), BatchNorm + LeakyReLU(0.1) after "
                   "the others")

    def wrap(self, kind, block, step, index, context):
        if kind.residual:
            return Adapter(block)
        return Adapter(block, norm_out=_norm(kind, step.out_channels), act=nn.LeakyReLU(0.1))


# --- starts measured on calibration images ------------------------------------------------------------------------


@register_start
class DstStats(Start):
    name = "dst_stats"
    description = ("a norm before and after each adapter, calibrated on a batch of training images: the last output "
                   "norm starts at the destination's own per-channel mean and spread at its cut")
    needs_images = True

    def wrap(self, kind, block, step, index, context):
        return Adapter(block, _norm(kind, step.in_channels), _norm(kind, step.out_channels))

    @torch.no_grad()
    def fit(self, bridge, measured):
        x, target = _chain_rows(bridge, measured)
        last = len(bridge.adapters) - 1
        for i, step in enumerate(bridge.adapters):
            x = step.resize(x)
            calibrate_norms(step.adapter, x, bridge.tokens,
                            resize_target(target, bridge, i) if i == last else None)
            x = step.adapter(x)


@torch.no_grad()
def calibrate_norms(adapter: Adapter, x: torch.Tensor, tokens: bool, goal: torch.Tensor | None) -> None:
    """Running statistics of ``adapter``'s norms from what reaches them (train and eval mode agree from the first
    step); the output norm's affine at ``goal``'s per-channel mean and spread, or the identity affine."""
    set_norm(adapter.norm_in, x, tokens)
    z = adapter.block(adapter.norm_in(x))
    affine = None
    if goal is not None:
        mean, var = channel_stats(goal, tokens)
        affine = (torch.sqrt(var), mean)
    set_norm(adapter.norm_out, z, tokens, affine)


@register_start
class LeastSquares(Start):
    name = "lstsq"
    description = ("no outer norms; the output map of the chain's last adapter that has one starts as a least-squares "
                   "fit from what it receives to the destination's own features at its cut, on a batch of training "
                   "images (direct matching, as SN-Net initialises its stitching layers); earlier adapters start as "
                   "information-keeping lifts; where the destination's features take negative values, the adapters "
                   "from the fitted one on end without their output ReLU")
    needs_images = True

    def wrap(self, kind, block, step, index, context):
        if kind.fits:
            return Adapter(block)
        # A block without a fittable output map: an output norm that calibration starts at the destination's
        # per-channel statistics (as dst_stats does, without the input norm).
        return Adapter(block, norm_out=_norm(kind, step.out_channels))

    def wants_output_map(self, kind, index, context):
        # A block that is not an identity between equal shapes (a ViT block) gets a map to fit; one that is (a
        # bottleneck) only where prepare() asks for it.
        return not kind.identity_start

    def identity_misleads(self, context: ChainContext) -> bool:
        """Whether a chain of identities between equal shapes would start far from the destination's features, so
        that its last adapter needs an output map to fit: between two different models an identity hands the
        destination the source's channels as if they were its own."""
        return not context.within_one_model

    def prepare(self, bridge, context):
        if context.kind.fits and self.identity_misleads(context) and not any(
                has_output_map(step.adapter.block) for step in bridge.adapters):
            bridge.rebuild_step(len(bridge.adapters) - 1, output_map=True)
        if not context.dst_nonnegative:
            # The destination expects signed features: a ReLU at the end of the fitted adapter, or of an identity
            # after it, would clip half of them for good (no later norm can give the sign back).
            for step in bridge.adapters[last_mapped(bridge) or 0:]:
                if isinstance(step.adapter.block, FitsOutputMap):
                    step.adapter.block.keep_sign()

    @torch.no_grad()
    def fit(self, bridge, measured):
        x, target = _chain_rows(bridge, measured)
        last = last_mapped(bridge)
        last = len(bridge.adapters) - 1 if last is None else last  # later adapters are identities
        for i, step in enumerate(bridge.adapters):
            x = step.resize(x)
            adapter = step.adapter
            goal = resize_target(target, bridge, i) if i == last else None
            if not bridge.kind.fits:
                calibrate_norms(adapter, x, bridge.tokens, goal)
            elif has_output_map(adapter.block):
                rows = adapter.block.fit_inputs(x)
                weight, bias = (ridge_fit(rows, rows_of(goal, bridge.tokens)) if goal is not None
                                else lift(rows, bridge.steps[i].out_channels))
                adapter.block.set_output_map(weight, bias, rows)
            x = adapter(x)


# --- the default ----------------------------------------------------------------------------------------------


@torch.no_grad()
def recalibrate_norms(module: nn.Module, x: torch.Tensor, chunk: int = 64) -> None:
    """Every BatchNorm inside ``module`` gets the running statistics of what reaches it on ``x`` (a forward pass in
    training mode, averaged over chunks), so that eval mode computes what training mode does on such data."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    modes = [(m, m.training) for m in module.modules()]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the chunks
    module.train()
    try:
        for part in x.split(chunk):
            module(part)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        for m, mode in modes:
            m.training = mode


def match_features(bridge: "Bridge", source: torch.Tensor, target: torch.Tensor, steps: int, lr: float,
                   batch: int = 64) -> float:
    """``steps`` Adam steps on the adapters (in training mode, on batches of ``batch``) from ``source``, the
    source's features at its cut, towards ``target``, the destination's own features, by mean squared error per
    channel in units of the target's spread; then every norm's running statistics from the whole batch. On tokens
    the prefix tokens a bridge makes before its adapters (``prefix_in``: ``learned``, ``projected``) train too,
    through them. The random batches come from a generator seeded from torch's global one, so a run's seed decides
    them. Returns the last loss."""
    adapters = bridge.adapters
    dims = (0, 1) if target.dim() == 3 else (0, 2, 3)
    scale = target.std(dims, keepdim=True).clamp_min(1e-6)
    generator = torch.Generator(device="cpu").manual_seed(int(torch.randint(2**62, (1,)).item()))
    parameters = [p for p in adapters.parameters() if p.requires_grad]
    if bridge.tokens:  # (after image adapters fit_prefix fits them, by least squares)
        parameters += [p for p in bridge.prefix_parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    modes = [(m, m.training) for m in adapters.modules()]
    adapters.train()
    loss = torch.zeros(())
    try:
        with torch.enable_grad():
            for _ in range(steps):
                pick = torch.randperm(len(source), generator=generator)[:batch].to(source.device)
                h = bridge.enter(source[pick])
                for step in adapters:
                    h = step(h)
                loss = ((h - target[pick]) / scale).pow(2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)  # training must not start with this fit's last gradient
        for m, mode in modes:
            m.training = mode
    with torch.no_grad():
        h = bridge.enter(source)  # (with the prefix tokens as trained)
        for step in adapters:
            recalibrate_norms(step, h)
            h = step(h)
    return float(loss.detach())


def fit_prefix(bridge: "Bridge", measured: Measured) -> None:
    """Fit the bridge's prefix map (``prefix_in="projected"``) to the destination's own prefix tokens at its cut,
    from the patch tokens the calibrated adapters now make. A token bridge makes its prefix tokens before its
    adapters, and feature matching fits them through them (:func:`match_features`)."""
    if getattr(bridge, "prefix_map", None) is None or bridge.tokens:
        return
    x = bridge.enter(measured.source)
    for step in bridge.adapters:
        x = step(x)
    patches = x.flatten(2).transpose(1, 2)
    bridge.prefix_map.fit(patches.mean(1), bridge.prefix_target(measured.destination))


@torch.no_grad()
def transparent_norm(norm: nn.Module, z: torch.Tensor, tokens: bool, wanted: torch.Tensor | None = None) -> None:
    """A BatchNorm that turns ``z`` into ``wanted`` (default: ``z`` itself), a per-channel positive multiple of
    it, in both modes: running statistics of ``z`` and the affine that rescales them to ``wanted``'s (in training
    mode its batch statistics are those of ``z`` too, up to sampling)."""
    mean, var = channel_stats(z, tokens)
    want_mean, want_var = channel_stats(z if wanted is None else wanted, tokens)
    eps = getattr(norm, "eps", 1e-5)
    # (z - mean) / sqrt(var + eps) * weight + bias == wanted, exactly: the eps is undone too.
    weight = torch.sqrt(want_var) * torch.sqrt(var + eps) / torch.sqrt(var).clamp_min(1e-12)
    set_norm(norm, z, tokens, (weight, want_mean))


@torch.no_grad()
def rescale_to_default(block: nn.Module) -> None:
    """Scale a fitted conv adapter's weights (and bias) so that their root mean square is a default initialisation's
    (PyTorch's conv: 1/sqrt(3 fan_in)). A norm after the block makes this invisible to its output; AdamW's steps
    of about lr per weight are then as large, relative to the weights, as from the paper's random start."""
    conv = getattr(block, "conv", None)
    if conv is None:
        return
    fan_in = conv.weight[0].numel()
    rms = conv.weight.pow(2).mean().sqrt().clamp_min(1e-12)
    k = (1.0 / (3 * fan_in) ** 0.5) / rms
    conv.weight.mul_(k)
    if conv.bias is not None:
        conv.bias.mul_(k)


@register_start
class Fitted(Start):
    """The default: adapters that start where the destination expects its features, shaped so that AdamW trains on.

    * **Structure** (the paper's code, where it measured best): nothing around residual adapters (bottleneck, ViT
      block); after a non-residual adapter a BatchNorm (LayerNorm on tokens) and LeakyReLU(0.1), except that the
      last adapter keeps the activation only in front of non-negative features and, on tokens, has nothing after
      it. A bottleneck between equal shapes of one model keeps its identity shortcut (the paper's MACs) in front
      of non-negative features (a ResNet's, after a ReLU: there the skipped blocks are close to an identity); in
      front of signed ones (MobileNetV3's linear bottlenecks) it gets a 1x1 projection shortcut, fitted by least
      squares (:attr:`project_signed`).
    * **Least squares**: adapters before the last start at random, as in the paper's code (random features of the
      source, kept whole by the LeakyReLU), their norms calibrated on the images; the last adapter's output map
      starts as the ridge least-squares map from what reaches it to the destination's own features at its cut. Its
      BatchNorm starts transparent, and the map's weights are scaled to a default initialisation's size behind it,
      so that AdamW's steps of about ``lr`` are as large relative to them as from a random start (unscaled, a
      fitted chain of linear adapters lost ten points in its first epoch). A bottleneck's residual branch starts
      at a least-squares fit of what its shortcut misses (instead of zero).
    * **Feature matching**: then :attr:`match_steps` Adam steps on the adapters alone, on the calibration images'
      features, towards the destination's own features (what least squares cannot reach through nonlinear
      adapters: a MobileNetV3 stitched to itself at 1:1 starts at 65% instead of 46% and ends at its source's
      accuracy).
    * **Class token**: into a ViT, the class token is a learned affine map of the patch tokens' mean
      (``prefix_in="projected"``) fitted to the destination's own class token at its cut: the plain mean, which
      the paper uses, starts the stitch near chance.
    * **Warm-up** (:meth:`warmup`): training warms the learning rate up over the first quarter of its steps, so
      that AdamW's first full-size steps do not throw the fit away. With it the fit also pays on tokens (between
      two ViTs), where 0.5-0.7 took the paper's starts instead.

    docs/adapter_start.md has the measurements behind each part.
    """

    name = "fitted"
    description = ("least-squares start of the last adapter to the destination's own features (a transparent "
                   "BatchNorm after it), random earlier adapters with BatchNorm + LeakyReLU as in the paper's code, "
                   "then 600 Adam steps of feature matching on the calibration images; into a ViT the class token "
                   "is fitted too; a same-shape bottleneck into signed features gets a fitted projection shortcut")
    needs_images = True
    prefix_in = "projected"
    # Each part can be switched off in a subclass, for ablations (scripts/adapter_start_study.py registers some).
    match_steps = 600  # Adam steps of feature matching (0: least squares alone)
    match_lr = 1e-3
    rescale = True  # the fitted map's weights at a default initialisation's size, behind the transparent norm
    random_inner = True  # adapters before the last at random (False: lstsq's information-keeping lifts)
    # A fitted start is a good point that AdamW's first full-size steps (lr 2e-3 from step one, in the paper's
    # recipe) partly leave: R18 -> itself at 1:3 with linear adapters started at 67.8% and, without a warm-up, stood
    # at 66.6% after one epoch of two. A linear warm-up over the first quarter of the run keeps it (two epochs 77.3
    # vs 75.3, one epoch 73.8 vs 70.7, 3 seeds; docs/adapter_start.md), where a lower peak lr (1e-3) cost a
    # MobileNetV3 chain 2.6 points.
    warmup_share = 0.25
    # On tokens (between two ViTs, and every ViT-block chain) no norm can start transparent. Before the warm-up a
    # fitted start there, though far better before training, was left by AdamW's first steps and ended below the
    # paper's starts (ViT-Micro to itself at 1:4, ViT block: 48% vs 58%), so 0.5-0.7 took the paper's structure on
    # tokens. With the warm-up it ends ahead (ViT block 58.2 vs 56.8, linear 47.8 vs 46.0; starts 56% vs 28% and
    # 37% vs 9%), so the default fits on tokens too. A subclass can name the paper's starts to take there instead,
    # by adapter: ``{"residual": "paper_text", "plain": "paper_code"}``.
    token_starts: dict[str, str] | None = None
    # A bottleneck between equal shapes of one model, in front of signed features, gets a projection shortcut to fit
    # (True) instead of the identity. MobileNetV3 to itself at 1:1 skips an inverted-residual block that is far from
    # an identity (the identity misses 52% of its output's variance, a ResNet-18 block's 0.1%), and a branch of
    # width out/4 (6 channels there) cannot add what it misses: 70.6 against its source's 72.85 with the identity
    # (docs/adapter_start.md). The projection costs out^2 MACs a pixel, about as much as that branch.
    project_signed = True

    def _on_tokens(self, kind: AdapterType) -> Start | None:
        if kind.layout != "tokens" or self.token_starts is None:
            return None
        return get_start(self.token_starts["residual" if kind.residual else "plain"])

    def wrap(self, kind, block, step, index, context):
        if (paper := self._on_tokens(kind)) is not None:
            return paper.wrap(kind, block, step, index, context)
        if kind.residual:
            return Adapter(block)
        if not kind.fits:  # no map to fit: an output norm calibrated to the destination's statistics
            return Adapter(block, norm_out=_norm(kind, step.out_channels))
        if index < len(context.steps) - 1:
            return Adapter(block, norm_out=_norm(kind, step.out_channels), act=nn.LeakyReLU(0.1))
        if kind.layout == "tokens":  # a LayerNorm cannot start transparent
            return Adapter(block)
        return Adapter(block, norm_out=nn.BatchNorm2d(step.out_channels),
                       act=nn.LeakyReLU(0.1) if context.dst_nonnegative else None)

    def wants_output_map(self, kind, index, context):
        if (paper := self._on_tokens(kind)) is not None:
            return paper.wants_output_map(kind, index, context)
        return LeastSquares.wants_output_map(self, kind, index, context)

    def prepare(self, bridge, context):
        if (paper := self._on_tokens(context.kind)) is not None:
            return paper.prepare(bridge, context)
        return LeastSquares.prepare(self, bridge, context)

    def identity_misleads(self, context):
        # Within one model too, in front of signed features (project_signed): the identity bottleneck gets a
        # projection shortcut.
        return LeastSquares.identity_misleads(self, context) or (self.project_signed and not context.dst_nonnegative)

    def warmup(self, context):
        if (paper := self._on_tokens(context.kind)) is not None:
            return paper.warmup(context)
        return self.warmup_share

    @torch.no_grad()
    def fit(self, bridge, measured):
        if self._on_tokens(bridge.kind) is not None:
            return  # the paper's start: nothing to fit (and the class token runs through the adapters)
        x, target = _chain_rows(bridge, measured)
        last = last_mapped(bridge)
        last = len(bridge.adapters) - 1 if last is None else last  # later adapters are identities
        for i, step in enumerate(bridge.adapters):
            x = step.resize(x)
            adapter = step.adapter
            if i < last and (self.random_inner or not has_output_map(adapter.block)):
                recalibrate_norms(adapter, x)  # random, as built; train and eval mode agree from here on
            elif i < last:
                rows = adapter.block.fit_inputs(x)
                adapter.block.set_output_map(*lift(rows, bridge.steps[i].out_channels), rows)
                recalibrate_norms(adapter, x)
            elif i == last:
                self._fit_last(bridge, adapter, x, resize_target(target, bridge, i))
            x = adapter(x)
        if self.match_steps:
            match_features(bridge, measured.source, resize_target(target, bridge, len(bridge.adapters) - 1),
                           self.match_steps, self.match_lr)
        fit_prefix(bridge, measured)

    def _fit_last(self, bridge, adapter, x, goal):
        block, tokens = adapter.block, bridge.tokens
        if not bridge.kind.fits:
            calibrate_norms(adapter, x, tokens, goal)
            return
        if has_output_map(block):
            rows = block.fit_inputs(x)
            block.set_output_map(*ridge_fit(rows, rows_of(goal, tokens)), rows)
        if isinstance(block, FitsOutputMap) and not tokens:  # a residual branch: from zero to what the map misses
            block.fit_branch(x, goal, ridge_fit)
        if isinstance(adapter.norm_out, nn.modules.batchnorm._BatchNorm):
            wanted = block(x)
            if self.rescale:
                rescale_to_default(block)
            transparent_norm(adapter.norm_out, block(x), tokens, wanted)


@register_start
class FittedQuick(Fitted):
    """The default start with an eighth of its feature matching, for ranking stitches rather than training them:
    80 Adam steps at lr 3.5e-3 instead of 600 at 1e-3. The matching is what the default start costs (about 5 ms a
    step on a CPU core), and ``stitchkit search`` pays its proxy over every candidate, so this is the start of the
    cheaper ``init_accuracy_quick`` proxy.

    Fewer steps need larger ones: over docs/search.md's 160 trained stitches, accuracy at this start ranks them with
    Spearman 0.74 at 100 steps and the full start's lr, 0.86 at 100 steps and lr 3e-3 (0.875 at the full start),
    0.835 at 80 steps and lr 3.5e-3, 0.825 at 70 and 4e-3, 0.80 at 50 and 6e-3; the larger lr ranked better by
    every source and every destination alone too. 80 steps is the fewest that ranked inside the full start's 95%
    interval with a margin. (Chosen on the study's own stitches: the figures are in-sample.)"""

    name = "fitted_quick"
    description = ("fitted, with 80 steps of feature matching at lr 3.5e-3 instead of 600 at 1e-3 (an eighth of its "
                   "cost; a proxy's start)")
    match_steps = 80
    match_lr = 3.5e-3
    tuned_on = "configs/search/fashion_mnist.yaml"  # the study whose stitches chose these settings (its page says so)


DEFAULT_START = "fitted"  # chosen by measurement: docs/adapter_start.md
