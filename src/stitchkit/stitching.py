"""Stitched models: a frozen source front, a trainable bridge of adapters, a frozen destination back.

``create_stitched("resnet50", "torchvision:swin_t", gap=(1, 4))`` keeps ResNet-50 up to and including the first
block of stage 1, Swin-T from just after the first block of stage 4 on, and trains three bottleneck adapters in
between (the paper's Figure 1).

Frozen means one tested policy: frozen weights have ``requires_grad=False`` and are never in the optimizer, and the
frozen parts stay in eval mode whatever ``.train()`` says, so BatchNorm statistics never change and stochastic depth
and dropout are off. ``frozen_mode="train"`` reproduces the paper's own code (frozen parts in train mode) for
comparison.

Adapters start where the destination expects its features to be: by default (``adapter_norm="fitted"``) the last
adapter's output map starts as a least-squares fit to the destination's own features at its cut, then all adapters
take a few hundred steps of feature matching, on the ``calibration_images`` given to :func:`create_stitched` (the
registered starts are in :mod:`stitchkit.starts`).
"""
from __future__ import annotations

import numbers
import operator
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from . import adapters as adapter_registry
from .chain import RESIZE_MODES, Resize, Step, TokenResize, gap_cuts, num_adapters, parse_gap, plan_chain
from .errors import IncompatibleError, StitchkitError, unknown_name
from .network import Network, data_config
from .train_surface import back_units, bridge_units, mapped_no_weight_decay, prefixed, run_modules, whole_unit
from .starts import DEFAULT_START, ChainContext, Measured, Start, get_start
from .formats import (
    PREFIX_IN_POLICIES,
    PREFIX_OUT_POLICIES,
    FeatureSpec,
    Format,
    channels_after_prefix_out,
    check_policy,
    convert,
    from_nchw,
    to_nchw,
)
from .zoo import (ModelSpec, back_part, dissect, front_part, input_channels, model_spec, resolve_model,
                  token_extras)
from .zoo.models import classes_or_none, create_model, fit_head, num_outputs
from .zoo.split import TokenOrder

FROZEN_MODES = ("eval", "train")
ADAPTER_FILE_FORMAT = "stitchkit.adapters.v3"  # v3: also the trained head and blocks of the back (new-task stitches)
# v4: the file of a stitch with a model whose cuts changed in 0.13.0 (saved_cuts.needs_new_format), which 0.12 and
# earlier cannot rebuild as it was trained: they refuse v4. Every other file stays v3 (it records its cuts too, which
# earlier readers ignore), so that they still load what they build alike.
CHANGED_CUTS_ADAPTER_FORMAT = "stitchkit.adapters.v4"
# v2: adapters carry adapter_norm
READABLE_ADAPTER_FORMATS = ("stitchkit.adapters.v2", ADAPTER_FILE_FORMAT, CHANGED_CUTS_ADAPTER_FORMAT)
CALIBRATION_BATCH = 64  # images per forward pass while calibrating
# What a stitch starts from: images for both models, a (source, destination) pair of them, or a function of the
# built bridge that returns either (so that the start can say how many it wants from the chain's shapes).
CalibrationImages = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor],
                          Callable[["Bridge"], Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]]


@dataclass
class StitchConfig:
    """Everything needed to rebuild a stitched model (plain values, saved next to the adapter weights)."""

    src: str
    dst: str
    gap: tuple[int, int]
    adapter: str = "bottleneck"
    resize: str = "bilinear"
    input_size: int = 224
    prefix_out: str = "concat"
    prefix_in: str = "projected"
    readd_pos_embed: bool = False
    frozen_mode: str = "eval"
    adapter_norm: str = DEFAULT_START
    token_adapters: bool = True
    pretrained: bool = False
    src_checkpoint: str | None = None
    dst_checkpoint: str | None = None
    # A new head of this size; None: the destination's own head; 0: no classifier (timm's reset_classifier(0)): the
    # stitch returns the pooled features the destination's classifier would read.
    num_classes: int | None = None
    train_head: bool = False  # the back's head trains with the adapters
    unfreeze_last: int = 0  # blocks at the end of the back that train with the adapters

    def __post_init__(self):
        # Validated once, here: every stitch is built from a config (build_stitch), and a search describes
        # thousands of them before it builds any.
        self.gap = parse_gap(self.gap)
        self.input_size = square_input_size(self.input_size)
        check_choices(self.adapter, self.resize, self.prefix_out, self.prefix_in, self.frozen_mode, self.adapter_norm)
        if not isinstance(self.unfreeze_last, int) or self.unfreeze_last < 0:
            raise StitchkitError(f"unfreeze_last must be a whole number >= 0, got {self.unfreeze_last!r}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 0):
            raise StitchkitError(f"num_classes must be a whole number >= 0 (0: no classifier) or None, got "
                                 f"{self.num_classes!r}")
        if self.num_classes and not self.train_head:  # (no classifier has no random weights to train)
            raise IncompatibleError(f"a new head of {self.num_classes} classes starts from random weights, so it must "
                                    "train: drop train_head=False, or keep the destination's own head "
                                    "(num_classes=None)")

    @property
    def src_cut(self) -> tuple[int, str]:
        return gap_cuts(*self.gap)[0]

    @property
    def dst_cut(self) -> tuple[int, str]:
        return gap_cuts(*self.gap)[1]


def square_input_size(input_size) -> int:
    """The side of a stitch's images from ``N`` or ``(N, N)``. A stitch takes square images only: its cut shapes,
    test image, saved config and data pipeline are all one side, so ``(H, W)`` with H != W is refused here, before
    any model is built (it used to fail inside the build, with a TypeError)."""
    side = input_size
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2 and input_size[0] == input_size[1]:
        side = input_size[0]
    if isinstance(side, numbers.Integral) and not isinstance(side, bool) and side > 0:
        return operator.index(side)
    if isinstance(input_size, (tuple, list)):
        raise StitchkitError(f"a stitch takes square images: give one side, input_size=N, not {tuple(input_size)!r}")
    raise StitchkitError(f"give input_size=N, a positive whole number (a stitch takes square N x N images), not "
                         f"{input_size!r}")


def check_choices(adapter: str, resize: str, prefix_out: str, prefix_in: str, frozen_mode: str,
                  adapter_norm: str) -> None:
    """Every named choice of a stitch is one that exists (an error with close matches otherwise), before any model
    is built."""
    if resize not in RESIZE_MODES:
        raise unknown_name("resize mode", resize, RESIZE_MODES)
    adapter_registry.get_adapter(adapter)
    check_policy(prefix_out, PREFIX_OUT_POLICIES, "out of tokens")
    check_policy(prefix_in, PREFIX_IN_POLICIES, "into tokens")
    if frozen_mode not in FROZEN_MODES:
        raise unknown_name("frozen mode", frozen_mode, FROZEN_MODES)
    get_start(adapter_norm)


class UncalibratedWarning(UserWarning):
    """A stitch whose adapters should start from data was built without calibration images."""


class BridgeStep(nn.Module):
    """One step of a chain: resize (or not), then the adapter."""

    def __init__(self, resize: nn.Module, adapter: nn.Module):
        super().__init__()
        self.resize, self.adapter = resize, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.resize(x))


