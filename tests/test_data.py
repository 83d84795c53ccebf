"""Image-folder data: the happy path and every bad input the issue lists, each with a clear message."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stitchkit.errors import StitchkitError
from stitchkit.training import load_config, train
from stitchkit.training.data import EpochSampler, build_splits, raw_sources
from stitchkit.zoo.metadata import Preprocessing, preprocessing

PREP = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 1.0)


def make_folder(root, classes=("cat", "dog", "fox"), per_class=6, size=40, split_classes=None):
    for split in ("train", "val"):
        for label, name in enumerate(split_classes.get(split, classes) if split_classes else classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                ramp = np.add.outer(np.arange(size), 3 * np.arange(size))  # structure, so crops differ
                pixels = np.repeat(((label * 80 + i + ramp) % 256)[..., None], 3, axis=2).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _data(root, *extra):
    return load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.input_size=32", *extra]).data


def test_imagefolder_splits(tmp_path):
    splits = build_splits(_data(make_folder(tmp_path)), PREP, seed=0)
    assert splits.classes == ["cat", "dog", "fox"] and len(splits.train) == 18 and len(splits.val) == 18
    image, label = splits.val[(0, 0)]
    assert image.shape == (3, 32, 32) and label == 0


def test_grayscale_palette_and_cmyk_images_become_rgb(tmp_path):
    root = make_folder(tmp_path)
    Image.new("L", (40, 40), 128).save(root / "train" / "cat" / "gray.png")
    Image.new("CMYK", (40, 40), (0, 255, 0, 0)).save(root / "train" / "cat" / "cmyk.jpg")
    Image.new("P", (40, 40), 3).save(root / "train" / "cat" / "palette.png")
    splits = build_splits(_data(root, "data.random_resized_crop=false"), PREP, seed=0)
    names = [p for p, _ in splits.train.source.samples]
    for suffix in ("gray.png", "cmyk.jpg", "palette.png"):
        position = splits.train.indices.index(next(i for i, p in enumerate(names) if p.endswith(suffix)))
        assert splits.train[(position, 0)][0].shape == (3, 32, 32)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_corrupt_images_are_named_or_skipped(tmp_path, kind, capsys):
    root = make_folder(tmp_path)
    bad = root / "train" / "dog" / f"broken.{'jpg' if kind == 'jpeg' else 'png'}"
    if kind == "jpeg":
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    else:  # a real PNG cut in half
        Image.fromarray(np.random.randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    args = ["mode=scratch", "model.src=resnet10t", "data.name=imagefolder", f"data.root={root}", "data.input_size=32",
            "train.epochs=1", "optim.batch_size=19", "train.batch_size=19", "train.workers=0",
            f"output.dir={tmp_path / 'run'}"]
    with pytest.raises(StitchkitError, match="cannot decode image .*broken"):
        train(load_config(None, args))
    capsys.readouterr()
    result = train(load_config(None, [*args, "data.skip_corrupt=true"]), overwrite=True)
    assert result["skipped_images"] == 1 and result["images_seen"] == 18
    named = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stitchkit: skipped:")]
    assert named and all(str(bad) in line and "skip_corrupt" not in line for line in named), named


def test_corrupt_image_message_survives_a_worker_process(tmp_path):
    root = make_folder(tmp_path)
    (root / "train" / "dog" / "broken.jpg").write_bytes(b"garbage")
    args = ["mode=scratch", "model.src=resnet10t", "data.name=imagefolder", f"data.root={root}", "data.input_size=32",
            "optim.batch_size=19", "train.batch_size=19", "train.workers=1", f"output.dir={tmp_path / 'run'}"]
    with pytest.raises(StitchkitError) as error:
        train(load_config(None, args))
    broken = str(root / "train" / "dog" / "broken.jpg")
    assert str(error.value) == (f"cannot decode image {broken!r} (not an image format PIL can read); remove or "
                                "replace it, or set data.skip_corrupt=true to skip and count such files")


def test_missing_root_empty_class_and_mismatched_classes(tmp_path):
    # A mistyped data.root is named as the setting that is wrong, not as its missing train/ subfolder.
    with pytest.raises(StitchkitError, match=f"^data.root '{tmp_path / 'nowhere'}' does not exist; correct data.root, "
                                             "a folder with train/<class>/ and val/<class>/$"):
        build_splits(_data(tmp_path / "nowhere"), PREP, 0)
    with pytest.raises(StitchkitError, match=f"^data.root '{tmp_path / 'nowhere'}' does not exist; .* with "
                                             "val/<class>/$"):  # evaluating: val/ alone is needed
        raw_sources(_data(tmp_path / "nowhere"), ("val",))
    with pytest.raises(StitchkitError, match="needs data.root"):
        build_splits(load_config(None, ["data.name=imagefolder"]).data, PREP, 0)
    root = make_folder(tmp_path / "a")
    (root / "train" / "empty").mkdir()
    (root / "val" / "empty").mkdir()
    with pytest.raises(StitchkitError, match="holds no images"):
        build_splits(_data(root), PREP, 0)
    root = make_folder(tmp_path / "b", split_classes={"train": ("cat", "dog"), "val": ("cat", "eel")})
    with pytest.raises(StitchkitError, match="only in train: \\['dog'\\], only in val: \\['eel'\\]"):
        build_splits(_data(root), PREP, 0)


def test_evaluating_a_model_needs_only_the_val_folder_and_labels_it_as_the_whole_folder_does(tmp_path, capsys):
    """eval-model reads val/ alone: a folder without train/ evaluates, with the class list and labels (val's class
    folders, sorted) of the whole folder, so the numbers are the same."""
    import json
    import shutil

    import stitchkit
    from stitchkit.cli import main

    whole = make_folder(tmp_path / "whole", classes=("fox", "cat", "dog"))  # made out of sorted order
    val_only = tmp_path / "val_only"
    shutil.copytree(whole / "val", val_only / "val")
    full, alone = build_splits(_data(whole), PREP, 0), build_splits(_data(val_only), PREP, 0, need_train=False)
    assert alone.train is None and alone.classes == full.classes == ["cat", "dog", "fox"]
    assert [(Path(p).relative_to(val_only), label) for p, label in alone.val.source.samples] == \
           [(Path(p).relative_to(whole), label) for p, label in full.val.source.samples]
    with pytest.raises(StitchkitError, match="train' does not exist"):  # a hold-out is carved from train
        build_splits(_data(val_only, "data.holdout_fraction=0.5"), PREP, 0, need_train=False)
    torch.manual_seed(0)
    torch.save(stitchkit.create_model("resnet10t", num_classes=3).state_dict(), tmp_path / "model.pt")
    records = []
    for root in (whole, val_only):
        assert main(["eval-model", "resnet10t", "--data-root", str(root), "--input-size", "32", "--workers", "0",
                     "--batch-size", "6", "--checkpoint", str(tmp_path / "model.pt"), "--device", "cpu"]) == 0
        records.append(json.loads(capsys.readouterr().out))
    assert records[0]["images"] == 18 and {k: records[0][k] for k in ("top1", "top5", "loss")} == \
           {k: records[1][k] for k in ("top1", "top5", "loss")}
    folder = stitchkit.save_pretrained(stitchkit.create_probe("resnet10t", num_classes=3, input_size=32,
                                                              checkpoint_path=tmp_path / "model.pt"), tmp_path / "probe")
    for root in (whole, val_only):  # stitchkit eval of a model folder on other data: val/ alone too
        assert main(["eval", str(folder), "data.name=imagefolder", f"data.root={root}", "data.input_size=32",
                     "--workers", "0"]) == 0
        records.append(json.loads(capsys.readouterr().out))
    assert {k: records[2][k] for k in ("top1", "top5", "loss")} == {k: records[3][k] for k in ("top1", "top5", "loss")}


def test_fashion_mnist_is_read_from_data_root_alone_when_it_is_set(tmp_path, monkeypatch):
    """A data.root that is mistyped or empty fails naming the path, instead of quietly reading the installed copy (or
    downloading); unset, the default places are searched as before."""
    import torchvision

    from stitchkit.cli import main
    from stitchkit.training.data import FASHION_MNIST_FILES, find_fashion_mnist

    asked = []

    def no_network(root, train, download):  # torchvision's download, failing as it does offline
        asked.append(root)
        Path(root, "FashionMNIST", "raw").mkdir(parents=True)  # torchvision makes its folders first
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    typo, empty = tmp_path / "fashon-mnist", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StitchkitError, match=f"data.root '{typo}' does not exist; correct data.root, or leave it"):
        find_fashion_mnist(str(typo))
    assert asked == []  # nothing is downloaded into a path that does not exist (a typo)
    with pytest.raises(StitchkitError, match=f"data.root '{empty}' holds no Fashion-MNIST files .* could not be "
                                             "downloaded there"):
        find_fashion_mnist(str(empty))
    assert len(asked) == 1  # an existing empty folder: downloaded into, as torchvision's download=True does ...
    assert list(empty.iterdir()) == []  # ... but a failed download leaves no folders in it
    for folder in (tmp_path / "flat", tmp_path / "torchvision" / "FashionMNIST" / "raw"):
        folder.mkdir(parents=True)
        for pair in FASHION_MNIST_FILES.values():
            for name in pair:
                (folder / name).write_bytes(b"")
    assert find_fashion_mnist(str(tmp_path / "flat")) == tmp_path / "flat"
    assert find_fashion_mnist(str(tmp_path / "torchvision")) == tmp_path / "torchvision" / "FashionMNIST" / "raw"
    run = tmp_path / "run"
    assert main(["train", "mode=scratch", "model.src=resnet10t", "data.name=fashion_mnist", f"data.root={typo}",
                 "data.input_size=32", "train.workers=0", f"output.dir={run}"]) == 2
    assert not run.exists()


def _write_idx(path, array):
    """An IDX file as Fashion-MNIST's: magic (0, 0, 0x08 = unsigned bytes, dimensions), sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_extracted_by_torchvision_is_read_without_a_download(tmp_path, monkeypatch):
    """torchvision's download extracts the four files next to the .gz ones, and FashionMNIST(root) reads the
    extracted ones alone: such a folder is read as it is, nothing downloaded."""
    import gzip

    import torchvision

    from stitchkit.training.data import raw_sources
    from stitchkit.training.settings import DataConfig

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda *args, **kwargs: pytest.fail("downloaded"))
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {split: rng.integers(0, 256, (n, 28, 28)) for split, n in (("train", 5), ("t10k", 3))}
    labels = {split: np.arange(len(images[split])) % 10 for split in images}
    for split in images:
        _write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    # One file gzipped, as a partly extracted folder has it: each file is found in either form.
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress((raw / "t10k-labels-idx1-ubyte").read_bytes()))
    (raw / "t10k-labels-idx1-ubyte").unlink()
    sources = raw_sources(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    for split, name in (("train", "train"), ("val", "t10k")):
        assert np.array_equal(sources[split].images, images[name]), split
        assert np.array_equal(sources[split].labels, labels[name]), split


def test_class_count_must_match_the_head(tmp_path):
    root = make_folder(tmp_path)
    base = ["data.name=imagefolder", f"data.root={root}", "data.input_size=32", "model.src=resnet10t",
            "model.pretrained=false", "optim.batch_size=6", "train.batch_size=6", "train.workers=0", "train.epochs=1"]
    with pytest.raises(StitchkitError, match="model.num_classes=3"):
        train(load_config(None, [*base, "mode=finetune", f"output.dir={tmp_path / 'ft'}"]))
    result = train(load_config(None, [*base, "mode=finetune", "model.num_classes=3", f"output.dir={tmp_path / 'ft'}"]))
    assert result["classes"] == 3
    with pytest.raises(StitchkitError, match="dst_checkpoint"):
        train(load_config(None, [*base, "mode=stitch", f"output.dir={tmp_path / 'st'}"]))


def test_sampler_shards_and_resumes():
    full = list(EpochSampler(10, seed=3, shuffle=True))
    assert sorted(i for i, _ in full) == list(range(10))
    assert full != list(EpochSampler(10, seed=4, shuffle=True))  # seeds change the data order
    ranks = [list(EpochSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert sum(len(r) for r in ranks) == 12  # padded to a multiple of the world size, like DistributedSampler
    resumed = EpochSampler(10, seed=3)
    resumed.set_epoch(0, start=4)
    assert list(resumed) == full[4:]
    evaluation = [list(EpochSampler(10, rank=r, world_size=3, shuffle=False)) for r in range(3)]
    assert sorted(i for shard in evaluation for i, _ in shard) == list(range(10))


def test_preprocessing_comes_from_the_source_model():
    vit = preprocessing("vit_small_patch16_224.augreg_in1k")
    assert vit.mean == (0.5, 0.5, 0.5) and vit.interpolation == "bicubic" and vit.crop_pct == 0.9
    resnet = preprocessing("resnet50.a1_in1k")
    assert resnet.mean == pytest.approx((0.485, 0.456, 0.406)) and resnet.crop_pct == 0.95
    swin = preprocessing("torchvision:swin_t")
    assert swin.interpolation == "bicubic" and swin.crop_pct == pytest.approx(224 / 232)


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    splits = build_splits(_data(make_folder(tmp_path)), PREP, seed=0)
    a, b = splits.train[(2, 1)][0], splits.train[(2, 1)][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, splits.train[(2, 2)][0])


def test_device_augmentation_is_seeded_per_image_and_matches_the_cpu_pipeline_without_randomness(tmp_path):
    from torch.utils.data import DataLoader

    from stitchkit.training.data import collate

    root = make_folder(tmp_path)
    splits = build_splits(_data(root, "data.augment_on=device"), PREP, seed=0)
    (crop, row), label = splits.train[(2, 1)]
    assert crop.dtype == torch.uint8 and crop.shape == (3, 32, 32) and torch.equal(splits.train[(2, 1)][0][1], row)
    assert row.shape == (3,) and row.dtype == torch.long
    other_epoch = torch.stack([splits.train[(i, 2)][0][1] for i in range(12)])
    loader = DataLoader(splits.train, batch_size=6, sampler=[(i, 1) for i in range(12)], collate_fn=collate)
    batches = list(loader)
    assert not torch.equal(torch.cat([b[3] for b in batches]), other_epoch)  # another epoch, other draws
    images, labels, skipped, params = batches[0]
    augment = splits.device_augment
    out = augment(images, params)
    assert out.dtype == torch.float32 and out.shape == (6, 3, 32, 32) and skipped == 0
    assert torch.equal(out, augment(images, params))  # a function of the parameters alone
    assert torch.equal(out[2], augment(images[2:3], params[2:3])[0])  # each image alone: the same, wherever it sits
    assert not torch.equal(out, augment(images, params.roll(1, 0)))
    # With the random steps off, the device path equals the CPU path exactly (same crop, same normalisation).
    plain = ["data.hflip=false", "data.auto_augment=false", "data.random_resized_crop=false"]
    cpu = build_splits(_data(root, *plain), PREP, seed=0)
    device = build_splits(_data(root, *plain, "data.augment_on=device"), PREP, seed=0)
    (crop, row), _ = device.train[(3, 0)]
    assert torch.allclose(device.device_augment(crop[None], row[None])[0], cpu.train[(3, 0)][0], atol=1e-6)
    with pytest.raises(StitchkitError, match="data.augment_on"):
        _data(root, "data.augment_on=gpu")


def test_training_with_device_augmentation(tmp_path):
    result = train(load_config(None, [
        "mode=scratch", "model.src=resnet10t", "data.name=imagefolder", f"data.root={make_folder(tmp_path / 'd')}",
        "data.input_size=32", "data.augment_on=device", "optim.batch_size=6", "train.batch_size=6", "train.epochs=1",
        "train.workers=0", "train.threads=1", f"output.dir={tmp_path / 'run'}", "model.pretrained=false"]))
    assert result["status"] == "finished" and result["images_seen"] == 18


def test_dali_loader_settings_are_checked(tmp_path, monkeypatch):
    import sys

    for extra, message in [(["data.name=synthetic"], "data.name=imagefolder"),
                           (["data.skip_corrupt=true"], "skip_corrupt"),
                           (["data.augment_on=device"], "augment_on"), (["data.loader=nvdali"], "data.loader")]:
        with pytest.raises(StitchkitError, match=message):
            load_config(None, [f"data.root={tmp_path}", "data.name=imagefolder", "data.loader=dali", *extra])
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if DALI were not installed
    with pytest.raises(StitchkitError, match="pip install nvidia-dali"):
        train(load_config(None, ["mode=scratch", "model.src=resnet10t", "data.name=imagefolder",
                                 f"data.root={make_folder(tmp_path / 'd')}", "data.input_size=32", "data.loader=dali",
                                 "model.pretrained=false", "optim.batch_size=6", "train.batch_size=6",
                                 f"output.dir={tmp_path / 'run'}"]))


def test_dali_loader_reads_every_training_image_once_per_epoch(tmp_path):
    pytest.importorskip("nvidia.dali")
    from stitchkit.training.dali import DaliTrainLoader

    root = make_folder(tmp_path, per_class=5)
    config = load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.input_size=32",
                                "data.loader=dali", "data.holdout_fraction=0.2"])
    splits = build_splits(config.data, PREP, seed=0)
    sampler = EpochSampler(len(splits.train), seed=0)
    loader = DaliTrainLoader(splits.train, config.data, PREP, sampler, 4, 1, torch.device("cpu"), 0, 0, 1)
    expected = sorted(splits.train.source.samples[i][1] for i in splits.train.indices)  # 12 after the hold-out
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(splits.train) // 4 == 3
        images, labels, skipped, seeds = batches[0]
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.long
        assert skipped == 0 and seeds is None
        orders.append([label for _, labels, _, _ in batches for label in labels.tolist()])
        assert sorted(orders[-1]) == expected  # each training image once per epoch, with its folder's class
    assert orders[0] != orders[1]  # reshuffled after the epoch


def test_training_with_the_dali_loader(tmp_path):
    pytest.importorskip("nvidia.dali")
    result = train(load_config(None, [
        "mode=scratch", "model.src=resnet10t", "data.name=imagefolder", f"data.root={make_folder(tmp_path / 'd')}",
        "data.input_size=32", "data.loader=dali", "optim.batch_size=6", "train.batch_size=6", "train.epochs=2",
        "train.workers=1", "train.threads=1", f"output.dir={tmp_path / 'run'}", "model.pretrained=false"]))
    assert result["status"] == "finished" and result["images_seen"] == 36 and result["steps"] == 6


def test_a_subset_of_classes_is_a_task_of_its_own(tmp_path):
    from stitchkit.errors import StitchkitError
    from stitchkit.training import load_config, train
    from stitchkit.training.data import raw_sources

    data = load_config(None, ["data.name=synthetic", "data.synthetic_train_size=100", "data.synthetic_val_size=40",
                              "data.classes=[3, 1]", "data.input_size=32"]).data
    sources = raw_sources(data)
    train_source = sources["train"]
    assert train_source.classes == ["class_3", "class_1"] and len(train_source) == 20  # 10 of each in 100 images
    assert {train_source.load(i)[1] for i in range(len(train_source))} == {0, 1}
    assert all(train_source.load(i)[1] == train_source.label(i) for i in range(4))
    whole = raw_sources(load_config(None, ["data.name=synthetic", "data.synthetic_train_size=100",
                                           "data.input_size=32"]).data)["train"]
    assert train_source.load(0)[1] == {3: 0, 1: 1}[whole.label(train_source.indices[0])]
    for bad in ("[3, 3]", "[10]", "[]"):
        with pytest.raises(StitchkitError, match="data.classes must be distinct class indices 0..9"):
            raw_sources(load_config(None, ["data.name=synthetic", f"data.classes={bad}"]).data)
    result = train(load_config(None, ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=160",
                                      "data.synthetic_val_size=40", "data.classes=[0, 5]", "mode=scratch",
                                      "model.src=resnet10t", "model.pretrained=false", "train.epochs=1",
                                      "optim.batch_size=16", "train.batch_size=16", "train.workers=0",
                                      f"output.dir={tmp_path / 'run'}"]))
    assert result["classes"] == 2 and result["class_names"] == ["class_0", "class_5"]


