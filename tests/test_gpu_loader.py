"""data.loader=gpu on the CPU: the same crops and augmentation draws as the default loader, decoding equal, resizing
within one grey level (bicubic: but at a few pixels of sharp detail, where PIL clips its first pass); corrupt files
named or skipped; training end to end, resumed exactly."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from stitchkit.errors import StitchkitError
from stitchkit.training import RunInterrupted, load_config, train
from stitchkit.training.data import build_splits, collate, EpochSampler
from stitchkit.training.gpu_loader import device_loader
from stitchkit.zoo.metadata import preprocessing

PREP = preprocessing("resnet18")


def jpeg_folder(root, classes=("cat", "dog"), per_class=8, size=(60, 44)):
    """Photograph-like JPEGs (smooth ramps and coarse noise), one PNG among them (decoded by the worker)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                ramp = np.add.outer(np.linspace(0, 120, size[1]), np.linspace(0, 100, size[0]))[..., None]
                coarse = np.asarray(Image.fromarray(rng.uniform(0, 135, (6, 8, 3)).astype(np.uint8)).resize(size))
                pixels = np.clip(ramp + coarse + 40 * label, 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                image.save(folder / f"{i}.png") if i == 0 else image.save(folder / f"{i}.jpg", quality=90)
    return root


def noise_folder(root, classes=("cat", "dog"), per_class=6):
    """High-frequency JPEGs: uniform noise of 30 to 90 pixels a side (every crop resamples sharp detail)."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                height, width = rng.integers(30, 91, 2)
                Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.jpg",
                                                                                               quality=90)
    return root


def _data(root, *extra):
    return load_config(None, ["data.name=imagefolder", f"data.root={root}", "data.input_size=32", *extra]).data


def _batches(root, train, *extra, loader="torch", prep=PREP):
    data = _data(root, *extra, "data.augment_on=device")
    splits = build_splits(data, prep, seed=3)
    split = splits.train if train else splits.val
    sampler = EpochSampler(len(split), 3, shuffle=train)
    sampler.set_epoch(1)
    if loader == "gpu":
        return list(device_loader(split, data, prep, sampler, 4, 0, torch.device("cpu"), train, None))
    out = []
    for images, labels, skipped, params in DataLoader(split, batch_size=4, sampler=sampler, collate_fn=collate):
        out.append((splits.device_augment(images, params) if train else images, labels, skipped, None))
    return out


@pytest.mark.parametrize("extra", [["data.auto_augment=false"], []])
def test_training_batches_match_the_default_loader(tmp_path, extra):
    root = jpeg_folder(tmp_path)
    reference, gpu = _batches(root, True, *extra), _batches(root, True, *extra, loader="gpu")
    assert len(reference) == len(gpu) == 4
    level = 1 / 255 / min(PREP.std) + 1e-5  # one grey level, normalised
    for (a, la, _, _), (b, lb, _, _) in zip(reference, gpu):
        assert torch.equal(la, lb) and a.shape == b.shape == (4, 3, 32, 32)
    difference = torch.cat([(a - b).abs().flatten() for (a, *_), (b, *_) in zip(reference, gpu)])
    if extra:  # no AutoAugment: same box, same flip; resizing within one grey level
        assert difference.max() <= level and difference.mean() < 0.25 * level
    else:  # AutoAugment's thresholds (solarize, posterize, equalize) turn one level into many at some pixels;
        # other draws than the default loader's would change most pixels by many
        assert (difference > level).float().mean() < 0.2 and difference.mean() < 2 * level


def test_evaluation_batches_match_the_default_loader(tmp_path):
    root = jpeg_folder(tmp_path)
    level = 1 / 255 / min(PREP.std) + 1e-5
    for (a, la, _, _), (b, lb, _, _) in zip(_batches(root, False), _batches(root, False, loader="gpu")):
        # Resize, then centre crop: within one grey level of PIL's.
        assert torch.equal(la, lb) and (a - b).abs().max() <= level and (a - b).abs().mean() < 0.25 * level


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_sharp_detail_stays_within_the_stated_bounds(tmp_path, interpolation):
    """On noise every crop resamples sharp detail. Bilinear stays within one grey level (its weights are positive:
    only rounding differs). PIL's bicubic resamples in two 8-bit passes and clips the first one's overshoot, which
    a float resize keeps until the end: a few pixels differ by more (up to about 20 levels), the rest within one."""
    from stitchkit.zoo.metadata import Preprocessing

    root = noise_folder(tmp_path)
    prep = Preprocessing(PREP.mean, PREP.std, interpolation, PREP.crop_pct)
    level = 1 / 255 / min(PREP.std) + 1e-5
    for train in (True, False):
        extra = ("data.auto_augment=false",)
        reference = _batches(root, train, *extra, prep=prep)
        gpu = _batches(root, train, *extra, loader="gpu", prep=prep)
        difference = torch.cat([(a - b).abs().flatten() for (a, *_), (b, *_) in zip(reference, gpu)])
        assert difference.mean() < 0.25 * level
        if interpolation == "bilinear":
            assert difference.max() <= level
        else:
            assert (difference > level).float().mean() < 0.005


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_crops_are_resized_in_float_on_every_device(tmp_path, interpolation):
    """The CPU resizes as CUDA does (in float32, rounded once), not with torchvision's CPU-only uint8 kernels, so
    these tests check the arithmetic the GPU runs: torchvision's resized_crop (training) and resize + centre crop
    (evaluation) on float images, rounded, bit for bit, whether each crop is rounded alone (the CPU) or the batch at
    once (CUDA)."""
    from torchvision import transforms as T
    from torchvision.transforms.v2 import functional as F

    from stitchkit.training.gpu_loader import NO_BOX, resized_crops

    root = noise_folder(tmp_path)
    images = [F.pil_to_tensor(Image.open(path)) for path in sorted((root / "val" / "cat").glob("*.jpg"))[:3]]
    mode = T.InterpolationMode(interpolation)
    boxes = [[3, 5, 20, 24], list(NO_BOX), [0, 0, *images[2].shape[1:]]]  # a box, the evaluation view, the image
    expected = [F.resized_crop(images[0].float(), *boxes[0], [32, 32], interpolation=mode, antialias=True),
                F.center_crop(F.resize(images[1].float(), [int(32 / 0.875)], interpolation=mode, antialias=True),
                              [32, 32]),
                F.resized_crop(images[2].float(), *boxes[2], [32, 32], interpolation=mode, antialias=True)]
    expected = torch.stack(expected).round().clamp(0, 255).to(torch.uint8)
    for round_each in (True, False):
        assert torch.equal(resized_crops(images, boxes, 32, mode, 0.875, round_each), expected)


def test_corrupt_files_are_named_or_skipped(tmp_path, capsys):
    root = jpeg_folder(tmp_path)
    bad = root / "train" / "dog" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a header, then nothing: only decoding finds out
    (root / "train" / "cat" / "5.jpg").write_bytes(b"not an image at all")
    with pytest.raises(StitchkitError, match=r"cannot decode image .*(3|5)\.jpg.*data.skip_corrupt=true"):
        _batches(root, True, loader="gpu")
    capsys.readouterr()
    batches = _batches(root, True, "data.skip_corrupt=true", loader="gpu")
    assert sum(b[2] for b in batches) == 2 and sum(len(b[1]) for b in batches) == 14
    named = capsys.readouterr().err
    assert f"stitchkit: skipped: cannot decode image {str(bad)!r}" in named and "5.jpg" in named, named
    # The file and the reason, not PIL's words for the bytes in memory ("<_io.BytesIO object at 0x7fd3...>").
    assert f"{str(root / 'train' / 'cat' / '5.jpg')!r} (not an image format PIL can read)" in named, named
    assert "object at 0x" not in named


def test_a_decoder_error_names_the_reason_not_the_decoders_source_file(tmp_path):
    """torchvision's decode_jpeg says where in its C++ sources it stopped ("decode_jpeg, /__w/vision/.../
    decode_jpeg.cpp:171, Image is incomplete or truncated"); the skip line keeps the decoder and the reason."""
    import io
    import warnings

    from torchvision.io import decode_jpeg

    from stitchkit.training.data import undecodable

    payload = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(payload, "JPEG")
    with warnings.catch_warnings(), pytest.raises(RuntimeError) as raised:
        warnings.simplefilter("ignore")
        decode_jpeg(torch.frombuffer(bytearray(payload.getvalue()[:300]), dtype=torch.uint8))
    assert ".cpp:" in str(raised.value)  # what torchvision says (if it stops naming its sources, this goes)
    message = str(undecodable("x.jpg", raised.value))
    assert message.startswith("cannot decode image 'x.jpg' (decode_jpeg: ") and ".cpp" not in message, message


def test_training_with_the_gpu_loader_resumes_exactly(tmp_path, monkeypatch):
    from stitchkit.training import logging as training_logging

    root = jpeg_folder(tmp_path / "data")
    settings = ["mode=scratch", "model.src=resnet10t", "model.pretrained=false", "data.name=imagefolder",
                f"data.root={root}", "data.input_size=32", "data.loader=gpu", "optim.batch_size=4",
                "train.batch_size=4", "train.epochs=2", "train.workers=1", "train.threads=1",
                "train.checkpoint_every=100"]
    reference = train(load_config(None, [*settings, f"output.dir={tmp_path / 'reference'}"]))
    assert reference["status"] == "finished" and reference["images_seen"] == 32
    interrupted = load_config(None, [*settings, f"output.dir={tmp_path / 'interrupted'}"])
    original = training_logging.MetricsLog.advance

    def advance(self, steps=1):
        original(self, steps)
        advance.calls += steps
        if advance.calls == 3:
            raise KeyboardInterrupt

    advance.calls = 0
    with monkeypatch.context() as patch:
        patch.setattr(training_logging.MetricsLog, "advance", advance)
        with pytest.raises(RunInterrupted):
            train(interrupted)
    resumed = train(interrupted, resume=True)
    for key in ("top1", "loss", "train_loss", "steps", "images_seen", "top1_after_epoch"):
        assert resumed[key] == reference[key], key
    with pytest.raises(StitchkitError, match="data.loader=gpu .* needs data.name=imagefolder"):
        load_config(None, ["data.name=synthetic", "data.loader=gpu"])


def test_synthetic_jpeg_data_goes_through_either_loader_alike(tmp_path):
    """data.synthetic_jpeg: the same JPEG bytes decoded by PIL (default loader) or decode_jpeg (gpu loader)."""
    settings = ["data.name=synthetic", "data.synthetic_jpeg=true", "data.input_size=32", "data.synthetic_train_size=8",
                "data.synthetic_val_size=8", "data.augment_on=device", "data.auto_augment=false"]
    data = load_config(None, settings).data
    splits = build_splits(data, PREP, seed=0)
    payload, label, name = splits.train.source.read(5)
    assert payload[:2] == b"\xff\xd8" and label == 5 and "synthetic" in name
    sampler = EpochSampler(len(splits.val), 0, shuffle=False)
    gpu = list(device_loader(splits.val, load_config(None, [*settings, "data.loader=gpu"]).data, PREP, sampler, 4, 0,
                             torch.device("cpu"), False, None))
    reference = [batch for batch in DataLoader(splits.val, batch_size=4, sampler=sampler, collate_fn=collate)]
    level = 1 / 255 / min(PREP.std) + 1e-5
    difference = torch.cat([(a - b).abs().flatten() for (a, *_), (b, *_) in zip(reference, gpu)])
    # 60% noise, resized bicubic: within one level but at a few pixels (see test_sharp_detail_stays_within_...)
    assert difference.mean() < 0.25 * level and (difference > level).float().mean() < 0.005


def test_grouped_stitches_equal_separate_runs_with_the_gpu_loader(tmp_path):
    from stitchkit.training import train_group

    root = jpeg_folder(tmp_path / "data")
    settings = ["mode=stitch", "model.src=resnet10t", "model.pretrained=false", "model.num_classes=2",
                "data.name=imagefolder", f"data.root={root}", "data.input_size=32", "data.loader=gpu",
                "optim.batch_size=4", "train.batch_size=4", "train.epochs=1", "train.workers=0", "train.threads=1",
                "model.init_images=8"]
    cells = [("1:2", "linear"), ("1:3", "bottleneck")]

    def configs(folder):
        return [load_config(None, [*settings, f"model.gap={gap}", f"model.adapter={adapter}",
                                   f"output.dir={tmp_path / folder / gap.replace(':', 'to')}"]) for gap, adapter in cells]

    alone = [train(c) for c in configs("separate")]
    together = train_group(configs("grouped"))
    for a, b in zip(alone, together):
        assert (a["loss"], a["train_loss"], a["top1"]) == (b["loss"], b["train_loss"], b["top1"])


def test_16_bit_and_32_bit_images_keep_their_contrast_in_both_loaders(tmp_path):
    """16-bit grayscale (PNG mode I;16, TIFF mode I) keeps its top 8 bits in either loader (PIL's convert("RGB")
    clips it at 255: an almost white image); floating-point pixels (mode F), whose range is anyone's guess, are
    refused, naming the file."""
    from stitchkit.training.data import CorruptImageError
    from stitchkit.training.gpu_loader import EncodedImages

    ramp = np.add.outer(np.arange(40), np.arange(48)) * 700  # 0 .. 60900: the whole 16-bit range
    images = {"wide.png": ramp.astype(np.uint16), "int.tif": (ramp - 3000).astype(np.int32)}  # below 0: clipped
    expected = {"wide.png": ramp >> 8, "int.tif": np.clip(ramp - 3000, 0, None) >> 8}
    for split in ("train", "val"):
        folder = tmp_path / split / "gray"
        folder.mkdir(parents=True)
        for name, pixels in images.items():
            Image.fromarray(pixels).save(folder / name)
    assert Image.open(tmp_path / "val" / "gray" / "wide.png").mode == "I;16"
    assert Image.open(tmp_path / "val" / "gray" / "int.tif").mode == "I"
    data = _data(tmp_path)
    val = build_splits(data, PREP, seed=0).val
    for index, (path, _) in enumerate(val.source.samples):
        want = np.repeat(expected[path.rsplit("/", 1)[-1]][..., None], 3, axis=2).astype(np.uint8)
        cpu = np.asarray(val.source.load(index)[0])
        gpu = EncodedImages(val, data, train=False)[index][0].permute(1, 2, 0).numpy()
        assert np.array_equal(cpu, want) and np.array_equal(gpu, want), path
    floating = tmp_path / "val" / "gray" / "float.tif"
    Image.fromarray(ramp.astype(np.float32)).save(floating)
    val = build_splits(data, PREP, seed=0).val
    index = [path for path, _ in val.source.samples].index(str(floating))
    for load in (val.source.load, lambda i: EncodedImages(val, data, train=False)[i]):
        with pytest.raises(CorruptImageError, match=f"cannot decode image {str(floating)!r} .*mode F.* 8- or 16-bit"):
            load(index)


def test_cuda_decoding_allocates_on_its_own_stream_and_marks_the_images_used(monkeypatch):
    """On CUDA, torchvision's decoder writes on a private stream into memory allocated on the current stream and
    orders nothing before its writes: the images must come from a decoding stream of their own, be waited for by the
    stream that crops them, and be marked as used there (so the allocator does not hand their blocks to the next
    batch's decoding while this batch's crops are still queued). Checked with stand-ins for the CUDA calls."""
    from contextlib import contextmanager

    from stitchkit.training.gpu_loader import DeviceBatches

    events = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            events.append(("wait", self.name, other.name))

    class Image:
        def __init__(self, i):
            self.i = i

        def record_stream(self, stream):
            events.append(("record", self.i, stream.name))

    side, current = Stream("side"), []

    @contextmanager
    def stream(s):
        current.append(s)
        try:
            yield
        finally:
            current.pop()

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1] if current else side)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream("decode"))
    monkeypatch.setattr(torch.cuda, "stream", stream)

    def decode(payloads, **kwargs):
        events.append(("decode on", current[-1].name))
        return [Image(i) for i in range(len(payloads))] if isinstance(payloads, list) else Image("one")

    loader = DeviceBatches.__new__(DeviceBatches)
    loader.device, loader._decode_stream = torch.device("cuda"), None
    loader._decode_jpeg_cuda(decode, [b"a", b"b"], mode=None, device=loader.device)
    assert events == [("decode on", "decode"), ("wait", "side", "decode"), ("record", 0, "side"),
                      ("record", 1, "side")]
    events.clear()
    loader._decode_jpeg_cuda(decode, b"a", mode=None, device=loader.device)  # one image (naming a bad file)
    assert events == [("decode on", "decode"), ("wait", "side", "decode"), ("record", "one", "side")]