class Bridge(nn.Module):
    """The trainable middle: layout conversion in, the chain of resized adapters, layout conversion out.

    Image adapters run on NCHW: the source feature is converted to an image (prefix tokens merged by
    ``prefix_out``), and the result converted to the destination's layout (prefix tokens made by ``prefix_in``).
    Token adapters run on the token sequence itself.

    Attributes:
        adapter_norm: how the adapters are wrapped and where they start (a registered start, :mod:`stitchkit.starts`).
        calibrated: whether :func:`stitchkit.initialization.calibrate` has started the adapters from data (always
            True for norms that need none).
    """

    grad_checkpointing = False  # each adapter checkpointed (StitchedModel.set_grad_checkpointing)

    def __init__(
        self,
        src: FeatureSpec,
        dst: FeatureSpec,
        adapter: str,
        resize: str,
        adapters: int,
        prefix_out: str = "concat",
        prefix_in: str = "mean",
        prefix_init: torch.Tensor | None = None,
        pos_embed: torch.Tensor | None = None,
        adapter_norm: str = DEFAULT_START,
        within_one_model: bool = False,
        token_adapters: bool = True,
        dst_nonnegative: bool = True,
    ):
        super().__init__()
        start = get_start(adapter_norm)
        kind = adapter_registry.get_adapter(adapter)
        self.src, self.dst, self.prefix_out, self.prefix_in = src, dst, prefix_out, prefix_in
        self.adapter_norm = adapter_norm
        self.calibrated = not start.needs_images
        # Between two token models a per-pixel adapter (linear, linear_relu) runs on every token, the class token
        # included, as the paper's code does; through an image the class token would become the patch mean.
        self.on_tokens = (token_adapters and kind.layout == "image" and kind.token_form is not None
                          and src.is_tokens and dst.is_tokens and resize != "integrated")
        self.kind = kind.on_tokens() if self.on_tokens else kind
        self.tokens = self.kind.layout == "tokens"
        if self.tokens and src.num_prefix_tokens == dst.num_prefix_tokens and src.num_prefix_tokens:
            _refuse_prefix_out_on_tokens(prefix_out, src, adapter)
        if self.tokens:
            # Work on the destination's kind of sequence: same prefix count, source channels and grid.
            self.enter_spec = src if src.num_prefix_tokens == dst.num_prefix_tokens else FeatureSpec(
                Format.NLC, channels_after_prefix_out(src, prefix_out), src.height, src.width, dst.num_prefix_tokens
            )
        else:
            self.enter_spec = FeatureSpec(Format.NCHW, channels_after_prefix_out(src, prefix_out), src.height, src.width)
        self.steps: tuple[Step, ...] = plan_chain(
            self.enter_spec.channels, src.size, dst.channels, dst.size, adapters, resize
        )
        self.exit_spec = dst.with_(height=self.steps[-1].out_size[0], width=self.steps[-1].out_size[1])
        self.context = ChainContext(self.kind, self.steps, within_one_model, dst_nonnegative)
        self.adapters = nn.ModuleList(self._step_module(i) for i in range(len(self.steps)))
        start.prepare(self, self.context)
        self.learned_prefix = self.prefix_map = None
        # Where the prefix tokens that prefix_in makes are made: image adapters, after them in the destination's
        # channels; token adapters between different prefix counts (a ViT into one with registers, or a DeiT's
        # distillation token), before them, in the adapters' input channels, so that they run through the adapters
        # as a class token does between equal counts (there the source's own pass through and none are made).
        made = self.exit_spec if not self.tokens else (
            self.enter_spec if src.num_prefix_tokens != dst.num_prefix_tokens else None)
        if made is not None and made.num_prefix_tokens and prefix_in == "learned":
            # The destination's class token (and its position) starts it after image adapters; before token adapters,
            # in the source's channels, there is no such token to start from.
            init = prefix_init if prefix_init is not None and not self.tokens else torch.zeros(
                1, made.num_prefix_tokens, made.channels)
            self.learned_prefix = nn.Parameter(init.detach().clone())
        if made is not None and made.num_prefix_tokens and prefix_in == "projected":
            self.prefix_map = PrefixMap(made.channels, made.num_prefix_tokens)
        self.register_buffer("pos_embed", pos_embed, persistent=False)

    def prefix_parameters(self) -> list[nn.Parameter]:
        """The parameters that make the destination's prefix tokens (``prefix_in``: ``learned``, ``projected``)."""
        return [*([self.learned_prefix] if self.learned_prefix is not None else []),
                *(self.prefix_map.parameters() if self.prefix_map is not None else [])]

    def no_weight_decay(self) -> set[str]:
        """The learned prefix tokens (``prefix_in="learned"``), which stand in for the destination's class token:
        exempt from weight decay as timm exempts that token."""
        return {"learned_prefix"} if self.learned_prefix is not None else set()

    @property
    def start(self) -> Start:
        """Where the adapters start (the registered :class:`~stitchkit.starts.Start` named by ``adapter_norm``)."""
        return get_start(self.adapter_norm)

    def _step_module(self, index: int, output_map: bool | None = None) -> BridgeStep:
        step, kind, start = self.steps[index], self.kind, self.start
        if output_map is None:
            output_map = kind.fits and start.wants_output_map(kind, index, self.context)
        block = kind.create(step.in_channels, step.out_channels, stride=step.stride, output_map=output_map)
        adapter = start.wrap(kind, block, step, index, self.context)
        if step.resize in ("none", "stride"):
            resize = nn.Identity()
        elif self.tokens:
            resize = TokenResize(step.in_size, step.out_size, self.enter_spec.num_prefix_tokens, step.resize)
        else:
            resize = Resize(step.out_size, step.resize)
        return BridgeStep(resize, adapter)

    def warmup(self) -> float:
        """The share of the training run over which the learning rate should warm up from where the adapters
        start (:meth:`stitchkit.starts.Start.warmup`); none when the start could not be fitted (no images)."""
        return self.start.warmup(self.context) if self.calibrated else 0.0

    def rebuild_step(self, index: int, output_map: bool) -> None:
        """Build step ``index`` again (for a start's :meth:`~stitchkit.starts.Start.prepare`): with or without an
        output map that its block's type would not have between equal shapes."""
        self.adapters[index] = self._step_module(index, output_map=output_map)

    def conform_to_saved(self, keys: set[str]) -> None:
        """Rebuild, without its output map, every step whose saved weights (``keys``: the bridge's state-dict keys,
        as saved) were made without one: a stitch saved before its start gave that step an output map (0.9 gave
        a same-shape bottleneck into signed features a projection shortcut) still loads, as the network it was.
        Only for a freshly built bridge: an optimizer over the replaced step's parameters would miss the new ones."""
        for i, step in enumerate(self.adapters):
            if not adapter_registry.has_output_map(step.adapter.block):
                continue
            prefix = f"adapters.{i}."
            saved = {k for k in keys if k.startswith(prefix)}
            without = {prefix + k for k in self._step_module(i, output_map=False).state_dict()}
            if saved and saved == without:  # (the step as built holds its map's weights too)
                old = step.adapter.block
                self.rebuild_step(i, output_map=False)
                if isinstance(getattr(old, "act_out", None), nn.Identity):  # what prepare() made of it stays
                    self.adapters[i].adapter.block.keep_sign()
        if self.tokens and self.prefix_map is not None and keys and not any(k.startswith("prefix_map.") for k in keys):
            # Saved before a token bridge made its prefix tokens with its map (prefix_in="projected" between
            # different prefix counts was the patch tokens' mean then): without the map, enter() makes that again.
            self.prefix_map = None

    @torch.no_grad()
    def calibrate(self, measured: Measured, device: str | torch.device | None = None) -> None:
        """Start the adapters as the start says, from features measured on calibration images (see
        :class:`~stitchkit.starts.Measured`), on ``device`` (where the bridge then stays); a start that needs no
        images leaves them as built."""
        start = self.start
        if not start.needs_images:
            return
        if device is not None:
            self.to(device)
            measured = Measured(measured.source.to(device), measured.destination.to(device))
        was_training = self.training
        self.eval()  # calibrated running statistics are what the fitting passes must use
        try:
            start.fit(self, measured)
        finally:
            self.train(was_training)
        self.calibrated = True

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        """The source's feature in the adapters' layout (NCHW, or the destination's kind of token sequence)."""
        if self.tokens:
            return convert(x, self.src, self.enter_spec, self.prefix_out, self.prefix_in, self.learned_prefix,
                           self.prefix_map)
        return to_nchw(x, self.src, self.prefix_out)

    def prefix_target(self, dst_feature: torch.Tensor) -> torch.Tensor:
        """The destination's own prefix tokens at its cut, as the bridge's prefix policy should make them."""
        if self.pos_embed is not None:
            dst_feature = _add_pos_embed(dst_feature, -self.pos_embed, self.dst.num_prefix_tokens)
        return dst_feature[:, : self.dst.num_prefix_tokens]

    def _refuse(self, x: torch.Tensor) -> None:
        """Features of another shape than the bridge was built for: images of another size (a CNN front takes any).
        Resized to the built grid they would run, but wrong (a fixed-size resize squeezes them, a destination's
        position embedding is for one grid), so they are refused."""
        try:
            got = FeatureSpec.from_tensor(x, self.src.format, self.src.num_prefix_tokens).describe()
        except ValueError:  # not even the layout's number of dimensions, or no square grid
            got = str(list(x.shape[1:]))
        raise StitchkitError(
            f"this stitch was built for other images: its bridge takes {self.src.describe()} features from the front "
            f"and got {got}; give it images of the size it was built for "
            "(model.pretrained_cfg['input_size']), or build it again for this size (create_stitched(..., "
            "input_size=), data.input_size)")

    def target(self, dst_feature: torch.Tensor) -> torch.Tensor:
        """The destination's own feature at its cut in the adapters' layout: what the last adapter should output
        (for image adapters, the patch tokens only: ``prefix_in`` makes the prefix tokens)."""
        if self.pos_embed is not None:  # the bridge adds it after the adapters
            dst_feature = _add_pos_embed(dst_feature, -self.pos_embed, self.dst.num_prefix_tokens)
        if self.tokens:
            return dst_feature
        return to_nchw(dst_feature, self.dst, "drop")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.src.shape and not torch.jit.is_tracing():
            self._refuse(x)
        x = run_modules(self.adapters, self.enter(x), self.grad_checkpointing)
        if not self.tokens:
            x = from_nchw(x, self.exit_spec, self.prefix_in, self.learned_prefix, self.prefix_map)
        if self.pos_embed is not None:
            x = _add_pos_embed(x, self.pos_embed, self.exit_spec.num_prefix_tokens)
        # In the destination's own memory layout: an NHWC permute of an NCHW image is a strided view, and a
        # destination that reshapes with .view (timm's swinv2_cr, through the graph split) cannot take one.
        return x.contiguous()


