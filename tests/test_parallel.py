"""Parallel stitching (several fronts into one back): every fusion starts as the mean of its chains, only adapters
and fusion train, the model saves, loads and opens in timm, and impossible requests are one line each."""
import pytest
import torch

import stitchkit
from stitchkit.errors import IncompatibleError, StitchkitError
from stitchkit.parallel import FUSIONS, create_parallel

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_two_copies_of_one_front_start_as_the_single_stitch(fusion):
    """Least squares on the same images gives both chains the same start; every fusion starts as their mean."""
    torch.manual_seed(0)
    src = stitchkit.create_model("resnet10t", input_size=32)
    dst = stitchkit.create_model("resnet10t", input_size=32, num_classes=10)
    common = dict(adapter="linear", input_size=32, adapter_norm="lstsq", prefix_in="mean")
    single = stitchkit.create_stitched(src, dst, "1:2", calibration_images=IMAGES, **common).eval()
    both = create_parallel([src, src], dst, "1:2", fusion=fusion, calibration_images=[IMAGES, IMAGES],
                           **common).eval()
    with torch.no_grad():
        assert torch.allclose(both(X), single(X), atol=1e-5)


def test_only_adapters_and_fusion_train_and_frozen_parts_stay_in_eval():
    torch.manual_seed(0)
    model = create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3", fusion="gate", input_size=32)
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"bridges", "fusion"} and model.trained_parts() == ["adapters", "fusion"]
    model.train()
    assert not any(m.training for m in (*model.fronts.modules(), *model.back.modules()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.SGD(model.trainable_parameters(), lr=0.1).zero_grad()
    loss = model(X).logsumexp(1).mean()
    loss.backward()
    torch.optim.SGD(model.trainable_parameters(), lr=0.1).step()
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= {"bridges", "fusion"} and "fusion" in changed
    singles = [stitchkit.create_stitched(s, "resnet10t", "1:3", input_size=32)
               for s in ("resnet10t", "vit_pico_patch4_32")]
    assert stitchkit.count_macs(model, 32) > max(stitchkit.count_macs(s, 32) for s in singles)


def test_a_parallel_stitch_saves_loads_and_opens_in_timm(tmp_path):
    import timm

    torch.manual_seed(0)
    model = create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3", fusion="concat",
                            input_size=32, num_classes=7).eval()
    model.save_pretrained(tmp_path / "p")
    card = (tmp_path / "p" / "README.md").read_text()
    assert "# resnet10t (stage 1) + vit_pico_patch4_32 (stage 1) -> resnet10t parallel stitch, concat fusion" in card
    loaded = stitchkit.load_pretrained(tmp_path / "p")
    opened = timm.create_model(f"local-dir:{tmp_path / 'p'}", pretrained=True)
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X)) and torch.equal(opened(X), model(X))
    assert loaded.num_classes == 7 and loaded.trained_parts() == ["adapters", "fusion", "head"]


def test_impossible_parallel_stitches_are_one_clear_error():
    with pytest.raises(StitchkitError, match="two sources or more"):
        create_parallel(["resnet10t"], "resnet10t", "1:3", input_size=32)
    with pytest.raises(StitchkitError, match="unknown fusion 'gated'.*gate"):
        create_parallel(["resnet10t", "resnet10t"], "resnet10t", "1:3", fusion="gated", input_size=32)
    with pytest.raises(IncompatibleError, match="meet the destination at one cut.*same destination stage"):
        create_parallel(["resnet10t", "resnet10t"], "resnet10t", ["1:3", "1:4"], input_size=32)
    with pytest.raises(IncompatibleError, match="use resize='bilinear'"):
        create_parallel(["resnet10t", "resnet10t"], "resnet10t", ["1:3", "2:3"], resize="none", input_size=32)
    with pytest.raises(StitchkitError, match="2 sources but 3 gaps"):
        create_parallel(["resnet10t", "resnet10t"], "resnet10t", ["1:3", "2:3", "1:3"], input_size=32)
