"""Bad input through the CLI: each case exits non-zero with one message that names the problem and the fix, shows no
traceback (unless --debug), and leaves everything written earlier untouched."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stitchkit.cli import main

FAST = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=64", "data.synthetic_val_size=32",
        "optim.batch_size=32", "train.batch_size=32", "train.workers=0", "train.threads=1", "model.pretrained=false",
        "mode=scratch", "model.src=resnet10t", "train.epochs=1"]


def _folder(root: Path, classes=("a", "b"), val_classes=None, per_class=4) -> Path:
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.random.default_rng(i).integers(0, 255, (36, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Folders and runs that the cases point at, made once."""
    root = tmp_path_factory.mktemp("world")
    w = {"root": root, "good": _folder(root / "good")}
    w["empty_class"] = _folder(root / "empty_class")
    (w["empty_class"] / "train" / "c").mkdir()
    (w["empty_class"] / "val" / "c").mkdir()
    w["mismatch"] = _folder(root / "mismatch", ("a", "b"), ("a", "z"))
    w["jpeg"] = _folder(root / "jpeg")
    (w["jpeg"] / "train" / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    w["png"] = _folder(root / "png")
    png = w["png"] / "train" / "b" / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:300])
    w["finished"] = root / "finished"
    assert main(["train", *FAST, f"output.dir={w['finished']}"]) == 0
    w["other"] = root / "other"
    assert main(["train", *FAST, "train.seed=7", f"output.dir={w['other']}"]) == 0
    w["yaml"] = root / "broken.yaml"
    w["yaml"].write_text("train:\n  epochs: [1\n")
    w["sweep_twice"] = root / "twice.yaml"
    w["sweep_twice"].write_text("pairs: [[resnet10t, resnet10t]]\nmethods: [downsample_linear, downsample_linear]\n")
    w["sweep_unknown"] = root / "unknown.yaml"
    w["sweep_unknown"].write_text("pairs: [[resnet10t, resnet10t]]\nmethods: [downsample_bottlenek]\n")
    w["sweep"] = root / "sweep.yaml"
    w["sweep"].write_text("base:\n  train: {epochs: 1}\npairs: [[resnet10t, resnet10t]]\n"
                          "methods: [downsample_linear]\n")
    w["sweep_bad_key"] = root / "bad_key.yaml"
    w["sweep_bad_key"].write_text("base:\n  train: {epocs: 1}\npairs: [[resnet10t, resnet10t]]\n")
    w["foreign"] = root / "foreign"
    w["foreign"].mkdir()
    (w["foreign"] / "thesis.tex").write_text("precious")
    return w


def _train(*extra):
    return ["train", *FAST, *extra]


def _inspect(*extra):
    return ["inspect", "--input-size", "32", "--src", "resnet10t", "--dst", "resnet10t", *extra]


