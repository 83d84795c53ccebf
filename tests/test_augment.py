"""Batched device augmentation against the per-image reference (torchvision's AutoAugment, one image at a time)."""
import pytest
import torch

from stitchkit.training.augment import AugmentPlan, DeviceAugment, augment_per_image


@pytest.mark.parametrize("shape", [(400, 3, 24, 24), (400, 3, 20, 28)])
def test_batched_augmentation_equals_the_per_image_reference_bit_for_bit(shape):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    seeds = torch.randint(0, 2**62, (shape[0],), generator=generator)
    plan = AugmentPlan(hflip=True, auto_augment=True)
    params = plan.draw_many(seeds)
    drawn = set(params[:, 1:].flatten().tolist()) - {-1}
    names = {plan.actions[a][0] for a in drawn}
    # The images cover every operation of the ImageNet policy, geometric and colour, with both signs.
    assert names == {"Posterize", "Rotate", "Solarize", "AutoContrast", "Equalize", "Color", "Contrast", "Sharpness",
                     "ShearX", "Invert"}
    assert len(drawn) >= len(plan.actions) - 3 and params[:, 0].sum() not in (0, shape[0])
    augment = DeviceAugment(plan, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    out = augment.augment(images, params)
    reference = augment_per_image(images, seeds)
    assert out.dtype == torch.uint8 and torch.equal(out, reference)
    assert not torch.equal(out, images)  # it did augment
    normalised = augment(images, params)
    assert torch.equal(normalised, (reference.float() / 255 - augment.mean) / augment.std)
    assert augment(images, params, dtype=torch.bfloat16, channels_last=True).is_contiguous(
        memory_format=torch.channels_last)


def test_flip_only_and_nothing_at_all():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    seeds = list(range(16))
    flip = AugmentPlan(hflip=True, auto_augment=False)
    params = flip.draw_many(seeds)
    assert (params[:, 1:] == -1).all()
    out = DeviceAugment(flip, (0,) * 3, (1,) * 3).augment(images, params)
    assert torch.equal(out, augment_per_image(images, seeds, hflip=True, auto_augment=False))
    nothing = AugmentPlan(hflip=False, auto_augment=False)
    assert torch.equal(DeviceAugment(nothing, (0,) * 3, (1,) * 3).augment(images, nothing.draw_many(seeds)), images)
    with pytest.raises(TypeError, match="uint8"):
        DeviceAugment(nothing, (0,) * 3, (1,) * 3)(images.float(), nothing.draw_many(seeds))


def test_phase_clock_counts_nested_phases_once(monkeypatch):
    from stitchkit.training import clock

    now = [0.0]
    monkeypatch.setattr(clock.time, "perf_counter", lambda: now[0])
    c = clock.PhaseClock()
    now[0] = 1.0
    with c.phase("calibration"):
        now[0] = 3.0
    c.switch("train")
    now[0] = 7.0
    with c.phase("evaluation"):
        now[0] = 8.5
        with c.phase("checkpoint"):
            now[0] = 9.0
    now[0] = 10.0
    c.reassign(0.5, "calibration")
    assert c.seconds() == {"setup": 1.0, "calibration": 2.5, "compile": 0.0, "train": 4.5, "evaluation": 1.5,
                           "checkpoint": 0.5}
    assert clock.add_seconds({"train": 1.0}, c.seconds())["train"] == 5.5
    with pytest.raises(ValueError, match="phases are"):
        with c.phase("loading"):
            pass
