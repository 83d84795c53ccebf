"""The model zoo against the models themselves and against timm's own intermediate features."""
import pytest
import torch

import stitchkit
from stitchkit.errors import StitchkitError, UnknownNameError
from stitchkit.formats import to_nchw
from stitchkit.zoo import dissect, family_of, model_spec, split

from conftest import SMALL

# At least one model of every supported family, several depths and widths, plus the paper's four models.
ZOO = [
    "resnet18", "resnet50", "resnet101", "resnext50_32x4d", "seresnet18",
    "efficientnet_b0", "mobilenetv3_large_100", "mobilenetv3_small_100",
    "convnext_atto", "regnetx_002", "regnety_002",
    "vit_tiny_patch16_224", "vit_small_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "vit_little_patch16_reg4_gap_256",
    "swin_tiny_patch4_window7_224", "torchvision:swin_t", "torchvision:swin_v2_t",
]


@pytest.mark.parametrize("name", ZOO)
def test_every_cut_point_reproduces_the_model(name, model_factory):
    model = model_factory(name, SMALL)
    spec = model_spec(model, SMALL, name)
    x = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        reference = model(x)
        for cut in spec.cut_points:
            front, back = split(model, cut.stage, cut.position)
            feature = front(x)
            assert tuple(feature.shape[1:]) == cut.feature.shape, f"declared shape wrong at {cut}"
            assert (back(feature) - reference).abs().max().item() <= 1e-5, f"parity broken at {cut}"


@pytest.mark.parametrize("name", ZOO)
def test_parts_own_every_parameter_exactly_once(name, model_factory):
    model = model_factory(name, SMALL)
    anatomy = dissect(model)
    owned = []
    for part in [anatomy.stem, *anatomy.blocks(), anatomy.head]:
        owned += [id(p) for p in part.parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())


TIMM_STAGED = [n for n in ZOO if not n.startswith("torchvision:") and "distilled" not in n]


@pytest.mark.parametrize("name", TIMM_STAGED)
def test_stage_ends_match_timm_forward_intermediates(name, model_factory):
    """Our 'end' cut of each stage carries what timm itself reports as that stage's (or block's) output."""
    model = model_factory(name, SMALL)
    spec = model_spec(model, SMALL, name)
    x = torch.randn(1, 3, SMALL, SMALL)
    ends = [spec.cut(stage, "end") for stage in (1, 2, 3, 4)]
    if spec.family == "vit":
        indices = [cut.blocks - 1 for cut in ends]
    else:
        indices = [len(model.feature_info) - 4 + i for i in range(4)]
    with torch.no_grad():
        theirs = model.forward_intermediates(x, indices=indices, intermediates_only=True)
        for cut, expected in zip(ends, theirs):
            front, _ = split(model, cut.stage, "end")
            ours = to_nchw(front(x), cut.feature, "drop")
            torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_paper_cut_points_at_224():
    """REFERENCE section 2: the paper's cut modules and shapes."""
    expected = {
        "resnet50.a1_in1k": [("layer1.0", (256, 56, 56)), ("layer2.0", (512, 28, 28)), ("layer3.0", (1024, 14, 14)),
                             ("layer4.0", (2048, 7, 7))],
        "mobilenetv3_large_100.ra_in1k": [("blocks.1.0", (24, 56, 56)), ("blocks.2.0", (40, 28, 28)),
                                          ("blocks.3.0", (80, 14, 14)), ("blocks.5.0", (160, 7, 7))],
        "vit_small_patch16_224.augreg_in1k": [(f"blocks.{3 * i}", (197, 384)) for i in range(4)],
        "torchvision:swin_t": [("features.0", (56, 56, 96)), ("features.2", (28, 28, 192)),
                               ("features.4", (14, 14, 384)), ("features.6", (7, 7, 768))],
        "swin_tiny_patch4_window7_224": [("patch_embed", (56, 56, 96)), ("layers.1.downsample", (28, 28, 192)),
                                         ("layers.2.downsample", (14, 14, 384)), ("layers.3.downsample", (7, 7, 768))],
    }
    for name, firsts in expected.items():
        spec = model_spec(stitchkit.create_model(name), 224, name)
        assert [(spec.cut(s, "first").module, spec.cut(s, "first").feature.shape) for s in (1, 2, 3, 4)] == firsts
    mobilenet = model_spec(stitchkit.create_model("mobilenetv3_large_100"), 224)
    assert mobilenet.cut(3, "end").module == "blocks.4.1" and mobilenet.cut(3, "end").feature.shape == (112, 14, 14)
    vit = model_spec(stitchkit.create_model("vit_small_patch16_224"), 224)
    assert vit.cut(1, "first").feature.num_prefix_tokens == 1 and vit.cut(4, "end").module == "blocks.11"


