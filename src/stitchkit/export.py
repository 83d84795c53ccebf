"""``stitchkit export RUN_DIR --out DIR``: a finished run's model as one self-contained model folder, and as
deployment files checked against it.

``DIR/model`` is always a model folder (:mod:`stitchkit.modelfolder`: ``config.json``, ``model.safetensors`` with
every weight, frozen parts included, and a ``README.md`` model card; load it with :func:`stitchkit.load_pretrained`
or ``timm.create_model("local-dir:DIR/model", pretrained=True)``, predict and evaluate with it from any directory,
push it to the Hugging Face Hub as it is: the deployment files sit beside it in ``DIR``, so they are not uploaded
with it). stitchkit's own readers (``load_pretrained``, ``predict``, ``eval``, ``export``) also take ``DIR`` itself;
timm and the Hub take ``DIR/model`` only: timm reads ``config.json`` and the weights from the very folder it is
given, and a copy or link of them in ``DIR`` would duplicate the weights (a copy, or a link that ``scp -r`` follows)
or make ``DIR`` look like a model folder to upload, deployment files and all. ``stitchkit export`` ends by naming
the folder to give timm. Deployment formats (each with a dynamic batch size, checked at export time on a batch of
another size against the eager model in fp32: max abs difference <= 1e-4 times the largest output magnitude, at
least 1e-4, since fp32's rounding grows with the values: an encoder's features of a few hundred differ by more than
1e-4 in a correct file):

* ``torch-export``: ``model.pt2`` from :func:`torch.export.export` (load with ``torch.export.load(...).module()``);
* ``torchscript``: ``model.torchscript.pt`` from :func:`torch.jit.trace` (specialised to the run's image size);
* ``onnx``: ``model.onnx`` (torch's dynamo exporter, which needs the ``onnx`` and ``onnxscript`` packages:
  ``pip install 'stitchkit[export]'``), checked with onnxruntime when it is installed.

``safetensors`` asks for the model folder alone. Every file states its preprocessing (input size, mean, std,
interpolation, crop, class names): ``preprocessing.json`` beside them, and inside each file (an extra file of the
.pt2 and TorchScript archives, metadata of the ONNX model). The source may also be a model folder (re-export it in
other formats). The folder appears whole or not at all: it is written under a temporary name and renamed at the end.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import torch

from .errors import StitchkitError
from .files import atomic_write_json, atomic_write_bytes
from .modelfolder import EXPORT_MODEL_DIR, apply_umask, folder_config, local_folder, read_model_config, write_files
from .modelfolder import WHOLE_MODEL
from .pretrained import folder_or_run, load_described
from .rundir import RunDir
from .temps import make_temp_dir, remove_own_temps
from .training.trained import load_trained
from .summary import model_macs
from .training.modes import mode_for
from .zoo.metadata import ModelName, preprocessing

DEPLOYMENT_FORMATS = ("torch-export", "torchscript", "onnx")
FORMATS = ("safetensors", *DEPLOYMENT_FORMATS)
TOLERANCE = 1e-4
FILES = {"torch-export": "model.pt2", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
RESULT_KEYS = ("top1", "top5", "loss", "gmacs", "params", "trainable_params", "epochs", "steps", "dataset",
               "eval_images", "val_split_images", "top1_at_start")


def export_run(source: str | Path, out: str | Path, formats: tuple[str, ...] = FORMATS) -> dict:
    """Export the finished run in ``source`` (or a model folder) to the new folder ``out``: the model folder and
    ``formats``' deployment files; returns what was written and checked."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise StitchkitError(f"unknown export format {unknown[0]!r}; formats are {', '.join(FORMATS)}")
    if "onnx" in formats:
        _require_onnx()  # before minutes of exporting the other formats, which a missing package would throw away
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StitchkitError(f"{str(out)!r} already exists; export into a new folder")
    model, described = _model_and_config(source)
    model = model.float().eval()
    prep, result = described["preprocessing"], described.get("result") or {}
    size = prep["input_size"][-1]
    stated = {**prep, "class_names": described.get("class_names"), "top1": result.get("top1"),
              "run": (described.get("provenance") or {}).get("run")}
    channels = prep["input_size"][0] if len(prep["input_size"]) == 3 else 3  # a grayscale model's: 1
    # two batch sizes: a dynamic batch
    example, check = torch.randn(2, channels, size, size), torch.randn(3, channels, size, size)
    with torch.no_grad():
        expected = model(check)
    created = [p for p in reversed(out.parents) if not p.exists()]  # removed again if the export fails
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_own_temps(out.parent)  # the half-assembled folder of an export killed before (not a live export's)
    staging = make_temp_dir(out)
    try:
        (staging / EXPORT_MODEL_DIR).mkdir()
        write_files(staging / EXPORT_MODEL_DIR, described, model)
        checks = {}
        for fmt in (f for f in DEPLOYMENT_FORMATS if f in formats):
            data, got = _export(fmt, model, example, check, json.dumps(stated), formats)
            atomic_write_bytes(staging / FILES[fmt], data)
            checks[fmt] = {"file": FILES[fmt], **_compare(fmt, got, expected)}
        atomic_write_json(staging / "preprocessing.json", stated)
        manifest = {"model_folder": EXPORT_MODEL_DIR, "model_folder_files": ["config.json", "model.safetensors",
                                                                              "README.md"],
                    "formats": checks, "tolerance": TOLERANCE, "torch": torch.__version__}
        _check_in_place(staging, manifest, out)  # export.json lists only files that are there
        atomic_write_json(staging / "export.json", manifest)
        apply_umask(staging)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):  # the deepest first; only while empty (another process may write there)
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return manifest


