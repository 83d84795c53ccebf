"""Stitching methods: named adapter x resize combinations, with the paper's nine plus the ViT block, and the
``parallel_*`` family (several sources fused into one destination: a sweep pair ``[[A, B], C]``).

Names are stable: they appear in run directory names, result rows and plot legends.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    adapter: str
    resize: str
    label: str  # legend label, as in the paper's figures
    needs_tokens: bool = False  # only between token layouts (ViT <-> ViT)
    fusion: str | None = None  # a parallel stitch's fusion (stitchkit.parallel); None: one source

    @property
    def parallel(self) -> bool:
        return self.fusion is not None


_METHODS: Registry[Method] = Registry("method", "`stitchkit methods` lists them")


def register_method(method: Method) -> Method:
    return _METHODS.add(method.name, method)


def get_method(name: str) -> Method:
    return _METHODS.get(name)


def list_methods() -> list[Method]:
    return _METHODS.values()


PAPER_METHODS = (
    "noresize_linear", "noresize_linear_relu", "noresize_bottleneck",
    "downsample_linear", "downsample_linear_relu", "downsample_conv3x3_relu", "downsample_bottleneck",
    "integrated_conv3x3_relu", "integrated_bottleneck",
    "vit_block",
)

_RESIZE_LABELS = {"none": "No Downsample", "bilinear": "Downsample", "integrated": "Integrated Downsample",
                  "area": "Area Downsample"}
_ADAPTER_LABELS = {"linear": "Linear", "linear_relu": "Linear + ReLU", "conv3x3_relu": "Conv3x3 + ReLU",
                   "bottleneck": "Bottleneck"}
_RESIZE_NAMES = {"none": "noresize", "bilinear": "downsample", "integrated": "integrated", "area": "area"}

for _resize, _adapters in (("none", ("linear", "linear_relu", "bottleneck")),
                           ("bilinear", ("linear", "linear_relu", "conv3x3_relu", "bottleneck")),
                           ("integrated", ("conv3x3_relu", "bottleneck")),
                           ("area", ("linear", "bottleneck"))):
    for _adapter in _adapters:
        register_method(Method(f"{_RESIZE_NAMES[_resize]}_{_adapter}", _adapter, _resize,
                               f"{_RESIZE_LABELS[_resize]}, {_ADAPTER_LABELS[_adapter]}"))
register_method(Method("vit_block", "vit_block", "bilinear", "ViT Block", needs_tokens=True))

# Parallel stitching (the paper's future work): each source's chain downsamples bilinearly to the destination's cut,
# as the paper's best single stitches do, and the fusion joins them.
_FUSION_LABELS = {"sum": "Sum", "concat": "Concat", "gate": "Gate"}
for _fusion, _fusion_label in _FUSION_LABELS.items():
    for _adapter in ("linear", "linear_relu", "conv3x3_relu", "bottleneck"):
        register_method(Method(f"parallel_{_fusion}_{_adapter}", _adapter, "bilinear",
                               f"Parallel ({_fusion_label}), {_ADAPTER_LABELS[_adapter]}", fusion=_fusion))
