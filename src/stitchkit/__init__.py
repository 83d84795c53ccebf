"""stitchkit: build new vision networks from frozen parts of pretrained ones, joined by trainable adapters.

The public surface::

    stitchkit.list_models("resnet*")                  # supported model names
    stitchkit.model_spec(model, 224)                  # cut points, layouts and shapes
    front, back = stitchkit.split("resnet50", 2, "first")
    model = stitchkit.create_stitched("resnet50.a1_in1k", "torchvision:swin_t", gap="1:4")
    baseline = stitchkit.create_finetune_baseline("resnet50", "1:3")
    stitchkit.count_macs(model), stitchkit.count_params(model, trainable_only=True)
"""
from .adapters import create_adapter, list_adapters, register_adapter
from .chain import PAPER_GAPS, RESIZE_MODES, parse_gap, plan_chain
from .compute import count_macs, count_params
from .errors import StitchkitError
from .finetune import FinetuneBaseline, create_finetune_baseline
from .formats import FeatureSpec, Format, convert
from .stitching import StitchConfig, StitchedModel, create_stitched, load_stitched
from .zoo import create_model, list_models, model_spec, split

__version__ = "0.2.1"

__all__ = [
    "PAPER_GAPS",
    "RESIZE_MODES",
    "FeatureSpec",
    "FinetuneBaseline",
    "Format",
    "StitchConfig",
    "StitchedModel",
    "StitchkitError",
    "convert",
    "count_macs",
    "count_params",
    "create_adapter",
    "create_finetune_baseline",
    "create_model",
    "create_stitched",
    "list_adapters",
    "list_models",
    "load_stitched",
    "model_spec",
    "parse_gap",
    "plan_chain",
    "register_adapter",
    "split",
]
