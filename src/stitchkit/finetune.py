"""The paper's fine-tuning baseline: the same model with the gap's blocks removed, every weight trainable.

No adapter: the blocks inside the gap are deleted except the first block of each stage the gap enters (the
downsampling block, patch merging; for a ViT, whose "stages" are groups of blocks, the first block of each group:
ViT-S/16 keeps ``blocks.3``, ``blocks.6``, ``blocks.9`` as the paper's code does, so the baseline has as many blocks as
the ViT-block stitch it is compared with) and any other block that changes the feature's shape (MobileNetV3 changes
channels inside stage 3 at ``blocks.4.0``). Which blocks those are is read from the measured cut-point spec, not from
hard-coded indices, so every family and every gap chains by construction; MobileNetV3 1 -> 4 works (the paper's
code crashes there on a channel mismatch).

Note that for models whose first block of a stage is the downsampling block (ResNet, Swin), FT(x -> x) and
FT(x -> x+1) keep the same blocks and so are the same network; :attr:`FinetuneBaseline.kept_blocks` makes that
visible (compare it between gaps) instead of silently training the same network twice.
"""
from __future__ import annotations

import torch
from torch import nn

from .chain import gap_cuts, parse_gap
from .errors import IncompatibleError
from .formats import FeatureSpec
from .network import Network, data_config
from .train_surface import mapped_no_weight_decay, whole_unit
from .zoo import Part, create_model, dissect, input_channels, model_spec, resolve_model


