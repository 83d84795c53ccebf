"""The network each training mode trains, and which of its weights are trainable."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..adapters import CALIBRATED_NORMS
from ..errors import StitchkitError
from ..finetune import create_finetune_baseline
from ..stitching import StitchedModel, create_stitched
from ..zoo.models import create_model, num_outputs, reset_classifier
from .config import Config
from ..zoo.metadata import preprocessing


def build_model(config: Config, num_data_classes: int,
                calibration: Callable[[str], torch.Tensor] | None = None,
                device: torch.device | None = None) -> nn.Module:
    """The model for ``config.mode``; its head must predict ``num_data_classes`` classes.

    ``calibration(model_name)`` returns a batch of training images preprocessed for that model; a stitch whose
    ``model.adapter_norm`` starts from data measures both models' features on it, on ``device``.

    * ``stitch``: frozen source front + trainable adapters + frozen destination back. The destination's head is
      frozen, so it must already predict the data's classes (train it with ``mode=scratch`` first and pass
      ``model.dst_checkpoint``).
    * ``finetune``: the fine-tuning baseline, every weight trainable; ``model.num_classes`` gives it a new head.
    * ``scratch``: the whole model from random initialisation, with a head for the data's classes unless
      ``model.num_classes`` says otherwise (``model.pretrained`` is ignored).
    """
    m, size = config.model, config.data.input_size
    if config.mode == "scratch":
        return create_model(m.src, pretrained=False, input_size=size, num_classes=m.num_classes or num_data_classes)
    if config.mode == "finetune":
        model = create_model(m.src, pretrained=m.pretrained, checkpoint_path=m.src_checkpoint, input_size=size)
        _match_head(model, m.num_classes, num_data_classes, m.src)
        return create_finetune_baseline(model, m.gap, input_size=size)
    images = None
    if calibration is not None and m.adapter_norm in CALIBRATED_NORMS:
        dst = m.dst or m.src
        src_images = calibration(m.src)
        images = (src_images, src_images if preprocessing(dst) == preprocessing(m.src) else calibration(dst))
    model = create_stitched(
        m.src, m.dst or m.src, gap=m.gap, adapter=m.adapter, resize=m.resize, pretrained=m.pretrained,
        input_size=size, src_checkpoint=m.src_checkpoint, dst_checkpoint=m.dst_checkpoint,
        prefix_out=m.prefix_out, prefix_in=m.prefix_in, readd_pos_embed=m.readd_pos_embed,
        frozen_mode=m.frozen_mode, adapter_norm=m.adapter_norm, token_adapters=m.token_adapters,
        calibration_images=images,
        calibration_device=device if images is not None else None,
    )
    classes = _classes_of_back(model, size)
    if classes != num_data_classes:
        raise StitchkitError(
            f"the destination {m.dst or m.src} predicts {classes} classes but the data has {num_data_classes}; its "
            "head is frozen in a stitch, so train the destination on this data first (mode=scratch) and pass it as "
            "model.dst_checkpoint"
        )
    return model


@torch.no_grad()
def _classes_of_back(model: StitchedModel, size: int) -> int:
    """Classes the stitched model predicts (its destination head may be a timm ``forward_head`` call)."""
    was_training = model.training
    classes = model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device)).shape[-1]
    model.train(was_training)
    return classes


def _match_head(model: nn.Module, num_classes: int | None, num_data_classes: int, name: str) -> None:
    if num_classes is not None:
        if num_classes != num_data_classes:
            raise StitchkitError(f"model.num_classes={num_classes} but the data has {num_data_classes} classes")
        if num_outputs(model) != num_classes:
            reset_classifier(model, num_classes)
    elif num_outputs(model) != num_data_classes:
        raise StitchkitError(
            f"{name} predicts {num_outputs(model)} classes but the data has {num_data_classes}; set "
            f"model.num_classes={num_data_classes} to give it a new head"
        )


def trainable_state(model: nn.Module) -> dict:
    """What a checkpoint must hold to restore training: the adapters of a stitch, everything otherwise."""
    return model.adapter_state_dict() if isinstance(model, StitchedModel) else model.state_dict()


def load_trainable_state(model: nn.Module, state: dict) -> None:
    if isinstance(model, StitchedModel):
        model.load_adapter_state_dict(state)
    else:
        model.load_state_dict(state)
