"""Stitched models: shapes across every gap, pair, adapter and resize mode; frozen semantics; adapter files."""
import copy
import importlib

import pytest
import torch
from torch import nn

import stitchkit
from stitchkit import PAPER_GAPS, RESIZE_MODES, create_stitched, plan_chain
from stitchkit.errors import GapError, IncompatibleError, StitchkitError, UnknownNameError
from stitchkit.formats import PREFIX_IN_POLICIES as PREFIX_IN

from conftest import PAPER_MODELS, SMALL

R50, MBV3, VIT, SWIN = PAPER_MODELS
SAME = [(m, m) for m in PAPER_MODELS]
CROSS = [(R50, MBV3), (R50, VIT), (R50, SWIN), (VIT, SWIN)]
PAIRS = SAME + CROSS + [(b, a) for a, b in CROSS]
IMAGE_ADAPTERS = ["linear", "linear_relu", "conv3x3_relu", "bottleneck"]


def _short(name):
    return name.split(":")[-1].split("_")[0]


@pytest.mark.parametrize("gap", PAPER_GAPS, ids=lambda g: f"{g[0]}to{g[1]}")
@pytest.mark.parametrize("src,dst", PAIRS, ids=[f"{_short(a)}-{_short(b)}" for a, b in PAIRS])
def test_every_adapter_and_resize_mode_builds_and_runs(src, dst, gap, model_factory):
    a, b = model_factory(src, SMALL), model_factory(dst, SMALL)
    adapters = IMAGE_ADAPTERS + (["vit_block"] if src == dst == VIT else [])
    x = torch.randn(2, 3, SMALL, SMALL)
    for adapter in adapters:
        for resize in RESIZE_MODES:
            if adapter == "vit_block" and resize == "integrated":
                continue
            model = create_stitched(a, b, gap, adapter, resize, input_size=SMALL)
            assert len(model.steps) == max(gap[1] - gap[0], 1)
            dst_feature = model.dst_spec.cut(*model.config.dst_cut).feature
            assert model.steps[-1].out_channels == dst_feature.channels
            expected_size = model.bridge.src.size if resize == "none" else dst_feature.size
            assert model.steps[-1].out_size == expected_size
            with torch.no_grad():
                h = model.bridge(model.front(x))
                assert h.shape[0] == 2 and h.dim() == len(dst_feature.shape) + 1
                if resize != "none":
                    assert tuple(h.shape[1:]) == dst_feature.shape
                assert model.back(h).shape == (2, 1000)


def test_reference_chain_examples():
    """REFERENCE section 1: ResNet-50 1->4 and ResNet-50 S1 -> Swin-T S4 at 224 px."""
    steps = plan_chain(256, (56, 56), 2048, (7, 7), 3, "bilinear")
    assert [(s.in_channels, s.out_channels, s.out_size) for s in steps] == [
        (256, 512, (28, 28)), (512, 1024, (14, 14)), (1024, 2048, (7, 7))]
    steps = plan_chain(256, (56, 56), 768, (7, 7), 3, "bilinear")
    assert [(s.out_channels, s.out_size[0]) for s in steps] == [(512, 28), (768, 14), (768, 7)]
    assert all(s.resize == "bilinear" for s in steps)


def test_resize_modes_place_the_spatial_change():
    none = plan_chain(256, (56, 56), 2048, (7, 7), 3, "none")
    assert [s.out_size for s in none] == [(56, 56)] * 3 and all(s.resize == "none" for s in none)
    integrated = plan_chain(256, (56, 56), 2048, (7, 7), 3, "integrated")
    assert [s.stride for s in integrated] == [2, 2, 2]
    single = plan_chain(256, (56, 56), 384, (14, 14), 1, "integrated")
    assert single[0].stride == 4
    area = plan_chain(256, (56, 56), 384, (14, 14), 1, "area")
    assert area[0].resize == "area"
    # Upsampling (ViT 14x14 into ResNet stage 2 at 28x28) cannot stride: bilinear instead.
    up = plan_chain(768, (14, 14), 512, (28, 28), 1, "integrated")
    assert up[0].resize == "bilinear" and up[0].stride == 1
    with pytest.raises(UnknownNameError, match="bilinear"):
        plan_chain(1, (1, 1), 1, (1, 1), 1, "bilinar")


def test_integrated_resize_strides_inside_the_adapter(model_factory):
    model = create_stitched(model_factory(R50, SMALL), model_factory(R50, SMALL), "1:3", "conv3x3_relu", "integrated",
                            input_size=SMALL)
    convs = [m for m in model.bridge.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2)]
    assert not any(isinstance(m, stitchkit.chain.Resize) for m in model.bridge.modules())


