"""Starts are pluggable: one registered class decides what surrounds the adapters and how they start, and every
part of stitchkit (create_stitched, training, the CLI listing) takes a new one by name."""
import subprocess
import sys

import pytest
import torch
from torch import nn

import stitchkit
from stitchkit import Start, create_stitched, list_starts, register_start
from stitchkit.errors import UnknownNameError
from stitchkit.starts import DEFAULT_START, get_start
from stitchkit.training import load_config, train

SIZE = 32
TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=64", "data.synthetic_val_size=32",
        "optim.batch_size=32", "train.batch_size=32", "train.workers=0", "train.threads=1", "model.pretrained=false",
        "train.epochs=1", "mode=stitch", "model.src=resnet10t", "model.gap=1:2", "model.adapter=linear",
        "model.num_classes=10"]


class OutputScale(Start):
    """A start of this test's own: a norm after every adapter, whose scale starts at the destination's spread."""

    name = "test_output_scale"
    description = "a BatchNorm after every adapter, its scale at the destination's per-channel spread"
    needs_images = True
    calls = 0

    def wrap(self, kind, block, step, index, context):
        return stitchkit.adapters.Adapter(block, norm_out=nn.BatchNorm2d(step.out_channels))

    def fit(self, bridge, measured):
        type(self).calls += 1
        target = bridge.target(measured.destination)
        spread = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1]).std(0)
        bridge.adapters[-1].adapter.norm_out.weight.data.copy_(spread)


if OutputScale.name not in list_starts():
    register_start(OutputScale)


def test_a_start_is_one_registered_class_that_create_stitched_uses():
    images = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    before = OutputScale.calls
    model = create_stitched("resnet18", "resnet18", "1:3", "linear", input_size=SIZE, adapter_norm=OutputScale.name,
                            calibration_images=images)
    assert OutputScale.calls == before + 1 and model.bridge.calibrated
    assert all(isinstance(step.adapter.norm_out, nn.BatchNorm2d) for step in model.bridge.adapters)
    scale = model.bridge.adapters[-1].adapter.norm_out.weight
    assert scale.max() > 0 and not torch.equal(scale, torch.ones_like(scale))  # fitted, not left at its default
    uncalibrated = create_stitched("resnet18", "resnet18", "1:3", "linear", input_size=SIZE,
                                   adapter_norm=OutputScale.name)
    assert not uncalibrated.bridge.calibrated  # needs_images: warns when it trains (test_initialization)


def test_a_registered_start_trains_by_name(tmp_path):
    before = OutputScale.calls
    result = train(load_config(None, [*TINY, f"model.adapter_norm={OutputScale.name}", f"output.dir={tmp_path / 'r'}"]))
    assert result["status"] == "finished" and result["adapter_norm"] == OutputScale.name
    assert OutputScale.calls == before + 1  # started from the run's calibration images


def test_the_cli_lists_every_start_with_the_default_first():
    out = subprocess.run([sys.executable, "-m", "stitchkit", "starts"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith(DEFAULT_START) and "(default)" in lines[0]
    assert {line.split()[0] for line in lines} == {"fitted", "lstsq", "dst_stats", "paper_code", "paper_text"}


def test_unknown_start_names_list_the_choices_in_one_line():
    with pytest.raises(UnknownNameError) as err:
        get_start("lsq")
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in ("lstsq", "paper_code", "paper_text"))
    with pytest.raises(UnknownNameError, match="model.adapter_norm"):
        load_config(None, ["mode=stitch", "model.adapter_norm=lsq"])
    with pytest.raises(TypeError, match="Start subclass"):
        register_start(object)


def test_a_fittable_adapter_declares_it_once():
    """``fits=True`` on the adapter type is the one declaration: its blocks must implement FitsOutputMap."""
    name = "test_starts_not_fittable"
    if name not in stitchkit.list_adapters():
        @stitchkit.register_adapter(name, fits=True)
        def plain(in_channels, out_channels, stride=1, output_map=False):
            return nn.Conv2d(in_channels, out_channels, 1, stride)
    with pytest.raises(TypeError, match="FitsOutputMap"):
        stitchkit.create_adapter(name, 8, 16)
