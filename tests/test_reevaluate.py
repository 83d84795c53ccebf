"""`stitchkit eval` (and predict, export) of runs and their exported folders as they are found later: copied to a
machine without a GPU, with their checkpoints deleted, interrupted, their data moved or named again; every refusal
one line naming a fix the command takes."""
import json
import shutil

import pytest

from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.training import load_config, train

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=64", "data.synthetic_val_size=32",
        "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "model.pretrained=false",
        "train.epochs=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished scratch run (its weights in model.pt) and a finished stitch of it (adapters.pt)."""
    root = tmp_path_factory.mktemp("runs")
    source = root / "source"
    train(load_config(None, [*TINY, "mode=scratch", "model.src=resnet10t", f"output.dir={source}"]))
    stitch = root / "stitch"
    train(load_config(None, [*TINY, "mode=stitch", "model.src=resnet10t", "model.gap=1:3",
                             f"model.src_checkpoint={source / 'model.pt'}",
                             f"model.dst_checkpoint={source / 'model.pt'}", f"output.dir={stitch}"]))
    return {"source": source, "stitch": stitch}


def _copy(run, tmp_path):
    """A copy of a run to change (its source checkpoints stay where the run recorded them)."""
    return shutil.copytree(run, tmp_path / run.name)


def _result(run):
    return json.loads((run / "result.json").read_text())


def _image(folder):
    from PIL import Image

    Image.new("RGB", (36, 36)).save(folder / "image.png")
    return folder / "image.png"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("stitchkit: error: ") and err.count("\n") == 1, err
    return err


