"""Image folders decoded, cropped, augmented and normalised on the training device (``data.loader=gpu``).

Data-loader workers only read each file's bytes and draw the image's randomness, under the same per-image seed and
in the same order as the default loader with ``data.augment_on=device`` (the random-resized-crop box first, then the
augmentation parameters, see :mod:`stitchkit.training.augment`); they never decode a JPEG. The training process then
decodes the whole batch at once with ``torchvision.io.decode_jpeg`` on the training device (nvJPEG on CUDA), crops
and resizes each image there, augments the batch with :class:`~stitchkit.training.augment.DeviceAugment` and
normalises it, in a thread of its own a few batches ahead of training (on CUDA on a side stream), so that the
decoder's waits and the per-image calls do not hold up the queueing of training steps.

The same code runs on the CPU, where the tests check it against the default loader: the same crop boxes and
augmentation draws; decoding equal (both libjpeg-turbo); resizing (in float32 on every device, as CUDA does) within
one grey level of PIL's, see tests/test_gpu_loader.py. Bilinear stays within one level on any image. Bicubic does on
smooth images, but PIL resamples in two 8-bit passes and clips the first one's overshoot, which a float resize keeps
until the end: at sharp detail (noise, hard edges) a few pixels differ by more, up to about 20 levels (0.04% of the
pixels of uniform-noise crops, mean 0.2 level). AutoAugment's thresholds (solarize, posterize, equalize) can turn a
one-level difference into many at some pixels. Files that are not JPEGs (PNG, ...) are decoded by the worker instead.
An undecodable file is named and, with ``data.skip_corrupt=true``, skipped and counted; otherwise it stops the run
with its name, as with the default loader.
"""
from __future__ import annotations

import functools
import io
import math
import queue
import threading
import warnings
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.nn.functional import interpolate
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from ..zoo.metadata import Preprocessing
from .augment import AugmentPlan, DeviceAugment
from .data import (DECODE_ERRORS, CorruptImageError, EpochSampler, SeededDataset, image_seed, say_skipped, to_rgb,
                   undecodable)
from .settings import DataConfig

NO_BOX = (-1, -1, -1, -1)

# torchvision >= 0.29 warns at every call that its image decoders will move to TorchCodec; they are what this loader
# is for. Filtered once here, for that message only: a `catch_warnings` around each call is not thread-safe (batches
# are prepared in a thread of their own, beside the training thread's own warning filters, see host_syncs.py).
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


class EncodedImages(Dataset):
    """A split's images as undecoded bytes with their crop box and augmentation parameters (``(position, epoch)``
    items, as :class:`~stitchkit.training.data.SeededDataset`)."""

    def __init__(self, split: SeededDataset, data: DataConfig, train: bool):
        self.source, self.indices, self.seed = split.source, split.indices, split.seed
        self.skip_corrupt, self.train = split.skip_corrupt, train
        self.random_crop = train and data.random_resized_crop
        self.plan = AugmentPlan(data.hflip, data.auto_augment) if train else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        position, epoch = item if isinstance(item, tuple) else (item, 0)
        index = self.indices[position]
        try:
            payload, label, name = self.source.read(index)
            with Image.open(io.BytesIO(payload)) as image:
                is_jpeg = image.format == "JPEG"
                width, height = image.size
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(image_seed(self.seed, epoch, index))
                    box = T.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) if self.random_crop \
                        else NO_BOX
                    params = self.plan.draw(int(torch.randint(0, 2**62, ()))) if self.plan else None
                if is_jpeg:
                    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
                else:  # decoded here: the device decoder reads JPEGs only
                    data = F.pil_to_tensor(to_rgb(image))
        except CorruptImageError as err:
            if self.skip_corrupt:
                say_skipped(err)
                return None
            raise
        except DECODE_ERRORS as err:
            corrupt = undecodable(name, err)
            if self.skip_corrupt:
                say_skipped(corrupt)
                return None
            raise corrupt from None
        return data, is_jpeg, torch.tensor(box), params, label, name, (height, width)