def _refuse_prefix_out_on_tokens(prefix_out: str, src: FeatureSpec, adapter: str) -> None:
    """Token adapters between equal prefix counts carry the source's prefix tokens through as tokens (the paper's
    code): no prefix token is merged into the patches, so ``drop`` and ``add`` built the very network the default
    builds, silently. They are refused; a file that recorded one was built as with ``concat``."""
    if prefix_out == "concat":  # the default: nothing was asked of the prefix tokens
        return
    raise IncompatibleError(
        f"prefix_out={prefix_out!r} cannot apply: between two token models with {src.num_prefix_tokens} prefix "
        f"token(s) each, {adapter} adapters run on the prefix tokens as tokens (the paper's code) and merge none into "
        "the patch tokens; leave prefix_out='concat', the default (a stitch saved with another value was built as "
        "with it: load_stitched(path, prefix_out='concat')), or merge the class token through an image: "
        + ("token_adapters=False, or " if adapter != "vit_block" else "") + "an image adapter such as bottleneck")


class PrefixMap(nn.Module):
    """The prefix tokens (class token, registers) as a learned affine map of the patch tokens' mean
    (``prefix_in="projected"``): it starts as the mean itself, which is the paper's class token, until a start fits
    it to the destination's own prefix tokens at its cut (after image adapters by :meth:`fit`; before token
    adapters, through them, by the default start's feature matching)."""

    def __init__(self, channels: int, num_prefix_tokens: int):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.linear = nn.Linear(channels, channels * num_prefix_tokens)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(channels).repeat(num_prefix_tokens, 1))
            self.linear.bias.zero_()

    def forward(self, mean: torch.Tensor) -> torch.Tensor:
        return self.linear(mean).unflatten(-1, (self.num_prefix_tokens, -1)).flatten(1, 2)

    @torch.no_grad()
    def fit(self, means: torch.Tensor, targets: torch.Tensor) -> None:
        """Least squares from the patch means ``(N, C)`` to the wanted prefix tokens ``(N, num_prefix_tokens, C)``."""
        from .initialization import ridge_fit

        weight, bias = ridge_fit(means, targets.flatten(1))
        self.linear.weight.copy_(weight)
        self.linear.bias.copy_(bias)