def test_a_run_that_trained_on_cuda_evaluates_on_the_cpu_where_there_is_none(runs, tmp_path, monkeypatch, capsys):
    """The run's config.yaml says device: cuda. The message was "train.device=cuda ...; use train.device=cpu", a
    setting eval and predict do not take: without --device they use the CPU and say so; --device cuda is refused
    naming --device cpu."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    run = _copy(runs["source"], tmp_path)
    config = (run / "config.yaml").read_text()
    assert "  device: auto\n" in config
    (run / "config.yaml").write_text(config.replace("  device: auto\n", "  device: cuda\n"))
    assert main(["eval", str(run)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["top1"] == _result(run)["top1"]
    assert f"note: the run in '{run}' ran on cuda and no CUDA device is visible: using the CPU" in err
    image = _image(tmp_path)
    assert main(["predict", str(run), str(image)]) == 0
    assert "using the CPU" in capsys.readouterr().err
    for command in (["eval", str(run)], ["predict", str(run), str(image)],
                    ["eval-model", "resnet10t", "--data", "synthetic", "--input-size", "32"]):
        with pytest.raises(SystemExit) as refused:  # at parsing, as any option's bad value
            main([*command, "--device", "cuda"])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and "argument --device: cuda: no CUDA device is visible; use --device cpu" in err


@pytest.mark.parametrize("kind, weights", [("stitch", "adapters.pt"), ("source", "model.pt")])
def test_a_finished_run_without_its_checkpoints_uses_its_saved_weights(runs, kind, weights, tmp_path, capsys):
    """eval, predict and export said "has no checkpoints/last.pt: the run never reached a checkpoint" of a finished
    run whose checkpoints/ folder was deleted, though its trained weights were there."""
    run = _copy(runs[kind], tmp_path)
    shutil.rmtree(run / "checkpoints")
    assert main(["eval", str(run)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["top1"] == _result(run)["top1"] and record["step"] == _result(run)["steps"]
    image = _image(tmp_path)
    assert main(["predict", str(run), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"].startswith("class_")
    assert main(["export", str(run), "--out", str(tmp_path / "exported"), "--format", "safetensors"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "exported")]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == _result(run)["top1"]
    (run / weights).unlink()
    assert main(["eval", str(run)]) == 2
    assert ("is finished, but its checkpoints/last.pt and its trained weights (adapters.pt or model.pt) were deleted"
            in _one_line_error(capsys))


def test_an_interrupted_run_evaluates_its_last_checkpoint_and_says_so(tmp_path, monkeypatch, capsys):
    """eval of a run stopped at step 2 of 4 reported the checkpoint's accuracy as if it were the run's (exit 0,
    "step": 2, --help promising final weights) while predict and export refused the run: it is evaluated (useful
    mid-run), and stderr and eval.json say it is not finished and how far it got; predict and export still refuse."""
    from stitchkit.training import logging as training_logging

    original, steps = training_logging.MetricsLog.advance, []

    def ctrl_c_at_step_2(self, count=1):
        original(self, count)
        steps.append(count)
        if len(steps) == 2:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(training_logging.MetricsLog, "advance", ctrl_c_at_step_2)
        assert main(["train", *TINY, "train.epochs=2", "mode=scratch", "model.src=resnet10t",
                     f"output.dir={run}"]) == 130
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out, err = capsys.readouterr()
    assert (f"note: the run in '{run}' is interrupted, not finished: evaluating its last checkpoint, step 2 of 4 "
            "(continue the run with `stitchkit train ... --resume`)") in err
    record = json.loads(out)
    assert (record["run_status"], record["step"], record["total_steps"]) == ("interrupted", 2, 4)
    assert json.loads((run / "eval.json").read_text()) == record
    image = _image(tmp_path)
    for command in (["predict", str(run), str(image)], ["export", str(run), "--out", str(tmp_path / "x")]):
        assert main(command) == 2
        assert "finish it" in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()


def _image_folder(root, splits=("train", "val"), classes=("ant", "bee")):
    """Tiny PNGs, a colour per class, in ``root/<split>/<class>/``."""
    from PIL import Image

    for split in splits:
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (36, 36), (120 * label, 40 * i, 90)).save(root / split / name / f"{i}.png")
    return root


def test_a_run_finds_its_relative_data_as_its_weights_and_takes_data_root_where_it_moved(tmp_path, monkeypatch,
                                                                                          capsys):
    """A run trained with a relative data.root could not be evaluated from another directory or once its data had
    moved: eval said "data folder 'data/val' does not exist; set data.root ..." and refused data.root=... ("key=value
    settings apply to a model folder")."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    _image_folder(work / "data")
    elsewhere.mkdir()
    monkeypatch.chdir(work)  # settings name the data relative to here, as users type them
    folder = [*TINY, "data.name=imagefolder", "data.root=data", "optim.batch_size=4", "train.batch_size=4",
              "mode=scratch", "model.src=resnet10t", "model.num_classes=2"]
    assert main(["train", *folder, "output.dir=runs/run"]) == 0
    top1 = json.loads(capsys.readouterr().out)["top1"]
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(work / "runs" / "run")]) == 0  # by the absolute path it recorded
    assert json.loads(capsys.readouterr().out)["top1"] == top1
    shutil.move(work, tmp_path / "moved")  # the runs and the data together
    run = tmp_path / "moved" / "runs" / "run"
    assert main(["eval", str(run)]) == 0  # relative to the run
    record = json.loads(capsys.readouterr().out)
    assert record["top1"] == top1 and record["data_root"] == str(run / ".." / ".." / "data")
    shutil.move(tmp_path / "moved" / "data", tmp_path / "data-now")  # the data alone
    assert main(["eval", str(run)]) == 2
    assert (f"the data of the run in '{run}' is not found (data.root: tried 'data', '{work / 'data'}', "
            f"'{run / '..' / '..' / 'data'}'); name its folder: stitchkit eval {run} data.root=DIR"
            ) in _one_line_error(capsys)
    assert main(["eval", str(run), f"data.root={tmp_path / 'data-now'}"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == top1
    assert main(["eval", str(run), f"data.root={tmp_path / 'data-now'}", "data.input_size=64"]) == 2
    assert ("'data.input_size=64': a run is evaluated with its own settings; only where its data is may change "
            "(data.root=...)") in _one_line_error(capsys)


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    """A run on an image folder (classes ant, bee), exported: the folder records the data as an image folder but
    not its path."""
    root = tmp_path_factory.mktemp("image-export")
    data = _image_folder(root / "data")
    result = train(load_config(None, [*TINY, "data.name=imagefolder", f"data.root={data}", "optim.batch_size=4",
                                      "train.batch_size=4", "mode=scratch", "model.src=resnet10t",
                                      "model.num_classes=2", f"output.dir={root / 'run'}"]))
    assert main(["export", str(root / "run"), "--out", str(root / "exported"), "--format", "safetensors"]) == 0
    return root / "exported", data, result


def test_an_exported_image_folder_run_evaluates_on_a_val_folder_named_again(image_export, tmp_path, capsys):
    """README's `stitchkit eval exported/my-stitch` said "data.name=imagefolder needs data.root, a folder with
    train/<class>/ and val/<class>/" for an image-folder run: the folder keeps no path, and evaluation needs val/
    alone."""
    from stitchkit.training.data import build_splits, raw_sources
    from stitchkit.zoo.metadata import preprocessing

    exported, data, result = image_export
    capsys.readouterr()
    assert main(["eval", str(exported)]) == 2
    assert (f"the model in '{exported}' was evaluated on an image folder, whose path a model folder does not keep; "
            f"name it: stitchkit eval {exported} data.root=DIR (a folder with val/<class>/ inside)"
            ) in _one_line_error(capsys)
    shutil.copytree(data / "val", tmp_path / "val-only" / "val")
    assert main(["eval", str(exported), f"data.root={tmp_path / 'val-only'}"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == result["top1"]
    no_root = load_config(None, ["data.name=imagefolder"]).data
    with pytest.raises(StitchkitError, match=r"needs data.root, a folder with val/<class>/$"):
        build_splits(no_root, preprocessing("resnet10t"), 0, need_train=False)
    with pytest.raises(StitchkitError, match=r"needs data.root, a folder with train/<class>/ and val/<class>/$"):
        raw_sources(no_root)


def test_data_with_other_class_names_is_refused_and_the_same_names_are_matched_by_name(image_export, tmp_path,
                                                                                        capsys):
    """A val folder with as many classes as the model but other names scored top-1 0.0 without a word, though
    config.json and result.json record the class names: refused, naming the first differing names; the same names
    in another order are matched by name."""
    import stitchkit

    exported, data, result = image_export
    _image_folder(tmp_path / "other", splits=("val",), classes=("ant", "cat"))
    run = exported.parent / "run"
    for target, model in ((exported, f"the model in '{exported}'"), (run, f"the run in '{run}'")):
        assert main(["eval", str(target), f"data.root={tmp_path / 'other'}"]) == 2
        assert (f"{model} predicts other classes than the data has (its 'bee' not in the data; the data's 'cat' not "
                "among its); evaluate it on the data it was trained for") in _one_line_error(capsys)
    # The same model with its classes in the other order (its head's rows swapped): matched by name, same top-1.
    model = stitchkit.load_pretrained(exported)
    head = model.get_classifier()
    head.weight.data, head.bias.data = head.weight.data.flip(0), head.bias.data.flip(0)
    stitchkit.save_pretrained(model, tmp_path / "reordered", class_names=["bee", "ant"])
    assert main(["eval", str(tmp_path / "reordered"), f"data.root={data}"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == result["top1"]
    from stitchkit.training.data import ImageFolderSource, in_class_order

    val = ImageFolderSource(data / "val")
    relabelled = in_class_order(val, ["bee", "ant"])
    assert relabelled.classes == ["bee", "ant"] and len(relabelled) == len(val)
    for i, j in enumerate(relabelled.indices):  # every image keeps its class name, under the model's numbers
        assert relabelled.classes[relabelled.label(i)] == val.classes[val.label(j)]
        assert relabelled.label(i) != val.label(j)


def test_an_exported_folders_refusals_name_the_folder_as_given(runs, tmp_path, capsys):
    """The export folder holds model/: its refusals named the inner folder, not the one the user typed."""
    out = tmp_path / "exported"
    assert main(["export", str(runs["stitch"]), "--out", str(out), "--format", "safetensors"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "data.input_size=64"]) == 2
    err = _one_line_error(capsys)
    assert f"the model in '{out}' is built for 32 px images; remove data.input_size=64" in err, err