def test_area_resize_averages_every_pixel():
    resize = stitchkit.chain.Resize((2, 2), "area")
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    assert torch.allclose(resize(x)[0, 0, 0, 0], x[0, 0, :4, :4].mean())


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_parts_stay_frozen_in_train_mode(model_factory):
    torch.manual_seed(0)
    model = create_stitched(stitchkit.create_model(R50, input_size=SMALL), stitchkit.create_model(SWIN),
                            "1:3", "bottleneck", "bilinear", input_size=SMALL)
    front, back = _snapshot(model.front), _snapshot(model.back)
    model.train()
    assert not model.front.training and not model.back.training and model.bridge.training
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, SMALL, SMALL), torch.randint(0, 1000, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad is None for p in model.front.parameters())
    assert all(p.grad is None for p in model.back.parameters())
    assert all(p.grad is not None for p in model.bridge.parameters())
    optimizer.step()
    for part, before in ((model.front, front), (model.back, back)):
        for k, v in part.state_dict().items():
            assert torch.equal(v, before[k]), f"frozen {k} changed"
    # Swin's stochastic depth (p=0.2 in torchvision's swin_t) is off in the frozen back: outputs repeat exactly.
    assert torch.equal(model(x), model(x))
    assert set(map(id, model.trainable_parameters())) == set(map(id, model.bridge.parameters()))


def test_frozen_mode_train_reproduces_the_papers_code():
    torch.manual_seed(0)
    model = create_stitched(stitchkit.create_model(R50), stitchkit.create_model(SWIN), "1:3", input_size=SMALL,
                            frozen_mode="train")
    before = _snapshot(model.front)
    model.train()
    x = torch.randn(4, 3, SMALL, SMALL)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert not torch.equal(first, second)  # stochastic depth active in the frozen Swin half
    changed = [k for k, v in model.front.state_dict().items() if "running_mean" in k and not torch.equal(v, before[k])]
    assert changed  # BatchNorm statistics of the frozen ResNet overwritten


def test_adapter_file_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_stitched("resnet18", "resnet18", "1:3", "bottleneck", input_size=SMALL)
    for p in model.bridge.parameters():
        nn.init.normal_(p, std=0.1)
    path = tmp_path / "adapters.pt"
    model.save_adapters(path)
    assert set(torch.load(path, weights_only=True)["adapters"]) == set(model.trained_state_dict())
    rebuilt = stitchkit.load_stitched(path)
    x = torch.randn(2, 3, SMALL, SMALL)
    torch.manual_seed(0)  # same random frozen weights as above
    model.eval(), rebuilt.eval()
    assert torch.allclose(rebuilt.bridge(model.front(x)), model.bridge(model.front(x)))
    assert rebuilt.config == model.config


def test_adapter_file_from_another_stitch_is_refused(tmp_path):
    path = tmp_path / "adapters.pt"
    create_stitched("resnet18", "resnet18", "1:3", input_size=SMALL).save_adapters(path)
    with pytest.raises(StitchkitError, match="do not fit"):
        stitchkit.load_stitched(path, gap=[1, 4])
    junk = tmp_path / "junk.pt"
    torch.save({"a": torch.zeros(1)}, junk)
    with pytest.raises(StitchkitError, match="not a stitchkit adapter file"):
        stitchkit.load_stitched(junk)


def test_same_model_is_built_once():
    model = create_stitched("resnet18", "resnet18", "1:2", "linear", input_size=SMALL)
    resnet18 = stitchkit.count_params(stitchkit.create_model("resnet18"))
    assert stitchkit.count_params(model) < resnet18


def test_class_token_policies(model_factory):
    r50, vit = model_factory(R50, SMALL), model_factory(VIT, SMALL)
    concat = create_stitched(vit, r50, "1:2", "linear", input_size=SMALL, prefix_out="concat")
    assert concat.steps[0].in_channels == 2 * 384
    drop = create_stitched(vit, r50, "1:2", "linear", input_size=SMALL, prefix_out="drop")
    assert drop.steps[0].in_channels == 384
    learned = create_stitched(r50, vit, "1:3", "linear", input_size=SMALL, prefix_in="learned")
    token = learned.bridge.learned_prefix
    assert token.shape == (1, 1, 384) and token.requires_grad
    assert torch.allclose(token[0, 0], (vit.cls_token + vit.pos_embed[:, :1])[0, 0])
    zeros = create_stitched(r50, vit, "1:3", "linear", input_size=SMALL, prefix_in="zeros")
    h = zeros.bridge(zeros.front(torch.randn(2, 3, SMALL, SMALL)))
    assert torch.equal(h[:, 0], torch.zeros(2, 384))


