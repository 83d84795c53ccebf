"""Datasets, transforms and samplers for training and evaluation.

Three datasets: ``imagefolder`` (ImageNet layout ``root/train/<class>/*``, ``root/val/<class>/*``),
``fashion_mnist`` (the Debian package ``dataset-fashion-mnist``, a local copy, or a torchvision download) and
``synthetic`` (random images whose colour depends on the class, for smoke tests).

Randomness is a function of ``(seed, epoch, image index)``: the sampler yields ``(index, epoch)`` and each image's
augmentation runs under its own seed. So the data a step sees does not depend on the number of workers, and a run
resumed in the middle of an epoch sees exactly the images and augmentations an uninterrupted run would.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from ..errors import StitchkitError
from ..zoo.metadata import Preprocessing, preprocessing
from .augment import AugmentPlan, DeviceAugment
from .settings import DataConfig

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "~/.cache/stitchkit/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


class CorruptImageError(StitchkitError):
    """An image file that cannot be decoded. Its message names the file and the fix."""

    def __str__(self) -> str:
        # Raised in a DataLoader worker, the message arrives wrapped with the worker's traceback: keep our line.
        message = super().__str__()
        marker = f"{type(self).__name__}: "
        return message.rsplit(marker, 1)[-1].strip() if "Original Traceback" in message else message


# What PIL raises for a file it cannot decode: OSError and ValueError mostly, but a PNG with a damaged chunk raises
# SyntaxError ("broken PNG file"), some truncated headers EOFError or struct.error, and an image over PIL's pixel
# limit DecompressionBombError. Every reader of image files catches these, and only these, around PIL.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def undecodable(name: str, err: BaseException) -> CorruptImageError:
    """The error for image ``name`` that cannot be decoded, naming the file and why in one line. PIL's "cannot
    identify image file" names what it was given, which for bytes read beforehand (data.loader=gpu) is an object
    address (``<_io.BytesIO object at 0x7fd3...>``): that case gets its own words."""
    if isinstance(err, UnidentifiedImageError):
        why = "not an image format PIL can read"
    else:
        why = (str(err).splitlines() or [""])[0] or type(err).__name__
        # torchvision's decoders name their own source file: "decode_jpeg, /__w/.../decode_jpeg.cpp:171, Image is
        # incomplete or truncated" says "decode_jpeg: Image is incomplete or truncated"
        why = re.sub(r"^(\w+), \S+\.(?:cpp|cu|h):\d+, ", r"\1: ", why)
    return CorruptImageError(f"cannot decode image {name!r} ({why}); remove or replace it, or set "
                             "data.skip_corrupt=true to skip and count such files")


def build_transforms(data: DataConfig, prep: Preprocessing, train: bool) -> Callable:
    """The per-image transform a data-loader worker runs; with ``data.augment_on=device`` the training one stops
    at a uint8 crop and the parameters :class:`DeviceAugment` applies."""
    if not train:
        return eval_transform(data.input_size, data.crop_pct or prep.crop_pct, prep.interpolation, prep.mean, prep.std)
    interpolation = _interpolation(prep.interpolation)
    size = data.input_size
    steps: list = []
    if data.random_resized_crop:
        steps.append(T.RandomResizedCrop(size, interpolation=interpolation))
    else:
        steps += _resize_and_crop(size, data.crop_pct or prep.crop_pct, interpolation)
    if data.augment_on == "device":
        return T.Compose([*steps, T.PILToTensor(), _DrawParams(AugmentPlan(data.hflip, data.auto_augment))])
    if data.hflip:
        steps.append(T.RandomHorizontalFlip())
    if data.auto_augment:
        steps.append(T.AutoAugment(T.AutoAugmentPolicy.IMAGENET))
    steps += [T.ToTensor(), T.Normalize(prep.mean, prep.std)]
    return T.Compose(steps)


def eval_transform(size: int, crop_pct: float, interpolation: str, mean, std) -> Callable:
    """How a model sees an image at evaluation: resize to ``size / crop_pct``, centre crop ``size``, normalise.
    A run's validation split, ``stitchkit predict`` and a model folder's preprocessing all use this one."""
    return T.Compose([*_resize_and_crop(size, crop_pct, _interpolation(interpolation)), T.ToTensor(),
                      T.Normalize(tuple(mean), tuple(std))])


def _interpolation(name: str) -> T.InterpolationMode:
    return T.InterpolationMode(name if name in ("bilinear", "bicubic") else "bilinear")


def _resize_and_crop(size: int, crop_pct: float, interpolation: T.InterpolationMode) -> list:
    return [T.Resize(int(math.floor(size / crop_pct)), interpolation=interpolation), T.CenterCrop(size)]


class _DrawParams:
    """Pair a uint8 crop with its device-augmentation parameters (see :mod:`stitchkit.training.augment`), drawn
    under a seed that is itself drawn under the image's own seed: a function of (seed, epoch, index)."""

    def __init__(self, plan: AugmentPlan):
        self.plan = plan

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image, self.plan.draw(int(torch.randint(0, 2**62, ())))


