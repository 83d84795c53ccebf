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
