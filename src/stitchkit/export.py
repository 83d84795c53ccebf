"""``stitchkit export RUN_DIR --out DIR --format ...``: a finished run's model for deployment, checked against itself.

Formats (each with a dynamic batch size, checked at export time on a batch of another size against the eager model,
max abs difference <= 1e-4 in fp32):

* ``torch-export``: ``model.pt2`` from :func:`torch.export.export` (load with ``torch.export.load(...).module()``);
* ``torchscript``: ``model.torchscript.pt`` from :func:`torch.jit.trace` (specialised to the run's image size);
* ``onnx``: ``model.onnx`` (torch's dynamo exporter, which needs the ``onnx`` and ``onnxscript`` packages:
  ``pip install 'stitchkit[export]'``), checked with onnxruntime when it is installed.

Every file states its preprocessing (input size, mean, std, interpolation, crop, class names): ``preprocessing.json``
beside them, and inside each file (an extra file of the .pt2 and TorchScript archives, metadata of the ONNX model).
The folder appears whole or not at all: it is written under a temporary name and renamed at the end.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import StitchkitError
from .files import atomic_write_bytes, atomic_write_json, remove_own_temps
from .training.evaluation import load_trained
from .zoo.metadata import preprocessing

FORMATS = ("torch-export", "torchscript", "onnx")
TOLERANCE = 1e-4
FILES = {"torch-export": "model.pt2", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}


def export_run(run_dir: str | Path, out: str | Path, formats: tuple[str, ...] = FORMATS) -> dict:
    """Export the finished run in ``run_dir`` to the new folder ``out``; returns what was written and checked."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise StitchkitError(f"unknown export format {unknown[0]!r}; formats are {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StitchkitError(f"{str(out)!r} already exists; export into a new folder")
    run, config, model, _ = load_trained(run_dir, device="cpu")
    result = run.read_result() or {}
    if result.get("status") != "finished":
        raise StitchkitError(f"the run in {str(run_dir)!r} is not finished (status {result.get('status', 'none')}); "
                             "finish it with `stitchkit train ... --resume`, then export")
    size = config.data.input_size
    prep = preprocessing(config.model.src)
    stated = {"input_size": [3, size, size], "mean": list(prep.mean), "std": list(prep.std),
              "interpolation": prep.interpolation, "crop_pct": config.data.crop_pct or prep.crop_pct,
              "class_names": result.get("class_names"), "top1": result.get("top1"), "run": str(run.path.resolve())}
    model = model.float().eval()
    example, check = torch.randn(2, 3, size, size), torch.randn(3, 3, size, size)  # two batch sizes: dynamic batch
    with torch.no_grad():
        expected = model(check)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out.parent)  # the half-assembled folder of an export killed before
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        checks = {}
        for fmt in formats:
            data, got = _EXPORTERS[fmt](model, example, check, json.dumps(stated))
            atomic_write_bytes(staging / FILES[fmt], data)
            checks[fmt] = _compare(fmt, got, expected)
        atomic_write_json(staging / "preprocessing.json", stated)
        manifest = {"formats": {f: {"file": FILES[f], **checks[f]} for f in formats}, "tolerance": TOLERANCE,
                    "torch": torch.__version__}
        atomic_write_json(staging / "export.json", manifest)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _compare(fmt: str, got, expected: torch.Tensor) -> dict:
    if got is None:
        return {"checked": False, "why": "onnxruntime is not installed (pip install onnxruntime)"}
    diff = float((torch.as_tensor(got) - expected).abs().max())
    if not diff <= TOLERANCE:
        raise StitchkitError(f"the {fmt} export differs from the model by {diff:.2e} (> {TOLERANCE:g}); not written")
    return {"checked": True, "max_abs_diff": diff}


def _torch_export(model, example, check, stated: str):
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"preprocessing.json": stated})
    buffer.seek(0)
    with torch.no_grad():
        got = torch.export.load(buffer).module()(check)
    return buffer.getvalue(), got


def _torchscript(model, example, check, stated: str):
    import warnings

    with warnings.catch_warnings():  # size checks in the adapters become constants: the image size is fixed
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"preprocessing.json": stated})
    buffer.seek(0)
    with torch.no_grad():
        got = torch.jit.load(buffer)(check)
    return buffer.getvalue(), got


def _onnx(model, example, check, stated: str):
    try:
        import onnx
    except ImportError:
        raise StitchkitError("--format onnx needs the onnx and onnxscript packages: pip install 'stitchkit[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(model, (example,), dynamic_shapes=({0: batch},), input_names=["image"],
                                output_names=["logits"], dynamo=True, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"stitchkit.preprocessing": stated})
    data = proto.SerializeToString()
    try:
        import onnxruntime
    except ImportError:
        return data, None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return data, session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]


_EXPORTERS = {"torch-export": _torch_export, "torchscript": _torchscript, "onnx": _onnx}
