"""stitchkit export: a finished stitch as torch.export, TorchScript and ONNX files that compute what it computes."""
import json

import pytest
import torch

from stitchkit.cli import main
from stitchkit.training import load_config, train
from stitchkit.training.trained import load_trained

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=64", "data.synthetic_val_size=32",
        "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "model.pretrained=false",
        "model.src=resnet10t", "train.epochs=1"]


@pytest.fixture(scope="module")
def stitch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    train(load_config(None, [*TINY, "mode=scratch", f"output.dir={root / 'source'}"]))
    weights = root / "source" / "model.pt"
    train(load_config(None, [*TINY, "mode=stitch", "model.gap=1:3", "model.dst=vit_tiny_patch16_224",
                             f"model.src_checkpoint={weights}", "data.synthetic_classes=1000",
                             f"output.dir={root / 'stitch'}"]))
    return root / "stitch"


def test_every_format_computes_what_the_stitch_computes(stitch_run, tmp_path, capsys, recwarn):
    out = tmp_path / "exported"
    assert main(["export", str(stitch_run), "--out", str(out)]) == 0
    # torch's deprecation of TorchScript is not repeated to the user four times per export
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning) and "torch.jit" in str(w.message)]
    manifest = json.loads(capsys.readouterr().out)
    assert set(manifest["formats"]) == {"torch-export", "torchscript", "onnx"}
    assert all(f["checked"] and f["max_abs_diff"] <= 1e-4 for f in manifest["formats"].values())
    stated = json.loads((out / "preprocessing.json").read_text())
    assert stated["input_size"] == [3, 32, 32] and len(stated["class_names"]) == 1000
    _, _, model, _ = load_trained(stitch_run, device="cpu")
    x = torch.randn(5, 3, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.load(out / "model.pt2").module()(x)
        extra = {"preprocessing.json": ""}
        scripted = torch.jit.load(str(out / "model.torchscript.pt"), _extra_files=extra)(x)
    assert (exported - expected).abs().max() <= 1e-4 and (scripted - expected).abs().max() <= 1e-4
    assert json.loads(extra["preprocessing.json"]) == stated  # the file states its preprocessing
    import onnx
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - expected.numpy()).max() <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(props["stitchkit.preprocessing"]) == stated
    # nothing names a path of this machine: not the run, not the checkpoints, not the output folder, not the Python
    # files that built the model (the exporters' stack traces)
    import sys
    from pathlib import Path

    import stitchkit

    code = Path(stitchkit.__file__).resolve().parent
    for path in [p for p in out.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for local in (str(stitch_run.parent), str(tmp_path), str(code), str(Path(torch.__file__).parent), sys.prefix):
            assert local.encode() not in data, f"{path.name} holds {local}"


def test_export_refusals_write_nothing(stitch_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    cases = [(["export", str(stitch_run), "--out", str(taken)], "already exists"),
             (["export", str(stitch_run), "--out", str(tmp_path / "a"), "--format", "tflite"], "unknown export format"),
             (["export", str(tmp_path), "--out", str(tmp_path / "b")], "neither a run folder")]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no half-written folder anywhere
    assert (taken / "mine.txt").read_text() == "keep"


def test_a_failed_or_unfinished_run_is_neither_exported_nor_asked_for_predictions(stitch_run, tmp_path, capsys):
    """A failed run (a NaN loss) kept the weights where it stopped: export refused it, predict classified with
    them."""
    import shutil

    from PIL import Image

    copy = tmp_path / "copy"
    shutil.copytree(stitch_run, copy)
    result = json.loads((copy / "result.json").read_text())
    (copy / "result.json").write_text(json.dumps({**result, "status": "failed", "error": "loss is NaN at step 3"}))
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (90, 30, 200)).save(image)
    for command in (["export", str(copy), "--out", str(tmp_path / "out")], ["predict", str(copy), str(image)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"the run in '{copy}' failed (loss is NaN at step 3), so it has no trained model" in err, err
        assert "--overwrite" in err and not (tmp_path / "out").exists()
    (copy / "result.json").unlink()  # interrupted: a checkpoint, no result
    assert main(["export", str(copy), "--out", str(tmp_path / "out")]) == 2
    assert "is not finished" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_export_files_have_the_umasks_permissions(stitch_run, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["export", str(stitch_run), "--out", str(tmp_path / "out"), "--format", "onnx"]) == 0
    finally:
        os.umask(old)
    out = tmp_path / "out"
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes.pop(".") == 0o755 and modes.pop("model") == 0o755
    assert set(modes.values()) == {0o644}, modes  # readable by others, as any file the user makes


def test_an_export_leaves_a_live_exports_folder_beside_it_and_removes_a_killed_ones(stitch_run, tmp_path, live_pid,
                                                                                   gone_pid):
    """Two exports into one parent folder: the second, started while the first assembles its folder, neither
    touches that folder nor fails; a folder left by a killed export is removed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from stitchkit.temps import HOST

    parent = tmp_path / "conc"
    live = parent / f".A.{live_pid}@{HOST}.mxiv9wul.tmp"  # what `export --out conc/A` is assembling
    (live / "model").mkdir(parents=True)
    (live / "model" / "config.json").write_text("{}")
    (live / "model.pt2").write_bytes(b"pt2")
    killed = parent / f".C.{gone_pid}@{HOST}.abcdefgh.tmp"
    (killed / "model").mkdir(parents=True)
    src = Path(__file__).resolve().parents[1] / "src"
    # In a new process, as a second `stitchkit export` is: everything above is older than it.
    done = subprocess.run([sys.executable, "-m", "stitchkit", "export", str(stitch_run), "--out", str(parent / "B"),
                           "--format", "safetensors"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert sorted(p.relative_to(live).as_posix() for p in live.rglob("*")) == ["model", "model.pt2",
                                                                               "model/config.json"]
    assert not killed.exists()
    assert sorted(p.name for p in (parent / "B" / "model").iterdir()) == ["README.md", "config.json",
                                                                          "model.safetensors"]


def test_an_export_that_lost_a_file_while_written_fails_and_leaves_nothing(stitch_run, tmp_path, monkeypatch, capsys):
    """export.json lists only files that are in the folder: one removed meanwhile (by another process) fails the
    export in one line instead of a folder whose export.json says the file was written and checked."""
    from stitchkit import export

    real_write = export.atomic_write_bytes

    def write_then_lose_the_weights(path, data):
        real_write(path, data)
        (path.parent / "model" / "model.safetensors").unlink()

    monkeypatch.setattr(export, "atomic_write_bytes", write_then_lose_the_weights)
    assert main(["export", str(stitch_run), "--out", str(tmp_path / "out"), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err  # (torch's deprecation warnings for TorchScript may come before it)
    errors = [line for line in err.splitlines() if line.startswith("stitchkit: error:")]
    assert len(errors) == 1 and "lost model/model.safetensors while it was written" in errors[0]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging folder


def test_the_export_names_the_folder_timm_opens_and_stitchkit_takes_either(stitch_run, tmp_path, capsys):
    """timm and the Hub take DIR/model, the folder `stitchkit export` names at its end (timm reads config.json and
    the weights from exactly the folder it is given, so DIR is no model folder to it); stitchkit's readers take
    DIR too. stdout stays the manifest's JSON."""
    import timm

    import stitchkit

    out = tmp_path / "exported"
    assert main(["export", str(stitch_run), "--out", str(out), "--format", "safetensors"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["model_folder"] == "model"
    named = f"local-dir:{out / 'model'}"
    assert f"timm.create_model('{named}', pretrained=True)" in captured.err
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = stitchkit.load_pretrained(out).eval()(x)
        assert torch.equal(stitchkit.load_pretrained(out / "model").eval()(x), expected)
        assert torch.equal(timm.create_model(named, pretrained=True).eval()(x), expected)
    with pytest.raises(FileNotFoundError, match="Config file not found"):  # as README.md and --help say
        timm.create_model(f"local-dir:{out}", pretrained=True)


def test_onnx_without_onnxscript_is_refused_before_anything_is_exported(tmp_path, monkeypatch, capsys):
    """torch's ONNX exporter imports onnxscript itself: with onnx installed and onnxscript not, the export ended in
    a ModuleNotFoundError traceback after the other formats had been exported and thrown away."""
    import sys

    import stitchkit
    from stitchkit import export

    model = stitchkit.create_stitched("vit_micro_patch4_32", "vit_pico_patch4_32", "1:3", input_size=32)
    model.save_pretrained(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript raises ImportError
    monkeypatch.setattr(export, "_torch_export", lambda *a: pytest.fail("exported before the refusal"))
    monkeypatch.setitem(export._EXPORTERS, "torch-export", export._torch_export)
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "onnxscript is not installed" in err and "pip install 'stitchkit[export]'" in err
    assert not (tmp_path / "out").exists()


def test_a_model_an_exporter_cannot_export_is_one_line_naming_the_format(tmp_path, capsys):
    """torch.jit.trace fixes shapes a LeViT back computes from the batch size: traced on 2 images, the TorchScript
    module fails on 3 (the check's batch). `stitchkit export` ended in the interpreter's traceback, the other
    formats' work thrown away without a word on how to export the model."""
    import stitchkit

    model = stitchkit.create_stitched("resnet10t", "levit_128s", "1:3", input_size=32)
    model.save_pretrained(tmp_path / "m")
    argv = ["export", str(tmp_path / "m"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--format", "torchscript", "--format", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert "could not be exported as torchscript (RuntimeError: split_with_sizes" in err, err
    assert "export again without it (--format safetensors)" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_exports_are_checked_within_the_scale_of_the_outputs():
    """fp32's rounding grows with the values: an encoder's features in the hundreds, exported correctly, differ by
    more than 1e-4 in absolute terms; a real error is refused whatever the scale."""
    from stitchkit.errors import StitchkitError
    from stitchkit.export import _compare

    features = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 500
    rounded = features * (1 + 2e-7)  # a few fp32 ulps
    assert (rounded - features).abs().max() > 1e-4
    assert _compare("onnx", rounded, features)["checked"]
    with pytest.raises(StitchkitError, match="differs from the model"):
        _compare("onnx", features + 0.5, features)
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(StitchkitError, match="differs from the model"):
        _compare("onnx", logits + 1e-3, logits)  # logits of a few units: a bound of a few 1e-4



def test_a_failed_export_leaves_no_folders_behind(stitch_run, tmp_path, monkeypatch):
    """An export that fails removes the folders it made for --out, not only its half-written files; folders that
    were there before stay."""
    from stitchkit import export as export_module
    from stitchkit.errors import StitchkitError

    def broken(*args):
        raise StitchkitError("no")

    monkeypatch.setitem(export_module._EXPORTERS, "torch-export", broken)
    (tmp_path / "there").mkdir()
    with pytest.raises(StitchkitError):
        export_module.export_run(stitch_run, tmp_path / "there" / "new" / "deeper" / "out", formats=("torch-export",))
    assert (tmp_path / "there").is_dir() and not (tmp_path / "there" / "new").exists()
