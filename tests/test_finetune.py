"""The fine-tuning baseline: which blocks survive, that it chains everywhere, and that everything trains."""
import pytest
import torch

import stitchkit
from stitchkit import PAPER_GAPS, create_finetune_baseline
from stitchkit.errors import GapError

from conftest import PAPER_MODELS, SMALL


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_every_paper_gap_chains(name, model_factory):
    model = model_factory(name, SMALL)
    for gap in PAPER_GAPS:
        baseline = create_finetune_baseline(model, gap, input_size=SMALL)
        assert baseline(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 1000)


def test_kept_blocks_are_the_shape_changing_ones():
    assert create_finetune_baseline("resnet50", "1:4", input_size=SMALL).kept_blocks == ("layer2.0", "layer3.0", "layer4.0")
    # MobileNetV3 changes channels inside stage 3 (blocks.4.0: 80 -> 112); the paper's code crashed on 1 -> 4.
    mbv3 = create_finetune_baseline("mobilenetv3_large_100", "1:4", input_size=SMALL)
    assert mbv3.kept_blocks == ("blocks.2.0", "blocks.3.0", "blocks.4.0", "blocks.5.0")
    assert "blocks.3.1" in mbv3.removed_blocks
    assert create_finetune_baseline("torchvision:swin_t", "2:4", input_size=SMALL).kept_blocks == ("features.4", "features.6")
    vit = create_finetune_baseline("vit_small_patch16_224", "1:3", input_size=SMALL)
    assert vit.kept_blocks == () and vit.removed_blocks == tuple(f"blocks.{i}" for i in range(1, 7))


def test_same_network_for_adjacent_gaps_is_visible():
    one = create_finetune_baseline("resnet18", "1:1", input_size=SMALL)
    two = create_finetune_baseline("resnet18", "1:2", input_size=SMALL)
    assert one.removed_blocks == two.removed_blocks  # FT(1->1) == FT(1->2) for ResNets: both drop layer1.1


def test_everything_trains():
    baseline = create_finetune_baseline("resnet18", "1:3", input_size=SMALL)
    assert all(p.requires_grad for p in baseline.parameters())
    baseline.train()
    loss = baseline(torch.randn(2, 3, SMALL, SMALL)).sum()
    loss.backward()
    assert all(p.grad is not None for p in baseline.parameters() if p.dim() > 1)
    assert stitchkit.count_params(baseline) < stitchkit.count_params(stitchkit.create_model("resnet18"))


def test_bad_gap():
    with pytest.raises(GapError):
        create_finetune_baseline("resnet18", "4:2")
