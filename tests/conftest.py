"""Test set-up: one torch thread (CI has 2 cores), offline, models built once per session."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools

import pytest
import torch

torch.set_num_threads(1)

# The paper's four models, and a small input size at which every cut point still has a spatial extent.
PAPER_MODELS = ["resnet50", "mobilenetv3_large_100", "vit_small_patch16_224", "torchvision:swin_t"]
SMALL = 64


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without it installed, pytest must not refuse it
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the README's test command): one worker per core this process may run on, at most one per 3 GiB
    of memory (a worker holds torch, its models and the data-loader and training processes its tests start) and at
    most 8. Each worker runs one torch thread, so on CI's 2 cores two workers finish in about half the time of one
    process, where torch's own threads had little to share out across tiny models."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = 3 * cores
    return max(1, min(cores, int(memory_gib // 3), 8))


@functools.lru_cache(maxsize=None)
def _model(name: str, input_size: int):
    from stitchkit import create_model

    torch.manual_seed(0)
    return create_model(name, input_size=input_size)


@pytest.fixture
def live_pid():
    """The PID of a process that lives until the test ends (it waits for its stdin to close, not for a time)."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield child.pid
    child.stdin.close()
    child.wait()


@pytest.fixture
def gone_pid():
    """The PID of a process that has ended (and been reaped)."""
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture(scope="session")
def model_factory():
    """``model_factory(name, input_size)``: a cached, randomly initialised model in eval mode (do not mutate)."""
    return _model