CASES = {
    "unknown model": (lambda w: ["inspect", "--src", "resnet5", "--dst", "resnet18"], "did you mean"),
    "unknown adapter": (lambda w: _inspect("--adapter", "botleneck"), "bottleneck"),
    "unknown resize": (lambda w: _inspect("--resize", "downsampel"), "bilinear"),
    "unknown method": (lambda w: ["sweep", str(w["sweep_unknown"]), "--dry-run"], "downsample_bottleneck"),
    "unknown sub-command": (lambda w: ["trian"], None),
    "gap 3:1": (lambda w: _inspect("--gap", "3:1"), "write it as 1:3"),
    "gap 0:2": (lambda w: _inspect("--gap", "0:2"), "outside 1-4"),
    "gap 1:5": (lambda w: _inspect("--gap", "1:5"), "outside 1-4"),
    "gap a:b": (lambda w: _inspect("--gap", "a:b"), "X:Y"),
    "finetune across architectures": (lambda w: _train("mode=finetune", "model.dst=vit_pico_patch4_32"), "mode=stitch"),
    "vit_block between images": (lambda w: _inspect("--adapter", "vit_block"), "image adapter"),
    "missing data root": (lambda w: _train("data.name=imagefolder", f"data.root={w['root'] / 'nowhere'}",
                                           f"output.dir={w['root'] / 'r1'}"), "does not exist"),
    "empty class folder": (lambda w: _train("data.name=imagefolder", f"data.root={w['empty_class']}",
                                            f"output.dir={w['root'] / 'r2'}"), "holds no images"),
    "train/val class sets differ": (lambda w: _train("data.name=imagefolder", f"data.root={w['mismatch']}",
                                                     f"output.dir={w['root'] / 'r3'}"), "same class folders"),
    "corrupt jpeg": (lambda w: _train("data.name=imagefolder", f"data.root={w['jpeg']}", "optim.batch_size=9",
                                      "train.batch_size=9", f"output.dir={w['root'] / 'r4'}"), "data.skip_corrupt"),
    "truncated png": (lambda w: _train("data.name=imagefolder", f"data.root={w['png']}", "optim.batch_size=9",
                                       "train.batch_size=9", f"output.dir={w['root'] / 'r5'}"), "cut.png"),
    "yaml syntax error": (lambda w: ["train", str(w["yaml"])], "not valid YAML"),
    "unknown model in a run's settings": (lambda w: _train("mode=stitch", "model.src=resnet1800", "model.dst=resnet18",
                                                          "model.gap=1:2"), "model.src: unknown model 'resnet1800'; did you mean: resnet18"),
    "unknown torchvision weights tag": (lambda w: ["stages", "torchvision:resnet50.IMAGENET1K_V9", "--pretrained"],
                                        "use one of its tags: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"),
    "unknown torchvision weights tag in a run's settings": (
        lambda w: ["train", "model.src=torchvision:resnet50.IMAGENET1K_V9", "--print-config"],
        "model.src: torchvision has no weights 'IMAGENET1K_V9'"),
    "a setting the mode cannot honour": (lambda w: _train("mode=scratch", "model.src=resnet10t",
                                                          "model.src_checkpoint=weights.pt"), "use mode=finetune"),
    "unknown config key": (lambda w: _train("optim.weight_decy=0.1"), "did you mean optim.weight_decay"),
    "unknown config key, no close match": (lambda w: _train("optim.zzz=1"), "valid keys under optim: lr,"),
    "negative learning rate": (lambda w: _train("optim.lr=-0.1"), "must be positive"),
    "negative epochs": (lambda w: _train("train.epochs=-1"), "0 or more"),
    "a word for an integer": (lambda w: _train("train.epochs=two"),
                              "train.epochs must be an integer, got 'two' (in the command line)"),
    "a word for a switch": (lambda w: _train("train.channels_last=maybe"), "train.channels_last must be true or false"),
    "a number for a list": (lambda w: _train("data.classes=3"), "data.classes must be a list or null"),
    "effective batch not divisible": (lambda w: _train("optim.batch_size=48", f"output.dir={w['root'] / 'r6'}"),
                                      "not a multiple"),
    "nan loss": (lambda w: _train("optim.lr=1e30", "train.epochs=3", "train.batch_size=16", "optim.batch_size=16",
                                  f"output.dir={w['root'] / 'r7'}"), "NaN or infinite"),
    "resume with a changed config": (lambda w: _train("optim.lr=0.01", f"output.dir={w['finished']}", "--resume"),
                                     "optim.lr"),
    "checkpoint from another stitch": (lambda w: _train(f"output.dir={w['root'] / 'swapped'}", "--resume"),
                                       "another config"),
    "foreign files in output dir": (lambda w: _train(f"output.dir={w['foreign']}"), "did not write"),
    "unknown key in a sweep file's base": (lambda w: ["sweep", str(w["sweep_bad_key"]), "--dry-run"],
                                           "unknown config key 'train.epocs' in the sweep's base"),
    "unknown key on the sweep command line": (
        lambda w: ["sweep", str(w["sweep"]), "optim.lrr=0.1", "--dry-run"],
        "unknown config key 'optim.lrr' in the command line; did you mean optim.lr"),
    "a word for an integer on the sweep command line": (
        lambda w: ["sweep", str(w["sweep"]), "train.epochs=two", "--dry-run"],
        "train.epochs must be an integer, got 'two' (in the command line)"),
    # --list measures no proxy, but the search it previews would stop on this one
    "unknown proxy with --list": (lambda w: ["search", "--models", "resnet10t", "--proxy", "kca", "--list"],
                                  "unknown proxy 'kca'; did you mean: cka"),
    "the search study with a search's options": (
        lambda w: ["search", "--study", "configs/search/fashion_mnist.yaml", "--proxy", "cka", "--train-top", "3"],
        "--proxy, --train-top would be ignored: drop them"),
    "--doc without --study": (lambda w: ["search", "--models", "resnet10t", "--doc", "x.md", "--list"],
                              "goes with --study FILE"),
    "sweep names a method twice": (lambda w: ["sweep", str(w["sweep_twice"]), "--dry-run"], "listed twice"),
    "finished run in output dir": (lambda w: _train(f"output.dir={w['finished']}"), "--overwrite"),
    "nothing to resume": (lambda w: _train(f"output.dir={w['root'] / 'empty_run'}", "--resume"), "nothing to resume"),
    "unsupported timm model": (lambda w: ["stages", "hrnet_w18_small", "--input-size", "64"], "cannot cut"),
    "report of a missing folder": (lambda w: ["report", str(w["root"] / "nowhere")], "does not exist"),
    "eval-model of a head that does not fit the data": (
        lambda w: ["eval-model", "resnet10t", "--data-root", str(w["good"]), "--input-size", "32", "--workers", "0"],
        "evaluate a model trained on this data (--checkpoint PATH)"),  # the option eval-model has
    "eval-model of an image folder without --data-root": (
        lambda w: ["eval-model", "resnet10t", "--input-size", "32"], "imagefolder needs --data-root DIR"),
    "eval of a non-run": (lambda w: ["eval", str(w["good"])], "not a run directory"),
    "a stitch's options for the fine-tuning baseline": (lambda w: _inspect("--finetune", "--adapter", "linear",
                                                                           "--unfreeze-last", "1"),
                                                        "--adapter, --unfreeze-last would be ignored"),
    "unwritable output dir": (lambda w: _train(f"output.dir={w['yaml'] / 'run'}"), "cannot write to output directory"),
}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "/r7/" not in str(p) and p.name != ".lock"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, world, capsys):
    build, message = CASES[case]
    if case == "checkpoint from another stitch":
        swapped = world["root"] / "swapped"
        if not swapped.exists():  # an interrupted run whose checkpoint is another run's
            shutil.copytree(world["finished"], swapped)
            (swapped / "result.json").unlink()
            shutil.copy(world["other"] / "checkpoints" / "last.pt", swapped / "checkpoints" / "last.pt")
    before = _snapshot(world["root"])
    if message is None:  # an unknown sub-command: argparse's own usage error
        with pytest.raises(SystemExit) as exit_info:
            main(build(world))
        assert exit_info.value.code == 2
        return
    code = main(build(world))
    err = capsys.readouterr().err
    assert code != 0, err
    assert message in err, err
    errors = [line for line in err.splitlines() if line.startswith("stitchkit: error:")]
    assert "Traceback" not in err and len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    after = _snapshot(world["root"])
    assert {k: after.get(k) for k in before} == before  # nothing written earlier was deleted or overwritten


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