VIT1, VIT2 = "vit_micro_patch4_32", "deit_tiny_distilled_patch16_224"  # 1 prefix token; 2 (class, distillation)


@pytest.mark.parametrize("adapter", ["linear", "vit_block"])
def test_every_class_token_policy_between_vits_with_different_prefix_counts(adapter, tmp_path):
    """Token adapters between ViTs with different prefix counts make the destination's prefix tokens before the
    adapters, from the source's patch tokens, by every policy: learned crashed ("needs the learned token tensor")
    and projected was silently the mean. The learned token and the projected map train and are saved."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for policy in PREFIX_IN:
        model = create_stitched(VIT1, VIT2, "1:3", adapter, input_size=32, prefix_in=policy, adapter_norm="paper_code")
        bridge = model.bridge
        assert bridge.tokens and bridge.enter_spec.num_prefix_tokens == 2
        with torch.no_grad():
            h = model.front(x)
            entered, patches = bridge.enter(h), bridge.enter(h)[:, 2:]
        mean = patches.mean(1, keepdim=True).expand(-1, 2, -1)
        made = {"mean": mean, "zeros": torch.zeros_like(mean),
                "learned": bridge.learned_prefix.expand(2, -1, -1) if bridge.learned_prefix is not None else None,
                "projected": mean}[policy]  # the map starts as the mean
        assert made is not None and torch.allclose(entered[:, :2], made, atol=1e-5), policy
        assert (bridge.learned_prefix is not None) == (policy == "learned")
        assert (bridge.prefix_map is not None) == (policy == "projected")
        assert model(x).shape == (2, 1000)
        # One training step moves the learned token or the map, which the optimizer sees.
        own = bridge.prefix_parameters()
        assert len(own) == {"mean": 0, "zeros": 0, "learned": 1, "projected": 2}[policy]
        trained = {id(p) for p in model.trainable_parameters()}
        assert all(id(p) in trained for p in own)
        before = [p.detach().clone() for p in own]
        optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
        model.train()
        model(x).logsumexp(1).mean().backward()
        optimizer.step()
        assert all(not torch.equal(b, p) for b, p in zip(before, own)), policy
        if not own:
            continue
        # Saved and loaded with the stitch (a folder and an adapter file).
        model.eval()
        folder = model.save_pretrained(tmp_path / f"{adapter}-{policy}")
        loaded = stitchkit.load_pretrained(folder).eval()
        model.save_adapters(tmp_path / "adapters.pt")
        rebuilt = stitchkit.load_stitched(tmp_path / "adapters.pt").eval()
        with torch.no_grad():
            for other in (loaded, rebuilt):
                assert all(torch.equal(a, b) for a, b in zip(other.bridge.prefix_parameters(), own))
                assert torch.allclose(other.bridge(h), model.bridge(h), atol=1e-6)


def _registers_only_vit():
    """A ViT with four registers and no class token (timm's ``vit_*_reg4_gap_*``), as small as VIT1."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(VIT1, class_token=False, reg_tokens=4, global_pool="avg", fc_norm=False).eval()


def test_a_vit_with_registers_and_no_class_token_has_no_class_token_to_merge():
    """concat and add merge the class token into every patch token; a ViT whose prefix tokens are all registers has
    none, and the first register was concatenated (or added) as if it were one. They are refused, naming drop; drop
    gives the patch tokens timm itself reports at the cut."""
    reg = _registers_only_vit()
    assert not reg.has_class_token and reg.num_prefix_tokens == 4
    x = torch.randn(2, 3, 32, 32)
    # Out through an image (bottleneck), and by token adapters into a ViT with another prefix count (VIT1: 1).
    for dst, adapter in ((reg, "bottleneck"), (VIT1, "linear")):
        for policy in ("concat", "add"):
            with pytest.raises(IncompatibleError, match="prefix_out='drop'"):
                create_stitched(reg, dst, "1:3", adapter, input_size=32, prefix_out=policy, adapter_norm="paper_code")
    model = create_stitched(reg, reg, "1:3", "bottleneck", input_size=32, prefix_out="drop", adapter_norm="paper_code")
    cut = model.src_spec.cut(*model.config.src_cut)
    assert cut.feature.num_prefix_tokens == 4 and not cut.feature.class_token
    with torch.no_grad():
        patches = reg.forward_intermediates(x, indices=[cut.blocks - 1], intermediates_only=True)[0]  # NCHW
        assert model.steps[0].in_channels == 64
        torch.testing.assert_close(model.bridge.enter(model.front(x)), patches, rtol=0, atol=1e-5)
    # Into it, and between two of them on tokens (the registers pass through), nothing is merged: the default builds.
    create_stitched("resnet10t", reg, "1:3", "bottleneck", input_size=32, adapter_norm="paper_code")
    create_stitched(reg, reg, "1:3", "linear", input_size=32, adapter_norm="paper_code")


@pytest.mark.parametrize("adapter", ["linear", "vit_block"])
def test_token_adapters_between_equal_prefix_counts_refuse_a_prefix_out_they_cannot_apply(adapter, tmp_path):
    """Between ViTs with equal prefix counts token adapters carry the source's class token through as a token, so
    prefix_out="drop" or "add" built the very network "concat" builds; they are refused (also from a file that
    recorded them, which loads with prefix_out="concat" as the network it was). Through an image it applies."""
    vit = stitchkit.create_model(VIT1, input_size=32).eval()
    for policy in ("drop", "add"):
        with pytest.raises(IncompatibleError, match="prefix_out='concat'"):
            create_stitched(vit, vit, "1:3", adapter, input_size=32, prefix_out=policy, adapter_norm="paper_code")
    model = create_stitched(VIT1, VIT1, "1:3", adapter, input_size=32, adapter_norm="paper_code").eval()
    h = model.front(torch.randn(2, 3, 32, 32))
    assert model.bridge.tokens and torch.equal(model.bridge.enter(h), h)  # the class token passes through
    model.save_adapters(tmp_path / "adapters.pt")
    saved = torch.load(tmp_path / "adapters.pt", weights_only=True)
    saved["config"]["prefix_out"] = "drop"  # as an earlier version wrote it
    torch.save(saved, tmp_path / "old.pt")
    with pytest.raises(IncompatibleError, match="prefix_out='concat'"):
        stitchkit.load_stitched(tmp_path / "old.pt")
    old = stitchkit.load_stitched(tmp_path / "old.pt", prefix_out="concat").eval()
    with torch.no_grad():
        assert torch.equal(old.bridge(h), model.bridge(h))
    if adapter == "linear":
        image = create_stitched(vit, vit, "1:3", adapter, input_size=32, prefix_out="drop", token_adapters=False,
                                adapter_norm="paper_code")
        assert not image.bridge.tokens and image.steps[0].in_channels == 64


def test_the_default_start_fits_the_prefix_tokens_token_adapters_make():
    """The default start fits the learned token and the projected map (the destination's class token, the
    docstring says) with the adapters, through them, on the calibration images."""
    torch.manual_seed(0)
    images = torch.randn(32, 3, 32, 32)
    for policy in ("learned", "projected"):
        start = create_stitched(VIT1, VIT2, "1:3", "linear", input_size=32, prefix_in=policy,
                                adapter_norm="fitted_quick")
        fitted = create_stitched(VIT1, VIT2, "1:3", "linear", input_size=32, prefix_in=policy,
                                 adapter_norm="fitted_quick", calibration_images=images)
        assert all(not torch.equal(a, b) for a, b in zip(start.bridge.prefix_parameters(),
                                                          fitted.bridge.prefix_parameters())), policy
    assert stitchkit.stitching.get_start("fitted").prefix_in == "projected"  # what create_stitched gives by default


def test_a_token_stitch_saved_when_projected_was_the_mean_loads_as_it_was(tmp_path):
    """Between different prefix counts, prefix_in="projected" used to make the patch tokens' mean (no map was
    built): such a file holds no map, and loads as that network."""
    model = create_stitched(VIT1, VIT2, "1:3", "linear", input_size=32, prefix_in="projected", adapter_norm="paper_code")
    assert model.bridge.prefix_map is not None
    model.save_adapters(tmp_path / "adapters.pt")
    saved = torch.load(tmp_path / "adapters.pt", weights_only=True)
    saved["adapters"] = {k: v for k, v in saved["adapters"].items() if not k.startswith("prefix_map.")}
    torch.save(saved, tmp_path / "old.pt")
    old = stitchkit.load_stitched(tmp_path / "old.pt")
    assert old.bridge.prefix_map is None
    with torch.no_grad():
        entered = old.bridge.enter(old.front(torch.randn(2, 3, 32, 32)))
    assert torch.allclose(entered[:, :2], entered[:, 2:].mean(1, keepdim=True).expand(-1, 2, -1), atol=1e-6)


def test_readd_position_embedding(model_factory):
    r50, vit = model_factory(R50, SMALL), model_factory(VIT, SMALL)
    plain = create_stitched(r50, vit, "1:3", "linear", input_size=SMALL)
    with_pos = create_stitched(r50, vit, "1:3", "linear", input_size=SMALL, readd_pos_embed=True)
    with_pos.bridge.load_state_dict(plain.bridge.state_dict())
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        diff = with_pos.bridge(plain.front(x)) - plain.bridge(plain.front(x))
    assert torch.allclose(diff, vit.pos_embed.expand(2, -1, -1), atol=1e-6)
    assert "pos_embed" not in with_pos.trained_state_dict()  # rebuilt from the destination, not saved
    with pytest.raises(IncompatibleError, match="position embedding"):
        create_stitched(r50, r50, "1:3", input_size=SMALL, readd_pos_embed=True)


def test_readd_position_embedding_into_a_torchvision_vit(tmp_path):
    """torchvision's ViT keeps its position embedding as encoder.pos_embedding, added to [class_token; patches]
    (timm's names are pos_embed and cls_token): readd_pos_embed re-adds it at every position, class token
    included, and a learned class token starts at torchvision's. A checkpoint saved at 224 px fits a stitch
    built for another size, its table resampled by torchvision's own interpolation (as its pretrained weights)."""
    import torchvision
    from torchvision.models.vision_transformer import interpolate_embeddings

    weights = tmp_path / "vit_b_16.pt"
    torch.manual_seed(0)
    state = torchvision.models.vit_b_16().state_dict()  # built for 224 px: a (1, 197, 768) table
    torch.save(state, weights)
    r18 = stitchkit.create_model("resnet18", input_size=32)
    plain = create_stitched(r18, "torchvision:vit_b_16", "1:3", "linear", input_size=32, dst_checkpoint=weights)
    with_pos = create_stitched(r18, "torchvision:vit_b_16", "1:3", "linear", input_size=32, dst_checkpoint=weights,
                               readd_pos_embed=True)
    table = interpolate_embeddings(32, 16, state)["encoder.pos_embedding"]  # 1 + 2x2 positions at 32 px
    assert table.shape == (1, 5, 768)
    with_pos.bridge.load_state_dict(plain.bridge.state_dict())
    with torch.no_grad():
        h = plain.front(torch.randn(2, 3, 32, 32))
        assert torch.allclose(with_pos.bridge(h) - plain.bridge(h), table.expand(2, -1, -1), atol=1e-5)
    learned = create_stitched(r18, "torchvision:vit_b_16", "1:3", "linear", input_size=32, dst_checkpoint=weights,
                              prefix_in="learned")
    assert torch.allclose(learned.bridge.learned_prefix, state["class_token"] + table[:, :1])


def test_vit_block_between_vits_keeps_the_class_token(model_factory):
    vit = model_factory(VIT, SMALL)
    model = create_stitched(vit, vit, "1:4", "vit_block", "bilinear", input_size=SMALL, adapter_norm="paper_text")
    assert len(model.steps) == 3
    assert all(type(step.adapter.block).__name__ == "VitBlock" for step in model.bridge.adapters)
    assert isinstance(model.bridge.adapters[0].adapter.norm_in, nn.LayerNorm)
    h = model.bridge(model.front(torch.randn(2, 3, SMALL, SMALL)))
    assert h.shape == (2, 17, 384)


def test_bad_requests_name_the_fix(model_factory):
    r50, vit = model_factory(R50, SMALL), model_factory(VIT, SMALL)
    with pytest.raises(IncompatibleError, match="image adapter"):
        create_stitched(r50, r50, "1:3", "vit_block", input_size=SMALL)
    with pytest.raises(IncompatibleError, match="bilinear"):
        create_stitched(vit, vit, "1:3", "vit_block", "integrated", input_size=SMALL)
    with pytest.raises(UnknownNameError, match="bottleneck"):
        create_stitched(r50, r50, "1:3", "botleneck", input_size=SMALL)
    with pytest.raises(UnknownNameError, match="bilinear"):
        create_stitched(r50, r50, "1:3", "linear", "bilinaer", input_size=SMALL)
    for gap in ["3:1", "0:2", "1:5", "a:b", (1,), "1"]:
        with pytest.raises(GapError):
            create_stitched(r50, r50, gap, input_size=SMALL)


def test_custom_adapter_registration(model_factory):
    name = "test_depthwise"
    if name not in stitchkit.list_adapters():
        @stitchkit.register_adapter(name, description="depthwise 3x3 then 1x1")
        def depthwise(in_channels, out_channels, stride=1):
            return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels),
                                 nn.Conv2d(in_channels, out_channels, 1))
    with pytest.raises(ValueError, match="already registered"):
        stitchkit.register_adapter(name)(lambda i, o, stride=1: nn.Identity())
    r50 = model_factory(R50, SMALL)
    model = create_stitched(r50, r50, "1:2", name, input_size=SMALL)
    assert model(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 1000)