def test_a_batch_of_payloads_travels_as_one_tensor():
    """Each tensor a worker sends costs the training process a file descriptor and a round trip to the worker (5x
    the receiving time for 512 images sent one tensor each): a batch's bytes travel packed, and unpack to the same
    contiguous payloads (JPEG bytes, and the images decoded in the worker, of any shape)."""
    from stitchkit.training.gpu_loader import collate_encoded, unpack_payloads

    jpeg, decoded = torch.arange(7, dtype=torch.uint8), torch.arange(24, dtype=torch.uint8).view(3, 2, 4)
    item = lambda data, jpeg_flag: (data, jpeg_flag, torch.tensor([0, 0, 2, 2]), None, 1, "x", (2, 2))  # noqa: E731
    payloads, is_jpeg, *_ = collate_encoded([item(jpeg, True), None, item(decoded, False)])
    flat, shapes = payloads
    assert isinstance(flat, torch.Tensor) and flat.dim() == 1 and shapes == [(7,), (3, 2, 4)]
    out = unpack_payloads(payloads)
    assert all(torch.equal(a, b) and b.is_contiguous() for a, b in zip((jpeg, decoded), out)) and is_jpeg == [True, False]
    assert unpack_payloads(collate_encoded([None])[0]) == []


def test_batches_prepared_ahead_come_in_order_with_errors_at_their_batch():
    """The background thread hands over every batch in order; an error preparing one is raised where that batch
    would have come (the ones before it delivered), of its own type."""
    import threading

    from stitchkit.training.gpu_loader import one_ahead, prepared_ahead

    assert list(prepared_ahead(iter(range(7)), lambda x: x * x, 2)) == [x * x for x in range(7)]
    assert list(one_ahead(iter(range(7)), lambda x: x * x)) == [x * x for x in range(7)]

    def prepare(x):
        if x == 3:
            raise StitchkitError("image 3 is corrupt")
        return x

    got = []
    with pytest.raises(StitchkitError, match="image 3"):
        for x in prepared_ahead(iter(range(7)), prepare, 2):
            got.append(x)
    assert got == [0, 1, 2]

    def failing_source():
        yield 0
        raise OSError("worker died")

    with pytest.raises(OSError, match="worker died"):
        list(prepared_ahead(failing_source(), lambda x: x, 2))
    assert not [t for t in threading.enumerate() if t.name == "stitchkit-gpu-loader"]


