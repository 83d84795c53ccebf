"""The data a pass trains on: the splits, their loaders and order, and the length of the loop. Runs trained in one
pass share one :class:`DataStream`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from ..errors import StitchkitError
from ..zoo.metadata import preprocessing
from . import distributed
from .config import Config
from .data import EpochSampler, Splits, build_splits, calibration_images, collate
from .runtime import Runtime


def make_loader(dataset, sampler, batch_size: int, workers: int, device: torch.device, train: bool) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", drop_last=train, persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def eval_loaders(splits: Splits, batch_size: int, workers: int, device: torch.device,
                 ctx: distributed.Dist) -> dict[str, DataLoader]:
    """Loaders for the evaluation splits (val, and hold-out when there is one), each image seen once over ranks."""
    loaders = {}
    for split in ("val", "holdout"):
        dataset = getattr(splits, split)
        if dataset is not None:
            sampler = EpochSampler(len(dataset), 0, ctx.rank, ctx.world_size, shuffle=False)
            loaders[split] = make_loader(dataset, sampler, batch_size, workers, device, False)
    return loaders


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

    def calibration_images(self, model_name: str) -> torch.Tensor:
        """A batch of training images for ``model_name`` (the same for every run of this seed, in a pass or not)."""
        data, model = self.config.data, self.config.model
        key = (model_name, model.init_images)
        if key not in self.calibration:
            self.calibration[key] = calibration_images(self.splits, data, model_name, model.init_images,
                                                       self.config.train.seed)
        return self.calibration[key]


def build_stream(config: Config, accum: int, runtime: Runtime) -> DataStream:
    t, device, ctx = config.train, runtime.device, runtime.ctx
    prep = preprocessing(config.model.src)  # the model that sees the pixels sets normalisation and crop
    splits = build_splits(config.data, prep, t.seed)
    sampler = EpochSampler(len(splits.train), t.seed, ctx.rank, ctx.world_size, True)
    if config.data.loader == "dali":
        from .dali import DaliTrainLoader

        loader = DaliTrainLoader(splits.train, config.data, prep, sampler, t.batch_size,
                                 t.workers, device, t.seed, ctx.rank, ctx.world_size)
    else:
        loader = make_loader(splits.train, sampler, t.batch_size, t.workers, device, True)
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
    return DataStream(config, splits, sampler, loader, eval_loaders(splits, t.batch_size, t.workers, device, ctx),
                      accum, micro_per_epoch, steps_per_epoch, total_steps)