def test_bottleneck_adapter_starts_as_its_shortcut():
    block = stitchkit.adapters.Bottleneck(64, 128)
    assert torch.equal(block.bn3.weight, torch.zeros(128))
    assert block.conv2.in_channels == 32 and isinstance(block.shortcut, nn.Sequential)
    conv = stitchkit.create_adapter("linear", 8, 16).conv
    assert conv.padding == (0, 0) and conv.kernel_size == (1, 1)  # the paper's code padded by 1
    model = create_stitched("resnet18", "resnet18", "1:2", "linear", input_size=SMALL, adapter_norm="paper_text")
    linear = model.bridge.adapters[0].adapter
    assert isinstance(linear.norm_in, nn.BatchNorm2d) and isinstance(linear.norm_out, nn.BatchNorm2d)


def test_frozen_mode_train_saves_the_frozen_statistics_it_moves(tmp_path):
    weights = tmp_path / "resnet18.pt"
    torch.save(stitchkit.create_model("resnet18").state_dict(), weights)  # frozen weights load_stitched can rebuild
    model = create_stitched("resnet18", "resnet18", "1:3", "bottleneck", input_size=SMALL, frozen_mode="train",
                            src_checkpoint=weights, dst_checkpoint=weights)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, SMALL, SMALL))  # moves the frozen BatchNorm statistics
    path = tmp_path / "adapters.pt"
    model.save_adapters(path)
    rebuilt = stitchkit.load_stitched(path)
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))
    eval_mode = create_stitched("resnet18", "resnet18", "1:3", "bottleneck", input_size=SMALL)
    with pytest.raises(RuntimeError, match="another frozen_mode"):
        eval_mode.load_trained_state_dict(model.trained_state_dict())