def test_a_consumer_that_stops_early_stops_the_thread():
    """Closing the batches (a run stopped at max_steps, interrupted, or failing) stops the preparing thread and
    waits for it: it has drawn at most the batches in flight, and the data loader's iterator is idle."""
    import threading

    from stitchkit.training.gpu_loader import prepared_ahead

    drawn = []

    def source():
        for i in range(1000):
            drawn.append(i)
            yield i

    batches = prepared_ahead(source(), lambda x: x, 2)
    assert [next(batches), next(batches)] == [0, 1]
    batches.close()
    assert not [t for t in threading.enumerate() if t.name == "stitchkit-gpu-loader"]
    assert len(drawn) <= 2 + 2 + 1  # the two consumed, two waiting, one being prepared


def test_batches_prepared_in_the_training_thread_equal_those_prepared_ahead(tmp_path, monkeypatch):
    """With a worker process batches are prepared in a thread (seen running while they come); without one, in the
    training thread, which then also draws each image's crop under torch's global generator, as the default loader
    does: no other thread's draws interleave with the training's. Either way the same batches."""
    import threading

    from stitchkit.training.gpu_loader import DeviceBatches

    def batches(workers):
        data = _data(root, "data.augment_on=device")
        split = build_splits(data, PREP, seed=3).train
        sampler = EpochSampler(len(split), 3, shuffle=True)
        sampler.set_epoch(1)
        out, threads = [], set()
        for batch in device_loader(split, data, PREP, sampler, 4, workers, torch.device("cpu"), True, None):
            out.append(batch)
            threads |= {t.name for t in threading.enumerate()}
        return out, "stitchkit-gpu-loader" in threads

    root = jpeg_folder(tmp_path)
    (ahead, threaded), (inline, threaded_without_workers) = batches(1), batches(0)
    monkeypatch.setattr(DeviceBatches, "prepare_ahead", False)
    (switched_off, threaded_when_off) = batches(1)
    assert (threaded, threaded_without_workers, threaded_when_off) == (True, False, False)
    assert len(ahead) == len(inline) == len(switched_off) == 4
    for a, b, c in zip(ahead, inline, switched_off):
        assert all(torch.equal(x[0], a[0]) and torch.equal(x[1], a[1]) and x[2] == a[2] for x in (b, c))
