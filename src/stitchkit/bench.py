"""``stitchkit bench``: training throughput of a stitch against its alternatives and its lower bound, side by side.

Columns, all measured in one process on the same inputs (images/s = batch / median step time):

* ``stitchkit``: the stitched training step as the engine runs it (frozen parts in eval mode, the front without
  autograd, only adapter parameters in AdamW);
* ``naive``: the same stitch as the paper's code runs it: the whole model in train mode, frozen only by
  ``requires_grad=False``, the front inside autograd, every parameter handed to AdamW, fp32, NCHW;
* ``full_dst``: one training step of the whole destination model (what a user might do instead);
* ``lower_bound``: the sum of the unavoidable parts, timed separately: front forward without autograd + adapters
  forward and backward (and their AdamW step) + back forward and backward to its input only.

``--grouped`` measures something else: the wall time of whole training runs (data, training, evaluation, result
files) for several stitches that share a source front, trained one after another and then in one pass
(:mod:`stitchkit.training.grouped`), and checks that both give the same results.

Timings on shared machines are noisy: compare the ratios of one run, not numbers across runs.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import StitchkitError
from .stitching import create_stitched
from .zoo.models import create_model


def _time(step: Callable[[], None], warmup: int, repeats: int, device: torch.device | None = None) -> list[float]:
    def run():
        step()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are asynchronous: time them, not their launch

    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def _column(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {"images_per_s": batch / median, "median_s": median, "min_s": min(times), "max_s": max(times),
            "repeats": len(times)}


def _interleaved(steps: dict[str, Callable[[], None]], warmup: int, repeats: int,
                 device: torch.device) -> dict[str, list[float]]:
    """Step times of every entry, measured in turns (one step of each, ``repeats`` times), so that the machine's
    noise (another job, a frequency change) falls on every column alike and their ratios hold."""
    def run(step):
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are asynchronous: time them, not their launch

    for step in steps.values():
        for _ in range(warmup):
            run(step)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            run(step)
            times[name].append(time.perf_counter() - start)
    return times


def _peak_memory_gib(step: Callable[[], None], device: torch.device) -> float:
    """Peak memory allocated during one step (CUDA), measured on its own after the timing."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def _training_step(forward: Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor, labels: torch.Tensor,
                   autocast: Callable) -> Callable[[], None]:
    """One training step of ``forward`` on ``x``: forward (under ``autocast()``), loss, backward, optimizer step."""

    def step():
        with autocast():
            logits = forward(x)
        F.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_bench(src: str = "resnet50", dst: str | None = None, gap: str = "1:3", adapter: str = "bottleneck",
              resize: str = "bilinear", batch_size: int = 8, input_size: int = 224, repeats: int = 5, warmup: int = 2,
              channels_last: bool = False, threads: int | None = None, device: str = "cpu", amp: str = "none",
              compile: bool = False, columns: tuple[str, ...] = ("stitchkit", "naive", "full_dst", "lower_bound")) -> dict:
    """Measure the ``columns``; returns ``{"columns": {...}, "speedup_vs_naive", "ratio_to_lower_bound", ...}``.

    ``amp`` (``none`` or ``bf16``), ``channels_last`` and ``compile`` apply to stitchkit's step, the full
    destination step and the lower bound; the naive step is always the paper's fp32 NCHW eager step.
    """
    from contextlib import nullcontext

    if threads:
        torch.set_num_threads(threads)
    if amp not in ("none", "bf16"):
        raise ValueError(f"amp must be none or bf16, got {amp!r}")
    dev = torch.device(device)
    dst = dst or src
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, 3, input_size, input_size, device=dev).contiguous(memory_format=fmt)

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16) if amp == "bf16" else nullcontext()

    def stitched_model(frozen_mode: str, memory_format):
        # A few of the benchmark's images start the adapters as training would (it measures the same modules).
        model = create_stitched(src, dst, gap, adapter, resize, input_size=input_size, frozen_mode=frozen_mode,
                                calibration_images=x[:8].float().contiguous().cpu())
        return model.to(dev, memory_format=memory_format).train()

    model = stitched_model("eval", fmt)
    with torch.no_grad():
        classes = model(x[:1]).shape[-1]
    labels = torch.randint(0, classes, (batch_size,), device=dev)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, fused=dev.type == "cuda")
    forward = torch.compile(model) if compile else model

    # Every step is built first and then timed in turns (see _interleaved); the models stay in memory together.
    steps: dict[str, Callable[[], None]] = {}
    if "stitchkit" in columns:
        steps["stitchkit"] = _training_step(forward, optimizer, x, labels, autocast)
    if "naive" in columns:
        naive = stitched_model("train", torch.contiguous_format)  # the paper's code: NCHW whatever the flag says
        naive_net = nn.Sequential(naive.front, naive.bridge, naive.back).train()  # front in autograd, all train mode
        naive_optimizer = torch.optim.AdamW(naive_net.parameters(), lr=1e-3)  # the paper's optimizer holds everything
        steps["naive"] = _training_step(naive_net, naive_optimizer, x.contiguous(), labels, nullcontext)  # fp32
    if "full_dst" in columns:
        full = create_model(dst, input_size=input_size).to(dev, memory_format=fmt).train()
        full_optimizer = torch.optim.AdamW(full.parameters(), lr=1e-3, fused=dev.type == "cuda")
        full_forward = torch.compile(full) if compile else full
        steps["full_dst"] = _training_step(full_forward, full_optimizer, x, labels, autocast)
    bound_parts = ("front", "adapters", "back")
    if "lower_bound" in columns:
        with torch.no_grad(), autocast():
            h = model.front(x)
            bridged = model.bridge(h)
        grad_out = torch.randn_like(bridged)

        def front_part():
            with torch.no_grad(), autocast():
                model.front(x)

        def adapter_part():
            with autocast():
                out = model.bridge(h)
            out.backward(grad_out)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def back_part():
            inp = bridged.detach().requires_grad_(True)
            with autocast():
                logits = model.back(inp)
            F.cross_entropy(logits.float(), labels).backward()

        steps.update(zip((f"bound:{p}" for p in bound_parts), (front_part, adapter_part, back_part)))

    times = _interleaved(steps, warmup, repeats, dev)
    results: dict[str, dict] = {}
    for name in ("stitchkit", "naive", "full_dst"):
        if name in steps:
            results[name] = _column(times[name], batch_size)
            if dev.type == "cuda":
                results[name]["peak_memory_gib"] = _peak_memory_gib(steps[name], dev)
    if "lower_bound" in columns:
        parts = {p: statistics.median(times[f"bound:{p}"]) for p in bound_parts}
        lower = sum(parts.values())
        results["lower_bound"] = {"images_per_s": batch_size / lower, "median_s": lower, "parts_s": parts,
                                  "repeats": repeats}

    def ratio(a: str, b: str) -> float | None:
        return results[a]["median_s"] / results[b]["median_s"] if a in results and b in results else None

    return {
        "src": src, "dst": dst, "gap": gap, "adapter": adapter, "resize": resize, "batch_size": batch_size,
        "input_size": input_size, "channels_last": channels_last, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "amp": amp, "compile": compile,
        "columns": results,
        "speedup_vs_naive": ratio("naive", "stitchkit"),
        "speedup_vs_full_dst": ratio("full_dst", "stitchkit"),
        "ratio_to_lower_bound": ratio("stitchkit", "lower_bound"),
    }