def test_loader_hygiene_prefetch_within_memory_and_evaluation_on_every_worker():
    from torch.utils.data import DataLoader

    from stitchkit.training.data import collate
    from stitchkit.training.stream import eval_batch_size, prefetch_factor

    assert prefetch_factor(1000, 4) == 4  # small batches: the usual depth
    assert prefetch_factor(10**15, 14) == 2  # batches too big for memory: the least that still overlaps
    assert eval_batch_size(2048, 512, 14) == 147 and eval_batch_size(2048, 128, 14) == 128
    assert eval_batch_size(2048, 512, 0) == 512
    # In a worker the batch is stacked straight into shared memory (no second copy when it is sent).
    items = [(torch.full((3, 4, 4), float(i)), i) for i in range(8)]
    images, labels, skipped, params = next(iter(DataLoader(items, batch_size=8, num_workers=1, collate_fn=collate)))
    assert images.is_shared() and torch.equal(images[5], items[5][0]) and labels.tolist() == list(range(8))
    assert not collate(items)[0].is_shared()


def test_default_workers_fit_the_cpus_this_process_may_use(tmp_path, monkeypatch, recwarn):
    """train.workers: null (the default) takes 4 workers, fewer where the process may run on fewer CPUs (shared
    among torchrun's processes on the machine), at least one; a given number is kept. On a 2-core machine a default
    run no longer spawns more workers than CPUs (torch warned twice: training and evaluation)."""
    import os

    from stitchkit.training.runtime import loader_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cpus, processes, expected in ((2, 1, 2), (16, 1, 4), (16, 8, 2), (16, 16, 1), (1, 2, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)), raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
        assert loader_workers(None) == expected, (cpus, processes)
        assert loader_workers(0) == 0 and loader_workers(7) == 7
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    config = load_config(None, ["mode=scratch", "model.src=resnet10t", "model.pretrained=false", "data.name=synthetic",
                                "data.input_size=32", "data.synthetic_train_size=32", "data.synthetic_val_size=16",
                                "optim.batch_size=16", "train.batch_size=16", "train.epochs=1", "train.threads=1",
                                f"output.dir={tmp_path / 'run'}"])
    assert config.train.workers is None
    assert train(config)["status"] == "finished"
    assert not [w for w in recwarn if "worker processes in total" in str(w.message)]
