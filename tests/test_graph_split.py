"""The generic graph split (stitchkit.zoo.graph): models no hand-written family knows, cut by their exported graph."""
import pytest
import torch
from torch import nn

import stitchkit
from stitchkit.errors import StitchkitError
from stitchkit.formats import Format
from stitchkit.zoo import Family, dissect, family_of, model_spec, register_family, split
from stitchkit.zoo.families import _FAMILIES
from stitchkit.zoo.graph import GraphSplitError, graph_anatomy
from stitchkit.zoo.split import back_part, front_part


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.norm(self.conv(x)))


class Stage(nn.Module):
    """A timm-like stage: a strided downsample, then a container of blocks."""

    def __init__(self, cin: int, cout: int, depth: int):
        super().__init__()
        self.downsample = nn.Conv2d(cin, cout, 2, stride=2)
        self.blocks = nn.Sequential(*[Block(cout) for _ in range(depth)])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class StagedNet(nn.Module):
    """Stem at 2x, four stages at 4x..32x, a head: the layout of most hierarchical timm models."""

    def __init__(self, depths=(2, 2, 3, 2), widths=(8, 16, 24, 32), classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1), nn.BatchNorm2d(widths[0]))
        ins = (widths[0],) + widths[:-1]
        self.stages = nn.Sequential(*[Stage(i, o, d) for i, o, d in zip(ins, widths, depths)])
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(x.mean((2, 3)))


