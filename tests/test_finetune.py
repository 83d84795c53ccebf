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

def test_vit_baseline_keeps_each_stage_first_block_like_the_paper_code():
    """ViT-S/16 as four stages of three blocks: the baseline keeps blocks 3, 6, 9 (the paper's code), so FT 1:4 has
    as many blocks as the ViT-block stitch (blocks.0, three adapters, blocks.10-11)."""
    vit = create_finetune_baseline("vit_small_patch16_224", "1:4", input_size=SMALL)
    assert vit.kept_blocks == ("blocks.3", "blocks.6", "blocks.9")
    assert vit.removed_blocks == ("blocks.1", "blocks.2", "blocks.4", "blocks.5", "blocks.7", "blocks.8")
    assert len(vit) == 1 + 1 + 3 + 2 + 1  # stem, blocks.0, kept, blocks.10-11, head
    assert create_finetune_baseline("vit_small_patch16_224", "1:3", input_size=SMALL).kept_blocks == (
        "blocks.3", "blocks.6")
    assert create_finetune_baseline("vit_small_patch16_224", "2:2", input_size=SMALL).kept_blocks == ()
    stitch = stitchkit.create_stitched("vit_small_patch16_224", "vit_small_patch16_224", "1:4", "vit_block",
                                       input_size=SMALL)
    assert len(stitch.steps) == len(vit.kept_blocks)


def test_inspect_finetune_shows_the_kept_blocks(capsys):
    from stitchkit.cli import main

    assert main(["inspect", "--src", "vit_small_patch16_224", "--dst", "vit_small_patch16_224", "--gap", "1:4",
                 "--finetune", "--input-size", str(SMALL)]) == 0
    assert "kept from the gap  blocks.3, blocks.6, blocks.9" in capsys.readouterr().out


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