def collate_encoded(batch):
    """``(payloads, is_jpeg, boxes, params, labels, skipped, names)``; corrupt items (None) are dropped and counted.

    ``payloads`` travels packed (:func:`pack_payloads`): one tensor for the whole batch, not one per image."""
    kept = [item for item in batch if item is not None]
    payloads = pack_payloads([item[0] for item in kept])
    is_jpeg = [item[1] for item in kept]
    boxes = torch.stack([item[2] for item in kept]) if kept else torch.empty(0, 4, dtype=torch.long)
    params = torch.stack([item[3] for item in kept]) if kept and kept[0][3] is not None else None
    labels = torch.tensor([item[4] for item in kept], dtype=torch.long)
    return payloads, is_jpeg, boxes, params, labels, len(batch) - len(kept), [item[5] for item in kept]


def pack_payloads(payloads: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """A batch's payloads (uint8 tensors of any shape) as one flat tensor and their shapes. A data-loader worker
    hands every tensor of a batch to the training process through shared memory of its own, one file descriptor
    and one round trip to the worker each: 512 images' bytes as 512 tensors took 5x the receiving time of one
    (and a file descriptor each, held while the batch waits in the queues, against the process's open-file
    limit)."""
    shapes = [tuple(p.shape) for p in payloads]
    flat = torch.cat([p.reshape(-1) for p in payloads]) if payloads else torch.empty(0, dtype=torch.uint8)
    return flat, shapes


def unpack_payloads(packed) -> list[torch.Tensor]:
    """The payloads :func:`pack_payloads` packed, as views of its tensor (contiguous: what the decoder reads)."""
    flat, shapes = packed
    sizes = [math.prod(shape) for shape in shapes]
    return [chunk.view(shape) for chunk, shape in zip(flat.split(sizes), shapes)]


def prepared_ahead(batches: Iterator, prepare: Callable, depth: int) -> Iterator:
    """``prepare(batch)`` of each batch, in order, computed in a background thread up to ``depth`` batches ahead of
    the consumer.

    Why a thread: on CUDA, torchvision's batched JPEG decoder waits on the host until its own decoding is done
    (about 30 ms for 512 images of 500x375 on an H100/H200-class card); in the training thread that wait, and the
    per-image crop calls, would keep the next training steps from being queued, so the card idles while the host
    decodes. In a thread of their own they overlap the steps (the decoder and torch's kernels release the GIL).

    An exception raised while preparing a batch is raised here, where that batch would have been yielded.
    Closing this generator (the consumer stops early, fails, or is interrupted) stops the thread and waits for it,
    so the data loader's iterator is idle again before anything resets it for the next epoch."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:  # False once the consumer has gone
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not offer((True, prepare(batch))):
                    return
        except BaseException as err:  # raised in the consumer, at its batch
            offer((False, err))
            return
        offer((False, None))

    thread = threading.Thread(target=work, name="stitchkit-gpu-loader", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = slots.get()
            if ok:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join()


def one_ahead(batches: Iterator, prepare: Callable) -> Iterator:
    """``prepare(batch)`` of each batch in the consumer's thread, one batch ahead: batch i+1 is prepared (queued on
    the device) before batch i is handed over, so on CUDA two batches are in flight."""
    pending = None
    for batch in batches:
        ready = prepare(batch)
        if pending is not None:
            yield pending
        pending = ready
    if pending is not None:
        yield pending


class DeviceBatches:
    """Batches of :class:`EncodedImages` made ready on ``device``: yields ``(images, labels, skipped, None)`` like
    the default loader, with images already cropped, augmented and normalised (float32) there."""

    #: Prepare batches in a background thread (:func:`prepared_ahead`; with data-loader workers), or in the training
    #: thread between steps (:func:`one_ahead`); ``scripts/gpu_check.py`` times both on a GPU. ``ahead``: batches
    #: prepared and waiting.
    prepare_ahead = True
    ahead = 2

    def __init__(self, loader: DataLoader, data: DataConfig, prep: Preprocessing, device: torch.device, train: bool):
        self.loader, self.device, self.train = loader, device, train
        self.size = data.input_size
        self.crop_pct = data.crop_pct or prep.crop_pct
        self.interpolation = T.InterpolationMode(prep.interpolation if prep.interpolation in ("bilinear", "bicubic")
                                                 else "bilinear")
        self.augment = DeviceAugment(AugmentPlan(data.hflip, data.auto_augment) if train
                                     else AugmentPlan(False, False), prep.mean, prep.std)
        self.skip_corrupt = data.skip_corrupt
        self._decode_stream = None  # CUDA: the stream decoded images are allocated on (see _decode_jpeg_cuda)

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        batches = iter(self.loader)
        if self.device.type != "cuda":
            prepare, hand_over = self.prepare, None
        else:
            side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
            prepare = functools.partial(self._prepare_on_side_stream, side=side, main=main)
            hand_over = functools.partial(self._hand_over, main=main)
        # Without worker processes the data loader reads the files, and draws each image's crop under torch's global
        # random generator (seeded per image, as the default loader does), in whichever thread iterates it: that
        # stays the training thread, whose own draws (drop path, say) would otherwise interleave with those.
        ahead = self.prepare_ahead and self.loader.num_workers > 0
        ready = prepared_ahead(batches, prepare, self.ahead) if ahead else one_ahead(batches, prepare)
        return ready if hand_over is None else map(hand_over, ready)

    def _prepare_on_side_stream(self, batch, side, main):
        """On CUDA: the batch prepared on a side stream, and the event that says it is done there."""
        side.wait_stream(main)  # memory the training stream freed may be reused here
        with torch.cuda.device(self.device), torch.cuda.stream(side):  # a thread's current device is its own
            ready = self.prepare(batch)
            return ready, side.record_event()

    def _hand_over(self, prepared, main):
        ready, done = prepared
        main.wait_event(done)
        images, labels = ready[0], ready[1]
        images.record_stream(main)  # made on the side stream, used on the training stream
        labels.record_stream(main)
        return ready

    def prepare(self, batch) -> tuple[torch.Tensor, torch.Tensor, int, None]:
        payloads, is_jpeg, boxes, params, labels, skipped, names = batch
        images, kept = self._decode(unpack_payloads(payloads), is_jpeg, names)
        if len(kept) < len(payloads):
            skipped += len(payloads) - len(kept)
            keep = torch.tensor(kept, dtype=torch.long)
            boxes, labels = boxes[keep], labels[keep]
            params = params[keep] if params is not None else None
        labels = labels.to(self.device, non_blocking=True)
        if not images:
            return torch.empty(0, 3, self.size, self.size, device=self.device), labels, skipped, None
        crops = resized_crops(images, boxes.tolist(), self.size, self.interpolation, self.crop_pct,
                              round_each=self.device.type != "cuda")
        if params is None:
            params = torch.tensor([[0, -1, -1]], dtype=torch.long).expand(len(crops), 3)
        return self.augment(crops, params), labels, skipped, None

    def _decode(self, payloads, is_jpeg, names) -> tuple[list[torch.Tensor], list[int]]:
        """Every JPEG of the batch in one call on the device; where that fails, one by one, to name the bad file."""
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as _decode_jpeg

        def decode_jpeg(*args, **kwargs):
            if self.device.type != "cuda":
                return _decode_jpeg(*args, **kwargs)
            return self._decode_jpeg_cuda(_decode_jpeg, *args, **kwargs)

        jpegs = [i for i, flag in enumerate(is_jpeg) if flag]
        decoded: dict[int, torch.Tensor] = {i: payloads[i].to(self.device, non_blocking=True)
                                            for i, flag in enumerate(is_jpeg) if not flag}
        if jpegs:
            try:
                out = decode_jpeg([payloads[i] for i in jpegs], mode=ImageReadMode.RGB, device=self.device)
                decoded.update(zip(jpegs, out))
            except RuntimeError:
                for i in jpegs:
                    try:
                        decoded[i] = decode_jpeg(payloads[i], mode=ImageReadMode.RGB, device=self.device)
                    except RuntimeError as err:
                        corrupt = undecodable(names[i], err)
                        if not self.skip_corrupt:
                            raise corrupt from None
                        say_skipped(corrupt)
        kept = sorted(decoded)
        return [decoded[i] for i in kept], kept

    def _decode_jpeg_cuda(self, decode, *args, **kwargs):
        """torchvision's CUDA decoder, with its outputs allocated on a stream of their own.

        nvJPEG writes the images on the decoder's private stream into memory allocated on the *current* stream, and
        orders nothing before those writes. On the side stream, where this loader works, the caching allocator
        would hand the decoder blocks freed by the previous batch while that batch's crops, still queued behind the
        training stream, have yet to read them: the host runs ahead of a busy GPU, so the next batch's pixels would
        overwrite them (pytorch/vision#9606: 199 of 200 tries corrupted on an H100; 0 with another stream current
        than the one that freed the memory). Allocated on a decoding stream instead, each image is marked as used
        by the stream that crops it, so its block is handed out again only once that work has run."""
        using = torch.cuda.current_stream(self.device)
        if self._decode_stream is None:
            self._decode_stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._decode_stream):
            out = decode(*args, **kwargs)  # the decoding stream waits for the decoder's writes (torchvision's event)
        using.wait_stream(self._decode_stream)
        for image in out if isinstance(out, list) else [out]:
            image.record_stream(using)
        return out


def resized_crops(images: list[torch.Tensor], boxes: list[list[int]], size: int, interpolation: T.InterpolationMode,
                  crop_pct: float, round_each: bool) -> torch.Tensor:
    """A batch's crops (uint8, ``N x 3 x size x size``): each image resized in float32 (:func:`resized_view`) and
    rounded once.

    Per image is where the host's time goes on CUDA, where a batch of 512 launches each per-image kernel 512 times:
    ``round_each=False`` (CUDA) rounds and converts the whole batch in three launches, leaving two per image (to
    float, resize). On the CPU a pass over a batch-sized float tensor runs from memory rather than cache: rounding
    each crop just after it is resized was 1.5x faster there at 500x375 -> 224 px. Both give the same bits;
    ``scripts/gpu_check.py`` times the two on the GPU."""
    resized = [resized_view(image, box, size, interpolation, crop_pct) for image, box in zip(images, boxes)]
    if round_each:
        return torch.cat([crop.round_().clamp_(0, 255).to(torch.uint8) for crop in resized])
    return torch.cat(resized).round_().clamp_(0, 255).to(torch.uint8)


def resized_view(image: torch.Tensor, box: list[int], size: int, interpolation: T.InterpolationMode,
                 crop_pct: float) -> torch.Tensor:
    """One image as a float32 ``1 x 3 x size x size`` tensor, not rounded: the training crop ``box`` (top, left,
    height, width) resized to ``size``, or, without one (:data:`NO_BOX`), the evaluation view: the shorter side
    resized to ``size / crop_pct``, then the centre ``size`` square (as the default loader does with PIL).

    Resized in float32 on every device: what torchvision runs on CUDA (its uint8 resize kernels are the CPU's), so
    the tests on the CPU check the arithmetic the GPU runs. The training crop calls ``interpolate`` itself: what
    torchvision's ``resized_crop`` calls for a box inside the image (sampled boxes are), without its dispatch, which
    took half the time of a small crop (40 -> 20 us per image on the CPU, where the arithmetic is negligible)."""
    if box[0] >= 0:
        top, left, height, width = box
        return interpolate(image[None, :, top:top + height, left:left + width].float(), size=(size, size),
                           mode=interpolation.value, align_corners=False, antialias=True)
    resized = F.resize(image.float(), [int(math.floor(size / crop_pct))], interpolation=interpolation,
                       antialias=True)
    return F.center_crop(resized, [size, size])[None]


def device_loader(split: SeededDataset, data: DataConfig, prep: Preprocessing, sampler: EpochSampler,
                  batch_size: int, workers: int, device: torch.device, train: bool,
                  prefetch_factor: int | None) -> DeviceBatches:
    loader = DataLoader(EncodedImages(split, data, train), batch_size=batch_size, sampler=sampler,
                        num_workers=workers, collate_fn=collate_encoded, pin_memory=device.type == "cuda",
                        drop_last=train, persistent_workers=workers > 0,
                        prefetch_factor=prefetch_factor if workers > 0 else None)
    return DeviceBatches(loader, data, prep, device, train)
