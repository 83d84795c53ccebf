"""Stitched models: a frozen source front, a trainable bridge of adapters, a frozen destination back.

``create_stitched("resnet50", "torchvision:swin_t", gap=(1, 4))`` keeps ResNet-50 up to the first block of stage 1,
Swin-T from the first block of stage 4 on, and trains three bottleneck adapters in between (the paper's Figure 1).

Frozen means one tested policy: frozen weights have ``requires_grad=False`` and are never in the optimizer, and the
frozen parts stay in eval mode whatever ``.train()`` says, so BatchNorm statistics never change and stochastic depth
and dropout are off. ``frozen_mode="train"`` reproduces the paper's own code (frozen parts in train mode) for
comparison.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import adapters as adapter_registry
from .chain import RESIZE_MODES, Resize, Step, TokenResize, num_adapters, parse_gap, plan_chain
from .errors import IncompatibleError, StitchkitError, unknown_name
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
from .zoo import ModelSpec, back_part, dissect, family_of, front_part, model_spec, resolve_model

FROZEN_MODES = ("eval", "train")


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
    prefix_in: str = "mean"
    readd_pos_embed: bool = False
    frozen_mode: str = "eval"
    pretrained: bool = False
    src_checkpoint: str | None = None
    dst_checkpoint: str | None = None

    @property
    def src_cut(self) -> tuple[int, str]:
        return (self.gap[0], "first")

    @property
    def dst_cut(self) -> tuple[int, str]:
        x, y = self.gap
        return (y, "first") if y > x else (x, "end")


class Bridge(nn.Module):
    """The trainable middle: layout conversion in, the chain of resized adapters, layout conversion out.

    Image adapters run on NCHW: the source feature is converted to an image (prefix tokens merged by
    ``prefix_out``), and the result converted to the destination's layout (prefix tokens made by ``prefix_in``).
    Token adapters run on the token sequence itself.
    """

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
    ):
        super().__init__()
        kind = adapter_registry.get_adapter(adapter)
        self.src, self.prefix_out, self.prefix_in = src, prefix_out, prefix_in
        self.tokens = kind.layout == "tokens"
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
        self.adapters = nn.ModuleList(self._step_module(step, adapter) for step in self.steps)
        self.learned_prefix = None
        if not self.tokens and dst.num_prefix_tokens and prefix_in == "learned":
            init = prefix_init if prefix_init is not None else torch.zeros(1, dst.num_prefix_tokens, dst.channels)
            self.learned_prefix = nn.Parameter(init.detach().clone())
        self.register_buffer("pos_embed", pos_embed, persistent=False)

    def _step_module(self, step: Step, adapter: str) -> nn.Module:
        block = adapter_registry.create_adapter(adapter, step.in_channels, step.out_channels, stride=step.stride)
        if step.resize in ("none", "stride"):
            return block
        if self.tokens:
            resize = TokenResize(step.in_size, step.out_size, self.enter_spec.num_prefix_tokens, step.resize)
        else:
            resize = Resize(step.out_size, step.resize)
        return nn.Sequential(resize, block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            x = convert(x, self.src, self.enter_spec, self.prefix_out, self.prefix_in)
        else:
            x = to_nchw(x, self.src, self.prefix_out)
        for module in self.adapters:
            x = module(x)
        if not self.tokens:
            x = from_nchw(x, self.exit_spec, self.prefix_in, self.learned_prefix)
        if self.pos_embed is not None:
            x = _add_pos_embed(x, self.pos_embed, self.exit_spec.num_prefix_tokens)
        return x


def _add_pos_embed(x: torch.Tensor, pos: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Add a position embedding that covers either all tokens or only the patch tokens."""
    if pos.shape[1] == x.shape[1]:
        return x + pos
    return torch.cat([x[:, :num_prefix_tokens], x[:, num_prefix_tokens:] + pos], dim=1)


