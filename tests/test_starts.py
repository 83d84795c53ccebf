"""Starts are pluggable: one registered class decides what surrounds the adapters and how they start, and every
part of stitchkit (create_stitched, training, the CLI listing) takes a new one by name."""
import json
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
    assert {line.split()[0] for line in lines} == {"fitted", "fitted_quick", "lstsq", "dst_stats", "paper_code",
                                                   "paper_text"}


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


class HalfWarmup(OutputScale):
    """OutputScale, asking training to warm the learning rate up over half the run."""

    name = "test_half_warmup"

    def warmup(self, context):
        return 0.5


if HalfWarmup.name not in list_starts():
    register_start(HalfWarmup)


def test_the_start_decides_the_warm_up_unless_the_run_says(tmp_path):
    """A fitted start warms the learning rate up over a quarter of the run, a random one not at all, a start of
    one's own as it declares; optim.warmup and optim.warmup_steps override it; the schedule follows."""
    eight_steps = [*TINY, "train.epochs=4", "train.log_every=1"]  # 64 images in batches of 32, 4 epochs

    def run(name, *more):
        out = tmp_path / name
        result = train(load_config(None, [*eight_steps, *more, f"output.dir={out}"]))
        assert result["status"] == "finished" and result["steps"] == 8
        lrs = [r["lr"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
        return result["warmup_steps"], lrs

    assert run("fitted")[0] == 2 and run("paper", "model.adapter_norm=paper_code")[0] == 0
    steps, lrs = run("own", f"model.adapter_norm={HalfWarmup.name}")
    # Each line logs the learning rate its step took: steps 1-4 climb by 0.002 / 4, the cosine starts at the peak
    # (step 5) and decays.
    assert steps == 4 and lrs[:5] == pytest.approx([0.0005, 0.001, 0.0015, 0.002, 0.002]) and lrs[5] < 0.002
    assert run("share", "optim.warmup=0.75")[0] == 6 and run("off", "optim.warmup=0")[0] == 0
    assert run("steps", "optim.warmup_steps=1", "optim.warmup=0.75")[0] == 1
    with pytest.raises(ValueError, match="optim.warmup is a share"):
        load_config(None, [*TINY, "optim.warmup=1"])


def test_the_fitted_start_warms_up_only_where_it_fitted():
    """A fitted start warms up, on images and on tokens; without calibration images it is not fitted: no
    warm-up."""
    images = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    fitted = create_stitched("resnet18", "resnet18", "1:3", "linear", input_size=SIZE, calibration_images=images)
    assert fitted.bridge.warmup() == 0.25
    tokens = create_stitched("vit_pico_patch4_32", "vit_pico_patch4_32", "1:3", "linear", input_size=SIZE,
                             calibration_images=images)
    assert tokens.bridge.tokens and tokens.bridge.warmup() == 0.25
    assert create_stitched("resnet18", "resnet18", "1:3", "linear", input_size=SIZE).bridge.warmup() == 0.0


def _built(src, dst, gap, adapter, size, start=DEFAULT_START):
    with torch.device("meta"):  # shapes only
        return create_stitched(src, dst, gap, adapter, input_size=size, check=False, adapter_norm=start).bridge


def _wanted(src, dst, gap, adapter, size, start=DEFAULT_START):
    return get_start(start).images_wanted(_built(src, dst, gap, adapter, size, start))


def test_a_start_asks_for_enough_calibration_images_for_its_least_squares_fit():
    """As many images as give the least-squares fit of the chain's last fitted map 64 rows per input channel (one
    row per position of its output), from 256 to 2048 (docs/calibration_images.md): small maps need many."""
    assert _wanted("resnet18", "resnet18", "1:2", "linear", SIZE) == 256  # 64 channels on 4 x 4: 64 * 64 / 16
    assert _wanted("resnet18", "resnet18", "1:3", "linear", SIZE) == 2048  # 128 on 2 x 2: 64 * 128 / 4
    assert _wanted("resnet18", "resnet18", "1:4", "bottleneck", SIZE) == 2048  # 256 on 1 x 1: 16384, at most 2048
    assert _wanted("resnet18", "resnet18", "1:1", "linear", SIZE) == 256  # 64 on 8 x 8: 64, at least 256
    assert _wanted("resnet18", "resnet18", "1:3", "linear", 224) == 256  # 128 on 14 x 14
    assert _wanted("resnet50", "resnet50", "3:4", "bottleneck", 224) == 1338  # 1024 on 7 x 7: 64 * 1024 / 49
    assert _wanted("mobilenetv3_large_100", "mobilenetv3_large_100", "1:3", "bottleneck", SIZE) == 768  # 48 on 2 x 2
    assert _wanted("resnet18", "resnet18", "1:1", "bottleneck", SIZE) == 256  # an identity: no map to fit


def test_a_start_asks_for_no_more_calibration_images_than_memory_allows():
    """Never more than 2 GiB of float32 features at the two cuts (Start.fit_memory), never fewer than 256 images.
    At 224 px a ResNet-50 gives 256 x 56 x 56 values an image after Stage 1, 512 x 28 x 28 after Stage 2 and
    2048 x 7 x 7 after Stage 4 (torchvision's and timm's ResNet-50), and the rows alone would ask for 1338 images."""
    after_stage1, after_stage2, after_stage4 = 256 * 56 * 56, 512 * 28 * 28, 2048 * 7 * 7
    assert _wanted("resnet50", "resnet50", "1:4", "bottleneck", 224) == 2**31 // (4 * (after_stage1 + after_stage4))
    assert _wanted("resnet50", "resnet50", "1:4", "bottleneck", 224) == 594
    assert _wanted("resnet50", "resnet50", "2:4", "bottleneck", 224) == 2**31 // (4 * (after_stage2 + after_stage4))

    class Lavish(get_start(DEFAULT_START).__class__):  # the rows' count where memory is no object
        fit_memory = 2**40

    class Frugal(get_start(DEFAULT_START).__class__):  # the floor holds even where the features would not fit
        fit_memory = 2**20

    bridge = _built("resnet50", "resnet50", "1:4", "bottleneck", 224)
    assert Lavish().images_wanted(bridge) == 1338
    assert Frugal().images_wanted(bridge) == 256


def test_training_measures_the_images_the_start_asks_for_unless_told(tmp_path):
    """model.init_images null (the default): each stitch of a pass gets the calibration images its start asks for;
    a number is taken as it is; result.json records how many were measured."""
    from stitchkit.training.modes import build_model

    asked = []

    def calibration(name, count):
        asked.append((name, count))
        return torch.randn(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    def build(*settings):
        config = load_config(None, [*TINY, "model.src=resnet18", "model.adapter_norm=lstsq", *settings])
        return build_model(config, 10, calibration)

    assert build("model.gap=1:4").bridge.calibrated and asked == [("resnet18", 2048)]
    build("model.gap=1:4", "model.init_images=32")
    build("model.src=[resnet18,resnet18]", "model.dst=resnet18", "model.gap=[1:2,1:2]")  # each chain's own count
    assert asked[1:] == [("resnet18", 32)] + [("resnet18", 256)] * 4
    # Training: 64 synthetic training images, fewer than the start asks for (1:3), all of them measured.
    result = train(load_config(None, [*TINY, "model.gap=1:3", f"output.dir={tmp_path / 'auto'}"]))
    assert result["status"] == "finished" and result["init_images"] == 64
    result = train(load_config(None, [*TINY, "model.init_images=16", f"output.dir={tmp_path / 'given'}"]))
    assert result["init_images"] == 16