# --- raw image sources: index -> (PIL image, label) ---------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, whatever its PIL mode.

    Grayscale, palette, CMYK and alpha modes convert as PIL converts them. Integer grayscale wider than 8 bits (16-bit
    PNG, TIFF and PGM files: modes ``I;16*``, and ``I``, which 32-bit integer TIFFs and older Pillows' 16-bit PNGs
    open as) is read as 16-bit and keeps its top 8 bits, as torchvision's ``to_dtype(image, torch.uint8,
    scale=True)`` takes a uint16 image to uint8; ``I`` values outside 0..65535 are clipped to it. PIL's own
    conversion clips such pixels at 255 instead: an almost white image. Floating-point pixels (mode ``F``) have no
    agreed range (0..1, 0..255, physical units), so they are refused with a ValueError, for the caller to name the
    file.
    """
    if image.mode == "F":
        raise ValueError("32-bit floating-point pixels (PIL mode F) have no agreed range; save the image with 8- or "
                         "16-bit integer pixels")
    if image.mode.startswith("I"):
        top_bits = np.right_shift(np.clip(np.asarray(image), 0, 65535).astype(np.uint16), 8)
        return Image.fromarray(top_bits.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


class ImageFolderSource:
    """``root/<class>/<image>`` files; corrupt files raise :class:`CorruptImageError` (or are skipped)."""

    def __init__(self, root: Path, classes: Sequence[str] | None = None,
                 layout: str = "train/<class>/ and val/<class>/"):
        """``layout``: the subfolders data.root needs, for the message when ``root`` is missing."""
        if not root.is_dir():
            raise StitchkitError(f"data folder {str(root)!r} does not exist; set data.root to a folder with "
                                 f"{layout} subfolders")
        found = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not found:
            raise StitchkitError(f"{str(root)!r} has no class subfolders; expected {root}/<class>/<image files>")
        self.classes = list(classes) if classes is not None else found
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            files = sorted(p for p in _files_below(root / name) if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise StitchkitError(f"class folder {str(root / name)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                     f"add images, or remove the class {name!r} from every split (train/ and val/ "
                                     "need the same class folders)")
            self.samples += [(str(p), label) for p in files]

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, index: int) -> int:
        return self.samples[index][1]

    def read(self, index: int) -> tuple[bytes, int, str]:
        """The file's bytes, undecoded (``data.loader=gpu`` decodes them on the training device), its label and
        its path."""
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                return f.read(), label, path
        except OSError as err:
            raise CorruptImageError(f"cannot read image {path!r} ({err.strerror or err}); remove or replace it, or set "
                                    "data.skip_corrupt=true to skip and count such files") from None

    def load(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return to_rgb(image), label
        except DECODE_ERRORS as err:
            raise undecodable(path, err) from None


def _files_below(folder: Path) -> Iterator[Path]:
    """Every file in ``folder`` and its subfolders, following links to folders as torchvision's ImageFolder does
    (``Path.rglob`` does not follow them), each folder once (a link back up does not loop)."""
    seen = set()
    for top, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        yield from (Path(top) / n for n in names)


class ArraySource:
    """Images held in memory as a uint8 array ``(N, H, W)`` (grayscale, replicated to RGB) or ``(N, H, W, 3)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]):
        self.images, self.labels, self.classes = images, labels, list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def load(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), int(self.labels[index])