def _export(fmt: str, model, example, check, stated: str, formats: tuple[str, ...]):
    """``fmt``'s exporter on ``model``; a model it cannot export (torch.jit.trace fixes a shape the graph computes
    from the batch size, torch.export meets an operation it does not support) is one line naming the format and
    the command without it, not the exporter's traceback."""
    try:
        return _EXPORTERS[fmt](model, example, check, stated)
    except StitchkitError:
        raise
    except Exception as err:  # noqa: BLE001 - any exporter failure is this model not exporting to this format
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        last = lines[-1][:300] if lines else ""
        detail = last if last.startswith(f"{type(err).__name__}:") else f"{type(err).__name__}: {last}".rstrip(": ")
        others = [f for f in formats if f != fmt]
        retry = (f"export again without it ({' '.join(f'--format {f}' for f in others)})" if others
                 else f"export another format ({', '.join(f for f in FORMATS if f != fmt)})")
        raise StitchkitError(f"this model could not be exported as {fmt} ({detail}); nothing was exported: "
                             f"{retry}") from err


def _check_in_place(staging: Path, manifest: dict, out: Path) -> None:
    """Refuse to finish an export whose files are not all in its folder: something else removed one while it was
    written (a cleaner that took the folder for a killed export's leftover), and an export.json listing it would
    say it was written and checked."""
    listed = ([f"{manifest['model_folder']}/{name}" for name in manifest["model_folder_files"]]
              + [check["file"] for check in manifest["formats"].values()] + ["preprocessing.json"])
    missing = [name for name in listed if not (staging / name).is_file()]
    if missing:
        raise StitchkitError(f"the export to {str(out)!r} lost {', '.join(missing)} while it was written (removed by "
                             "another process); nothing was exported, export again")


def _model_and_config(source: str | Path):
    """``(model, config.json contents)`` of a model folder, or of a finished run."""
    if folder_or_run(source) == "folder":
        folder = local_folder(source)
        described = read_model_config(folder)
        return load_described(folder, described), described
    run, config, model, _ = load_trained(source, device="cpu")  # a finished run's: others are refused there
    return model, run_folder_config(run, config, model, run.read_result())


