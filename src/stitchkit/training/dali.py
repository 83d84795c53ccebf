"""Training images through NVIDIA DALI (``data.loader=dali``): decoding and augmentation as a DALI pipeline, on the
GPU (``mixed`` JPEG decoding, nvJPEG) when training on CUDA, on the CPU otherwise.

The pipeline does what the default training transform does: random-resized crop (or resize + centre crop), horizontal
flip, AutoAugment with the ImageNet policy (DALI's ``auto_aug``) and normalisation with the source model's mean and
std. It reads the same files as the default loader (the training split after the hold-out and ``limit_train``),
sharded over processes, with the epoch-0 order drawn from ``train.seed`` and a full reshuffle after each epoch.

What it does not keep: DALI's randomness is its own, not a function of (seed, epoch, index), so runs are repeatable
for a seed on one machine but differ from ``data.loader=torch`` runs, and a run resumed in the middle of an epoch
continues with other images and augmentations than an uninterrupted one would have seen (its step count, schedule
and optimizer state are restored exactly). Evaluation always uses the default loader. Corrupt files stop training
(``data.skip_corrupt`` is for the default loader).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from ..errors import StitchkitError
from .settings import DataConfig
from ..zoo.metadata import Preprocessing
from .data import EpochSampler, SeededDataset


def _import_dali():
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError:
        raise StitchkitError("data.loader=dali needs NVIDIA DALI: pip install nvidia-dali-cuda120 (or the build for "
                             "your CUDA version); or use data.loader=torch") from None
    return DALIGenericIterator, LastBatchPolicy


def _pipeline(files: list[str], labels: list[int], data: DataConfig, prep: Preprocessing, shard: int, shards: int,
              seed: int, batch_size: int, threads: int, device_id: int | None):
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug import auto_augment

    size = data.input_size
    decoder_device = "mixed" if device_id is not None else "cpu"
    interp = types.INTERP_CUBIC if prep.interpolation == "bicubic" else types.INTERP_LINEAR

    @pipeline_def(enable_conditionals=data.auto_augment)  # AutoAugment picks sub-policies with conditionals
    def train_pipeline():
        encoded, label = fn.readers.file(files=files, labels=labels, shard_id=shard, num_shards=shards,
                                         shuffle_after_epoch=True, seed=seed, name="reader")
        if data.random_resized_crop:
            images = fn.decoders.image_random_crop(encoded, device=decoder_device, output_type=types.RGB,
                                                   random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3])
            images = fn.resize(images, resize_x=size, resize_y=size, interp_type=interp)
        else:
            images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)
            crop_pct = data.crop_pct or prep.crop_pct
            images = fn.resize(images, resize_shorter=int(math.floor(size / crop_pct)), interp_type=interp)
            images = fn.crop(images, crop=[size, size])
        if data.auto_augment:
            images = auto_augment.auto_augment_image_net(images, shape=[size, size])
        mirror = fn.random.coin_flip(probability=0.5) if data.hflip else 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mirror=mirror,
                                          mean=[255 * m for m in prep.mean], std=[255 * s for s in prep.std])
        if device_id is not None:
            label = label.gpu()
        return images, label

    return train_pipeline(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed)


class DaliTrainLoader:
    """Yields ``(images, labels, 0, None)`` batches like the default training loader, as many per epoch as the
    ``sampler`` says (``len(sampler) // batch_size``), from a DALI pipeline that runs on across epochs."""

    def __init__(self, dataset: SeededDataset, data: DataConfig, prep: Preprocessing, sampler: EpochSampler,
                 batch_size: int, workers: int, device: torch.device, seed: int, rank: int, world_size: int):
        iterator_class, last_batch = _import_dali()
        samples = dataset.source.samples  # an ImageFolderSource (checked by the config)
        # Epoch 0 in an order drawn from the seed; the reader reshuffles the whole list after every epoch.
        order = torch.randperm(len(dataset.indices), generator=torch.Generator().manual_seed(seed)).tolist()
        files = [samples[dataset.indices[i]][0] for i in order]
        labels = [samples[dataset.indices[i]][1] for i in order]
        device_id = (device.index or 0) if device.type == "cuda" else None
        self.pipeline = _pipeline(files, labels, data, prep, rank, world_size, seed * 1_000_003 + rank, batch_size,
                                  max(workers, 1), device_id)
        self.pipeline.build()
        self.iterator = iterator_class([self.pipeline], ["images", "labels"], reader_name="reader",
                                       last_batch_policy=last_batch.DROP, auto_reset=False)
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, None]]:
        for _ in range(len(self.sampler) // self.batch_size):
            try:
                batch = next(self.iterator)
            except StopIteration:  # DALI's epoch ended: start its next one
                self.iterator.reset()
                batch = next(self.iterator)
            images, labels = batch[0]["images"], batch[0]["labels"]
            yield images, labels.reshape(-1).long(), 0, None