class SyntheticSource:
    """Random images with a class-dependent tint, generated from the index (so any worker makes the same one).

    Made as uint8 from a seeded PCG64 stream (about 0.8 ms for 252x252 on one core, a quarter of float noise), so a
    benchmark on synthetic data measures the pipeline, not the making of its images."""

    def __init__(self, size: int, classes: int, image_size: int, offset: int = 0, jpeg: bool = False):
        self.size, self.classes, self.image_size, self.offset = size, [f"class_{i}" for i in range(classes)], image_size, offset
        self.jpeg = jpeg  # served as JPEG bytes (read) and decoded from them (load), like files in a folder

    def __len__(self) -> int:
        return self.size

    def label(self, index: int) -> int:
        return index % len(self.classes)

    def pixels(self, index: int) -> np.ndarray:
        """The image as (H, W, 3) uint8: 60% noise, 40% the class's tint."""
        label = index % len(self.classes)
        noise = np.random.default_rng(self.offset + index).integers(
            0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8)
        tint = np.array([(label * 97) % 256, (label * 57) % 256, (label * 31) % 256], dtype=np.uint16)
        return ((noise.astype(np.uint16) * 3 + tint * 2) // 5).astype(np.uint8)

    def read(self, index: int) -> tuple[bytes, int, str]:
        """The image as JPEG bytes (quality 90), its label and a name for messages."""
        import io

        buffer = io.BytesIO()
        Image.fromarray(self.pixels(index)).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue(), self.label(index), f"synthetic image {self.offset + index}"

    def load(self, index: int) -> tuple[Image.Image, int]:
        if self.jpeg:
            import io

            payload, label, _ = self.read(index)
            with Image.open(io.BytesIO(payload)) as image:
                return image.convert("RGB"), label
        return Image.fromarray(self.pixels(index)), self.label(index)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file, gzipped or not (told by its first bytes, not its name)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    _, dtype, dims = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find_fashion_mnist(root: str | None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files. With ``root`` (data.root), that folder (or torchvision's
    ``FashionMNIST/raw`` inside it), downloaded into it if it exists without them, and nothing else: a mistyped path
    fails instead of quietly reading the installed copy. Without it, the installed copy or stitchkit's cache,
    downloading there only where nothing local exists."""
    if root:
        given = Path(root).expanduser()
        for folder in (given, given / "FashionMNIST" / "raw"):
            if _has_fashion_mnist(folder):
                return folder
        if given.is_dir() and _download_fashion_mnist(given):  # a folder made for it: torchvision's download=True
            return given / "FashionMNIST" / "raw"
        files = ", ".join(FASHION_MNIST_FILES["train"] + FASHION_MNIST_FILES["val"])
        problem = ("does not exist" if not given.exists() else
                   f"holds no Fashion-MNIST files ({files}, gzipped or not, directly or in FashionMNIST/raw/), and "
                   "they could not be downloaded there")
        raise StitchkitError(f"data.root {str(given)!r} {problem}; correct data.root, or leave it unset to read "
                             f"Fashion-MNIST from {FASHION_MNIST_DIRS[0]} (apt-get install -y dataset-fashion-mnist) "
                             f"or download it into {FASHION_MNIST_DIRS[1]}")
    candidates = list(FASHION_MNIST_DIRS)
    for candidate in candidates:
        folder = Path(candidate).expanduser()
        if _has_fashion_mnist(folder):
            return folder
    cache = Path(FASHION_MNIST_DIRS[-1]).expanduser()
    if _download_fashion_mnist(cache):
        return cache / "FashionMNIST" / "raw"
    raise StitchkitError(
            "Fashion-MNIST not found in " + ", ".join(str(Path(c).expanduser()) for c in candidates)
            + " and it could not be downloaded; install it with `apt-get install -y dataset-fashion-mnist` or put the "
            "four *-ubyte.gz (or extracted *-ubyte) files in a folder and set data.root to it"
        )


def _download_fashion_mnist(folder: Path) -> bool:
    """Download Fashion-MNIST into ``folder``/FashionMNIST/raw (torchvision's layout); False where that fails (no
    network, a mirror that is down), for the caller to say what to do instead. torchvision makes its folders before
    it downloads: it downloads into a temporary folder, and only what it fetched whole is moved into ``folder`` (a
    user's data.root), so a failed attempt leaves nothing there."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="stitchkit-fashion-mnist-") as staging:
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(staging, train=True, download=True)
            torchvision.datasets.FashionMNIST(staging, train=False, download=True)
        except Exception:
            return False
        fetched = Path(staging) / "FashionMNIST" / "raw"
        if not _has_fashion_mnist(fetched):
            return False
        raw = folder / "FashionMNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for path in fetched.iterdir():
            shutil.move(str(path), str(raw / path.name))
    return _has_fashion_mnist(raw)


def _idx_file(folder: Path, name: str) -> Path | None:
    """The file ``name`` (``*-ubyte.gz``) in ``folder``, or its extracted form (``*-ubyte``: torchvision extracts
    what it downloads and reads either), or None."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _has_fashion_mnist(folder: Path) -> bool:
    return all(_idx_file(folder, name) for pair in FASHION_MNIST_FILES.values() for name in pair)


class ClassSubset:
    """The images of some classes of a source, labelled 0..k-1 in the order the classes are given (``data.classes``:
    a task of its own, e.g. Fashion-MNIST's classes 5-9 for models trained on 0-4)."""

    def __init__(self, source, keep: Sequence[int]):
        names = list(source.classes)
        bad = [c for c in keep if not 0 <= c < len(names)]
        if bad or len(set(keep)) != len(keep) or not keep:
            raise StitchkitError(f"data.classes must be distinct class indices 0..{len(names) - 1} of this dataset "
                                 f"({len(names)} classes), got {list(keep)}")
        self.source, self.classes = source, [names[c] for c in keep]
        self.relabel = {old: new for new, old in enumerate(keep)}
        self.indices = [i for i in range(len(source)) if source.label(i) in self.relabel]

    def __len__(self) -> int:
        return len(self.indices)

    def label(self, index: int) -> int:
        return self.relabel[self.source.label(self.indices[index])]

    def read(self, index: int) -> tuple[bytes, int, str]:
        payload, label, name = self.source.read(self.indices[index])
        return payload, self.relabel[label], name

    def load(self, index: int) -> tuple[Image.Image, int]:
        image, label = self.source.load(self.indices[index])
        return image, self.relabel[label]


def in_class_order(source, names: Sequence[str]):
    """``source`` labelled in the order of ``names`` when it has exactly these classes in another order (a trained
    model's classes, matched by name); otherwise as it is, for the caller to compare its classes with the model's."""
    own = list(source.classes)
    if own == list(names) or sorted(own) != sorted(names):
        return source
    return ClassSubset(source, [own.index(name) for name in names])


def raw_sources(data: DataConfig, splits: Sequence[str] = ("train", "val")) -> dict[str, object]:
    """``{"train": source, "val": source}`` for the configured dataset, with matching class lists (only
    ``data.classes`` when it is set); ``splits``: only those (``("val",)`` to evaluate: an image folder then needs
    no train/ folder)."""
    sources = _whole_sources(data, tuple(splits))
    if data.classes is not None:
        sources = {split: ClassSubset(source, list(data.classes)) for split, source in sources.items()}
    return sources


def folder_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a folder, in words that follow its name ("does not exist", "is not a
    folder"), or None: for the one message about a mistyped data.root, from training and from a sweep's check."""
    if path.is_dir():
        return None
    return "is not a folder" if path.exists() else "does not exist"


def _whole_sources(data: DataConfig, splits: tuple[str, ...]) -> dict[str, object]:
    if data.name == "synthetic":
        size = data.input_size + data.input_size // 8
        return {"train": SyntheticSource(data.synthetic_train_size, data.synthetic_classes, size,
                                         jpeg=data.synthetic_jpeg),
                # (past the training images: from 10**6, as ever, or after an ImageNet-sized training set)
                "val": SyntheticSource(data.synthetic_val_size, data.synthetic_classes, size,
                                       offset=max(10**6, data.synthetic_train_size), jpeg=data.synthetic_jpeg)}
    if data.name == "fashion_mnist":
        folder = find_fashion_mnist(data.root)
        return {split: ArraySource(_read_idx(_idx_file(folder, images)), _read_idx(_idx_file(folder, labels)),
                                   FASHION_MNIST_CLASSES)
                for split, (images, labels) in FASHION_MNIST_FILES.items() if split in splits}
    needed = "train/<class>/ and val/<class>/" if "train" in splits else "val/<class>/"  # evaluation: val alone
    if not data.root:
        raise StitchkitError(f"data.name=imagefolder needs data.root, a folder with {needed}")
    root = Path(data.root).expanduser()
    problem = folder_problem(root)
    if problem:  # a mistyped data.root: say so, not that its train/ folder is missing
        raise StitchkitError(f"data.root {data.root!r} {problem}; correct data.root, a folder with {needed}")
    if "train" not in splits:
        # The val folder's own class folders, sorted: the class list (and label order) a whole folder gives too,
        # since that is train's sorted folders and val must have the same ones.
        return {"val": ImageFolderSource(root / "val", layout="val/<class>/")}
    train = ImageFolderSource(root / "train")
    val_root = root / "val"
    if val_root.is_dir():
        val_classes = sorted(d.name for d in val_root.iterdir() if d.is_dir())
        if val_classes != train.classes:
            only_train = sorted(set(train.classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train.classes))
            raise StitchkitError(
                f"train and val class folders differ under {str(root)!r} (only in train: {only_train[:5]}, only in "
                f"val: {only_val[:5]}); both splits need the same class folders"
            )
    return {"train": train, "val": ImageFolderSource(val_root, train.classes)}


# --- datasets with seeded transforms ------------------------------------------------------------------------------


class SeededDataset(Dataset):
    """``source`` images at ``indices``, transformed under a seed that depends on ``(seed, epoch, index)``.

    Items are requested as ``(position, epoch)`` pairs (see :class:`EpochSampler`). Corrupt images give ``None``
    when ``skip_corrupt`` is on, and :func:`collate` counts them.
    """

    def __init__(self, source, indices: Sequence[int], transform: Callable, seed: int, skip_corrupt: bool = False):
        self.source, self.indices, self.transform = source, list(indices), transform
        self.seed, self.skip_corrupt = seed, skip_corrupt

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        position, epoch = item if isinstance(item, tuple) else (item, 0)
        index = self.indices[position]
        try:
            image, label = self.source.load(index)
        except CorruptImageError as err:
            if self.skip_corrupt:
                say_skipped(err)
                return None
            raise
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(image_seed(self.seed, epoch, index))
            return self.transform(image), label


def say_skipped(err: CorruptImageError) -> None:
    """Name a skipped image on stderr, from whichever process read it (a data-loader worker's stderr is the run's):
    the count alone (result.json's skipped_images) does not say which file to replace."""
    reason = str(err).split("; remove or replace it")[0]
    print(f"stitchkit: skipped: {reason}", file=sys.stderr, flush=True)


def image_seed(seed: int, epoch: int, index: int) -> int:
    """The seed an image's augmentation runs under in an epoch: what makes runs repeat and resume exactly."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63)


def collate(batch):
    """Stack a batch, dropping skipped (corrupt) images; returns ``(images, labels, skipped_count, params)``.

    ``params`` holds each image's device-augmentation parameters (``data.augment_on=device``; see
    :class:`~stitchkit.training.augment.AugmentPlan`), and is None otherwise.
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(batch), None
    params = None
    if isinstance(kept[0][0], tuple):
        params = torch.stack([row for (_, row), _ in kept])
        kept = [(image, label) for (image, _), label in kept]
    images = _stack([image for image, _ in kept])
    labels = torch.tensor([label for _, label in kept], dtype=torch.long)
    return images, labels, len(batch) - len(kept), params


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, straight into shared memory inside a data-loader worker: the batch then crosses to the
    training process as is, instead of being copied into shared memory once more when it is sent."""
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return torch.stack(tensors)
    first = tensors[0]
    storage = first.untyped_storage()._new_shared(len(tensors) * first.numel() * first.element_size())
    out = first.new(storage).view(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


class EpochSampler(Sampler):
    """A seeded, shardable, resumable sampler yielding ``(position, epoch)``.

    Training (``shuffle=True``): a permutation seeded by ``(seed, epoch)``, padded to a multiple of
    ``world_size`` (as torch's DistributedSampler does) and dealt round-robin to the ranks. Evaluation
    (``shuffle=False``): every item exactly once, dealt round-robin, no padding. ``start`` skips the first items
    of this rank's share (to resume mid-epoch).
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))[self.rank :: self.world_size]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        padded = math.ceil(self.size / self.world_size) * self.world_size
        order += order[: padded - self.size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, self.epoch) for i in self._order()[self.start :]])

    def __len__(self) -> int:
        return max(len(self._order()) - self.start, 0)


@dataclass
class Splits:
    """The datasets of one run."""

    train: SeededDataset | None  # None when only evaluated (build_splits' need_train)
    val: SeededDataset
    holdout: SeededDataset | None
    classes: list[str]
    device_augment: DeviceAugment | None = None  # the rest of the training augmentation (data.augment_on=device)
    val_split_images: int | None = None  # the whole validation split, of which data.limit_val draws ``val``


def build_splits(data: DataConfig, prep: Preprocessing, seed: int, need_train: bool = True,
                 class_order: Sequence[str] | None = None) -> Splits:
    """Train, val and the optional hold-out split (carved from train with ``holdout_seed``, the same for every seed).
    ``need_train=False`` (an evaluation): no train split, and the train images are not looked for unless the
    hold-out needs them. ``class_order``: the class names a trained model predicts, in its order; data with these
    classes in another order is labelled in the model's (:func:`in_class_order`)."""
    need_train = need_train or data.holdout_fraction > 0
    sources = raw_sources(data, ("train", "val") if need_train else ("val",))
    if class_order is not None:
        sources = {split: in_class_order(source, class_order) for split, source in sources.items()}
    train_source, val_source = sources.get("train"), sources["val"]
    split_rng = np.random.default_rng(data.holdout_seed)
    order = split_rng.permutation(len(train_source) if train_source is not None else 0)
    n_holdout = int(round(data.holdout_fraction * len(order)))
    holdout_idx, train_idx = order[:n_holdout], order[n_holdout:]
    if data.limit_train is not None:
        train_idx = train_idx[: data.limit_train]
    val_idx = np.arange(len(val_source))
    if data.limit_val is not None:
        val_idx = np.random.default_rng(data.holdout_seed + 1).permutation(len(val_source))[: data.limit_val]
        if data.holdout_fraction:
            holdout_idx = holdout_idx[: data.limit_val]
    if (need_train and len(train_idx) == 0) or len(val_idx) == 0:
        raise StitchkitError("the training or validation split is empty; check data.root, data.limit_* and "
                             "data.holdout_fraction")
    train_tf, eval_tf = build_transforms(data, prep, True), build_transforms(data, prep, False)
    skip = data.skip_corrupt
    return Splits(
        train=SeededDataset(train_source, sorted(train_idx.tolist()), train_tf, seed, skip) if need_train else None,
        val=SeededDataset(val_source, sorted(val_idx.tolist()), eval_tf, seed, skip),
        holdout=SeededDataset(train_source, sorted(holdout_idx.tolist()), eval_tf, seed, skip) if n_holdout else None,
        classes=list((train_source if train_source is not None else val_source).classes),
        device_augment=(DeviceAugment(AugmentPlan(data.hflip, data.auto_augment), prep.mean, prep.std)
                        if data.augment_on == "device" else None),
        val_split_images=len(val_source),
    )


def calibration_images(splits: Splits, data: DataConfig, model_name: str, count: int, seed: int) -> torch.Tensor:
    """``count`` training images, chosen by ``seed`` (so the same for every run of one seed, grouped or not), under
    ``model_name``'s evaluation preprocessing: what a stitch measures both models' features on before training
    (see :mod:`stitchkit.initialization`)."""
    train = splits.train
    transform = build_transforms(data, preprocessing(model_name), train=False)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    images = []
    for position in order:
        try:
            image, _ = train.source.load(train.indices[position])
        except CorruptImageError as err:
            if data.skip_corrupt:
                say_skipped(err)
                continue
            raise
        images.append(transform(image))
    if not images:
        raise StitchkitError("no readable training image to start the adapters from: the start (model.adapter_norm) "
                             "measures both models on model.init_images training images; check the training data, "
                             "or choose a start that needs no images (model.adapter_norm=paper_code)")
    return torch.stack(images)