class FinetuneBaseline(Network, Part):
    """The cut-down model: a :class:`~stitchkit.zoo.Part` with the names of the blocks it kept from the gap.
    ``save_pretrained(folder)`` / ``from_pretrained(folder)`` as for a stitch (:mod:`stitchkit.modelfolder`)."""

    kept_blocks: tuple[str, ...]
    removed_blocks: tuple[str, ...]
    source: str  # the model it was cut from, and how
    gap: tuple[int, int]
    input_size: int
    features_out: FeatureSpec  # what its last block gives: the model's last block's (removed blocks kept its shape)
    cut_modules: dict[str, str]  # where a stitch of its gap cuts the model (see cuts())

    folder_kind = "finetune"

    def head(self) -> nn.Module:
        return self[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self[:-1](x)

    def features_spec(self) -> FeatureSpec:
        return self.features_out

    def trained_parts(self) -> list[str]:
        return ["all"]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's ``train.py --grad-checkpointing``): the stem, every block and the head
        (everything trains) keep only their input and run again during backward: less memory, more compute, the
        same gradients and BatchNorm statistics."""
        self._checkpoint(enable, self)

    def _layer_units(self, coarse: bool) -> list[tuple[str, str]]:
        stem, *blocks, head = self._modules
        if coarse:
            return [whole_unit("stem", stem), whole_unit("blocks", *blocks), whole_unit("head", head)]
        return [whole_unit("stem", stem), *(whole_unit(f"blocks.{i}", b) for i, b in enumerate(blocks)),
                whole_unit("head", head)]

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    @classmethod
    def describe(cls, architecture: dict, head: str) -> str:
        a = architecture
        # Which blocks went depends on the model (a ResNet of one block per stage keeps every one): say the rule
        return (f"The fine-tuning baseline of **{a['model']}** for gap {a['gap'][0]}:{a['gap'][1]} (the blocks "
                f"inside the gap removed, but for the first block of each stage it enters and any block that changes "
                f"the features' shape; every weight trains), with {head}.")

    def cuts(self) -> dict[str, str]:
        """Where it cuts its model (:mod:`stitchkit.saved_cuts`): where a stitch of its gap would (the module after
        which the front before the removed blocks ends, ``src``, and the one after which the blocks it keeps after
        them start, ``dst``), as ``stitchkit inspect`` names them. Its saved folders and runs record them."""
        return dict(self.cut_modules)

    def check_saved_cuts(self, architecture: dict, *, source: str, written_by: str | None,
                         trust_cuts: bool = False, trust_hint: str = "trust_cuts=True", fix: str | None = None) -> None:
        """Refuse to load saved weights into this freshly rebuilt baseline where the cuts ``architecture`` records
        (none: written before 0.13.0) are not its own (:func:`stitchkit.saved_cuts.check_cuts`)."""
        from .chain import gap_cuts
        from .saved_cuts import CutModel, Part, check_cuts

        (src_stage, src_at), (dst_stage, dst_at) = gap_cuts(*self.gap)
        described = CutModel(self.source, "fine-tuning baseline", {
            "src": ("model", "blocks it removes begin", "its removed blocks began",
                    f"at stage {src_stage} ({src_at})"),
            "dst": ("model", "blocks it keeps after the gap start", "its kept blocks started",
                    f"at stage {dst_stage} ({dst_at})")})
        check_cuts([Part(described, self.cuts(), architecture.get("cuts"))], source=source, written_by=written_by,
                   trust_cuts=trust_cuts, trust_hint=trust_hint, fix=fix)

    def architecture(self) -> dict:
        """What rebuilds it without weights (:meth:`from_architecture`), with where it cuts its model
        (:meth:`cuts`)."""
        return {"model": self.source, "gap": list(self.gap), "input_size": self.input_size,
                "num_classes": self.num_classes, "cuts": self.cuts()}

    @classmethod
    def from_architecture(cls, architecture: dict) -> "FinetuneBaseline":
        a = architecture
        # No classifier (num_classes 0, after reset_classifier(0)): the model is cut with its own, then drops it
        model = create_model(a["model"], input_size=a["input_size"], num_classes=a["num_classes"] or None)
        baseline = create_finetune_baseline(model, tuple(a["gap"]), input_size=a["input_size"], name=a["model"])
        if a["num_classes"] == 0:
            baseline.reset_classifier(0)
        return baseline


def create_finetune_baseline(
    model: str | nn.Module,
    gap: str | tuple[int, int],
    pretrained: bool = False,
    input_size: int = 224,
    checkpoint_path=None,
    name: str | None = None,
) -> FinetuneBaseline:
    """The fine-tuning baseline of ``model`` for ``gap`` (all weights trainable, train mode off until asked).

    Args:
        model: a supported model name or instance (the source and the destination are this one model).
        gap: ``(x, y)`` or ``"x:y"``, as for :func:`create_stitched`.
        pretrained, input_size, checkpoint_path: as for :func:`create_model`.
        name: the name that rebuilds an instance given as ``model`` (default: timm's architecture name).

    Example:
        >>> ft = create_finetune_baseline("resnet50", "1:3")
        >>> ft.kept_blocks
        ('layer2.0', 'layer3.0')
    """
    x, y = parse_gap(gap)
    model, resolved = resolve_model(model, pretrained, checkpoint_path, input_size)
    name = name or resolved
    spec = model_spec(model, input_size, name)
    src_cut, dst_cut = gap_cuts(x, y)  # where a stitch of this gap would cut the model: what lies between goes
    start = spec.cut(*src_cut).blocks
    stop = spec.cut(*dst_cut).blocks
    anatomy = dissect(model, spec.input_size)
    blocks = anatomy.blocks()
    kept, removed = [], []
    for i in range(start, stop):
        changes_shape = spec.block_features[i] != spec.block_features[i - 1]
        starts_stage = spec.stage_of_block[i] != spec.stage_of_block[i - 1]
        (kept if changes_shape or starts_stage else removed).append(i)
    baseline = FinetuneBaseline(anatomy.stem, *blocks[:start], *(blocks[i] for i in kept), *blocks[stop:], anatomy.head)
    baseline.kept_blocks = tuple(spec.block_names[i] for i in kept)
    baseline.removed_blocks = tuple(spec.block_names[i] for i in removed)
    baseline.source, baseline.gap, baseline.input_size = name, (x, y), input_size
    baseline.features_out = spec.block_features[-1]
    baseline.cut_modules = {"src": spec.cut(*src_cut).module, "dst": spec.cut(*dst_cut).module}
    baseline.requires_grad_(True)
    baseline._mapped_no_weight_decay = mapped_no_weight_decay(baseline, [model])
    try:
        with torch.no_grad():
            out = baseline.eval()(torch.zeros(1, input_channels(model), *spec.input_size,
                                              device=next(baseline.parameters()).device))
    except RuntimeError as err:
        raise IncompatibleError(
            f"the fine-tuning baseline of {name} for gap {x}:{y} does not chain ({err}); this model's blocks need "
            "an adapter between them: use create_stitched instead"
        ) from err
    baseline.pretrained_cfg = data_config(f"finetune:{name}@{x}:{y}", name, model, input_size, out.shape[-1])
    return baseline
