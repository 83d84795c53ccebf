"""The one base of every network stitchkit trains from parts: :class:`~stitchkit.stitching.StitchedModel`,
:class:`~stitchkit.finetune.FinetuneBaseline` and :class:`~stitchkit.probe.HeadProbe`.

Each declares, once, what the rest of stitchkit asks of it: its folder kind (the registry below replaces a table of
kinds), what trains (``trained_parts``, ``trained_state_dict``), how to rebuild it and what its model card says
(``architecture``, ``from_architecture``, ``describe``: the folder's part, :class:`~stitchkit.modelfolder.SavesPretrained`),
and where its head is (``head``, ``features`` and ``features_spec``). From these it gets the surface timm users call
on any classifier: ``num_classes``, ``num_features``, ``head_hidden_size``, ``get_classifier``, ``reset_classifier``,
``forward_features``, ``forward_head(pre_logits=)`` and ``default_cfg``, with timm's meanings (``num_features``: the
width of ``forward_features``' output; ``head_hidden_size``: the width of what the classifier reads, wider where the
head widens the pooled features first, as MobileNetV3's does; ``reset_classifier(0)`` makes the model return what
its classifier read).

The classifier is the last ``nn.Linear`` of the head (timm's ``fc``, ``head``, ``classifier``; torchvision's
``fc``, ``heads.head``): the features it reads are what timm calls pre-logits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar

import torch
from torch import nn

from .errors import StitchkitError
from .modelfolder import SavesPretrained, classifier_snapshot
from .train_surface import TrainSurface

if TYPE_CHECKING:
    from .formats import FeatureSpec

_KINDS: dict[str, type["Network"]] = {}


def network_class(kind: str) -> type["Network"] | None:
    """The class that builds a model folder of ``kind`` (``stitch``, ``finetune``, ``probe``), or None."""
    return _KINDS.get(kind)


def network_kinds() -> list[str]:
    return sorted(_KINDS)


def data_config(architecture: str, source: str, source_model: nn.Module | None, input_size: int,
                num_classes: int | None) -> dict:
    """A network's ``pretrained_cfg`` (what timm's ``resolve_model_data_config`` and ``create_transform`` read, and
    what ``save_pretrained`` writes): it sees pixels through the model its first part came from (``source``), so
    that model's normalisation, interpolation and crop, at the network's input size."""
    from .zoo.metadata import preprocessing

    try:
        prep = preprocessing(source, source_model if hasattr(source_model, "pretrained_cfg") else None)
        mean, std, interpolation, crop = prep.mean, prep.std, prep.interpolation, prep.crop_pct
    except (StitchkitError, ValueError, KeyError):  # a model the zoo has no metadata for: ImageNet's statistics
        mean, std, interpolation, crop = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 0.875
    from .zoo import input_channels

    channels = input_channels(source_model) if source_model is not None else 3  # a grayscale timm model: 1
    cfg = {"architecture": architecture, "input_size": (channels, input_size, input_size), "fixed_input_size": True,
           "mean": tuple(mean), "std": tuple(std), "interpolation": interpolation, "crop_pct": crop,
           "crop_mode": "center"}
    if num_classes is not None:  # an encoder has no classifier
        cfg["num_classes"] = num_classes
    return cfg


class Network(TrainSurface, SavesPretrained):
    """Mix into an ``nn.Module`` subclass that sets ``folder_kind`` and implements the methods that raise here."""

    folder_kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("folder_kind"):
            _KINDS[cls.folder_kind] = cls

    # --- what trains ---------------------------------------------------------------------------------------------

    def trained_parts(self) -> list[str]:
        """What training changes, for people (``adapters``, block names, ``head``)."""
        raise NotImplementedError

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint must hold to restore training."""
        raise NotImplementedError

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # --- the head, and timm's surface on it -----------------------------------------------------------------------

    def head(self) -> nn.Module:
        """The module that turns the last block's features into logits."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Everything before :meth:`head`: up to the last block."""
        raise NotImplementedError

    def features_spec(self) -> "FeatureSpec":
        """The layout and width of :meth:`features`' output: the destination's last block's, as the zoo measured
        it (the head changes neither)."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the head pools, unpooled. For the families laid out by hand (:mod:`stitchkit.zoo.families`)
        they are what the model the head came from returns from its own ``forward_features``: after a ViT's or
        Swin's final norm, ConvNeXt's ``norm_pre``, EfficientNet's ``conv_head`` and ``bn2`` (which the head still
        holds: what trains and the state dict are the head's); torchvision's Swin, which has no
        ``forward_features``, returns everything before its pooling. A model cut from its exported graph returns
        what its own ``forward_features`` does where its head has a node that computes exactly that (a final norm
        or conv: :mod:`stitchkit.zoo.graph`), else (torchvision models) its last block's output."""
        from .zoo.split import split_head

        lead, _ = split_head(self.head())
        x = self.features(x)
        return lead(x) if lead is not None else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The head on :meth:`forward_features` output (``forward_head(forward_features(x))`` is ``forward(x)``);
        ``pre_logits=True`` returns what the classifier reads."""
        from .zoo.split import split_head

        _, head = split_head(self.head())  # without the part forward_features ran
        if not pre_logits:
            return head(x)
        classifier = self.get_classifier()
        if not _is_graph_held(classifier):  # a module the head calls: what it is called with
            seen: list[torch.Tensor] = []
            hook = classifier.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
            try:
                head(x)
            finally:
                hook.remove()
            return seen[-1]
        # An exported graph reads the classifier's weights without calling it: run the graph with an identity
        # classifier instead (exact: each output is one input times 1 plus zeros).
        name, width = self._classifier_name(), classifier.weight.shape[1]
        swap = {f"{name}.weight": torch.eye(width, dtype=classifier.weight.dtype, device=classifier.weight.device)}
        if getattr(classifier, "bias", None) is not None:
            swap[f"{name}.bias"] = classifier.bias.new_zeros(width)
        return torch.func.functional_call(head, swap, (x,))

    def _classifier_name(self) -> str:
        name = getattr(self, "_classifier", None)
        if name is None:
            found = [n for n, m in self.head().named_modules() if isinstance(m, nn.Linear) or _is_graph_held(m)]
            if not found:
                raise StitchkitError(f"the head of this {type(self).__name__} has no linear classifier")
            name = self._classifier = found[-1]
        return name

    def get_classifier(self) -> nn.Module:
        """The head's final linear layer (``nn.Identity`` after ``reset_classifier(0)``). In a head cut from an
        exported graph (torchvision models) it is the module that holds the classifier's ``weight`` and ``bias``,
        which answers as an ``nn.Linear`` does (callable, ``in_features``, ``out_features``)."""
        classifier = self.head().get_submodule(self._classifier_name())
        if type(classifier) is nn.Module and _is_graph_held(classifier):
            # The exported graph's bare holder (calling it raised "missing forward"): made a _GraphLinear in place,
            # so the graph reads the same weight and bias, and a user gets a layer to call
            classifier.__class__ = _GraphLinear
        return classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, randomly initialised classifier of ``num_classes`` outputs that trains (0: none, the model then
        returns the classifier's input, as timm's models do). Everything is checked before anything changes: a
        reset that fails leaves the model as it was."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise StitchkitError(f"reset_classifier takes a whole number of classes >= 0 (0: no classifier), got "
                                 f"{num_classes!r}")
        if global_pool is not None:
            raise StitchkitError("reset_classifier(global_pool=...) is not supported on stitchkit networks: they "
                                 "keep their parts' pooling; pass num_classes alone")
        name, old = self._classifier_name(), self.get_classifier()
        width = self.head_hidden_size
        device = next((p.device for p in old.parameters()), None) or next(self.parameters()).device
        new = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        if _is_graph_held(old):  # the graph reads weight and bias: new ones of the new shape
            new = _GraphLinear(new.weight, new.bias) if num_classes > 0 else _GraphLinear.identity(width)
        # What the network records about its head (a stitch's config) is worked out, and checked, here too: a
        # failure after the classifier is swapped would leave a model whose head and record disagree.
        record_head = self._plan_head(num_classes)
        parent, _, attr = name.rpartition(".")
        head = self.head()
        setattr(head.get_submodule(parent) if parent else head, attr, new.to(device))
        self._head_hidden_size = width
        for owner in head.modules():
            if owner is not new and isinstance(getattr(owner, "num_classes", None), int):
                owner.num_classes = num_classes  # a timm model kept inside the head
        forget_old_head(self, num_classes)
        record_head()
        if num_classes == 0:
            new.requires_grad_(False)  # nothing to train where there is no classifier
        # A save before these weights change says the head is new and untrained (the card must not call it trained)
        self._fresh_classifier = classifier_snapshot(self) if num_classes > 0 else None

    def _plan_head(self, num_classes: int) -> Callable[[], None]:
        """Check that this network can record a classifier of ``num_classes`` (0: none), raising before anything
        changes, and return what records it once the classifier is in place (a stitch's config, what trains). It
        must not fail. Networks that read their head from the model itself record nothing."""
        return lambda: None

    @property
    def num_classes(self) -> int:
        """How many classes the classifier predicts (0 after ``reset_classifier(0)``)."""
        classifier = self.get_classifier()
        if isinstance(classifier, nn.Identity) or getattr(classifier, "is_identity", False):
            return 0
        return classifier.weight.shape[0]

    @property
    def num_features(self) -> int:
        """timm's meaning: the channel width of :meth:`forward_features`' output, what the head's pooling reads (dim 1
        of an NCHW map; the last dim of an NHWC map or a token sequence). Read from the measured spec of the last
        block; where the head's lead (what :meth:`forward_features` runs after it) can change the width
        (EfficientNet's ``conv_head``, RegNet's ``final_conv``), from the lead run on one zero sample of that spec,
        in the layout the lead declares (a graph head's lead may turn channels-last maps back to NCHW)."""
        from .formats import Format
        from .zoo.split import split_head

        spec = self.features_spec()
        lead, _ = split_head(self.head())
        if lead is None:
            return spec.channels
        probe = next(lead.parameters(), None)
        zeros = torch.zeros(1, *spec.shape, device=probe.device if probe is not None else None,
                            dtype=probe.dtype if probe is not None and probe.is_floating_point() else None)
        modes = [(m, m.training) for m in lead.modules()]
        lead.eval()  # a BatchNorm in training mode would take the zeros into its running statistics
        try:
            with torch.no_grad():
                out = lead(zeros)
        finally:
            for module, training in modes:
                module.training = training
        layout = getattr(lead, "features_format", None) or spec.format
        return out.shape[1] if layout is Format.NCHW else out.shape[-1]

    @property
    def head_hidden_size(self) -> int:
        """timm's meaning: the width of what the classifier reads (``forward_head(pre_logits=True)``); it differs from
        :attr:`num_features` where the head widens the pooled features first (MobileNetV3: 576 -> 1024)."""
        classifier = self.get_classifier()
        return classifier.weight.shape[1] if hasattr(classifier, "weight") else self._head_hidden_size

    @property
    def default_cfg(self) -> dict:
        """timm's older name for ``pretrained_cfg``."""
        return getattr(self, "pretrained_cfg", {})

    @default_cfg.setter
    def default_cfg(self, cfg: dict) -> None:
        # timm's models hold it as a plain attribute that code still assigns (timm's own builder does)
        self.pretrained_cfg = cfg


def forget_old_head(model: nn.Module, num_classes: int) -> None:
    """After a new head of ``num_classes`` (0: none): what the model says of its head (``pretrained_cfg``) and what its
    folder said of the old one (``stitchkit_info``: its classes' names, their score) no longer describe it."""
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": num_classes, "label_names": None}
    if isinstance(getattr(model, "stitchkit_info", None), dict):
        model.stitchkit_info = {k: v for k, v in model.stitchkit_info.items() if k not in ("class_names", "result")}


def _is_graph_held(module: nn.Module) -> bool:
    """A module an exported graph reads a linear layer's weights from without calling it: a :class:`_GraphLinear`,
    or the graph's own holder (no forward of its own, no children, a 2-D ``weight``)."""
    if isinstance(module, _GraphLinear):
        return True
    weight = module._parameters.get("weight")
    return (type(module).forward is nn.Module.forward and not module._modules and weight is not None
            and weight.dim() == 2)


class _GraphLinear(nn.Module):
    """A classifier's weights where an exported graph reads them (the graph's own holder, adopted by
    ``get_classifier``, or a new classifier from ``reset_classifier`` on a torchvision head). The graph never calls
    it; a user can, as an ``nn.Linear``."""

    is_identity = False

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # what the graph computes from these weights (a holder the graph made may have no bias)
        return nn.functional.linear(x, self.weight, self._parameters.get("bias"))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
            f"bias={self._parameters.get('bias') is not None}"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @classmethod
    def identity(cls, width: int) -> "_GraphLinear":
        """No classifier: the graph's linear op passes its input through (frozen identity weights)."""
        layer = cls(torch.eye(width), torch.zeros(width))
        layer.requires_grad_(False)
        layer.is_identity = True
        return layer
