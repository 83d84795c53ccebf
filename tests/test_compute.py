"""MAC and parameter counts against the paper's Table 1 (REFERENCE section 4) and torchvision's own metadata."""
import pytest
import torch
import torchvision

import stitchkit
from stitchkit import count_macs, count_params, create_stitched


def _gmacs(model, size=224):
    return count_macs(model, (3, size, size)) / 1e9


@pytest.mark.parametrize("name,gmacs,mparams", [
    ("resnet50", 4.089, 25.56),
    ("resnet18", 1.814, 11.69),
    ("resnet34", 3.664, 21.80),
    ("mobilenetv3_large_100", 0.217, 5.48),
    ("swin_tiny_patch4_window7_224", 4.491, 28.29),
    ("torchvision:swin_t", 4.491, 28.29),
])
def test_model_anchors(name, gmacs, mparams):
    model = stitchkit.create_model(name)
    assert _gmacs(model) == pytest.approx(gmacs, rel=0.01)
    assert count_params(model) / 1e6 == pytest.approx(mparams, rel=0.01)


def test_vit_counts_attention_matmuls():
    """ViT-S/16: 4.241 G without the two attention matmuls per block (the paper's tool), about 4.6 G with them."""
    model = stitchkit.create_model("vit_small_patch16_224")
    tokens, dim, blocks = 197, 384, 12
    attention = blocks * 2 * tokens * tokens * dim
    total = count_macs(model)
    assert (total - attention) / 1e9 == pytest.approx(4.241, rel=0.01)
    assert total / 1e9 == pytest.approx(4.6, rel=0.01)


@pytest.mark.parametrize("src,dst,gap,gmacs", [
    ("resnet50", "resnet50", "1:4", 1.674),
    ("resnet50", "resnet50", "1:2", 3.575),
    ("resnet50", "torchvision:swin_t", "1:4", 1.567),
])
def test_stitched_anchors(src, dst, gap, gmacs):
    model = create_stitched(src, dst, gap, "bottleneck", "bilinear")
    assert _gmacs(model) == pytest.approx(gmacs, rel=0.01)


def test_matches_torchvision_weight_metadata():
    """torchvision records each model's GFLOPS (its MACs) and parameter count next to its weights."""
    meta = torchvision.models.Swin_T_Weights.IMAGENET1K_V1.meta
    model = stitchkit.create_model("torchvision:swin_t")
    assert _gmacs(model) == pytest.approx(meta["_ops"], rel=0.001)
    assert count_params(model) == meta["num_params"]


def test_frozen_torchvision_attention_is_counted():
    """A frozen torchvision ViT in eval mode runs nn.MultiheadAttention's fused fast path, one op the flop counter
    has no formula for: its attention and projections went uncounted (ViT-B/16: 11.27 of 17.56 GMACs). Frozen or
    not, the count is torchvision's own figure, and so is a stitch's whose back is a frozen torchvision ViT."""
    meta = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.meta
    model = stitchkit.create_model("torchvision:vit_b_16")
    model.requires_grad_(False)
    assert _gmacs(model) == pytest.approx(meta["_ops"], rel=0.001)
    assert torch.backends.mha.get_fastpath_enabled()  # switched off only while counting
    stitch = create_stitched("resnet18", "torchvision:vit_b_16", "1:3", "linear", input_size=64)
    frozen = count_macs(stitch, 64)
    stitch.requires_grad_(True)
    assert frozen == count_macs(stitch, 64)


def test_trainable_params_and_mode_restored():
    model = create_stitched("resnet18", "resnet18", "1:3", "linear", input_size=64)
    model.train()
    bridge = sum(p.numel() for p in model.bridge.parameters())
    assert count_params(model, trainable_only=True) == bridge
    count_macs(model, 64)
    assert model.bridge.training  # counting runs in eval mode and restores the mode


