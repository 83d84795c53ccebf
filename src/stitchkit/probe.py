"""The probe: one model frozen except its head (and optionally its last blocks), the baseline a stitch for a new
task is compared with ("the destination given a new head alone").

``create_probe("resnet50", num_classes=5)`` keeps ResNet-50 frozen in eval mode and trains a new 5-class head on
its pooled features (a linear probe); ``unfreeze_last=2`` also trains its last two blocks. Frozen means what it
means for a stitch (:mod:`stitchkit.stitching`): no gradient, never in the optimizer, BatchNorm statistics fixed.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .errors import IncompatibleError
from .formats import FeatureSpec
from .network import Network, data_config
from .train_surface import mapped_no_weight_decay, whole_unit
from .zoo import Part, back_part, create_model, dissect, front_part, model_spec, resolve_model
from .zoo.models import fit_head, num_outputs


class HeadProbe(Network, nn.Module):
    """``top(body(x))``: ``body`` (stem and all blocks but the last ``unfreeze_last``) frozen, ``top`` (those blocks
    and the head) trained.

    Attributes:
        source: the model's name; ``input_size``, ``unfreeze_last``, ``num_classes``: how it was built.
        top_block_names: the trained blocks' names in the model.
        features_out: what the last block gives (the head reads it): :meth:`features_spec`.
    """

    folder_kind = "probe"

    def __init__(self, body: Part, top: Part, source: str, input_size: int, unfreeze_last: int,
                 top_block_names: tuple[str, ...], features_out: FeatureSpec, cut_after: str = ""):
        super().__init__()
        self.body, self.top = body, top
        self.body.requires_grad_(False)
        self.top.requires_grad_(True)
        self.source, self.input_size, self.unfreeze_last = source, input_size, unfreeze_last
        self.top_block_names = top_block_names
        self.features_out = features_out  # what its last block gives (the model's last block's)
        self.cut_after = cut_after  # the module after which its trained part starts (see cuts())
        self.train(self.training)

    def train(self, mode: bool = True) -> "HeadProbe":
        super().train(mode)
        self.body.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.body(x)
        return self.top(h)

    def trained_parts(self) -> list[str]:
        return [*self.top_block_names, "head"]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's ``train.py --grad-checkpointing``): each trained block and the head
        keep only their input and run again during backward. The frozen body runs without autograd."""
        self._checkpoint(enable, self.top)

    def _layer_units(self, coarse: bool) -> list[tuple[str, str]]:
        *blocks, head = (f"top.{key}" for key in self.top._modules)
        trained = [whole_unit("blocks", *blocks)] if coarse else [whole_unit(f"blocks.{i}", b)
                                                                 for i, b in enumerate(blocks)]
        return [whole_unit("body", "body"), *trained, whole_unit("head", head)]

    def head(self) -> nn.Module:
        return self.top[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = self.body(x)
        return self.top[:-1](h)

    def features_spec(self) -> FeatureSpec:
        return self.features_out

    @classmethod
    def describe(cls, architecture: dict, head: str) -> str:
        a = architecture
        n = a.get("unfreeze_last")
        blocks = f" and its last {n} block{'s' if n != 1 else ''}" if n else ""
        return f"**{a['model']}**, frozen but for its head{blocks}; {head}."

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changes: the trained blocks and the head (under ``top.``)."""
        return {f"top.{k}": v for k, v in self.top.state_dict().items()}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.top.load_state_dict({k[len("top."):]: v for k, v in state.items()})

    def cuts(self) -> dict[str, str]:
        """Where it cuts its model (:mod:`stitchkit.saved_cuts`): the module after which its trained part starts
        (``dst``: the last frozen block, or the stem when every block trains). Its saved folders and runs record it."""
        return {"dst": self.cut_after}

    def check_saved_cuts(self, architecture: dict, *, source: str, written_by: str | None,
                         trust_cuts: bool = False, trust_hint: str = "trust_cuts=True", fix: str | None = None) -> None:
        """Refuse to load saved weights into this freshly rebuilt probe where the cut ``architecture`` records
        (none: written before 0.13.0) is not its own (:func:`stitchkit.saved_cuts.check_cuts`)."""
        from .saved_cuts import CutModel, Part, check_cuts

        n = self.unfreeze_last
        trains = f"to train its last {n} block{'s' if n != 1 else ''}" if n else "to train its head alone"
        described = CutModel(self.source, "probe", {"dst": ("model", "part it trains begins",
                                                            "its trained part began", trains)})
        check_cuts([Part(described, self.cuts(), architecture.get("cuts"))], source=source, written_by=written_by,
                   trust_cuts=trust_cuts, trust_hint=trust_hint, fix=fix)

    def architecture(self) -> dict:
        """What rebuilds it without weights (:meth:`from_architecture`), with where it cuts its model
        (:meth:`cuts`)."""
        return {"model": self.source, "input_size": self.input_size, "num_classes": self.num_classes,
                "unfreeze_last": self.unfreeze_last, "cuts": self.cuts()}

    @classmethod
    def from_architecture(cls, architecture: dict) -> "HeadProbe":
        a = architecture
        # No classifier (num_classes 0, after reset_classifier(0)): the model is cut with its own, then drops it
        model = create_model(a["model"], input_size=a["input_size"], num_classes=a["num_classes"] or None)
        probe = create_probe(model, unfreeze_last=a["unfreeze_last"], input_size=a["input_size"], name=a["model"])
        if a["num_classes"] == 0:
            probe.reset_classifier(0)
        return probe


def create_probe(
    model: str | nn.Module,
    num_classes: int | None = None,
    new_head: bool | None = None,
    unfreeze_last: int = 0,
    pretrained: bool = False,
    input_size: int = 224,
    checkpoint_path: str | os.PathLike | None = None,
    name: str | None = None,
) -> HeadProbe:
    """``model`` frozen but for its head, and its last ``unfreeze_last`` blocks. The head is a new one of
    ``num_classes`` classes when that differs from the model's own, or when ``new_head`` asks for one; otherwise the
    model's own head trains on from its weights. ``num_classes=0``: no classifier (as timm's), the probe returns the
    pooled features its classifier would read.

    Example:
        >>> probe = create_probe("resnet18", num_classes=5, input_size=32)
        >>> probe.trained_parts()
        ['head']
    """
    model, resolved = resolve_model(model, pretrained, checkpoint_path, input_size)
    name = name or resolved
    fit_head(model, num_classes, new_head)
    spec = model_spec(model, input_size, name)
    anatomy = dissect(model, spec.input_size)
    blocks = len(anatomy.blocks())
    if not 0 <= unfreeze_last <= blocks:
        raise IncompatibleError(f"unfreeze_last={unfreeze_last}, but {name} has {blocks} blocks; use 0 to {blocks}")
    cut = blocks - unfreeze_last
    probe = HeadProbe(front_part(anatomy, cut), back_part(anatomy, cut), name, input_size, unfreeze_last,
                      tuple(spec.block_names[cut:]), spec.block_features[-1],
                      spec.block_names[cut - 1] if cut else "stem")
    probe._mapped_no_weight_decay = mapped_no_weight_decay(probe, [model])
    probe.pretrained_cfg = data_config(f"probe:{name}", name, model, input_size, num_outputs(model))
    if num_classes == 0:  # no classifier (timm's num_classes=0): the model's own was cut with the head, and goes now
        probe.reset_classifier(0)
    return probe