@pytest.mark.parametrize("adapter", ["linear", "linear_relu"])
def test_vit_to_vit_per_pixel_adapters_keep_the_class_token(adapter):
    """Between two ViTs a linear adapter runs on every token, as the paper's code does: the class token is mapped on
    its own (patch tokens do not change it) instead of being replaced by the mean of the patch tokens."""
    torch.manual_seed(0)
    vit = stitchkit.create_model("vit_micro_patch4_32", input_size=32).eval()
    model = create_stitched(vit, vit, "1:3", adapter, input_size=32, adapter_norm="paper_text").eval()
    assert model.bridge.tokens and type(model.bridge.adapters[0].adapter.block).__name__ == "TokenLinear"
    assert isinstance(model.bridge.adapters[0].adapter.norm_in, nn.LayerNorm)
    with torch.no_grad():
        h = model.front(torch.randn(2, 3, 32, 32))
        moved = h.clone()
        moved[:, 1:] += 1.0
        assert torch.allclose(model.bridge(h)[:, 0], model.bridge(moved)[:, 0], atol=1e-5)
    image_route = create_stitched(vit, vit, "1:3", adapter, input_size=32, adapter_norm="paper_text",
                                  token_adapters=False).eval()
    assert not image_route.bridge.tokens
    with torch.no_grad():
        out = image_route.bridge(h)
    assert torch.allclose(out[:, 0], out[:, 1:].mean(1), atol=1e-5)  # the paper's text: class token = patch mean
    assert stitchkit.count_macs(model, 32) < stitchkit.count_macs(image_route, 32)  # no 2C concatenation