def test_no_downsample_costs_more():
    """The paper's Figure 5 (right): without downsampling, big gaps cost more than the original model."""
    none = create_stitched("mobilenetv3_large_100", "mobilenetv3_large_100", "2:4", "bottleneck", "none")
    down = create_stitched("mobilenetv3_large_100", "mobilenetv3_large_100", "2:4", "bottleneck", "bilinear")
    original = stitchkit.create_model("mobilenetv3_large_100")
    assert count_macs(none) > count_macs(original) > count_macs(down)
    with torch.no_grad():
        assert none(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)


def test_count_macs_defaults_to_the_size_the_model_was_built_for():
    """A stitch or a timm transformer built for 32 px is counted at 32 px unless told otherwise (not at 224)."""
    import timm

    stitch = stitchkit.create_stitched("resnet18", "vit_tiny_patch16_224", "1:3", input_size=32)
    assert stitchkit.count_macs(stitch) == stitchkit.count_macs(stitch, 32)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32)
    assert stitchkit.count_macs(vit) == stitchkit.count_macs(vit, 32)
    resnet = timm.create_model("resnet18")
    assert stitchkit.count_macs(resnet) == stitchkit.count_macs(resnet, 224)


def test_what_a_mac_count_includes():
    """The documented convention: only the multiply-accumulates of convolutions, linear layers and matrix products
    (attention's two included) count, per image, at batch 1 unless given more. Biases, norms (an adapter's
    BatchNorm too), activations, softmax, element-wise adds and products (residuals, a sum fusion) and resizes
    (bilinear, area) count nothing."""
    from torch import nn
    from torch.nn import functional as F

    from stitchkit.compute import count_macs_on

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=True)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 5, bias=True)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            h = h + self.dw(h) * 0.5
            h = F.interpolate(h, size=(4, 4), mode="bilinear", align_corners=False)
            h = F.adaptive_avg_pool2d(h, 2) + 1.0
            t = h.flatten(2).transpose(1, 2)  # (1, 4 tokens, 8)
            a = F.scaled_dot_product_attention(t[:, None], t[:, None], t[:, None])[:, 0]
            return self.fc(a.softmax(-1)).mean(1)

    conv, dw, fc, attention = 8 * 4 * 9 * 8 * 8, 8 * 9 * 8 * 8, 4 * 8 * 5, 2 * 4 * 4 * 8
    block = Block()
    assert count_macs_on(block, torch.zeros(1, 4, 8, 8)) == conv + dw + fc + attention
    assert count_macs_on(block, torch.zeros(3, 4, 8, 8)) == 3 * (conv + dw + fc + attention)
    with torch.device("meta"):  # where dry runs and searches price: attention runs as two bmm there, same count
        assert count_macs_on(Block(), torch.zeros(1, 4, 8, 8)) == conv + dw + fc + attention


def test_a_grayscale_model_is_built_checked_and_counted_on_its_own_channels():
    """timm's create_model(..., in_chans=1) keeps pretrained_cfg's 3-channel input_size: counting it at a size, and
    building a stitch, baseline, parallel stitch or probe of it (each runs one image through to check it), fed it
    3 channels and failed. Networks record their source's channels in their pretrained_cfg."""
    import timm

    from stitchkit.compute import count_macs_on
    from stitchkit.parallel import create_parallel

    model = timm.create_model("resnet10t", in_chans=1, num_classes=10)
    assert model.pretrained_cfg["input_size"][0] == 3  # timm's own record: why the declared in_chans comes first
    assert stitchkit.count_macs(model, 32) == stitchkit.count_macs(model, (1, 32, 32)) > 0
    networks = [stitchkit.create_stitched(model, model, "1:3", input_size=32),
                stitchkit.create_finetune_baseline(model, "1:3", input_size=32),
                create_parallel([model, model], model, "1:3", input_size=32),
                stitchkit.create_probe(model, num_classes=5, input_size=32)]
    for network in networks:
        assert network.pretrained_cfg["input_size"] == (1, 32, 32)
        assert network.eval()(torch.zeros(2, 1, 32, 32)).shape[0] == 2
        assert stitchkit.count_macs(network) == count_macs_on(network, torch.zeros(1, 1, 32, 32)) > 0