def run_folder_config(run: RunDir, config, model, result: dict) -> dict:
    """The ``config.json`` record of a run's model: its architecture, the run's preprocessing and class names, its
    result, what trained, the parts it was made from (their accuracy where a stitchkit run measured it, their
    compute), the data it was evaluated on (for ``stitchkit eval MODEL_DIR``) and where it came from. No path of
    this machine is kept: files are named, folders are not (``data.root`` is given again to ``eval``)."""
    size, prep = config.data.input_size, preprocessing(config.model.pixel_source)
    network = mode_for(config).network
    if network is not None:
        kind, architecture = network.folder_kind, model.architecture()
    else:
        kind, architecture = WHOLE_MODEL, {"name": config.model.src, "input_size": size,
                                           "num_classes": result.get("classes")}
    data = dict(vars(config.data))
    if data.get("root"):
        data["root"] = None  # a path of this machine; `stitchkit eval FOLDER data.root=...` names the data again
    return folder_config(
        kind, architecture,
        {"input_size": [3, size, size], "mean": prep.mean, "std": prep.std, "interpolation": prep.interpolation,
         "crop_pct": config.data.crop_pct or prep.crop_pct},
        result.get("class_names"),
        result={k: result[k] for k in RESULT_KEYS if result.get(k) is not None}, trained=result.get("trained"),
        sources=parts_record(config, size),
        evaluation={"data": data, "seed": config.train.seed, "batch_size": config.train.batch_size,
                    "amp": config.train.amp},
        provenance={"run": run.path.resolve().name, "mode": config.mode, "pretrained": config.model.pretrained,
                    "src_checkpoint": ([_file_name(c) for c in config.model.src_checkpoint]
                                       if isinstance(config.model.src_checkpoint, (list, tuple))
                                       else _file_name(config.model.src_checkpoint)),
                    "dst_checkpoint": _file_name(config.model.dst_checkpoint)},
    )


def _file_name(path: str | None) -> str | None:
    return Path(path).name if path else None


def parts_record(config, size: int) -> list[dict]:
    """The models a run's network was made from, for its model card: name, role, where the weights came from
    (the Hub id of pretrained timm weights: the card's ``base_model``), their compute at ``size`` and, for a
    checkpoint written by a stitchkit run, the accuracy that run measured and what it measured it on
    (``measured_on``: the card sets it beside this model's only where that was this run's task)."""
    m = config.model
    if config.mode == "scratch":
        return []
    if config.mode == "stitch":
        fronts = list(zip(m.sources(), m.source_checkpoints()))
        roles = [(f"source {i + 1} (front)" if len(fronts) > 1 else "source (front)", name, checkpoint)
                 for i, (name, checkpoint) in enumerate(fronts)] + [("destination (back)", m.dst or m.src,
                                                                     m.dst_checkpoint)]
    else:
        roles = [("cut from" if config.mode == "finetune" else "frozen body", m.src, m.src_checkpoint)]
    parts = []
    for role, name, checkpoint in roles:
        part = {"name": name, "role": role, "gmacs": model_macs(name, size) / 1e9}
        if checkpoint:
            part["weights"] = f"checkpoint {Path(checkpoint).name}"
            source_run = RunDir(Path(checkpoint).parent)
            measured = source_run.read_result() if source_run.path.is_dir() else None
            if measured and measured.get("gmacs") and measured.get("input_size") == size:
                part["gmacs"] = measured["gmacs"]  # with the checkpoint's own head, not a 1000-class one
            if measured and measured.get("top1") is not None:
                part["top1"] = measured["top1"]
                part["top1_on"] = f"{measured.get('dataset')}, {measured.get('mode')} run"
                part["measured_on"] = _measured_on(measured, _run_data(source_run), vars(config.data))
                part["weights"] += f" (a stitchkit {measured.get('mode')} run)"
        elif m.pretrained:
            part.update(_pretrained_source(name))
        else:
            part["weights"] = "random initialisation"
        parts.append(part)
    return parts


def _run_data(run: RunDir) -> dict | None:
    """The ``data`` settings in a run's ``config.yaml``, or None where they cannot be read."""
    import yaml

    try:
        data = yaml.safe_load(run.config.read_text()).get("data")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _evaluated_data(data: dict) -> dict:
    """Of a run's ``data`` settings, those that decide which images (and labels) its top-1 was measured on: the
    dataset (an image folder by where it is: a path is compared, never recorded), the classes selected, the
    validation subset (``data.limit_val`` and the seed that draws it), the image size."""
    picked = {key: data.get(key) for key in ("name", "classes", "limit_val", "input_size")}
    if data.get("limit_val") is not None:
        picked["holdout_seed"] = data.get("holdout_seed")
    if data.get("name") == "imagefolder":
        picked["root"] = str(Path(data["root"]).expanduser().resolve()) if data.get("root") else None
    if data.get("name") == "synthetic":
        picked.update({key: data.get(key) for key in ("synthetic_val_size", "synthetic_classes", "synthetic_jpeg")})
    return picked