def format_bench(result: dict) -> str:
    flags = [f for f, on in ((", channels_last", result["channels_last"]), (", bf16 autocast", result["amp"] == "bf16"),
                             (", torch.compile", result["compile"])) if on]
    lines = [f"{result['src']} -> {result['dst']} gap {result['gap']} {result['adapter']}/{result['resize']}, batch "
             f"{result['batch_size']} at {result['input_size']} px on {result['device']}, {result['threads']} threads"
             + "".join(flags),
             f"{'column':12} {'images/s':>10} {'median s':>10} {'min s':>8} {'max s':>8} {'peak GiB':>9}"]
    for name, column in result["columns"].items():
        def cell(key: str, width: int, digits: int) -> str:
            value = column.get(key)
            return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

        lines.append(f"{name:12} {column['images_per_s']:10.1f} {column['median_s']:10.4f} {cell('min_s', 8, 4)} "
                     f"{cell('max_s', 8, 4)} {cell('peak_memory_gib', 9, 2)}")
    if "lower_bound" in result["columns"]:
        parts = result["columns"]["lower_bound"]["parts_s"]
        lines.append("lower bound parts: " + ", ".join(f"{k} {v:.4f} s" for k, v in parts.items()))
    described = [("speedup vs naive {:.2f}x", result["speedup_vs_naive"]),
                 ("vs full destination {:.2f}x", result["speedup_vs_full_dst"]),
                 ("ratio to lower bound {:.2f}", result["ratio_to_lower_bound"])]
    lines.append(", ".join(text.format(value) for text, value in described if value is not None))
    return "\n".join(lines)