class TokenNet(nn.Module):
    """An isotropic token model with a class token and a dense skip that a cut must not cross."""

    def __init__(self, depth=8, dim=16, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList([nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x[:, 0])


def _parity(model, size):
    anatomy = dissect(model, (size, size))
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        reference = model(x)
        for k in range(len(anatomy.blocks()) + 1):
            out = back_part(anatomy, k)(front_part(anatomy, k)(x))
            torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    return anatomy


def test_stage_containers_become_the_four_stages():
    model = StagedNet().eval()
    assert family_of(model).name == "graph"
    anatomy = _parity(model, 64)
    assert [len(s) for s in anatomy.stages] == [3, 3, 4, 3]  # each stage's downsample, then its blocks
    assert anatomy.reductions == [4, 8, 16, 32]
    assert anatomy.block_names[1] == ["stages.1.downsample", "stages.1.blocks.0", "stages.1.blocks.1"]
    spec = model_spec(model, 64)
    assert spec.cut(2, "first").module == "stages.1.downsample"
    assert spec.cut(3, "end").feature.shape == (24, 4, 4)
    assert spec.family == "graph"


def test_isotropic_token_model_splits_into_four_equal_groups_and_keeps_its_class_token():
    model = TokenNet().eval()
    anatomy = _parity(model, 32)
    assert [len(s) for s in anatomy.stages] == [2, 2, 2, 2]
    assert anatomy.formats == [Format.NLC] * 4
    assert anatomy.num_prefix_tokens == 1
    feature = model_spec(model, 32).cut(1, "first").feature
    assert (feature.num_prefix_tokens, feature.size, feature.channels) == (1, (8, 8), 16)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_parts_share_the_models_weights_and_train_the_adapter_only():
    model = StagedNet().eval()
    anatomy = dissect(model, (32, 32))
    owned = [id(p) for part in [anatomy.stem, *anatomy.blocks(), anatomy.head] for p in part.parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    stitched = stitchkit.create_stitched(model, "resnet18", "1:3", input_size=32)
    stitched.train()
    loss = stitched(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in stitched.trainable_parameters())


def test_anatomy_is_exported_once_per_input_size():
    model = StagedNet().eval()
    assert graph_anatomy(model, (32, 32)) is graph_anatomy(model, (32, 32))
    assert graph_anatomy(model, (64, 64)) is not graph_anatomy(model, (32, 32))


def test_parts_are_cut_for_the_size_the_model_was_made_for_and_refuse_another_in_one_line():
    """pvt_v2 bakes its token grid into reshapes: parts of a model created at 64 px are cut for 64 px (not timm's
    224), and another size is refused naming input_size; cut again for that size, they are exact there too."""
    import pickle

    model = stitchkit.create_model("pvt_v2_b0", input_size=64)
    front, back = split(model, 2, "first")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(back(front(x)), model(x), atol=1e-5)
        with pytest.raises(GraphSplitError, match=r"for 64x64 images and cannot take 96x96; .* input_size=96"):
            front(torch.randn(1, 3, 96, 96))
        front96, back96 = split(model, 2, "first", input_size=96)
        y = torch.randn(1, 3, 96, 96)
        assert torch.allclose(back96(front96(y)), model(y), atol=1e-5)
    assert pickle.loads(pickle.dumps(front))(x).shape == front(x).shape  # the size check pickles with the part


def test_a_timm_model_with_dense_connections_splits_between_its_dense_blocks(model_factory):
    """DenseNet concatenates inside a dense block: cuts fall between blocks (transitions), never inside one."""
    model = model_factory("densenet121", 32)
    anatomy = _parity(model, 32)
    assert anatomy.block_names[1][0] == "features.transition1"
    assert anatomy.block_names[0][-1] == "features.denseblock1"
    stitched = stitchkit.create_stitched("resnet18", model, "1:3", input_size=32)
    assert stitched(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_torchvision_models_by_name():
    model = stitchkit.create_model("torchvision:resnet18")
    front, back = split(model, 2, "first", input_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(front(x)), model(x), rtol=0, atol=1e-5)
    assert model_spec(model, 32).cut(2, "first").module == "layer2.0"


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y.mean((2, 3)) if y.sum() > 0 else -y.mean((2, 3))


def test_refusals_say_why():
    with pytest.raises(GraphSplitError, match="torch.export cannot trace DataDependent"):
        dissect(DataDependent().eval(), (32, 32))
    flat = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    flat(torch.zeros(1, 3, 32, 32))
    with pytest.raises(GraphSplitError, match="no block boundary"):
        dissect(flat.eval(), (32, 32))
    assert issubclass(GraphSplitError, StitchkitError)


def test_a_registered_family_wins_over_the_graph_split():
    def by_hand(model):
        return stitchkit.zoo.Anatomy(model.stem, [[s] for s in model.stages], nn.Sequential(), [Format.NCHW] * 4)

    register_family(Family("staged_by_hand", (StagedNet,), by_hand))
    try:
        assert family_of(StagedNet()).name == "staged_by_hand"
    finally:
        _FAMILIES._items.pop("staged_by_hand")


class SpaceToDepthNet(StagedNet):
    """TResNet's layout: the image is rearranged into 48 channels before the first convolution sees it."""

    def __init__(self):
        super().__init__()
        self.in_chans = 3
        self.stem = nn.Sequential(nn.PixelUnshuffle(4), nn.Conv2d(48, 8, 1), nn.BatchNorm2d(8))


def test_the_declared_input_channels_win_over_the_first_convolution():
    model = SpaceToDepthNet().eval()
    anatomy = _parity(model, 64)
    assert anatomy.reductions == [8, 16, 32, 64]  # the stem is at 4x already; the stages follow from there


class TupleStages(nn.Sequential):
    """A Sequential subclass whose members pass (tokens, class token) pairs, like timm's PiT."""

    def forward(self, pair):
        for module in self:
            pair = module(pair)
        return pair


class PairStage(nn.Module):
    def __init__(self, dim: int, depth: int, pool: bool):
        super().__init__()
        self.pool = nn.Conv2d(dim, dim, 2, stride=2) if pool else None
        self.blocks = nn.Sequential(*[nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth)])

    def forward(self, pair):
        x, cls = pair
        if self.pool is not None:
            x = self.pool(x)
        h, w = x.shape[2:]
        tokens = torch.cat([cls, x.flatten(2).transpose(1, 2)], dim=1)
        for block in self.blocks:
            tokens = tokens + block(tokens)
        cls, x = tokens[:, :1], tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return x, cls


class PairNet(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.stages = TupleStages(PairStage(dim, 2, False), PairStage(dim, 4, True), PairStage(dim, 2, True))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x, cls = self.stages((self.patch(x), self.cls_token.expand(x.shape[0], -1, -1)))
        return self.head(cls[:, 0])


def test_stages_in_a_container_subclass_are_found_on_the_second_try():
    """The first try takes a container subclass for one block (DenseNet's dense block); where that finds no stages,
    the blocks inside it are tried (PiT). Between stages the state is a pair; inside them one token tensor."""
    model = PairNet().eval()
    anatomy = _parity(model, 32)
    assert anatomy.reductions == [4, 8, 8, 16]  # three resolutions: the longest (4 blocks at 8x) is halved
    assert [len(s) for s in anatomy.stages] == [2, 2, 2, 2]
    assert anatomy.formats == [Format.NLC] * 4 and anatomy.num_prefix_tokens == 1


class Mix(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 1)

    def forward(self, a, b):
        return a + self.conv(b), b - self.conv(a)


class TwoStreams(nn.Module):
    """Every block takes and returns two tensors (TNT's pixel and patch streams): there is nothing to cut."""

    def __init__(self, dim=8, depth=6):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.ModuleList([Mix(dim) for _ in range(depth)])
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        a = b = self.stem(x)
        for block in self.blocks:
            a, b = block(a, b)
        return self.head((a * b).mean((2, 3)))


def test_models_whose_blocks_pass_several_tensors_are_refused_with_the_reason():
    with pytest.raises(GraphSplitError, match=r"after 6 of its \d+ blocks more than one tensor is still needed "
                                              r"\(e.g. after blocks.0.*an adapter maps one tensor"):
        dissect(TwoStreams().eval(), (32, 32))


def test_token_models_are_recognised_for_token_adapters_whatever_cuts_them():
    from stitchkit.zoo.models import is_token_model

    assert is_token_model("vit_tiny_patch16_224", 32)  # the hand-written ViT family
    assert is_token_model("vit_tiny_patch16_dinov3_qkvb", 32)  # EVA (rotary embeddings), by the graph split
    assert not is_token_model("densenet121", 32)
    assert not is_token_model("resnet18")


def test_blocks_holding_conv_sequences_in_branches_are_blocks_not_groups():
    """torchvision's ShuffleNetV2: each block holds two conv-norm-act Sequentials side by side. Taken for groups,
    their convolutions would be blocks inside parallel branches (nothing to cut); the third grouping rule makes the
    blocks themselves the units, each handing on one tensor."""
    model = stitchkit.create_model("torchvision:shufflenet_v2_x0_5").eval()
    anatomy = _parity(model, 32)
    assert [len(s) for s in anatomy.stages] == [4, 4, 4, 4]
    assert anatomy.block_names[0][0] == "stage2.0" and anatomy.reductions == [8, 16, 16, 32]


def test_hiera_fronts_give_tokens_row_by_row_as_timm_rerolls_them():
    """Hiera keeps its tokens unrolled into mask units between blocks. A front ends with them put row by row, which
    is what timm's own forward_intermediates returns at every stage end; backs take them row by row; parity holds."""
    torch.manual_seed(0)
    model = stitchkit.create_model("hiera_tiny_224", input_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=4, intermediates_only=True, output_fmt="NHWC")
        full = model(x)
        for stage in range(1, 5):
            front, back = stitchkit.split(model, stage, "end", input_size=64)
            tokens = front(x)
            assert torch.equal(tokens.reshape(expected[stage - 1].shape), expected[stage - 1]), stage
            assert torch.allclose(back(tokens), full, atol=1e-5)
            front, back = stitchkit.split(model, stage, "first", input_size=64)
            assert torch.allclose(back(front(x)), full, atol=1e-5)
    stitched = stitchkit.create_stitched(model, "resnet10t", "2:3", input_size=64, unfreeze_last=1)
    assert stitched.trained_parts() == ["adapters", "layer4.0"] and stitched(x).shape == (2, 1000)
    into_hiera = stitchkit.create_stitched("resnet10t", model, "1:3", input_size=64, unfreeze_last=2)
    assert into_hiera.trained_parts() == ["adapters", "blocks.10", "blocks.11"]


# timm models whose classifier head the module tree made look like blocks: MetaFormer's forward_head calls the
# members of its ``head`` Sequential one by one (its pooling and norm were stage 4's last blocks), EfficientViT's
# ClassifierHead holds a Sequential with two Linears, which made it look like a stage holding blocks (its ``in_conv``
# was stage 4's last block).
HEAD_MODELS = ["poolformerv2_s12", "efficientvit_b0"]


@pytest.mark.parametrize("name", HEAD_MODELS)
def test_nothing_inside_the_classifier_head_is_a_block(name):
    """No block under ``head``; every stage ends where timm's forward_intermediates says; stage 4 carries a map (2x2
    at 64 px), not pooled features; every front and back still compose to the model bit for bit."""
    torch.manual_seed(0)
    model = stitchkit.create_model(name, input_size=64, num_classes=5).eval()
    anatomy = graph_anatomy(model, (64, 64))
    assert not [b for stage in anatomy.block_names for b in stage if b.split(".")[0] == "head"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=4, intermediates_only=True)
        for stage in range(1, 5):
            ours = front_part(anatomy, anatomy.block_index(stage, "end"))(x)
            torch.testing.assert_close(ours, expected[stage - 1], rtol=0, atol=1e-5)
        assert front_part(anatomy, anatomy.block_index(4, "first"))(x).shape[-2:] == (2, 2)
        reference = model(x)
        for k in range(len(anatomy.blocks()) + 1):
            assert torch.equal(back_part(anatomy, k)(front_part(anatomy, k)(x)), reference), k


class ConvHead(nn.Module):
    """A head like timm's EfficientViT ClassifierHead: a convolution, then an MLP whose two Linears make the head
    look like a stage holding a container of blocks."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.in_conv = nn.Conv2d(channels, 2 * channels, 1)
        self.classifier = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(), nn.Linear(channels, classes))

    def forward(self, x):
        return self.classifier(self.in_conv(x).mean((2, 3)))


class ConvHeadNet(StagedNet):
    def __init__(self):
        super().__init__()
        self.head = ConvHead(32, 10)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)))


class Wrapped(nn.Module):
    """The whole network in one child: its classifier's top-level module is not a head."""

    def __init__(self):
        super().__init__()
        self.net = ConvHeadNet()

    def forward(self, x):
        return self.net(x)


def test_a_head_found_in_the_graph_holds_no_block():
    """A model that declares no classifier (no get_classifier: torchvision, a model of one's own) has it found in its
    graph, the module of the last weighted operation giving a vector per image; its head's convolution is then no
    stage 4 block. A child that wraps the whole network is not taken for a head."""
    model = ConvHeadNet().eval()
    anatomy = _parity(model, 64)
    assert [len(s) for s in anatomy.stages] == [3, 3, 4, 3] and anatomy.block_names[3][-1] == "stages.3.blocks.1"
    wrapped = Wrapped().eval()
    anatomy = _parity(wrapped, 64)
    assert [len(s) for s in anatomy.stages] == [3, 3, 4, 3] and anatomy.block_names[3][-1] == "net.stages.3.blocks.1"


def _cuts(model, size):
    spec = model_spec(model, size)
    cuts = [spec.cut(s, p) for s in stitchkit.zoo.STAGES for p in stitchkit.zoo.POSITIONS]
    return [(c.module, c.feature) for c in cuts]


def test_torchvision_vit_is_cut_after_the_same_blocks_as_timms_vit():
    """torchvision's ViT keeps its blocks in ``encoder.layers`` between a parameter-free ``encoder.dropout`` and the
    final norm ``encoder.ln``. Neither is a block: the 12 layers make four stages of three, after the same blocks as
    timm's ViT-B/16 (hand-written family) with the same features; the final norm runs in the head."""
    torch.manual_seed(0)
    model = stitchkit.create_model("torchvision:vit_b_16", input_size=32).eval()
    ours = _cuts(model, 32)
    theirs = _cuts(stitchkit.create_model("vit_base_patch16_224", input_size=32).eval(), 32)
    after = (0, 2, 3, 5, 6, 8, 9, 11)  # first and end of each stage
    assert [m for m, _ in theirs] == [f"blocks.{i}" for i in after]
    assert [m for m, _ in ours] == [f"encoder.layers.encoder_layer_{i}" for i in after]
    assert [(f.format, f.shape, f.num_prefix_tokens) for _, f in ours] == [
        (f.format, f.shape, f.num_prefix_tokens) for _, f in theirs]
    _parity(model, 32)


# torchvision inverted-residual models and their timm twins (hand-written efficientnet/mobilenetv3 families)
TWINS = [("torchvision:mobilenet_v3_large", "mobilenetv3_large_100"),
         ("torchvision:efficientnet_b0", "efficientnet_b0"), ("torchvision:mobilenet_v2", "mobilenetv2_100")]


@pytest.mark.parametrize("name,twin", TWINS)
def test_inverted_residual_blocks_are_whole_blocks_as_in_their_timm_twins(name, twin):
    """An InvertedResidual (MBConv) holds its layers in a Sequential; only the strided first block of a stage can be
    cut inside it (the others add their input back at the end). Its inside cuts are no block boundaries: every cut
    falls after a whole block, with the features of the timm twin's cut. Stage 4 ends where the model's own
    ``features`` ends: timm's MobileNetV3 keeps its last 1x1 convolution (960) in ``blocks`` too; torchvision's
    EfficientNet and MobileNetV2 keep their conv head (1280) in ``features``, timm outside ``blocks`` (320)."""
    torch.manual_seed(0)
    model = stitchkit.create_model(name, input_size=64).eval()
    ours = _cuts(model, 64)
    theirs = _cuts(stitchkit.create_model(twin, input_size=64).eval(), 64)
    shapes = [(f.format, f.shape) for _, f in ours]
    assert shapes[:7] == [(f.format, f.shape) for _, f in theirs[:7]]
    last = f"features.{len(model.features) - 1}"
    assert ours[-1][0] == last and shapes[-1][1] == (model.features[-1].out_channels, 2, 2)
    assert all(m.count(".") <= 2 and ".block" not in m and ".conv" not in m for m, _ in ours), ours
    if name.endswith("mobilenet_v3_large"):
        assert shapes == [(f.format, f.shape) for _, f in theirs]
        assert [m for m, _ in ours] == [f"features.{i}" for i in (2, 3, 4, 6, 7, 12, 13, 16)]
        _parity(model, 64)


@pytest.mark.parametrize("name,twin", [("torchvision:regnet_y_400mf", "regnety_004"),
                                       ("torchvision:convnext_tiny", "convnext_tiny")])
def test_stages_hold_their_blocks_as_in_their_timm_twins(name, twin):
    """torchvision's RegNet keeps each stage's blocks in AnyStage (a Sequential subclass, which the first grouping
    rule takes for one block) and ConvNeXt its CNBlocks (which hold a Sequential of their own) in plain Sequentials:
    both were cut only at stage ends (first == end at every stage: a gap x:x removed nothing). Now their stages hold
    the blocks timm's twins hold (hand-written families), with the same features at every cut; regnety_004's stage 1
    has one block in both."""
    torch.manual_seed(0)
    model = stitchkit.create_model(name, input_size=64).eval()
    twin_model = stitchkit.create_model(twin, input_size=64).eval()
    assert [len(s) for s in dissect(model, (64, 64)).stages] == [len(s) for s in dissect(twin_model, (64, 64)).stages]
    ours, theirs = _cuts(model, 64), _cuts(twin_model, 64)
    assert [(f.format, f.shape) for _, f in ours] == [(f.format, f.shape) for _, f in theirs]
    assert [ours[2 * k][0] != ours[2 * k + 1][0] for k in range(4)] == [
        theirs[2 * k][0] != theirs[2 * k + 1][0] for k in range(4)]
    if "regnet" in name:
        assert ours[2][0] == "trunk_output.block2.block2-0" and ours[3][0] == "trunk_output.block2.block2-2"
        _parity(model, 64)


def test_blocks_closed_by_their_class_keep_their_cuts():
    """Inception-ResNet's reduction blocks (mixed_5b/6a/7a) hang directly off the model and hold their branches in
    Sequentials; they are blocks by their class (nothing inside can be cut) and stay blocks: stage 3 starts after
    mixed_6a, and stages 2 and 3 end where timm's forward_intermediates says (after their last residual block). Nest's
    first level cannot be cut inside only because its blocks hand on blocked tokens: its class stays a group, and the
    model is still cut at four stages."""
    torch.manual_seed(0)
    model = stitchkit.create_model("inception_resnet_v2", input_size=96, num_classes=5).eval()
    anatomy = _parity(model, 96)
    assert [stage[0] for stage in anatomy.block_names[1:]] == ["mixed_5b", "mixed_6a", "mixed_7a"]
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        for stage, index in ((2, 2), (3, 3)):
            torch.testing.assert_close(front_part(anatomy, anatomy.block_index(stage, "end"))(x), expected[index])
    _parity(stitchkit.create_model("nest_tiny", input_size=32, num_classes=5).eval(), 32)