def _measured_on(measured: dict, their_data: dict | None, our_data: dict) -> dict:
    """What a part's stitchkit run measured its top-1 on: dataset, classes, validation images, image size, and
    whether that was the very data this run evaluates on (``same_data``; None where the part's settings are gone)."""
    same = None if their_data is None else _evaluated_data(their_data) == _evaluated_data(our_data)
    return {"dataset": measured.get("dataset"), "class_names": measured.get("class_names"),
            "eval_images": measured.get("eval_images"), "input_size": measured.get("input_size"),
            "same_data": same}


def _pretrained_source(name: str) -> dict:
    """Where pretrained weights of ``name`` come from: a timm model's Hugging Face Hub id and license."""
    parsed = ModelName.parse(name)
    if parsed.is_torchvision:
        return {"weights": f"torchvision {parsed.tag or 'DEFAULT'} weights"}
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    hub_id = getattr(cfg, "hf_hub_id", None)
    out = {"weights": "timm pretrained"}
    if hub_id:
        out["hub_id"] = hub_id
        out["weights"] = f"timm pretrained, {hub_id}"
    if getattr(cfg, "license", None):
        out["license"] = cfg.license
    return out


def _compare(fmt: str, got, expected: torch.Tensor) -> dict:
    """The export's outputs against the eager model's, within :data:`TOLERANCE` of the outputs' scale."""
    if got is None:
        return {"checked": False, "why": "onnxruntime is not installed (pip install onnxruntime)"}
    diff = float((torch.as_tensor(got) - expected).abs().max())
    allowed = TOLERANCE * max(1.0, float(expected.abs().max()))
    if not diff <= allowed:
        raise StitchkitError(f"the {fmt} export differs from the model by {diff:.2e} (> {allowed:.2g}, {TOLERANCE:g} "
                             "of its largest output); not written")
    return {"checked": True, "max_abs_diff": diff, "allowed": allowed}


def _torch_export(model, example, check, stated: str):
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)  # see _without_stack_traces
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"preprocessing.json": stated})
    buffer.seek(0)
    with torch.no_grad():
        got = torch.export.load(buffer).module()(check)
    return buffer.getvalue(), got


def _torchscript(model, example, check, stated: str):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # size checks become constants: the size is fixed
        # torch deprecates TorchScript in favour of torch.export (model.pt2, written too); a user who asked for this
        # format (libtorch, older runtimes) knows, and four FutureWarnings per export would only bury its output.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        traced = torch.jit.trace(model, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"preprocessing.json": stated})
        buffer.seek(0)
        with torch.no_grad():
            got = torch.jit.load(buffer)(check)
    return buffer.getvalue(), got


def _require_onnx() -> None:
    """Refuse ONNX export where torch's dynamo exporter cannot run: it needs onnx and onnxscript (torch imports the
    latter inside ``torch.onnx.export``, which would otherwise end the export with a ModuleNotFoundError)."""
    missing = []
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise StitchkitError(f"--format onnx needs the onnx and onnxscript packages ({' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} not installed): pip install 'stitchkit[export]'")


def _onnx(model, example, check, stated: str):
    _require_onnx()
    import onnx

    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(model, (example,), dynamic_shapes=({0: batch},), input_names=["image"],
                                output_names=["logits"], dynamo=True, verbose=False)
    proto = program.model_proto
    _without_stack_traces(proto)
    onnx.helper.set_model_props(proto, {"stitchkit.preprocessing": stated})
    data = proto.SerializeToString()
    try:
        import onnxruntime
    except ImportError:
        return data, None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return data, session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]


def _without_stack_traces(proto) -> None:
    """Drop the exporter's per-node stack traces from an ONNX model. They name files of the exporting machine (its
    home folder, its virtual environment, stitchkit's checkout), which a file meant for other machines should not
    carry; the graph and its weights are untouched. The torch.export file loses its nodes' ``stack_trace`` the
    same way."""
    import onnx

    def graphs(graph):
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    yield from graphs(attribute.g)
                for sub in attribute.graphs:
                    yield from graphs(sub)

    nodes = [n for g in graphs(proto.graph) for n in g.node] + [n for f in proto.functions for n in f.node]
    for node in nodes:
        kept = [prop for prop in node.metadata_props if not prop.key.endswith("stack_trace")]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


_EXPORTERS = {"torch-export": _torch_export, "torchscript": _torchscript, "onnx": _onnx}