def test_debug_shows_a_traceback(world):
    from stitchkit.errors import StitchkitError

    with pytest.raises(StitchkitError):
        main(["--debug", *_train("optim.lr=-1")])


def test_grayscale_and_cmyk_images_are_accepted(world, capsys, tmp_path):
    root = _folder(tmp_path / "modes")
    Image.new("L", (36, 36), 90).save(root / "train" / "a" / "gray.png")
    Image.new("CMYK", (36, 36), (10, 200, 30, 0)).save(root / "train" / "b" / "cmyk.jpg")
    assert main(_train("data.name=imagefolder", f"data.root={root}", "optim.batch_size=10", "train.batch_size=10",
                       f"output.dir={tmp_path / 'run'}")) == 0


def test_disk_full_at_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch, capsys):
    import errno
    import os

    import torch

    from stitchkit import files as files_module

    writes = {"n": 0}
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("last.pt"):
            writes["n"] += 1
            if writes["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files_module.os, "replace", failing_replace)
    run = tmp_path / "run"
    code = main(_train("train.epochs=3", "train.batch_size=16", "optim.batch_size=16", "train.checkpoint_every=1",
                       f"output.dir={run}"))
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "--resume" in err
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["counters"]["step"] == 2  # the checkpoint before the failed write, whole
    monkeypatch.setattr(files_module.os, "replace", real_replace)
    assert main(_train("train.epochs=3", "train.batch_size=16", "optim.batch_size=16", "train.checkpoint_every=1",
                       f"output.dir={run}", "--resume")) == 0


@pytest.mark.parametrize("offline", ["unreachable", "HF_HUB_OFFLINE"])
def test_missing_pretrained_weights_fail_in_one_line_before_any_data_is_read(tmp_path, monkeypatch, capsys, offline):
    """The default model.pretrained=true on a machine without the weights: one line naming both fixes, no folder
    written, no Hub retries (the host is asked once, or not at all when HF_HUB_OFFLINE is set)."""
    import huggingface_hub

    from stitchkit.zoo import weights

    asked = []
    monkeypatch.setattr(weights, "_reachable", lambda host, timeout=3.0: asked.append(host) or False)
    # The suite runs with HF_HUB_OFFLINE=1 (conftest); the other case is a machine that simply has no network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline == "HF_HUB_OFFLINE")
    run = tmp_path / "run"
    for name in ("resnet18.a1_in1k", "torchvision:resnet18"):
        code = main(["train", "mode=stitch", f"model.src={name}", "model.gap=1:2", "model.num_classes=10",
                     "data.name=synthetic", f"output.dir={run}", "train.workers=0"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("stitchkit: error:") == 1, err
        assert "model.pretrained=false" in err and "model.src_checkpoint=PATH" in err and "Traceback" not in err
        assert not run.exists()
    expected = [] if offline == "HF_HUB_OFFLINE" else ["huggingface.co"]
    assert asked == expected + ["download.pytorch.org"]
    asked.clear()
    # eval-model has options of its own, and its message names them.
    for name in ("resnet18.a1_in1k", "torchvision:resnet18"):
        code = main(["eval-model", name, "--data", "synthetic", "--pretrained", "--out", str(run)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("stitchkit: error:") == 1, err
        assert "leave out --pretrained" in err and "--checkpoint PATH" in err and "model." not in err, err
        assert not run.exists()
    assert asked == expected + ["download.pytorch.org"]
    # inspect and stages show what does not depend on the weights: the fix is to leave the option out.
    for argv in (["inspect", "--src", "resnet18.a1_in1k", "--dst", "torchvision:resnet18", "--pretrained"],
                 ["stages", "torchvision:swin_t", "--pretrained"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("stitchkit: error:") == 1, err
        assert "leave out --pretrained: the cut" in err and "model." not in err, err
    # Scratch training never needs them.
    assert main(["train", "mode=scratch", "model.src=resnet10t", "data.name=synthetic", "data.input_size=32",
                 "data.synthetic_train_size=32", "data.synthetic_val_size=16", "train.batch_size=16",
                 "optim.batch_size=16", "train.epochs=1", "train.workers=0", f"output.dir={tmp_path / 'scratch'}"]) == 0


@pytest.mark.parametrize("options, message", [
    (["--device", "foo"], "argument --device: unknown device 'foo'; use cpu, cuda or cuda:N"),
    (["--device", "cuda:7"], "argument --device: cuda:7:"),  # no such CUDA device on any machine the tests run on
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),  # was taken as the default, 5
    (["--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
    (["--input-size", "x"], "argument --input-size: expected a whole number, got 'x'"),
])
def test_bench_refuses_devices_and_sizes_it_cannot_use_in_one_line(options, message, capsys):
    """A device the machine does not have was a traceback at the first tensor; --batch-size 0 measured "0.0 images/s"
    and --repeats 0 silently meant 5."""
    import torch

    if options[1] == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(SystemExit) as ended:
        main(["bench", "--src", "resnet10t", "--input-size", "32", *options])
    err = capsys.readouterr().err
    assert ended.value.code == 2 and message in err and "Traceback" not in err, err