def run_group_bench(src: str = "resnet50", dst: str | None = None, gaps: list[str] = ("3:3", "3:4"),
                    adapters: list[str] = ("linear", "bottleneck"), resize: str = "bilinear", batch_size: int = 8,
                    input_size: int = 224, train_images: int = 64, val_images: int = 32, workers: int = 0,
                    repeats: int = 1, channels_last: bool = False, threads: int | None = None) -> dict:
    """Train every (gap, adapter) cell as a separate run, then all of them in one pass; wall times and their ratio.

    Each run is one epoch of ``train_images`` synthetic images (1,000 classes, so that randomly initialised
    destination heads fit; no weights can be downloaded here) and an evaluation on ``val_images``, through the real
    engine: data pipeline, checkpoints and result files included. ``repeats`` alternates separate and grouped
    measurements and reports medians.
    """
    import tempfile
    from pathlib import Path

    from .training import load_config, train
    from .training import train_group

    dst = dst or src
    cells = [(gap, adapter) for gap in gaps for adapter in adapters]
    settings = ["mode=stitch", f"model.src={src}", f"model.dst={dst}", f"model.resize={resize}",
                "model.pretrained=false", "data.name=synthetic", f"data.input_size={input_size}",
                f"data.synthetic_train_size={train_images}", f"data.synthetic_val_size={val_images}",
                "data.synthetic_classes=1000", f"train.batch_size={batch_size}", f"optim.batch_size={batch_size}",
                "train.epochs=1", f"train.workers={workers}", "train.log_every=1000000", "train.tensorboard=false",
                f"train.channels_last={str(channels_last).lower()}", "train.device=cpu"]
    if threads:
        settings.append(f"train.threads={threads}")

    def configs(folder: Path) -> list:
        return [load_config(None, [*settings, f"model.gap={gap}", f"model.adapter={adapter}",
                                   f"output.dir={folder / (gap.replace(':', 'to') + '-' + adapter)}"])
                for gap, adapter in cells]

    separate_s, grouped_s, equal = [], [], True
    with tempfile.TemporaryDirectory(prefix="stitchkit-bench-") as tmp:
        for i in range(repeats):
            start = time.perf_counter()
            alone = [train(c) for c in configs(Path(tmp) / f"separate{i}")]
            separate_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            together = train_group(configs(Path(tmp) / f"grouped{i}"))
            grouped_s.append(time.perf_counter() - start)
            equal &= all(not isinstance(b, BaseException) and (a["loss"], a["train_loss"], a["top1"]) ==
                         (b["loss"], b["train_loss"], b["top1"]) for a, b in zip(alone, together))
    separate, grouped = statistics.median(separate_s), statistics.median(grouped_s)
    return {"src": src, "dst": dst, "cells": [f"{g} {a}" for g, a in cells], "resize": resize,
            "batch_size": batch_size, "input_size": input_size, "train_images": train_images,
            "val_images": val_images, "workers": workers, "channels_last": channels_last,
            "threads": torch.get_num_threads(), "separate_s": separate, "grouped_s": grouped,
            "separate_runs_s": separate_s, "grouped_runs_s": grouped_s,
            "grouped_vs_separate": grouped / separate, "results_equal": equal}


def format_group_bench(result: dict) -> str:
    n = len(result["cells"])
    return "\n".join([
        f"{result['src']} -> {result['dst']}: {n} stitches ({', '.join(result['cells'])}), {result['resize']}, batch "
        f"{result['batch_size']} at {result['input_size']} px, {result['train_images']} training + "
        f"{result['val_images']} evaluation images each, {result['threads']} threads",
        f"{n} separate runs: {result['separate_s']:.1f} s",
        f"one pass:        {result['grouped_s']:.1f} s",
        f"grouped / separate: {result['grouped_vs_separate']:.2f}x wall time; results equal: "
        f"{'yes' if result['results_equal'] else 'NO'}",
    ])


