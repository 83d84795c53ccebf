"""Edges of the data path found by an audit of 0.13 (each test failed before its fix): a PNG that PIL rejects with
SyntaxError, a timm model's weights tag and its preprocessing, evaluating a data.loader=gpu run again, the fix named
for an empty val class folder, symlinked subfolders of a class, skipped validation images, and synthetic validation
images past an ImageNet-sized training set."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from stitchkit.errors import StitchkitError
from stitchkit.training import load_config, train
from stitchkit.training.data import CorruptImageError, ImageFolderSource, build_splits, raw_sources
from stitchkit.zoo.metadata import preprocessing

PREP = preprocessing("resnet18")


def _photo(label, seed=0, size=(60, 44)):
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 120, size[1]), np.linspace(0, 100, size[0]))[..., None]
    coarse = np.asarray(Image.fromarray(rng.uniform(0, 135, (6, 8, 3)).astype(np.uint8)).resize(size))
    return np.clip(ramp + coarse + 40 * label, 0, 255).astype(np.uint8)


def _folder(root, classes=("cat", "dog"), per_class=4):
    for split in ("train", "val"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(_photo(label, seed=i)).save(folder / f"{i}.jpg", quality=90)
    return root


def _data(root, *extra):
    return load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.input_size=32", *extra]).data


def _run(root, out, *extra):
    return ["mode=scratch", "model.src=resnet10t", "model.pretrained=false", "data.name=imagefolder",
            f"data.root={root}", "data.input_size=32", "optim.batch_size=4", "train.batch_size=4", "train.epochs=1",
            "train.workers=0", "train.threads=1", f"output.dir={out}", *extra]


# --- 1. A PNG with a garbled chunk type escapes data.skip_corrupt (SyntaxError) -----------------------------------

def _png_with_broken_second_idat(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(path)
    payload = bytearray(path.read_bytes())
    second = payload.find(b"IDAT", payload.find(b"IDAT") + 4)
    assert second > 0  # Pillow writes IDAT chunks of 64 KiB: a 300 px noise image has several
    payload[second] ^= 0x55  # one flipped byte: "IDAT" -> "\x1cDAT"
    path.write_bytes(bytes(payload))


def test_png_with_a_broken_chunk_is_named_and_skipped_in_both_loaders(tmp_path, capsys):
    from stitchkit.training.gpu_loader import EncodedImages

    root = _folder(tmp_path)
    bad = root / "train" / "dog" / "big.png"
    _png_with_broken_second_idat(bad)
    data = _data(root, "data.skip_corrupt=true")
    split = build_splits(data, PREP, seed=0).train
    position = split.indices.index([p for p, _ in split.source.samples].index(str(bad)))
    # Pillow raises SyntaxError("broken PNG file (chunk ...)") while decoding: not caught, so the run stops with a
    # traceback (exit code 1) although data.skip_corrupt=true asks to skip and count such files.
    assert split[(position, 0)] is None
    assert EncodedImages(split, data, train=True)[(position, 0)] is None
    strict = build_splits(_data(root), PREP, seed=0).train
    with pytest.raises(CorruptImageError, match="big.png"):
        strict[(position, 0)]


# --- 2. preprocessing() drops the timm weights tag ----------------------------------------------------------------

def test_preprocessing_follows_the_weights_tag_of_a_timm_model():
    # vit_small_patch16_224.dino was trained with ImageNet mean/std; the default tag (augreg) with 0.5/0.5.
    dino = preprocessing("vit_small_patch16_224.dino")
    assert dino.mean == pytest.approx((0.485, 0.456, 0.406)) and dino.std == pytest.approx((0.229, 0.224, 0.225))
    # resnet50.tv_in1k: torchvision's recipe, bilinear with crop 0.875 (the default tag a1_in1k: bicubic, 0.95).
    tv = preprocessing("resnet50.tv_in1k")
    assert (tv.interpolation, tv.crop_pct) == ("bilinear", pytest.approx(0.875))


# --- 3. Re-evaluating a data.loader=gpu run does not give the run's numbers ---------------------------------------

def test_reevaluating_a_gpu_loader_run_gives_the_numbers_in_its_result(tmp_path):
    from stitchkit.training.evaluation import evaluate_run

    root = _folder(tmp_path / "d", per_class=8)
    result = train(load_config(None, _run(root, tmp_path / "run", "data.loader=gpu")))
    again = evaluate_run(tmp_path / "run", workers=0)
    # evaluation.py: "Evaluate a trained run again ... in the same data pipeline as training"; it evaluates through
    # the default (PIL) loader whatever data.loader the run trained and was evaluated with.
    assert (again["top1"], again["loss"]) == (result["top1"], result["loss"])


# --- 4. An empty val class folder: the advised fix ("remove the folder") is refused next --------------------------

def test_the_fix_named_for_an_empty_val_class_folder_works(tmp_path):
    """Removing only the empty val folder, as the message said before, was refused next (the splits' classes
    differ): the message names the class to remove from every split, and doing so works."""
    root = _folder(tmp_path, classes=("cat", "dog", "fox"))
    for image in (root / "val" / "fox").iterdir():
        image.unlink()
    with pytest.raises(StitchkitError) as first:
        build_splits(_data(root), PREP, 0)
    assert "remove the class 'fox' from every split" in str(first.value)
    shutil.rmtree(root / "val" / "fox")
    shutil.rmtree(root / "train" / "fox")
    assert build_splits(_data(root), PREP, 0).classes == ["cat", "dog"]


# --- 5. Symlinked subfolders inside a class folder are silently ignored -------------------------------------------

def test_images_behind_a_symlinked_subfolder_of_a_class_are_read(tmp_path):
    root = _folder(tmp_path / "d")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for i in range(3):
        Image.fromarray(_photo(0, seed=10 + i)).save(elsewhere / f"x{i}.jpg")
    os.symlink(elsewhere, root / "train" / "cat" / "more")  # e.g. merging a fine-grained class into this one
    os.symlink(root / "train" / "cat", root / "train" / "cat" / "loop")  # a link back up: read once, no loop
    source = ImageFolderSource(root / "train")
    # Real subfolders were read (rglob) and so were symlinked class folders, but not a symlinked subfolder (pathlib's
    # "**" does not follow links), where torchvision's ImageFolder (os.walk(followlinks=True)) reads all 7.
    assert sum(1 for _, label in source.samples if label == 0) == 7


# --- 6. Skipped validation images are not counted in result.json --------------------------------------------------

def test_skipped_validation_images_are_counted(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "val" / "dog" / "1.jpg").write_bytes(b"not an image")
    (root / "train" / "cat" / "1.jpg").write_bytes(b"not an image")
    result = train(load_config(None, _run(root, tmp_path / "run", "data.skip_corrupt=true", "optim.batch_size=7",
                                          "train.batch_size=7")))
    # Two files were named and skipped; result.json's skipped_images counts the training one only and no other
    # entry counts the validation one.
    assert (result["skipped_images"], result["eval_skipped_images"]) == (1, 1)
    assert result["eval_images"] == 7


# --- 7. Synthetic validation images copy training images beyond 10**6 training images -----------------------------

def test_synthetic_val_images_are_never_training_images():
    data = load_config(None, ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=1281167",
                              "data.synthetic_val_size=50000", "data.synthetic_classes=1000"]).data
    sources = raw_sources(data)
    train_source, val_source = sources["train"], sources["val"]
    copies = [i for i in range(20) if np.array_equal(val_source.pixels(i), train_source.pixels(10**6 + i))
              and val_source.label(i) == train_source.label(10**6 + i)]
    assert copies == []
