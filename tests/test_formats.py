import itertools

import pytest
import torch

from stitchkit.errors import UnknownNameError
from stitchkit.formats import FeatureSpec, Format, convert, from_nchw, to_nchw

SPECS = [
    FeatureSpec(Format.NCHW, 8, 4, 6),
    FeatureSpec(Format.NHWC, 8, 4, 6),
    FeatureSpec(Format.NLC, 8, 4, 6),
    FeatureSpec(Format.NLC, 8, 4, 6, num_prefix_tokens=1),
]


def _tensor(spec, batch=2):
    return torch.randn(batch, *spec.shape)


@pytest.mark.parametrize("src,dst", list(itertools.product(SPECS, SPECS)))
def test_convert_any_pair_keeps_patch_values(src, dst):
    x = _tensor(src)
    y = convert(x, src, dst, prefix_out="drop", prefix_in="zeros")
    assert tuple(y.shape[1:]) == dst.shape
    # The patch content is the same image whatever the layout.
    assert torch.equal(to_nchw(y, dst, "drop"), to_nchw(x, src, "drop"))


def test_nchw_round_trip_through_tokens_is_exact():
    spec = FeatureSpec(Format.NLC, 5, 3, 2, num_prefix_tokens=1)
    image = torch.randn(2, 5, 3, 2)
    tokens = from_nchw(image, spec, "zeros")
    assert tokens.shape == (2, 7, 5)
    assert torch.equal(to_nchw(tokens, spec, "drop"), image)
    # Row-major patch order, as timm's patch embedding flattens.
    assert torch.equal(tokens[0, 1 + 1 * 2 + 1], image[0, :, 1, 1])


def test_prefix_out_policies():
    spec = FeatureSpec(Format.NLC, 4, 2, 2, num_prefix_tokens=1)
    x = torch.randn(1, 5, 4)
    cls, patches = x[:, 0], x[:, 1:]
    concat = to_nchw(x, spec, "concat")
    assert concat.shape == (1, 8, 2, 2)
    assert torch.equal(concat[0, 4:, 0, 0], cls[0])
    assert torch.equal(concat[0, :4, 1, 0], patches[0, 2])
    assert torch.allclose(to_nchw(x, spec, "add")[0, :, 0, 1], patches[0, 1] + cls[0])
    assert to_nchw(x, spec, "drop").shape == (1, 4, 2, 2)


def test_prefix_in_policies():
    spec = FeatureSpec(Format.NLC, 4, 2, 2, num_prefix_tokens=1)
    image = torch.randn(3, 4, 2, 2)
    mean = from_nchw(image, spec, "mean")
    assert torch.allclose(mean[:, 0], image.flatten(2).mean(2))
    assert torch.equal(from_nchw(image, spec, "zeros")[:, 0], torch.zeros(3, 4))
    token = torch.randn(1, 1, 4)
    assert torch.equal(from_nchw(image, spec, "learned", token)[:, 0], token[:, 0].expand(3, -1))


def test_unknown_policy_names_choices():
    spec = FeatureSpec(Format.NLC, 4, 2, 2, num_prefix_tokens=1)
    with pytest.raises(UnknownNameError, match="concat"):
        to_nchw(torch.randn(1, 5, 4), spec, "cat")


def test_spec_shapes_and_description():
    assert FeatureSpec(Format.NHWC, 768, 7, 7).shape == (7, 7, 768)
    spec = FeatureSpec.from_tensor(torch.zeros(2, 197, 384), Format.NLC, 1)
    assert spec.size == (14, 14) and spec.describe() == "NLC [1+196, 384] (14x14)"
    with pytest.raises(ValueError):
        FeatureSpec(Format.NCHW, 3, 2, 2, num_prefix_tokens=1)


def test_concat_and_add_need_a_class_token():
    """Prefix tokens that are all registers (timm's class_token=False) have no class token to merge: concat and add
    took the first register as one; drop is the image of the patch tokens."""
    from stitchkit.errors import IncompatibleError
    from stitchkit.formats import channels_after_prefix_out

    spec = FeatureSpec(Format.NLC, 4, 2, 2, num_prefix_tokens=4, class_token=False)
    x = torch.randn(1, 8, 4)
    for policy in ("concat", "add"):
        with pytest.raises(IncompatibleError, match="prefix_out='drop'"):
            to_nchw(x, spec, policy)
        with pytest.raises(IncompatibleError, match="registers"):
            channels_after_prefix_out(spec, policy)
    assert torch.equal(to_nchw(x, spec, "drop")[0, :, 1, 0], x[0, 4 + 2])
    assert channels_after_prefix_out(spec, "drop") == 4
    # No prefix tokens at all (a ViT with average pooling and no registers): nothing to merge, as for an image.
    plain = FeatureSpec(Format.NLC, 4, 2, 2, class_token=False)
    assert to_nchw(x[:, 4:], plain, "concat").shape == (1, 4, 2, 2)