@pytest.mark.parametrize("name,size", [("vit_small_patch16_224", 32), ("swin_tiny_patch4_window7_224", 32),
                                       ("torchvision:swin_t", 32), ("resnet18", 32)])
def test_small_inputs(name, size, model_factory):
    model = model_factory(name, size)
    spec = model_spec(model, size)
    assert model(torch.randn(1, 3, size, size)).shape == (1, 1000)
    first = spec.cut(1, "first").feature
    expected_grid = size // 16 if spec.family == "vit" else size // 4
    assert first.size == (expected_grid, expected_grid)


def test_split_accepts_names_and_shares_weights(model_factory):
    front, back = split("resnet18", 2, "first", input_size=SMALL)
    assert front(torch.randn(1, 3, SMALL, SMALL)).shape == (1, 128, 8, 8)
    model = model_factory("resnet18", SMALL)
    front, _ = split(model, 1, "first")
    assert front[1] is model.layer1[0]


def test_list_models():
    names = stitchkit.list_models()
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "convnext_tiny", "efficientnet_b0",
                 "mobilenetv3_large_100", "vit_small_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224",
                 "swin_tiny_patch4_window7_224", "swin_base_patch4_window7_224", "regnety_040", "torchvision:swin_t"]:
        assert name in names
    assert stitchkit.list_models("resnet5?") == ["resnet50", "resnet51q"] or "resnet50" in stitchkit.list_models("resnet5?")
    assert "resnet50.a1_in1k" in stitchkit.list_models("resnet50.*", pretrained=True)


def test_unknown_and_unsupported_models(monkeypatch):
    from stitchkit.zoo import models

    with pytest.raises(UnknownNameError, match="resnet50"):
        stitchkit.create_model("resnet5")
    with pytest.raises(UnknownNameError, match="torchvision:swin_t"):
        stitchkit.create_model("torchvision:swin_tt")
    # A timm model whose class failed the measured coverage check (docs/models.md) is refused with the reason.
    monkeypatch.setattr(models, "_coverage_status", lambda: {"levit_128": "GraphSplitError: some reason"})
    with pytest.raises(StitchkitError, match="cannot cut timm model 'levit_128': GraphSplitError: some reason"):
        stitchkit.create_model("levit_128")
    assert "levit_128" not in stitchkit.list_models("levit*")
    monkeypatch.undo()
    # The table's reasons are whole sentences (they were cut at 400 characters, mid-word, and named the size the
    # check ran at, whatever size was asked) and the advice is given once.
    with pytest.raises(StitchkitError) as refused:
        stitchkit.create_model("hrnet_w18_small", input_size=64)
    message = str(refused.value)
    assert message.startswith("stitchkit cannot cut timm model 'hrnet_w18_small': HighResolutionNet has 1 cuttable "
                              "block; four stages need at least four: after 17 of its 18 blocks")
    assert message.count("register a Family") == 1 and "32x32" not in message and message.endswith("by hand)")
    with pytest.raises(StitchkitError, match="cannot trace Linear"):
        dissect(torch.nn.Linear(2, 2), (32, 32))