class StitchedModel(nn.Module):
    """``back(bridge(front(x)))`` with ``front`` and ``back`` frozen.

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
        self.train(self.training)

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.bridge.steps

    def train(self, mode: bool = True) -> "StitchedModel":
        super().train(mode)
        if self.config.frozen_mode == "eval":
            self.front.eval()
            self.back.eval()
        return self

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
        """The parameters an optimizer should see: the bridge's."""
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changed: the bridge's weights and buffers (a few MB instead of the whole model); with
        ``frozen_mode="train"`` also the frozen parts' buffers (BatchNorm statistics, which training mode moves),
        under ``front.`` and ``back.``."""
        state = dict(self.bridge.state_dict())
        if self.config.frozen_mode == "train":
            for name, part in (("front", self.front), ("back", self.back)):
                state.update({f"{name}.{k}": v for k, v in part.named_buffers()})
        return state

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        frozen = {k: v for k, v in state.items() if k.startswith(("front.", "back."))}
        if frozen and self.config.frozen_mode != "train":
            raise RuntimeError("the state holds frozen-part buffers (saved with frozen_mode='train') but this model "
                               "has frozen_mode='eval'")
        if self.config.frozen_mode == "train":
            expected = {f"{name}.{k}" for name, part in (("front", self.front), ("back", self.back))
                        for k, _ in part.named_buffers()}
            missing = sorted(expected - frozen.keys())
            if missing:
                raise RuntimeError(f"frozen_mode='train' needs the frozen parts' buffers, missing {missing[:3]}")
            for name, part in (("front", self.front), ("back", self.back)):
                buffers = dict(part.named_buffers())
                with torch.no_grad():
                    for key, value in frozen.items():
                        if key.startswith(f"{name}."):
                            buffers[key[len(name) + 1:]].copy_(value)
        self.bridge.load_state_dict({k: v for k, v in state.items() if k not in frozen})

    def save_adapters(self, path: str | os.PathLike) -> None:
        """Save the adapter weights with the config that rebuilds the frozen parts (see :func:`load_stitched`)."""
        config = asdict(self.config)
        config["gap"] = list(config["gap"])
        torch.save({"format": "stitchkit.adapters.v1", "config": config, "adapters": self.adapter_state_dict()}, path)


def load_stitched(path: str | os.PathLike, pretrained: bool | None = None, **overrides) -> StitchedModel:
    """Rebuild a stitched model from :meth:`StitchedModel.save_adapters` output.

    The frozen parts are rebuilt by name (with pretrained weights or checkpoints as recorded, unless
    ``pretrained`` or other config fields are overridden) and the adapter weights loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise StitchkitError(f"adapter file {str(path)!r} does not exist; check the path")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != "stitchkit.adapters.v1":
        raise StitchkitError(f"{str(path)!r} is not a stitchkit adapter file (written by StitchedModel.save_adapters)")
    config = dict(saved["config"], **overrides)
    if pretrained is not None:
        config["pretrained"] = pretrained
    model = create_stitched(**config)
    try:
        model.load_adapter_state_dict(saved["adapters"])
    except RuntimeError as err:
        raise StitchkitError(f"the adapters in {str(path)!r} do not fit the rebuilt stitch: {err}") from err
    return model


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
    prefix_in: str = "mean",
    readd_pos_embed: bool = False,
    frozen_mode: str = "eval",
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
        input_size: image size; sets the feature shapes and builds fixed-size models (ViT, timm Swin) for it.
        src_checkpoint, dst_checkpoint: local state-dict files for the two models.
        prefix_out: class-token policy out of a token model: ``concat``, ``drop`` or ``add``.
        prefix_in: class-token policy into a token model: ``mean``, ``zeros`` or ``learned``.
        readd_pos_embed: add the destination ViT's position embedding after the adapters.
        frozen_mode: ``eval`` (frozen parts always in eval mode) or ``train`` (the paper's code).

    Example:
        >>> model = create_stitched("resnet50", "torchvision:swin_t", gap="1:4")
        >>> [s.describe() for s in model.steps]
        ['256@56x56 -> 512@28x28 (bilinear)', '512@28x28 -> 768@14x14 (bilinear)', '768@14x14 -> 768@7x7 (bilinear)']
    """
    x, y = parse_gap(gap)
    if resize not in RESIZE_MODES:
        raise unknown_name("resize mode", resize, RESIZE_MODES)
    kind = adapter_registry.get_adapter(adapter)
    check_policy(prefix_out, PREFIX_OUT_POLICIES, "out of tokens")
    check_policy(prefix_in, PREFIX_IN_POLICIES, "into tokens")
    if frozen_mode not in FROZEN_MODES:
        raise unknown_name("frozen mode", frozen_mode, FROZEN_MODES)

    src_model, src_name = resolve_model(src, pretrained, src_checkpoint, input_size)
    if isinstance(src, str) and src == dst and src_checkpoint == dst_checkpoint:
        dst_model, dst_name = src_model, src_name  # one model stitched to itself: build it once
    else:
        dst_model, dst_name = resolve_model(dst, pretrained, dst_checkpoint, input_size)
    config = StitchConfig(
        src=src_name, dst=dst_name, gap=(x, y), adapter=adapter, resize=resize, input_size=input_size,
        prefix_out=prefix_out, prefix_in=prefix_in, readd_pos_embed=readd_pos_embed, frozen_mode=frozen_mode,
        pretrained=bool(pretrained),
        src_checkpoint=str(src_checkpoint) if src_checkpoint else None,
        dst_checkpoint=str(dst_checkpoint) if dst_checkpoint else None,
    )
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
    extras = family_of(dst_model).token_extras
    if dst_feature.is_tokens and extras is not None:
        prefix_init, pos_embed = _token_init(extras(dst_model), dst_feature)
    bridge = Bridge(
        src_feature, dst_feature, adapter, resize, num_adapters(x, y), prefix_out, prefix_in,
        prefix_init=prefix_init if prefix_in == "learned" else None,
        pos_embed=None,
    )
    if readd_pos_embed:
        if pos_embed is None:
            raise IncompatibleError(f"readd_pos_embed needs a destination with a position embedding; {dst_name} "
                                    "has none at this cut")
        bridge.pos_embed = _resample_pos(pos_embed, dst_feature, bridge.exit_spec.size)

    front = front_part(dissect(src_model), src_cut.blocks)
    back = back_part(dissect(dst_model), dst_cut.blocks)
    model = StitchedModel(front, bridge, back, config, src_spec, dst_spec)
    _check_runs(model, input_size)
    return model


def _token_init(extras: tuple, dst: FeatureSpec) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Initial learned prefix tokens (the destination's class token plus its position) and its position embedding."""
    cls_token, pos_embed, pos_prefix, pos_grid = extras
    if pos_embed is not None:
        pos_embed = pos_embed.detach()
    prefix = None
    if cls_token is not None and dst.num_prefix_tokens:
        prefix = torch.zeros(1, dst.num_prefix_tokens, dst.channels)
        prefix[:, :1] = cls_token.detach()
        if pos_embed is not None and pos_prefix:
            prefix[:, :1] += pos_embed[:, :1]
    return prefix, (pos_embed, pos_prefix, pos_grid) if pos_embed is not None else None


def _resample_pos(pos: tuple, dst: FeatureSpec, grid: tuple[int, int]) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    embed, pos_prefix, pos_grid = pos
    if tuple(pos_grid) != tuple(grid):
        embed = resample_abs_pos_embed(embed, new_size=list(grid), old_size=list(pos_grid), num_prefix_tokens=pos_prefix)
    return embed.clone()


@torch.no_grad()
def _check_runs(model: StitchedModel, input_size: int) -> None:
    """Run one zero image through the stitch so that shape problems surface now, with a clear message."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, input_size, input_size, device=next(model.parameters()).device))
    except RuntimeError as err:
        c = model.config
        hint = " (resize='none' feeds it the source's resolution; try resize='bilinear')" if c.resize == "none" else ""
        raise IncompatibleError(f"the back of {c.dst} does not accept what the adapters give it{hint}: {err}") from err
    finally:
        model.train(was_training)