@pytest.mark.parametrize("src,dst,size", [("resnet18", "vit_tiny_patch16_224", 32), ("convnext_atto", "regnetx_002", 32),
                                          ("mobilenetv3_small_050", "efficientnet_b0", 32),
                                          ("densenet121", "swin_tiny_patch4_window7_224", 64)])
def test_a_stitched_model_pickles_whole(src, dst, size, tmp_path):
    """torch.save(model) works for every family (the hand-written ones' glue code is named functions, the graph
    split's parts are fx modules) and the loaded model computes the same."""
    model = create_stitched(src, dst, "1:3", input_size=size).eval()
    torch.save(model, tmp_path / "model.pt")
    torch.save(create_stitched(src, dst, "1:3", "linear", input_size=size), tmp_path / "linear.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False).eval()  # our own file: unpickling is trusted here
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_timm_reads_a_stitched_models_preprocessing():
    import timm.data

    model = create_stitched("resnet18", "vit_tiny_patch16_224", "1:3", input_size=32)
    cfg = timm.data.resolve_model_data_config(model)
    source = timm.data.resolve_model_data_config(stitchkit.create_model("resnet18"))
    assert cfg["input_size"] == (3, 32, 32)  # the stitch's size, not the source's 224
    assert (cfg["mean"], cfg["std"], cfg["interpolation"]) == (source["mean"], source["std"], source["interpolation"])
    transform = timm.data.create_transform(**cfg)
    from PIL import Image

    assert transform(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    assert model.pretrained_cfg["num_classes"] == 1000
    tv = create_stitched("torchvision:resnet18", "resnet18", "1:3", input_size=32)
    assert timm.data.resolve_model_data_config(tv)["interpolation"] == "bilinear"  # torchvision's weights say so


def test_a_stitch_is_built_from_its_config_validated_once():
    """StitchConfig checks every choice when it is made (a search describes thousands before building any);
    build_stitch builds exactly what it describes, and create_stitched is the same stitch."""
    from stitchkit.chain import gap_cuts
    from stitchkit.errors import GapError, IncompatibleError
    from stitchkit.stitching import StitchConfig, build_stitch

    config = StitchConfig("resnet10t", "resnet10t", "1:3", adapter="linear", input_size=32)
    assert config.gap == (1, 3) and (config.src_cut, config.dst_cut) == gap_cuts(1, 3) == ((1, "first"), (3, "first"))
    assert gap_cuts(2, 2) == ((2, "first"), (2, "end"))  # x == y: to the end of stage x, stitch and baseline alike
    torch.manual_seed(0)
    built = build_stitch(config)
    torch.manual_seed(0)
    created = stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", adapter="linear", input_size=32)
    assert built.config == created.config == config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(built.eval()(x), created.eval()(x))
    for bad, error, message in [({"resize": "bicubic"}, StitchkitError, "resize mode"),
                                ({"adapter": "linaer"}, StitchkitError, "linear"),
                                ({"adapter_norm": "lsq"}, StitchkitError, "start"),
                                ({"gap": "3:1"}, GapError, "write it as 1:3"),
                                ({"num_classes": 5}, IncompatibleError, "must train"),
                                ({"unfreeze_last": -1}, StitchkitError, "unfreeze_last")]:
        with pytest.raises(error, match=message):
            StitchConfig(**{"src": "resnet10t", "dst": "resnet10t", "gap": (1, 2), **bad})


def test_a_gap_of_numpy_integers_is_a_gap_and_a_bool_is_not():
    """A gap read from an array (a sweep's grid, np.arange) is one: any whole number names a stage, and the config
    keeps plain ints (it is saved as JSON). True is not stage 1."""
    import json
    from dataclasses import asdict

    import numpy as np

    from stitchkit.chain import parse_gap
    from stitchkit.errors import GapError
    from stitchkit.stitching import StitchConfig

    assert parse_gap((np.int64(1), np.int64(3))) == (1, 3)
    config = StitchConfig("resnet10t", "resnet10t", [np.int32(2), np.uint8(4)])
    assert config.gap == (2, 4) and all(type(s) is int for s in config.gap)
    json.dumps(asdict(config))
    for bad in [(True, 3), (1, np.float64(3.0)), (1, 3.0)]:
        with pytest.raises(GapError, match="not a pair of stages"):
            parse_gap(bad)
    # One pair of numpy stages for every source of a parallel stitch, as a pair of ints is (not one gap a source).
    parallel = stitchkit.parallel.create_parallel(["resnet10t", "resnet10t"], "resnet10t", (np.int64(1), np.int64(3)),
                                                  adapter="linear", input_size=32, check=False)
    assert [c.gap for c in parallel.config.stitches] == [(1, 3), (1, 3)]


def test_input_size_is_one_side_refused_otherwise_before_any_model_is_built(monkeypatch):
    """A stitch takes square images: (H, W) with H != W is one clear error before either model is built (it was a
    TypeError in the test image, after both); (N, N) and a numpy integer are N."""
    import numpy as np

    from stitchkit.stitching import StitchConfig

    with monkeypatch.context() as patch:
        for module in (stitchkit.stitching, stitchkit.parallel):
            patch.setattr(module, "resolve_model", lambda *a, **k: pytest.fail("a model was built"))
        for bad in [(64, 96), (3, 64, 64), 0, 64.0, True]:
            with pytest.raises(StitchkitError, match="input_size=N") as err:
                create_stitched("resnet10t", "resnet10t", "1:3", input_size=bad)
            assert "\n" not in str(err.value)
        with pytest.raises(StitchkitError, match="square images"):
            StitchConfig("resnet10t", "resnet10t", "1:3", input_size=(64, 96))
        with pytest.raises(StitchkitError, match="square images"):
            stitchkit.parallel.create_parallel(["resnet10t", "resnet10t"], "resnet10t", "1:3", input_size=[64, 96])
    model = create_stitched("resnet10t", "resnet10t", "1:3", "linear", input_size=(32, 32))
    assert model.config.input_size == 32 and model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert StitchConfig("resnet10t", "resnet10t", "1:3", input_size=np.int64(32)).input_size == 32


def test_num_classes_0_builds_a_stitch_without_a_classifier_that_saves_its_adapters(tmp_path):
    """num_classes=0 means what timm's create_model(num_classes=0) means (no classifier, the pooled features),
    for create_stitched, a StitchConfig, build_stitch and an adapter file, not a new head of the destination's size;
    as a head of none has no random weights, it need not train."""
    from stitchkit.stitching import StitchConfig, build_stitch

    torch.manual_seed(0)
    model = create_stitched("resnet10t", "resnet10t", "1:3", input_size=32, num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 512) and torch.equal(model.forward_head(model.forward_features(x)), out)
    assert model.num_classes == 0 and model.pretrained_cfg["num_classes"] == 0
    assert (model.config.num_classes, model.config.train_head) == (0, False) and model.trained_parts() == ["adapters"]
    assert build_stitch(StitchConfig("resnet10t", "resnet10t", "1:3", input_size=32, num_classes=0)).num_classes == 0
    for p in model.bridge.parameters():
        nn.init.normal_(p, std=0.1)
    model.save_adapters(tmp_path / "adapters.pt")
    rebuilt = stitchkit.load_stitched(tmp_path / "adapters.pt").eval()
    assert rebuilt.config == model.config and rebuilt.num_classes == 0
    with torch.no_grad():
        assert torch.allclose(rebuilt.bridge(model.front(x)), model.bridge(model.front(x)))
    with pytest.raises(StitchkitError, match="whole number >= 0"):
        StitchConfig("resnet10t", "resnet10t", "1:3", num_classes=-1, train_head=True)


def test_a_model_pickled_whole_by_stitchkit_0_9_still_unpickles(tmp_path):
    """Up to 0.9 a head was one named function (final norm and forward_head together) and a Call had no lead; such
    pickles name those functions. Made here the way 0.9 made them, the loaded model computes what the model does."""
    families = importlib.import_module("stitchkit.zoo.families")  # (stitchkit.zoo.families is also a function)

    model = create_stitched("resnet18", "vit_tiny_patch16_224", "1:3", input_size=32).eval()
    old = copy.deepcopy(model)
    head = old.back[-1]
    assert head.lead is families._norm
    head.fn, head.label = families._norm_then_head, "norm, forward_head"
    del head.lead  # the instance attribute 0.9 did not have
    torch.save(old, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False).eval()
    assert loaded.back[-1].lead is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_images_of_another_size_are_refused_not_squeezed():
    """A CNN front takes any size, and the bridge's fixed-size resize would squeeze its features onto the grid it
    was built for: a wrong answer with no error. The bridge refuses them in one line naming the fix."""
    model = create_stitched("resnet18", "vit_tiny_patch16_224", "1:3", input_size=32).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
        with pytest.raises(StitchkitError, match=r"built for other images.*NCHW \[64, 8, 8\].*NCHW \[64, 16, 16\]"
                                                 r".*input_size"):
            model(torch.zeros(1, 3, 64, 64))


def test_a_learned_class_token_with_readd_pos_embed_starts_as_the_destinations_own():
    """prefix_in='learned' starts the token at the ViT's class token plus its position; with readd_pos_embed the
    bridge adds the position embedding after the adapters to every token, the class token too, so the learned token
    starts at the class token alone (it had the position twice: cls + 2 pos[0])."""
    torch.manual_seed(0)
    vit = stitchkit.create_model("vit_tiny_patch16_224", input_size=32)
    torch.nn.init.normal_(vit.pos_embed, std=1.0)
    torch.nn.init.normal_(vit.cls_token, std=1.0)
    own = (vit.cls_token + vit.pos_embed[:, :1])[0, 0]  # what the ViT's own stem puts at position 0
    for readd in (True, False):
        model = create_stitched("resnet18", vit, "1:3", "linear", input_size=32, prefix_in="learned",
                                readd_pos_embed=readd, adapter_norm="paper_code")
        with torch.no_grad():
            h = model.bridge(model.front(torch.randn(2, 3, 32, 32)))
        torch.testing.assert_close(h[0, 0], own)


def test_a_model_built_for_another_size_is_one_clear_error():
    """A timm ViT object built for 224 px, stitched at 32 px: one StitchkitError that names the size and the fix
    (timm's own AssertionError escaped before)."""
    import timm

    with pytest.raises(StitchkitError, match=r"does not accept 32x32 images.*build the model for this size"):
        create_stitched("resnet18", timm.create_model("vit_tiny_patch16_224"), "1:3", input_size=32)