def test_an_unknown_torchvision_weights_tag_lists_the_tags_without_downloading(monkeypatch):
    """torchvision itself fails with a bare KeyError once the model is built; the name alone is checked, so a config
    or a sweep cell naming the tag fails before anything runs, and nothing is fetched to find out."""
    from stitchkit.zoo import family_for_name, models

    monkeypatch.setattr(models, "require_url_weights", lambda *a: pytest.fail("asked for weights"))
    listing = "use one of its tags: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"
    with pytest.raises(UnknownNameError, match=f"no weights 'IMAGENET1K_V9' for torchvision:resnet50; {listing}"):
        family_for_name("torchvision:resnet50.IMAGENET1K_V9")
    for pretrained in (False, True):
        with pytest.raises(UnknownNameError, match=listing):
            stitchkit.create_model("torchvision:resnet50.IMAGENET1K_V9", pretrained=pretrained)
    with pytest.raises(UnknownNameError, match=listing):
        stitchkit.create_model("torchvision:resnet50", pretrained="IMAGENET1K_V9")
    assert family_for_name("torchvision:resnet50.IMAGENET1K_V2") is family_for_name("torchvision:resnet50")
    assert family_for_name("torchvision:swin_t.DEFAULT").name == family_for_name("torchvision:swin_t").name


def test_an_unknown_timm_pretrained_tag_lists_the_tags():
    """timm refuses an unknown tag only once the model is built (a RuntimeError, even without weights); the name is
    checked first, so a config naming it fails before anything runs."""
    from stitchkit.training import load_config
    from stitchkit.zoo import family_for_name

    listing = "timm has no pretrained tag 'a1_in1kk' for resnet50; use one of a1_in1k, a1h_in1k,"
    with pytest.raises(UnknownNameError, match=listing):
        family_for_name("resnet50.a1_in1kk")
    with pytest.raises(UnknownNameError, match="no pretrained tag 'xx' for resnet10t; use one of c3_in1k"):
        stitchkit.create_model("resnet10t.xx", pretrained=False)
    with pytest.raises(StitchkitError, match=listing):
        load_config(None, ["model.src=resnet50.a1_in1kk", "model.pretrained=false"])
    assert family_for_name("resnet50.a1_in1k") is family_for_name("resnet50")


def test_bad_cut_points(model_factory):
    model = model_factory("resnet18", SMALL)
    with pytest.raises(StitchkitError, match="stage must be"):
        split(model, 5, "first")
    with pytest.raises(UnknownNameError, match="first"):
        split(model, 1, "middle")


def test_local_checkpoint_file(tmp_path, model_factory):
    source = stitchkit.create_model("resnet18")
    torch.nn.init.normal_(source.fc.weight)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    loaded = stitchkit.create_model("resnet18", checkpoint_path=path)
    x = torch.randn(1, 3, SMALL, SMALL)
    assert torch.equal(loaded(x), source(x))
    front, back = split("resnet18", 3, "first", checkpoint_path=path)
    assert torch.allclose(back(front(x)), source(x), atol=1e-5)


def test_checkpoint_at_another_input_size_is_resampled(tmp_path):
    vit224 = stitchkit.create_model("vit_tiny_patch16_224")
    path = tmp_path / "vit.pt"
    torch.save(vit224.state_dict(), path)
    vit64 = stitchkit.create_model("vit_tiny_patch16_224", input_size=64, checkpoint_path=path)
    assert vit64.pos_embed.shape == (1, 17, 192)
    assert torch.equal(vit64.blocks[0].attn.qkv.weight, vit224.blocks[0].attn.qkv.weight)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(StitchkitError, match="does not exist"):
        stitchkit.create_model("resnet18", checkpoint_path=tmp_path / "missing.pt")
    ten_classes = tmp_path / "ten.pt"
    torch.save(stitchkit.create_model("resnet18", num_classes=10).state_dict(), ten_classes)
    # A checkpoint with another head size builds that head (e.g. a model trained with mode=scratch) ...
    assert stitchkit.create_model("resnet18", checkpoint_path=ten_classes).fc.out_features == 10
    # ... unless the caller asked for a different one.
    with pytest.raises(StitchkitError, match="wrong shape"):
        stitchkit.create_model("resnet18", checkpoint_path=ten_classes, num_classes=5)
    other = tmp_path / "resnet34.pt"
    torch.save(stitchkit.create_model("resnet34").state_dict(), other)
    with pytest.raises(StitchkitError, match="unexpected"):
        stitchkit.create_model("resnet18", checkpoint_path=other)
    import pickle

    for name, content in (("junk.pt", b"not a checkpoint"), ("notes.txt", b"hello\n"),
                          ("pickled.pt", pickle.dumps({"fc.weight": object()})), ("bad.safetensors", b"\x00" * 64)):
        junk = tmp_path / name
        junk.write_bytes(content)
        with pytest.raises(StitchkitError, match="is not a weights-only PyTorch checkpoint or a safetensors") as err:
            stitchkit.create_model("resnet18", checkpoint_path=junk)
        assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)


