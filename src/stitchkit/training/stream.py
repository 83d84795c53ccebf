"""The data a pass trains on: the splits, their loaders and order, and the length of the loop. Runs trained in one
pass share one :class:`DataStream`."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from ..errors import StitchkitError
from ..zoo.metadata import Preprocessing, preprocessing
from . import distributed
from .config import Config
from .data import EpochSampler, Splits, build_splits, calibration_images, collate
from .runtime import Runtime, loader_workers


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, train: bool,
                image_bytes: int = 0) -> DataLoader:
    """``image_bytes``: the size of one collated image, to keep the batches in flight within memory."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", drop_last=train, persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor(batch_size * image_bytes, workers) if workers > 0 else None,
    )


def prefetch_factor(batch_bytes: int, workers: int, most: int = 4) -> int:
    """Batches each worker keeps ready: ``most``, fewer (at least 2) where that would hold more than an eighth of
    the machine's memory. 14 workers x 4 float32 batches of 512 images at 224 px are 17 GB."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: keep torch's usual depth
        return 2
    fits = int(memory / 8 // max(batch_bytes * workers, 1))
    return max(2, min(most, fits))


def eval_batch_size(images: int, batch_size: int, workers: int) -> int:
    """The training batch size, smaller where the split has fewer batches than workers: evaluation then keeps
    every worker busy instead of waiting on a few (2,048 images in batches of 512 use 4 of 14 workers)."""
    if workers <= 1 or images >= batch_size * workers:
        return batch_size
    return max(1, math.ceil(images / workers))


def eval_loaders(splits: Splits, batch_size: int, workers: int, device: torch.device,
                 ctx: distributed.Dist, image_bytes: int = 0) -> dict[str, DataLoader]:
    """Loaders for the evaluation splits (val, and hold-out when there is one), each image seen once over ranks."""
    loaders = {}
    for split in ("val", "holdout"):
        dataset = getattr(splits, split)
        if dataset is not None:
            sampler = EpochSampler(len(dataset), 0, ctx.rank, ctx.world_size, shuffle=False)
            batch = eval_batch_size(len(sampler), batch_size, workers)
            loaders[split] = make_loader(dataset, sampler, batch, workers, device, False, image_bytes)
    return loaders


def evaluation_loaders(config: Config, splits: Splits, prep: Preprocessing, workers: int, device: torch.device,
                       ctx: distributed.Dist) -> dict:
    """The evaluation splits' loaders as ``data.loader`` reads images (training's, and evaluating a run again:
    ``data.loader=gpu`` decodes on the device, with the same sampler and batch)."""
    image_bytes = 3 * config.data.input_size**2
    evaluation = eval_loaders(splits, config.train.batch_size, workers, device, ctx, 4 * image_bytes)
    if config.data.loader != "gpu":
        return evaluation
    from .gpu_loader import device_loader

    return {split: device_loader(loader.dataset, config.data, prep, loader.sampler, loader.batch_size, workers, device,
                                 False, prefetch_factor(loader.batch_size * image_bytes, workers))
            for split, loader in evaluation.items()}


@dataclass
class DataStream:
    """What the runs of a pass share: the data, its order, and the length of the loop."""

    config: Config
    splits: Splits
    train_sampler: EpochSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    accum: int  # micro-batches per optimizer step
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    # Calibration batches by (model name, images): the runs of a pass share one seed and data, so they load and
    # preprocess the images once for the whole pass.
    calibration: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    def calibration_images(self, model_name: str, count: int) -> torch.Tensor:
        """``count`` training images for ``model_name`` (the same for every run of this seed, in a pass or not; a
        smaller count takes the first ones of a larger count's)."""
        key = (model_name, count)
        if key not in self.calibration:
            self.calibration[key] = calibration_images(self.splits, self.config.data, model_name, count,
                                                       self.config.train.seed)
        return self.calibration[key]


def build_stream(config: Config, accum: int, runtime: Runtime) -> DataStream:
    t, device, ctx = config.train, runtime.device, runtime.ctx
    workers = loader_workers(t.workers)
    prep = preprocessing(config.model.pixel_source)  # the model that sees the pixels sets normalisation and crop
    splits = build_splits(config.data, prep, t.seed)
    sampler = EpochSampler(len(splits.train), t.seed, ctx.rank, ctx.world_size, True)
    # One collated image: uint8 crops for augmentation on the device, float32 otherwise.
    train_bytes = 3 * config.data.input_size**2
    eval_bytes = 4 * train_bytes
    if config.data.loader == "gpu":
        from .gpu_loader import device_loader

        splits.device_augment = None  # the loader augments on the device itself
        loader = device_loader(splits.train, config.data, prep, sampler, t.batch_size, workers, device, True,
                               prefetch_factor(t.batch_size * train_bytes, workers))
    elif config.data.loader == "dali":
        from .dali import DaliTrainLoader

        loader = DaliTrainLoader(splits.train, config.data, prep, sampler, t.batch_size,
                                 workers, device, t.seed, ctx.rank, ctx.world_size)
    else:
        loader = make_loader(splits.train, sampler, t.batch_size, workers, device, True,
                             train_bytes if config.data.augment_on == "device" else eval_bytes)
    micro_per_epoch = len(sampler) // t.batch_size
    if micro_per_epoch == 0:
        raise StitchkitError(
            f"the training split has {len(splits.train)} images, fewer than one batch of {t.batch_size} per "
            "process; lower train.batch_size or add data"
        )
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    evaluation = evaluation_loaders(config, splits, prep, workers, device, ctx)
    return DataStream(config, splits, sampler, loader, evaluation,
                      accum, micro_per_epoch, steps_per_epoch, total_steps)
