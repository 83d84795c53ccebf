"""Where and how tensors are computed during a run: the device, the autocast dtype, the memory format and the
process group, travelling together as one :class:`Runtime`."""
from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..errors import StitchkitError
from . import distributed
from .settings import TrainConfig


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (``auto``: the GPU when there is one). A command's ``--device`` option is checked where
    it is parsed (:func:`stitchkit.cli.common.available_device`), so this names the setting."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cuda_missing(name):
        raise StitchkitError(f"train.device={name} but no CUDA device is visible; use train.device=cpu")
    return torch.device(name)


def cuda_missing(name: str) -> bool:
    """Whether the device ``name`` is a CUDA device and none is visible."""
    return name != "auto" and torch.device(name).type == "cuda" and not torch.cuda.is_available()


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[setting]


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: full precision
    channels_last: bool
    ctx: distributed.Dist

    @classmethod
    def from_settings(cls, t: TrainConfig) -> "Runtime":
        """Set torch's threads, pick the device, join the process group (under torchrun) and pin this process's
        GPU."""
        if t.threads:
            torch.set_num_threads(t.threads)
        device = resolve_device(t.device)
        ctx = distributed.init(device.type)
        if device.type == "cuda" and ctx.enabled:
            device = torch.device("cuda", ctx.local_rank)
            torch.cuda.set_device(device)
        return cls(device, amp_dtype(t.amp, device), t.channels_last, ctx)

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def to_device(self, images: torch.Tensor, labels: torch.Tensor, augment=None, params=None):
        """A batch on the device (augmented there when the data pipeline leaves that to the device), in the memory
        format the models use."""
        images = images.to(self.device, non_blocking=True)
        if augment is not None:
            images = augment(images, params)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    @property
    def amp_name(self) -> str:
        return str(self.dtype).replace("torch.", "") if self.dtype else "none"


def package_versions() -> dict[str, str]:
    import timm
    import torchvision

    from ..version import __version__

    return {"stitchkit": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def cpu_model() -> str | None:
    """The CPU's model name as Linux reports it (``platform.processor()`` is empty there), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def loader_workers(setting: int | None, most: int = 4) -> int:
    """Data-loader workers for train.workers: the setting where given, else ``most``, or fewer where this process
    has fewer CPUs (those it may run on, shared among torchrun's processes on the machine). More workers than
    CPUs only take turns (torch warns about it), and one per CPU still leaves the decoding beside the step."""
    if setting is not None:
        return setting
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(most, cpus // processes))


def machine(device: torch.device | None = None) -> dict:
    """What a run's numbers depend on beyond its settings and package versions: torch's CPU thread count (a model
    trained on one thread differs from one trained on two) and the CPU, with the vector kernels torch chose for it
    (kernels of another width round differently); the GPU where the run used one."""
    record = {"threads": torch.get_num_threads(), "cores": os.cpu_count(),
              "cpu": cpu_model() or platform.machine(), "cpu_kernels": torch.backends.cpu.get_cpu_capability()}
    if device is not None and device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record