def test_pretrained_without_network_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StitchkitError, match="checkpoint_path"):
        stitchkit.create_model("resnet18.a1_in1k", pretrained=True)


def test_a_family_registered_after_first_use_is_seen():
    from stitchkit.zoo import Family, register_family
    from stitchkit.zoo.families import _FAMILIES
    from stitchkit.zoo.models import family_for_name

    assert family_for_name("densenet121").name == "graph"  # the name tables are built (and cached) here
    register_family(Family("densenet_by_hand", (torch.nn.Identity,), lambda model: None, timm_modules=("densenet",)))
    try:
        assert family_for_name("densenet121").name == "densenet_by_hand"
    finally:
        _FAMILIES._items.pop("densenet_by_hand")
    assert family_for_name("densenet121").name == "graph"


def test_model_names_are_parsed_in_one_place():
    from stitchkit.zoo.metadata import ModelName, published_top1

    assert ModelName.parse("resnet50.a1_in1k") == ModelName("timm", "resnet50", "a1_in1k")
    parsed = ModelName.parse("torchvision:resnet50.IMAGENET1K_V2")
    assert (parsed.library, parsed.base, parsed.tag, parsed.key) == ("torchvision", "resnet50", "IMAGENET1K_V2",
                                                                     "torchvision:resnet50")
    assert published_top1("torchvision:resnet50.IMAGENET1K_V2")[0] == 80.858  # torchvision's own metadata
    assert published_top1("resnet50.a1_in1k") == (80.4, "timm model card (paper)")
    assert published_top1("convnext_atto") is None


def test_a_model_with_fewer_than_four_blocks_is_refused_by_name():
    """A ViT of depth 2 splits into blocks per stage [1, 1, 0, 0]: a StitchkitError naming the model and the fix (it
    was a bare ValueError about "an anatomy"), from the Python API as from the CLI."""
    import timm

    shallow = timm.create_model("vit_tiny_patch16_224", depth=2, img_size=32)
    with pytest.raises(StitchkitError, match=r"^cannot cut vit_tiny_patch16_224 into stages: .*\[1, 1, 0, 0\].*deeper"):
        stitchkit.model_spec(shallow)
    with pytest.raises(StitchkitError, match="cannot cut vit_tiny_patch16_224"):
        stitchkit.create_stitched(shallow, "resnet18", gap="3:4", input_size=32)


@pytest.mark.parametrize("num_classes,new_head", [(None, None), (5, None), (7, None), (0, None), (0, True),
                                                  (None, True), (7, False), (5, True)])
def test_the_head_rule_predicted_without_a_model_is_the_one_builds_apply(num_classes, new_head):
    # Dry runs and search proxies predict a run's head with wants_new_head and never touch a model; fit_head is
    # what builds apply. They must agree case by case, or priced and proxied networks differ from those trained.
    from stitchkit.zoo.models import fit_head, num_outputs, wants_new_head

    model = stitchkit.create_model("resnet10t", num_classes=5)
    head = model.get_classifier()
    predicted = wants_new_head(5, num_classes, new_head)
    assert fit_head(model, num_classes, new_head) is predicted
    assert (model.get_classifier() is not head) is predicted
    assert num_outputs(model) == ((num_classes or 5) if predicted else 5)