def _write_jpegs(root, count: int, width: int, height: int, classes: int = 4, indices=None) -> None:
    """``root/train/class<k>/``: smooth, photograph-like JPEGs (gradients plus blurred noise, quality 90) of
    ImageNet's typical size; ``root/val/``: a copy of one per class. ``indices``: write only these of the ``count``
    images (each is a function of its index, so processes can share the work); the val copies come with index 0."""
    import numpy as np
    from PIL import Image, ImageFilter

    for i in range(count) if indices is None else indices:
        rng = np.random.default_rng(i)
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        ramp = np.add.outer(np.linspace(0, 120, height), np.linspace(0, 100, width))[..., None]
        noise = rng.uniform(0, 135, (height // 8, width // 8, 3))
        coarse = np.asarray(Image.fromarray(noise.astype(np.uint8)).resize((width, height), Image.BICUBIC))
        pixels = np.clip(ramp + coarse, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).filter(ImageFilter.DETAIL).save(folder / f"{i}.jpg", quality=90)
    if indices is None or 0 in indices:
        for c in range(classes):  # one image per class as the val split, which build_splits requires
            val = root / "val" / f"class{c}"
            val.mkdir(parents=True, exist_ok=True)
            c_rng = np.random.default_rng(10**6 + c)
            noise = c_rng.uniform(0, 255, (height // 8, width // 8, 3)).astype(np.uint8)
            Image.fromarray(noise).resize((width, height), Image.BICUBIC).save(val / "0.jpg", quality=90)


def run_data_bench(root: str | None = None, src: str = "resnet50", input_size: int = 224, images: int = 64,
                   batch_size: int = 32, repeats: int = 3, device: str | None = None) -> dict:
    """Images/s of one data-loader worker (one thread, as in a worker process) for each stage of the training
    pipeline, and of :class:`~stitchkit.training.data.DeviceAugment` on batches on ``device`` (default: CUDA when
    available). ``root``: an ImageNet-layout folder (``train/<class>/*.jpg``); default: ``images`` JPEGs of
    500x375 pixels written to a temporary folder.
    """
    import tempfile
    from pathlib import Path

    from .training import load_config
    from .training.augment import augment_per_image
    from .training.data import build_splits, collate
    from .zoo.metadata import preprocessing

    generated = root is None
    threads = torch.get_num_threads()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="stitchkit-data-bench-") as tmp:
        if root is None:
            root = Path(tmp)
            _write_jpegs(root, images, 500, 375)
        prep = preprocessing(src)

        def splits(*extra):
            data = load_config(None, ["data.name=imagefolder", f"data.root={root}", f"data.input_size={input_size}",
                                      *extra]).data
            return build_splits(data, prep, seed=0)

        cpu, gpu = splits(), splits("data.augment_on=device")
        n = min(images, len(cpu.train))
        positions = [(i % len(cpu.train), 0) for i in range(n)]
        torch.set_num_threads(1)
        try:
            def per_image(fn):
                return _column(_time(lambda: [fn(p) for p in positions], 1, repeats), n)

            columns = {
                "decode": per_image(lambda p: cpu.train.source.load(cpu.train.indices[p[0]])),
                "decode+augment (cpu)": per_image(lambda p: cpu.train[p]),
                "decode+crop (augment_on=device, worker part)": per_image(lambda p: gpu.train[p]),
            }
            columns.update(_dali_column(cpu, root, src, input_size, batch_size, repeats, dev))
            batch = collate([gpu.train[(i % len(gpu.train), 0)] for i in range(batch_size)])
            crops, params = batch[0].to(dev), batch[3]
            augment = gpu.device_augment
            # The seeds the rows were drawn from, for the per-image reference (stitchkit 0.5's device augmentation).
            seeds = [int(torch.randint(0, 2**62, (), generator=torch.Generator().manual_seed(i)))
                     for i in range(batch_size)]
            reference_params = augment.plan.draw_many(seeds)

            def device_step():
                augment(crops, params)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)

            def per_image_step():
                augmented = augment_per_image(crops, seeds, augment.plan.hflip, augment.plan.auto_augment)
                (augmented.float() / 255 - augment.mean.to(dev)) / augment.std.to(dev)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)

            torch.set_num_threads(threads)  # the device part runs in the training process
            times = _interleaved({"batched": lambda: augment(crops, reference_params), "per_image": per_image_step},
                                 1, repeats, dev)
            columns[f"flip+autoaugment+normalize on {dev.type} (batch {batch_size}, batched)"] = _column(
                times["batched"], batch_size)
            columns[f"the same per image (stitchkit 0.5, batch {batch_size})"] = _column(times["per_image"], batch_size)
        finally:
            torch.set_num_threads(threads)
    return {"root": "generated 500x375 JPEGs" if generated else str(root),
            "input_size": input_size, "images": n, "device": str(dev), "columns": columns}


def _dali_column(splits, root, src: str, input_size: int, batch_size: int, repeats: int,
                 device: torch.device) -> dict:
    """The same decoding and augmentation as a DALI pipeline with one thread (on the GPU when there is one), when
    NVIDIA DALI is installed; nothing otherwise."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return {}
    from .training import load_config
    from .training.dali import DaliTrainLoader
    from .training.data import EpochSampler
    from .zoo.metadata import preprocessing

    data = load_config(None, ["data.name=imagefolder", f"data.root={root}", f"data.input_size={input_size}",
                              "data.loader=dali"]).data
    batch = min(batch_size, len(splits.train))
    sampler = EpochSampler(len(splits.train), 0)
    loader = DaliTrainLoader(splits.train, data, preprocessing(src), sampler, batch, 1, device, 0, 0, 1)
    images = len(sampler) // batch * batch
    where = "GPU decoding" if device.type == "cuda" else "CPU"
    return {f"decode+augment (data.loader=dali, 1 thread, {where})": _column(
        _time(lambda: [b for b in loader], 1, repeats, device), images)}


def format_data_bench(result: dict) -> str:
    lines = [f"data pipeline, one worker (1 thread), {result['images']} images from {result['root']} to "
             f"{result['input_size']} px", f"{'stage':60} {'images/s':>10}"]
    for name, column in result["columns"].items():
        lines.append(f"{name:60} {column['images_per_s']:10.1f}")
    return "\n".join(lines)


def run_pipeline_bench(src: str = "resnet50", dst: str | None = None, gap: str = "1:3", adapter: str = "bottleneck",
                       resize: str = "bilinear", batch_size: int = 8, input_size: int = 224, train_images: int = 64,
                       workers: int = 0, device: str = "cpu", amp: str = "none", channels_last: bool = False,
                       compile: bool = False, augment_on: str = "cpu", root: str | None = None,
                       repeats: int = 5, threads: int | None = None, loader: str = "torch") -> dict:
    """Where a training run's time goes, measured in one process on one data set: the **loader alone** (one epoch of
    training batches decoded, augmented and moved to ``device``, no model), the **step alone** (stitchkit's training
    step on a batch already on the device, :func:`run_bench`'s ``stitchkit`` column) and the **whole run**
    (``stitchkit train`` for one epoch; its training images per second of training, set-up and evaluation
    excluded). The whole run can be no faster than the slower of the first two; ``run / step`` is the share of the
    step's speed a user's run sees.

    ``root``: an ImageNet-layout folder; default: ``train_images`` JPEGs of 500x375 pixels written to a temporary
    folder (decoding real files is part of what is measured). ``loader``: ``data.loader`` (torch or gpu). On CUDA the
    loader pass also counts the host synchronisations it makes per batch (``torch.cuda.set_sync_debug_mode``).
    """
    import tempfile
    import warnings
    from pathlib import Path

    from .training import load_config, train
    from .training.runtime import Runtime
    from .training.stream import build_stream

    if threads:
        torch.set_num_threads(threads)
    dst = dst or src
    amp_setting = {"none": "none", "bf16": "bf16"}[amp]
    with tempfile.TemporaryDirectory(prefix="stitchkit-pipeline-bench-") as tmp:
        generated = root is None
        if generated:
            root = str(Path(tmp) / "data")
            _write_jpegs(Path(root), train_images, 500, 375)
        classes = len([d for d in (Path(root) / "train").iterdir() if d.is_dir()])
        config = load_config(None, [
            "mode=stitch", f"model.src={src}", f"model.dst={dst}", f"model.gap={gap}", f"model.adapter={adapter}",
            f"model.resize={resize}", "model.pretrained=false", f"model.num_classes={classes}",
            "data.name=imagefolder", f"data.root={root}", f"data.input_size={input_size}",
            f"data.augment_on={augment_on}", f"data.loader={loader}", f"data.limit_train={train_images}",
            f"data.limit_val={batch_size}",
            f"train.batch_size={batch_size}", f"optim.batch_size={batch_size}", "train.epochs=1",
            f"train.workers={workers}", f"train.device={device}", f"train.amp={amp_setting}",
            f"train.channels_last={str(channels_last).lower()}", f"train.compile={str(compile).lower()}",
            "train.eval_at_start=false", "train.log_every=1000000", "train.count_host_syncs=true",
            f"output.dir={Path(tmp) / 'run'}",
            *([f"train.threads={threads}"] if threads else [])])
        runtime = Runtime.from_settings(config.train)
        stream = build_stream(config, 1, runtime)
        stream.train_sampler.set_epoch(0)
        cuda = runtime.device.type == "cuda"
        seen, batches, start = 0, 0, time.perf_counter()
        with warnings.catch_warnings(record=True) as syncs:
            warnings.simplefilter("always")
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                for images, labels, _, params in stream.train_loader:
                    images, labels = runtime.to_device(images, labels, stream.splits.device_augment, params)
                    seen, batches = seen + labels.numel(), batches + 1
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("default")
        if cuda:
            torch.cuda.synchronize(runtime.device)
        loader_s = time.perf_counter() - start
        host_syncs = sum("synchroniz" in str(w.message) for w in syncs) / max(batches, 1) if cuda else None
        del stream  # its workers
        step = run_bench(src, dst, gap, adapter, resize, batch_size, input_size, repeats, 2, channels_last, threads,
                         str(runtime.device), amp, compile, ("stitchkit",))["columns"]["stitchkit"]
        result = train(config)
    if result["images_per_s"] is None:  # its only step compiled: no training step was timed
        raise StitchkitError(f"the whole run timed no training step (with --compile the first one compiles); pass "
                             f"--train-images of at least {2 * batch_size} (two batches)")
    loaded = seen / loader_s
    return {"src": src, "dst": dst, "gap": gap, "adapter": adapter, "batch_size": batch_size,
            "input_size": input_size, "images": seen, "workers": workers, "device": str(runtime.device),
            "amp": amp, "augment_on": augment_on, "loader": loader, "host_syncs_per_batch": host_syncs,
            "run_host_syncs_per_step": result.get("host_syncs_per_step"),
            "data": "generated 500x375 JPEGs" if generated else str(root),
            "loader_images_per_s": loaded, "step_images_per_s": step["images_per_s"],
            "run_images_per_s": result["images_per_s"], "run_seconds": result["seconds"],
            "run_fraction_of_step": result["images_per_s"] / step["images_per_s"],
            "loader_fraction_of_step": loaded / step["images_per_s"],
            "limited_by": "data" if loaded < step["images_per_s"] else "step"}


def format_pipeline_bench(result: dict) -> str:
    seconds = ", ".join(f"{k} {v:.1f}" for k, v in result["run_seconds"].items())
    return "\n".join([
        f"{result['src']} -> {result['dst']} {result['gap']} {result['adapter']}, batch {result['batch_size']} at "
        f"{result['input_size']} px, {result['images']} images ({result['data']}), {result['workers']} workers, "
        f"data.loader={result['loader']}, augmentation on "
        f"{'device' if result['loader'] == 'gpu' else result['augment_on']}, {result['device']}, amp {result['amp']}",
        f"{'loader alone':12} {result['loader_images_per_s']:10.1f} images/s "
        f"({result['loader_fraction_of_step']:.2f} of the step)",
        f"{'step alone':12} {result['step_images_per_s']:10.1f} images/s",
        f"{'whole run':12} {result['run_images_per_s']:10.1f} images/s of training "
        f"({result['run_fraction_of_step']:.2f} of the step; limited by the {result['limited_by']})",
        f"whole run seconds: {seconds}",
        *([f"host synchronisations per batch in the loader: {result['host_syncs_per_batch']:.1f}"]
          if result["host_syncs_per_batch"] is not None else []),
        *([f"host synchronisations per training step in the whole run: {result['run_host_syncs_per_step']:.1f}"]
          if result.get("run_host_syncs_per_step") is not None else []),
    ])