def _add_pos_embed(x: torch.Tensor, pos: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Add a position embedding that covers either all tokens or only the patch tokens."""
    if pos.shape[1] == x.shape[1]:
        return x + pos
    return torch.cat([x[:, :num_prefix_tokens], x[:, num_prefix_tokens:] + pos], dim=1)


def stitch_architecture(config: StitchConfig, one_model: bool, head_classes: int | None,
                        cuts: dict[str, str] | None = None) -> dict:
    """A stitch's :meth:`StitchedModel.architecture` (also each source's record in a parallel stitch's): its config
    without where the weights came from, whether source and destination were one model, how many classes its
    head predicts now (0: no classifier), and where its models are cut (``cuts``, :mod:`stitchkit.saved_cuts`)."""
    arch = asdict(config)
    for key in ("pretrained", "src_checkpoint", "dst_checkpoint"):
        arch.pop(key)
    arch["gap"] = list(arch["gap"])
    arch["one_model"] = one_model
    arch["head_classes"] = head_classes
    if cuts is not None:
        arch["cuts"] = dict(cuts)
    return arch


def stitch_cuts(config: StitchConfig, src_spec: ModelSpec, dst_spec: ModelSpec) -> dict[str, str]:
    """Where a stitch of ``config`` cuts its models: the module after which the source's front ends (``src``) and
    the one after which the destination's back starts (``dst``), as ``stitchkit inspect`` names them."""
    return {"src": src_spec.cut(*config.src_cut).module, "dst": dst_spec.cut(*config.dst_cut).module}


def train_back_head(model: nn.Module) -> None:
    """Make the head of ``model.back`` (a stitch's or a parallel stitch's) one of the parts that train with the
    adapters: trainable, in ``trained_back`` (so checkpoints hold it), following ``.train()``."""
    head = len(model.back) - 1
    if head not in model.trained_back:
        model.trained_back = (*model.trained_back, head)
    model.back[head].requires_grad_(True)
    model.train(model.training)


class StitchedModel(Network, nn.Module):
    """``back(bridge(front(x)))`` with ``front`` and ``back`` frozen.

    ``save_pretrained(folder)`` writes it with every weight as one self-contained folder (the Hugging Face Hub
    layout, :mod:`stitchkit.modelfolder`); ``StitchedModel.from_pretrained(folder)`` or
    :func:`stitchkit.load_pretrained` rebuild it without the network or the original checkpoints.

    Attributes:
        front: the source model up to the source cut (frozen).
        bridge: the trainable :class:`Bridge`.
        back: the destination model from the destination cut on, with its head (frozen).
        config: the :class:`StitchConfig` that rebuilds this model.
        src_spec, dst_spec: the measured cut points of both models.
    """

    def __init__(self, front: nn.Module, bridge: Bridge, back: nn.Module, config: StitchConfig,
                 src_spec: ModelSpec, dst_spec: ModelSpec):
        super().__init__()
        if config.frozen_mode not in FROZEN_MODES:
            raise unknown_name("frozen mode", config.frozen_mode, FROZEN_MODES)
        self.front, self.bridge, self.back = front, bridge, back
        self.config, self.src_spec, self.dst_spec = config, src_spec, dst_spec
        for part in (front, back):
            part.requires_grad_(False)
        # The back is its blocks, then the head (after a token reordering for models like Hiera, see zoo.split).
        self._back_lead = int(isinstance(back[0], TokenOrder)) if len(back) else 0
        blocks_in_back = len(back) - 1 - self._back_lead
        if not 0 <= config.unfreeze_last <= blocks_in_back:
            raise IncompatibleError(f"unfreeze_last={config.unfreeze_last}, but the back of {config.dst} at gap "
                                    f"{config.gap[0]}:{config.gap[1]} has {blocks_in_back} block"
                                    f"{'' if blocks_in_back == 1 else 's'}; use 0 to {blocks_in_back}")
        # Indices into ``back`` of the modules that train with the adapters (and follow .train()/.eval()).
        head = len(back) - 1
        self.trained_back = tuple(range(head - config.unfreeze_last, head)) + ((head,) if config.train_head else ())
        for i in self.trained_back:
            back[i].requires_grad_(True)
        self._warned = False
        self._built = False  # create_stitched sets it once the adapters have started where they should
        self.train(self.training)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.bridge.steps

    def cuts(self) -> dict[str, str]:
        """Where this stitch cuts its models (:func:`stitch_cuts`): what its saved files record, and what loading
        them checks (:mod:`stitchkit.saved_cuts`)."""
        return stitch_cuts(self.config, self.src_spec, self.dst_spec)

    def check_saved_cuts(self, architecture: dict, *, source: str, written_by: str | None,
                         trust_cuts: bool = False, trust_hint: str = "trust_cuts=True", fix: str | None = None) -> None:
        """Refuse to load saved weights into this freshly rebuilt stitch where the cuts ``architecture`` records
        (none: a file written before 0.13.0) are not this stitch's, or where its chain changed since the version that
        wrote it (:func:`stitchkit.saved_cuts.check_cuts`)."""
        from .saved_cuts import Part, check_cuts

        check_cuts([Part(self.config, self.cuts(), architecture.get("cuts"), self.steps)], source=source,
                   written_by=written_by, trust_cuts=trust_cuts, trust_hint=trust_hint, fix=fix)

    def train(self, mode: bool = True) -> "StitchedModel":
        super().train(mode)
        if self.config.frozen_mode == "eval":
            self.front.eval()
            self.back.eval()
            for i in getattr(self, "trained_back", ()):
                self.back[i].train(mode)
        return self

    def trained_parts(self) -> list[str]:
        """What training changes, for people: ``adapters``, then the back's trained blocks by their names in the
        destination model, then ``head``."""
        first = self.dst_spec.cut(*self.config.dst_cut).blocks - getattr(self, "_back_lead", 0)
        names = self.dst_spec.block_names
        return ["adapters", *(names[first + i] for i in self.trained_back if i < len(self.back) - 1),
                *(["head"] if self.config.train_head else [])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # nothing before the bridge is trained: skip its autograd graph
            h = self.front(x)
        return self.back(self.bridge(h))

    def tail(self) -> nn.Sequential:
        """``back(bridge(h))`` as a module sharing this model's parts: the forward pass after the front, for
        training several stitches on one front's output. Switch modes on the stitched model, never on the tail
        (that would put the frozen back in training mode)."""
        return nn.Sequential(self.bridge, self.back)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should see: the bridge's, and those of the back's trained blocks and head
        (``unfreeze_last``, ``train_head``). Warns once when the adapters should have started
        from data (a start that needs images, as the default ``fitted``) and were built without
        ``calibration_images``."""
        if getattr(self, "_built", False) and not self.bridge.calibrated and not self._warned:
            self._warned = True
            warnings.warn(UncalibratedWarning(
                f"training a stitch whose adapters (adapter_norm={self.config.adapter_norm!r}) were never started "
                "from data: pass calibration_images= (a batch of training images) to create_stitched, as stitchkit "
                "train does, or they train from their default initialisation"), stacklevel=2)
        return [p for p in self.parameters() if p.requires_grad]

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changed: the bridge's weights and buffers (a few MB instead of the whole model); the back's
        trained blocks and head (under ``back.``); with ``frozen_mode="train"`` also the frozen parts' buffers
        (BatchNorm statistics, which training mode moves), under ``front.`` and ``back.``."""
        state = dict(self.bridge.state_dict())
        for i in self.trained_back:
            state.update({f"back.{i}.{k}": v for k, v in self.back[i].state_dict().items()})
        if self.config.frozen_mode == "train":
            for name, part in (("front", self.front), ("back", self.back)):
                state.update({f"{name}.{k}": v for k, v in part.named_buffers()})
        return state

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`trained_state_dict` output; every entry this model trains must be there, and nothing else."""
        expected = {f"back.{i}.{k}" for i in self.trained_back for k in self.back[i].state_dict()}
        if self.config.frozen_mode == "train":
            expected |= {f"{name}.{k}" for name, part in (("front", self.front), ("back", self.back))
                         for k, _ in part.named_buffers()}
        given = {k for k in state if k.startswith(("front.", "back."))}
        if given - expected:
            extra = sorted(given - expected)
            raise RuntimeError(f"the state holds weights of parts this model keeps frozen ({', '.join(extra[:3])}); "
                               "it was saved from a stitch with another frozen_mode, train_head or unfreeze_last")
        if expected - given:
            missing = sorted(expected - given)
            raise RuntimeError(f"the state lacks weights this model trains ({', '.join(missing[:3])}); it was saved "
                               "from a stitch with another frozen_mode, train_head or unfreeze_last")
        for name, part in (("front", self.front), ("back", self.back)):
            own = dict(part.state_dict(keep_vars=True))
            with torch.no_grad():
                for key in given:
                    if key.startswith(f"{name}."):
                        target, value = own[key[len(name) + 1:]], state[key]
                        if target.shape != value.shape:
                            raise RuntimeError(f"{key} has shape {tuple(value.shape)}, this model's "
                                               f"{tuple(target.shape)}")
                        target.copy_(value)
        self.bridge.load_state_dict({k: v for k, v in state.items() if k not in given})

    folder_kind = "stitch"

    def head(self) -> nn.Module:
        return self.back[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.front(x)
        return self.back[:-1](self.bridge(h))

    def features_spec(self) -> FeatureSpec:
        return self.dst_spec.block_features[-1]  # the back ends with the destination's last block (or its cut)

    def _own_no_weight_decay(self) -> set[str]:
        return prefixed("bridge", self.bridge.no_weight_decay())

    def _layer_units(self, coarse: bool) -> list[tuple[str, str]]:
        return [whole_unit("front", "front"), *bridge_units({"bridge": len(self.bridge.adapters)}, coarse),
                *back_units(self.back, coarse)]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's ``train.py --grad-checkpointing``): each adapter and every module of
        the back, its frozen blocks included (the gradient reaches the adapters through them, so they hold
        activations too), keeps only its input and runs again during backward: less memory, more compute, the
        same gradients and BatchNorm statistics. The front runs without autograd and is not checkpointed."""
        self._checkpoint(enable, self.bridge, self.back)

    def _plan_head(self, num_classes: int):
        # A new classifier trains with the adapters, and is recorded as new (so a reload builds one of its size).
        # No classifier (0) is recorded too (a reload drops the destination's), and changes nothing about what
        # trains: the head keeps its pooling (and norm) as it was, trained or frozen.
        config = replace(self.config, num_classes=num_classes, train_head=self.config.train_head or num_classes > 0)

        def record() -> None:
            self.config = config
            if num_classes > 0:
                train_back_head(self)
        return record

    @classmethod
    def describe(cls, architecture: dict, head: str) -> str:
        a = architecture
        x, y = a["gap"]
        # Where the back starts follows gap_cuts: after the first block of stage y, or after stage x when y == x.
        back = f"the first block of its stage {y}" if y > x else f"the end of its stage {x}"
        return (f"A stitched network: **{a['src']}** up to and including the first block of its stage {x}, "
                f"{a['adapter']} adapters ({a['resize']} resizing), then **{a['dst']}** from just after {back} on, "
                f"with {head}.")

    def architecture(self) -> dict:
        """What rebuilds this network without its weights (see :meth:`from_architecture`): the
        :class:`StitchConfig` without where the weights came from, whether source and destination were one model,
        and how many classes the head predicts."""
        return stitch_architecture(self.config, getattr(self, "one_model", False), classes_or_none(self), self.cuts())

    @classmethod
    def from_architecture(cls, architecture: dict) -> "StitchedModel":
        """The network :meth:`architecture` describes, with random weights (load them next), built offline."""
        a = dict(architecture)
        size, classes = a["input_size"], a.pop("head_classes", None)
        one_model = a.pop("one_model", False)
        src = create_model(a["src"], input_size=size, **({"num_classes": classes} if one_model and classes else {}))
        dst = src if one_model else create_model(a["dst"], input_size=size,
                                                 **({"num_classes": classes} if classes else {}))
        fields = {k: a[k] for k in ("src", "dst", "adapter", "resize", "prefix_out", "prefix_in", "readd_pos_embed",
                                    "frozen_mode", "adapter_norm", "token_adapters", "train_head", "unfreeze_last")}
        config = StitchConfig(gap=tuple(a["gap"]), input_size=size, num_classes=a.get("num_classes"), **fields)
        model = build_stitch(config, src, dst)  # the heads are built at their saved sizes above
        model.bridge.calibrated = True  # the saved weights replace the starting point
        return model

    def save_adapters(self, path: str | os.PathLike) -> None:
        """Save the trained weights (adapters; a trained head and blocks) with the config that rebuilds the frozen parts
        and where they were cut (see :func:`load_stitched`)."""
        from .saved_cuts import needs_new_format
        from .version import __version__

        config = asdict(self.config)
        config["gap"] = list(config["gap"])
        form = CHANGED_CUTS_ADAPTER_FORMAT if needs_new_format((self.config.src, self.config.dst)) else \
            ADAPTER_FILE_FORMAT
        torch.save({"format": form, "stitchkit_version": __version__, "config": config, "cuts": self.cuts(),
                    "adapters": self.trained_state_dict()}, path)


def load_stitched(path: str | os.PathLike, pretrained: bool | None = None, *, trust_cuts: bool = False,
                  **overrides) -> StitchedModel:
    """Rebuild a stitched model from :meth:`StitchedModel.save_adapters` output.

    The frozen parts are rebuilt by name (with pretrained weights or checkpoints as recorded, unless
    ``pretrained`` or other config fields are overridden) and the adapter weights loaded. A file whose recorded
    cuts are not where this version cuts its models is refused (:mod:`stitchkit.saved_cuts`), and so is one written
    before 0.13.0 (no cuts recorded) with a model whose cuts changed in 0.13.0, unless ``trust_cuts``: you know that
    the stitch's cuts did not change (save it again then, which records them).
    """
    path = Path(path)
    if not path.is_file():
        raise StitchkitError(f"adapter file {str(path)!r} does not exist; check the path")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(saved, dict) and saved.get("format") == "stitchkit.adapters.v1":
        raise StitchkitError(
            f"{str(path)!r} was written by stitchkit 0.1, whose adapters were wrapped in untrained norms that pulled "
            "them away from the destination's features (fixed in 0.2); retrain the stitch with this version"
        )
    if not isinstance(saved, dict) or saved.get("format") not in READABLE_ADAPTER_FORMATS:
        form = saved.get("format") if isinstance(saved, dict) else None
        if isinstance(form, str) and form.startswith("stitchkit.adapters.v"):
            raise StitchkitError(f"{str(path)!r} was written by a newer stitchkit "
                                 f"({saved.get('stitchkit_version', '?')}, adapter format {form}): upgrade with pip "
                                 "install -U stitchkit")
        raise StitchkitError(f"{str(path)!r} is not a stitchkit adapter file (written by StitchedModel.save_adapters)")
    config = dict(saved["config"], **overrides)
    config.setdefault("new_head", bool(config.get("num_classes")))  # num_classes is recorded for new heads (and 0)
    if pretrained is not None:
        config["pretrained"] = pretrained
    model = create_stitched(**config)
    # before any weight is loaded: weights of another cut would load where their shapes agree (nothing says so)
    recorded = saved.get("cuts")
    if isinstance(recorded, dict) and overrides:  # an end asked for elsewhere (another gap, model) is not the saved one
        recorded = {end: cut for end, cut in recorded.items() if _same_end(saved["config"], model.config, end)}
    model.check_saved_cuts({"cuts": recorded}, source=f"the adapter file {str(path)!r}",
                           written_by=saved.get("stitchkit_version"), trust_cuts=trust_cuts,
                           trust_hint="stitchkit.load_stitched(PATH, trust_cuts=True)")
    model.bridge.calibrated = True  # the saved weights replace the starting point
    model.bridge.conform_to_saved(set(saved["adapters"]))
    try:
        model.load_trained_state_dict(saved["adapters"])
    except RuntimeError as err:
        raise StitchkitError(f"the adapters in {str(path)!r} do not fit the rebuilt stitch: {err}") from err
    return model


def _same_end(saved: dict, config: StitchConfig, end: str) -> bool:
    """Whether ``config``'s ``end`` (``src``, ``dst``) is the one the ``saved`` config describes: the same model (its
    weights tag aside) cut at the same stage and position, so that the saved cut applies to it."""
    from .zoo.metadata import ModelName

    now = config.src if end == "src" else config.dst
    if not isinstance(saved.get(end), str) or ModelName.parse(saved[end]).key != ModelName.parse(now).key:
        return False
    try:
        cut = gap_cuts(*parse_gap(tuple(saved["gap"])))[0 if end == "src" else 1]
    except (KeyError, TypeError, StitchkitError):
        return False
    return cut == (config.src_cut if end == "src" else config.dst_cut)


def create_stitched(
    src: str | nn.Module,
    dst: str | nn.Module,
    gap: str | tuple[int, int] = (1, 3),
    adapter: str = "bottleneck",
    resize: str = "bilinear",
    pretrained: bool = False,
    input_size: int = 224,
    *,
    src_checkpoint: str | os.PathLike | None = None,
    dst_checkpoint: str | os.PathLike | None = None,
    prefix_out: str = "concat",
    prefix_in: str | None = None,
    readd_pos_embed: bool = False,
    frozen_mode: str = "eval",
    adapter_norm: str = DEFAULT_START,
    token_adapters: bool = True,
    num_classes: int | None = None,
    new_head: bool | None = None,
    train_head: bool | None = None,
    unfreeze_last: int = 0,
    calibration_images: CalibrationImages | None = None,
    calibration_device: str | torch.device | None = None,
    check: bool = True,
) -> StitchedModel:
    """Stitch the lower layers of ``src`` to the upper layers of ``dst`` across ``gap``.

    Args:
        src, dst: model names (see :func:`list_models`) or instances; the same name builds one shared model.
        gap: ``(x, y)`` or ``"x:y"``: from after the first block of source stage x to after the first block of
            destination stage y (to the end of stage x when x == y).
        adapter: a registered adapter (:func:`list_adapters`): ``linear``, ``linear_relu``, ``conv3x3_relu``,
            ``bottleneck`` or ``vit_block`` (token layouts at both ends).
        resize: ``none``, ``bilinear``, ``area`` or ``integrated`` (see :mod:`stitchkit.chain`).
        pretrained: load both models' pretrained weights.
        input_size: image size N (square N x N images; ``(N, N)`` is taken as N); sets the feature shapes and
            builds fixed-size models (ViT, timm Swin) for it.
        src_checkpoint, dst_checkpoint: local state-dict files for the two models.
        prefix_out: class-token policy out of a token model: ``concat``, ``drop`` or ``add``, where the class token
            is merged into the patch tokens (image adapters; token adapters into another prefix count). A model
            whose prefix tokens are all registers has no class token: ``drop`` only. Token adapters between equal
            prefix counts run on the class token as a token: ``concat``, the default, only.
        prefix_in: class-token policy into a token model: ``mean``, ``zeros``, ``learned`` or ``projected`` (see
            :mod:`stitchkit.formats`); default: the start's (``projected`` for the default, which fits it to the
            destination's own class token; ``mean`` for the paper's starts, as the paper). Token adapters between
            ViTs with different prefix counts (into a ViT with registers) make the prefix tokens before the
            adapters, from the source's patch tokens, and the default start fits them through the adapters.
        readd_pos_embed: add the destination ViT's position embedding after the adapters.
        frozen_mode: ``eval`` (frozen parts always in eval mode) or ``train`` (the paper's code).
        adapter_norm: where the adapters start, a registered start (:mod:`stitchkit.starts`; ``stitchkit starts``
            lists them): ``fitted`` (default, chosen by measurement: docs/adapter_start.md), ``fitted_quick``,
            ``lstsq``, ``dst_stats``, ``paper_code`` or ``paper_text``.
        token_adapters: between two token models (ViT to ViT), run ``linear`` and ``linear_relu`` on every token,
            keeping the class token, as the paper's code (default); False sends them through an image.
        num_classes: give the destination a new, randomly initialised head of this many classes (a task neither
            model was trained for); None or the destination's own number keeps its head (as timm's
            ``create_model(num_classes=...)`` keeps a pretrained head of that size); 0: no classifier, the stitch
            returns the pooled features the destination's classifier would read (timm's ``num_classes=0``).
        new_head: a new head even when ``num_classes`` (default: the destination's own) equals the destination's
            (a new task with as many classes); default: exactly when the numbers differ.
        train_head: train the back's head (its pooling, final norm and classifier) with the adapters; default: True
            exactly when the head is new (a new head cannot stay at its random start: False is an error then).
        unfreeze_last: train this many blocks at the end of the destination's back with the adapters (0 to the
            number of blocks after the cut).
        calibration_images: a batch of training images (about 128-256, preprocessed for the source), or a pair
            ``(for_source, for_destination)`` when the two models expect different normalisation. The starts that
            need them (``fitted``, ``fitted_quick``, ``lstsq``, ``dst_stats``) measure both models' features on
            them to start the adapters; without them those adapters keep their default initialisation (a warning
            says so when it trains). Or a function of the built bridge that returns them, for a caller that
            asks the start how many it wants (:meth:`~stitchkit.starts.Start.images_wanted`), as the training
            engine does.
        calibration_device: where to run the two models on those images (a GPU makes it take seconds at 224 px);
            the stitched model is returned on that device.
        check: run one image through the stitch so that a shape problem is an error now (default). Off only
            where many stitches are priced on the meta device and their parts are run separately anyway.

    Example:
        >>> model = create_stitched("resnet50", "torchvision:swin_t", gap="1:4")
        >>> [s.describe() for s in model.steps]
        ['256@56x56 -> 512@28x28 (bilinear)', '512@28x28 -> 768@14x14 (bilinear)', '768@14x14 -> 768@7x7 (bilinear)']
    """
    x, y = parse_gap(gap)
    input_size = square_input_size(input_size)  # before any model is built for it
    prefix_in = prefix_in or get_start(adapter_norm).prefix_in
    check_choices(adapter, resize, prefix_out, prefix_in, frozen_mode, adapter_norm)  # before any model is built

    src_model, src_name = resolve_model(src, pretrained, src_checkpoint, input_size)
    if isinstance(src, str) and src == dst and src_checkpoint == dst_checkpoint:
        dst_model, dst_name = src_model, src_name  # one model stitched to itself: build it once
    else:
        dst_model, dst_name = resolve_model(dst, pretrained, dst_checkpoint, input_size)
    # before the cut: the back takes the model's head (none, num_classes=0: build_stitch drops the model's own)
    new_head = num_classes != 0 and fit_head(dst_model, num_classes, new_head)
    if new_head:
        num_classes = num_outputs(dst_model)
    if train_head is None:
        train_head = new_head
    config = StitchConfig(
        src=src_name, dst=dst_name, gap=(x, y), adapter=adapter, resize=resize, input_size=input_size,
        prefix_out=prefix_out, prefix_in=prefix_in, readd_pos_embed=readd_pos_embed, frozen_mode=frozen_mode,
        adapter_norm=adapter_norm, token_adapters=token_adapters, pretrained=bool(pretrained),
        src_checkpoint=str(src_checkpoint) if src_checkpoint else None,
        dst_checkpoint=str(dst_checkpoint) if dst_checkpoint else None,
        num_classes=num_classes if new_head or num_classes == 0 else None, train_head=bool(train_head),
        unfreeze_last=int(unfreeze_last),
    )
    return build_stitch(config, src_model, dst_model, calibration_images=calibration_images,
                        calibration_device=calibration_device, check=check)


def stitch_models(config: StitchConfig) -> tuple[nn.Module, nn.Module]:
    """The source and destination ``config`` names, built from their names, weights and checkpoints (one model
    when a model is stitched to itself), the destination with the head the config says."""
    src_model, _ = resolve_model(config.src, config.pretrained, config.src_checkpoint, config.input_size)
    if config.src == config.dst and config.src_checkpoint == config.dst_checkpoint:
        dst_model = src_model
    else:
        dst_model, _ = resolve_model(config.dst, config.pretrained, config.dst_checkpoint, config.input_size)
    # (no classifier, num_classes=0: the model keeps its own, which build_stitch drops)
    fit_head(dst_model, config.num_classes or None, new_head=bool(config.num_classes))
    return src_model, dst_model


def build_stitch(
    config: StitchConfig,
    src_model: nn.Module | None = None,
    dst_model: nn.Module | None = None,
    *,
    calibration_images: CalibrationImages | None = None,
    calibration_device: str | torch.device | None = None,
    check: bool = True,
) -> StitchedModel:
    """The stitch ``config`` describes (validated when it was made): the one place a stitch is built
    (:func:`create_stitched` is a convenience over it).

    ``src_model``, ``dst_model``: the two models already built, the destination's head as the config says (the same
    object for a model stitched to itself); default: built from the config (:func:`stitch_models`). The other
    arguments are :func:`create_stitched`'s."""
    if src_model is None or dst_model is None:
        src_model, dst_model = stitch_models(config)
    src_name, dst_name, input_size, adapter, resize = config.src, config.dst, config.input_size, config.adapter, \
        config.resize
    (x, y), kind = config.gap, adapter_registry.get_adapter(adapter)
    prefix_out, prefix_in = config.prefix_out, config.prefix_in
    src_spec = model_spec(src_model, input_size, src_name)
    dst_spec = src_spec if dst_model is src_model else model_spec(dst_model, input_size, dst_name)
    src_cut, dst_cut = src_spec.cut(*config.src_cut), dst_spec.cut(*config.dst_cut)
    src_feature, dst_feature = src_cut.feature, dst_cut.feature

    if kind.layout == "tokens" and not (src_feature.is_tokens and dst_feature.is_tokens):
        raise IncompatibleError(
            f"the {adapter} adapter works on token sequences, but {src_name} gives {src_feature.format} and "
            f"{dst_name} takes {dst_feature.format} at gap {x}:{y}; use an image adapter such as bottleneck, or "
            "stitch a ViT to a ViT"
        )
    if kind.layout == "tokens" and resize == "integrated":
        raise IncompatibleError(f"resize 'integrated' needs an image adapter with a convolution, not {adapter}; use "
                                "resize='bilinear'")

    prefix_init = pos_embed = None
    extras = token_extras(dst_model) if dst_feature.is_tokens else None
    if extras is not None:
        prefix_init, pos_embed = _token_init(extras, dst_feature, config.readd_pos_embed)
    bridge = Bridge(
        src_feature, dst_feature, adapter, resize, num_adapters(x, y), prefix_out, prefix_in,
        prefix_init=prefix_init if prefix_in == "learned" else None,
        pos_embed=None, adapter_norm=config.adapter_norm, within_one_model=dst_model is src_model,
        token_adapters=config.token_adapters, dst_nonnegative=dst_cut.nonnegative,
    )
    if config.readd_pos_embed:
        if pos_embed is None:
            raise IncompatibleError(f"readd_pos_embed needs a destination with a position embedding; {dst_name} "
                                    "has none at this cut")
        bridge.pos_embed = _resample_pos(pos_embed, dst_feature, bridge.exit_spec.size)

    front = front_part(dissect(src_model, src_spec.input_size), src_cut.blocks)
    back = back_part(dissect(dst_model, dst_spec.input_size), dst_cut.blocks)
    model = StitchedModel(front, bridge, back, config, src_spec, dst_spec)
    model.one_model = dst_model is src_model  # with the same weights for both ends, within-model adapters
    model._mapped_no_weight_decay = mapped_no_weight_decay(model, [src_model, dst_model])
    if check:
        _check_runs(model, input_size, input_channels(src_model))
    model.start_seconds = 0.0  # wall time of fitting the start on calibration images (training reports it)
    if calibration_images is not None and not bridge.calibrated:
        if callable(calibration_images):  # the caller reads the chain's shapes first (how many images it wants)
            calibration_images = calibration_images(bridge)
        began = time.perf_counter()
        src_images, dst_images = (calibration_images if isinstance(calibration_images, (tuple, list))
                                  else (calibration_images, calibration_images))
        dst_front = front_part(dissect(dst_model, dst_spec.input_size), dst_cut.blocks)
        bridge.calibrate(Measured(_features(front, src_images, calibration_device),
                                  _features(dst_front, dst_images, calibration_device)), calibration_device)
        if calibration_device is not None:
            model.to(calibration_device)  # one device for the whole stitch
        model.start_seconds = time.perf_counter() - began
    model.pretrained_cfg = _data_config(model, src_model, src_name, dst_model, input_size)
    if config.num_classes == 0:  # no classifier: the destination's own was cut with the back, and goes now
        model.reset_classifier(0)
    model._built = True
    return model


def _data_config(model: StitchedModel, src_model: nn.Module, src_name: str, dst_model: nn.Module,
                 input_size: int) -> dict:
    c = model.config
    return data_config(f"stitch:{c.src}->{c.dst}@{c.gap[0]}:{c.gap[1]}", src_name, src_model, input_size,
                       num_outputs(dst_model) if classes_or_none(dst_model) is not None else None)


@torch.no_grad()
def _features(part: nn.Module, images: torch.Tensor, device: str | torch.device | None = None) -> torch.Tensor:
    """``part(images)`` in eval mode, in batches, on ``device`` (default: the part's), returned on the CPU; every
    module's mode is restored after (the part shares modules with the stitched model, whose frozen parts must stay
    as they are)."""
    modes = [(m, m.training) for m in part.modules()]
    part.eval()
    if device is not None:
        part.to(device)
    try:
        device = next(part.parameters()).device
        return torch.cat([part(chunk.to(device)).cpu() for chunk in images.split(CALIBRATION_BATCH)])
    finally:
        for module, mode in modes:
            module.training = mode



def _token_init(extras: tuple, dst: FeatureSpec, readd_pos_embed: bool = False
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Initial learned prefix tokens (the destination's class token plus its position, as its own stem makes them)
    and its position embedding. With ``readd_pos_embed`` the bridge adds the position embedding after the adapters,
    to the prefix tokens too where it covers them: the learned token then starts at the class token alone."""
    cls_token, pos_embed, pos_prefix, pos_grid = extras
    if pos_embed is not None:
        pos_embed = pos_embed.detach()
    prefix = None
    if cls_token is not None and dst.num_prefix_tokens:
        prefix = torch.zeros(1, dst.num_prefix_tokens, dst.channels)
        prefix[:, :1] = cls_token.detach()
        if pos_embed is not None and pos_prefix and not readd_pos_embed:
            prefix[:, :1] += pos_embed[:, :1]
    return prefix, (pos_embed, pos_prefix, pos_grid) if pos_embed is not None else None


def _resample_pos(pos: tuple, dst: FeatureSpec, grid: tuple[int, int]) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    embed, pos_prefix, pos_grid = pos
    if tuple(pos_grid) != tuple(grid):
        embed = resample_abs_pos_embed(embed, new_size=list(grid), old_size=list(pos_grid), num_prefix_tokens=pos_prefix)
    return embed.clone()


@torch.no_grad()
def _check_runs(model: StitchedModel, input_size: int, channels: int = 3) -> None:
    """Run one zero image (of the source's ``channels``) through the stitch so that shape problems surface now,
    with a clear message."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, channels, input_size, input_size, device=next(model.parameters()).device))
    except RuntimeError as err:
        c = model.config
        hint = " (resize='none' feeds it the source's resolution; try resize='bilinear')" if c.resize == "none" else ""
        raise IncompatibleError(f"the back of {c.dst} does not accept what the adapters give it{hint}: {err}") from err
    finally:
        model.train(was_training)
