"""stitchkit: build new vision networks from frozen parts of pretrained ones, joined by trainable adapters.

The public surface::

    stitchkit.list_models("resnet*")                  # supported model names
    stitchkit.model_spec(model, 224)                  # cut points, layouts and shapes
    front, back = stitchkit.split("resnet50", 2, "first")
    model = stitchkit.create_stitched("resnet50.a1_in1k", "torchvision:swin_t", gap="1:4")
    baseline = stitchkit.create_finetune_baseline("resnet50", "1:3")
    stitchkit.count_macs(model), stitchkit.count_params(model, trainable_only=True)
    model.save_pretrained("my-stitch"); model = stitchkit.load_pretrained("my-stitch")   # one portable folder

The names are imported on first use (PEP 562), so ``import stitchkit`` and ``stitchkit --help`` do not pay for torch
and timm until something needs them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "create_adapter": "adapters", "list_adapters": "adapters", "register_adapter": "adapters",
    "PAPER_GAPS": "chain", "RESIZE_MODES": "chain", "parse_gap": "chain", "plan_chain": "chain",
    "count_macs": "compute", "count_params": "compute",
    "StitchkitError": "errors",
    "FinetuneBaseline": "finetune", "create_finetune_baseline": "finetune",
    "FeatureSpec": "formats", "Format": "formats", "convert": "formats",
    "StitchConfig": "stitching", "StitchedModel": "stitching", "build_stitch": "stitching", "create_stitched": "stitching",
    "load_stitched": "stitching",
    "create_model": "zoo", "list_models": "zoo", "model_spec": "zoo", "split": "zoo",
    "load_pretrained": "pretrained", "save_pretrained": "pretrained",
    "HeadProbe": "probe", "create_probe": "probe",
    "Start": "starts", "list_starts": "starts", "register_start": "starts",
    "search": "stitch_search", "run_search": "stitch_search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    try:  # a submodule used as an attribute: stitchkit.zoo, stitchkit.training
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module 'stitchkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def _register_with_timm() -> None:
    """Put stitchkit's networks in timm's model registry (:mod:`stitchkit.timm_models`) so that
    ``timm.create_model("local-dir:A_STITCH_FOLDER")`` works after ``import stitchkit``, without making
    ``import stitchkit`` pay the seconds ``import timm`` costs: at once when timm is loaded, otherwise right after
    timm's own import finishes (a one-shot import hook)."""
    import sys

    if "timm" in sys.modules:
        _import_timm_models()
    elif not any(isinstance(f, _AfterTimm) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimm())


def _import_timm_models() -> None:
    try:
        importlib.import_module(".timm_models", __name__)
    except Exception as err:  # timm must keep working even if stitchkit cannot register with it
        import warnings

        warnings.warn(f"stitchkit could not register its models with timm ({type(err).__name__}: {err}); "
                      "timm.create_model will not open stitch folders", RuntimeWarning, stacklevel=2)


class _AfterTimm:
    """A meta path finder that finds nothing itself: for ``timm`` it wraps the real loader so that stitchkit
    registers its models once timm's module has run, then leaves ``sys.meta_path``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        import importlib.util
        import sys

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _import_timm_models()

        spec.loader.exec_module = exec_module
        return spec


_register_with_timm()


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .adapters import create_adapter, list_adapters, register_adapter
    from .chain import PAPER_GAPS, RESIZE_MODES, parse_gap, plan_chain
    from .compute import count_macs, count_params
    from .errors import StitchkitError
    from .finetune import FinetuneBaseline, create_finetune_baseline
    from .formats import FeatureSpec, Format, convert
    from .stitching import StitchConfig, StitchedModel, build_stitch, create_stitched, load_stitched
    from .pretrained import load_pretrained, save_pretrained
    from .probe import HeadProbe, create_probe
    from .starts import Start, list_starts, register_start
    from .stitch_search import run_search, search
    from .zoo import create_model, list_models, model_spec, split
