"""Where adapters start: the properties the default (``fitted``) and its alternatives rely on.

A frozen destination expects its own features at its cut; these tests pin that each start hands it what it claims,
on a self-stitch and across models (a ResNet into a ViT, a ResNet into MobileNetV3), with random weights and random
images.
"""
import warnings

import pytest
import torch
from torch import nn

import stitchkit
from stitchkit import create_stitched
from stitchkit.starts import DEFAULT_START, list_starts
from stitchkit.chain import Step
from stitchkit.training.settings import ModelConfig
from stitchkit.errors import StitchkitError, UnknownNameError
from stitchkit.initialization import lift, ridge_fit
from stitchkit.stitching import UncalibratedWarning
from stitchkit.zoo import dissect, front_part

SIZE = 32
R18, VIT = "resnet18", "vit_pico_patch4_32"


def _images(n=64, seed=0):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _models(src, dst):
    """Randomly initialised models whose residual blocks are not identities (timm starts a ResNet block's last
    BatchNorm at zero gamma, which would make every skipped block an identity)."""
    torch.manual_seed(0)
    a = stitchkit.create_model(src, input_size=SIZE).eval()
    b = a if dst == src else stitchkit.create_model(dst, input_size=SIZE).eval()
    for module in [*a.modules(), *b.modules()]:
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    return a, b


@torch.no_grad()
def _bridge_and_target(model, dst_model, images):
    """The bridge's output and the destination's own feature at its cut, both in the adapters' layout."""
    model.eval()
    h = model.bridge.enter(model.front(images))
    for step in model.bridge.adapters:
        h = step(h)
    dst_cut = model.dst_spec.cut(*model.config.dst_cut)
    target = model.bridge.target(front_part(dissect(dst_model), dst_cut.blocks)(images))
    return h, target


def _channel_stats(x):
    rows = x.reshape(-1, x.shape[-1]) if x.dim() == 3 else x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return rows.mean(0), rows.std(0, unbiased=False)


def test_the_default_is_the_fitted_start():
    assert DEFAULT_START == "fitted"
    assert {"fitted", "lstsq", "dst_stats", "paper_code", "paper_text"} <= set(list_starts())
    assert list_starts()[0] == DEFAULT_START == "fitted"  # as README's example and `stitchkit starts` show them
    assert ModelConfig().adapter_norm == DEFAULT_START


def test_ridge_fit_recovers_an_exact_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 12, generator=g) * torch.linspace(0.5, 3, 12) + 2.0
    weight, bias = torch.randn(7, 12, generator=g), torch.randn(7, generator=g)
    fitted_w, fitted_b = ridge_fit(x, x @ weight.T + bias, ridge=1e-8)
    assert torch.allclose(fitted_w, weight, atol=1e-4) and torch.allclose(fitted_b, bias, atol=1e-3)


def test_lift_keeps_the_information_a_relu_would_lose():
    x = torch.randn(100, 4)
    w, b = lift(x, 8)
    lifted = torch.relu(x @ w.T + b)
    assert torch.allclose(lifted[:, :4] - lifted[:, 4:], x)  # relu(x) - relu(-x) == x
    w, _ = lift(x, 6)
    assert torch.equal((x @ w.T)[:, :4], x) and torch.equal((x @ w.T)[:, 4:], torch.zeros(100, 2))
    w, _ = lift(x, 2)  # shrinking: orthonormal leading directions
    assert torch.allclose(w @ w.T, torch.eye(2), atol=1e-5)


@pytest.mark.parametrize("src,dst,gap", [(R18, R18, "1:2"), (R18, VIT, "1:3")])
def test_dst_stats_hands_the_destination_its_own_channel_statistics(src, dst, gap):
    a, b = _models(src, dst)
    images = _images()
    model = create_stitched(a, b, gap, "bottleneck", input_size=SIZE, adapter_norm="dst_stats",
                            calibration_images=images)
    out, target = _bridge_and_target(model, b, images)
    (mean, std), (want_mean, want_std) = _channel_stats(out), _channel_stats(target)
    assert torch.allclose(mean, want_mean, atol=1e-3 * (1 + want_mean.abs().max()))
    assert torch.allclose(std, want_std, rtol=1e-2, atol=1e-4)
    # Train mode normalises with the batch's statistics, eval mode with the calibrated ones: the same at the start.
    model.train()
    with torch.no_grad():
        h = model.bridge.enter(model.front(images))
        for step in model.bridge.adapters:
            h = step(h)
    assert torch.allclose(_channel_stats(h)[0], mean, atol=1e-3 * (1 + mean.abs().max()))


@pytest.mark.parametrize("src,dst,gap", [(R18, R18, "1:1"), (R18, R18, "1:4"), (R18, VIT, "1:3"), (VIT, R18, "1:2")])
def test_least_squares_start_matches_the_destination_better_than_its_mean(src, dst, gap):
    """The fit has an intercept, so a linear adapter's output has exactly the destination's per-channel mean, and it
    explains part of the spread around it (what the uncalibrated adapters do not: they miss the mean entirely)."""
    a, b = _models(src, dst)
    images = _images()
    model = create_stitched(a, b, gap, "linear", input_size=SIZE, adapter_norm="lstsq", calibration_images=images)
    assert model.bridge.calibrated
    out, target = _bridge_and_target(model, b, images)
    mean, want_mean = _channel_stats(out)[0], _channel_stats(target)[0]
    assert torch.allclose(mean, want_mean, atol=1e-3 * (1 + want_mean.abs().max()))
    residual = ((out - target) ** 2).mean()
    around_mean = ((target - want_mean.view(-1, 1, 1) if target.dim() == 4 else target - want_mean) ** 2).mean()
    assert residual < around_mean
    uncalibrated = create_stitched(a, b, gap, "linear", input_size=SIZE, adapter_norm="lstsq")
    raw, _ = _bridge_and_target(uncalibrated, b, images)
    assert residual < ((raw - target) ** 2).mean()


def test_least_squares_bottleneck_within_one_stage_of_one_model_is_an_exact_identity():
    """ResNet-18 to itself at 1:1: equal shapes and one model, so the bottleneck keeps its identity shortcut (no
    projection: the paper's MACs) and hands the destination the source's feature unchanged."""
    a, _ = _models(R18, R18)
    images = _images(16)
    model = create_stitched(a, a, "1:1", "bottleneck", input_size=SIZE, adapter_norm="lstsq",
                            calibration_images=images).eval()
    assert not model.bridge.adapters[0].adapter.block.has_output_map()
    with torch.no_grad():
        h = model.front(images)
        assert torch.equal(model.bridge(h), h)


def test_least_squares_fits_across_models_even_between_equal_shapes():
    """ResNet-18 (64 channels at 8x8) into ViT-Micro (64 channels, 8x8 tokens): every step has equal shapes, but an
    identity would hand the ViT ResNet channels, so the last adapter gets a projection that is fitted."""
    a, b = _models(R18, "vit_micro_patch4_32")
    images = _images()
    model = create_stitched(a, b, "1:4", "bottleneck", input_size=SIZE, adapter_norm="lstsq", calibration_images=images)
    maps = [step.adapter.block.has_output_map() for step in model.bridge.adapters]
    assert maps == [False, False, True]
    out, target = _bridge_and_target(model, b, images)
    uncalibrated = create_stitched(a, b, "1:4", "bottleneck", input_size=SIZE, adapter_norm="lstsq")
    raw, _ = _bridge_and_target(uncalibrated, b, images)
    # (a bottleneck ends in a ReLU, so it cannot reach the negative half of a ViT's tokens: closer, not equal)
    assert ((out - target) ** 2).mean() < 0.9 * ((raw - target) ** 2).mean()


def test_paper_code_bottleneck_is_an_exact_identity_between_equal_shapes():
    a, _ = _models(R18, R18)
    model = create_stitched(a, a, "1:1", "bottleneck", input_size=SIZE, adapter_norm="paper_code").eval()
    images = _images(4)
    with torch.no_grad():
        h = model.front(images)
        assert torch.equal(model.bridge(h), h)  # post-ReLU features pass the zero-gamma bottleneck unchanged


@pytest.mark.parametrize("norm", ["fitted", "lstsq"])
def test_calibration_leaves_the_frozen_parts_in_eval_mode_and_untouched(norm):
    a, _ = _models(R18, R18)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    model = create_stitched(a, a, "1:3", "bottleneck", input_size=SIZE, adapter_norm=norm, calibration_images=_images())
    model.train()
    assert not model.front.training and not model.back.training and model.bridge.training
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items())


def test_training_an_uncalibrated_stitch_warns_once_and_a_calibrated_one_does_not():
    a, _ = _models(R18, R18)
    model = create_stitched(a, a, "1:2", "linear", input_size=SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.train()
        stitchkit.count_macs(model, SIZE)  # looking at it is not training it
    with pytest.warns(UncalibratedWarning, match="calibration_images"):
        model.trainable_parameters()  # what an optimizer is built from
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.trainable_parameters()  # once only
        create_stitched(a, a, "1:2", "linear", input_size=SIZE, calibration_images=_images(8)).trainable_parameters()
        create_stitched(a, a, "1:2", "linear", input_size=SIZE, adapter_norm="paper_text").trainable_parameters()


def test_custom_adapter_without_a_fit_gets_a_calibrated_output_norm():
    name = "test_init_depthwise"
    if name not in stitchkit.list_adapters():
        @stitchkit.register_adapter(name)
        def depthwise(in_channels, out_channels, stride=1):
            return nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels),
                                 nn.Conv2d(in_channels, out_channels, 1))
    a, _ = _models(R18, R18)
    images = _images()
    model = create_stitched(a, a, "1:2", name, input_size=SIZE, adapter_norm="lstsq", calibration_images=images)
    out, target = _bridge_and_target(model, a, images)
    assert torch.allclose(_channel_stats(out)[1], _channel_stats(target)[1], rtol=1e-2, atol=1e-4)


def test_fitted_adapters_save_and_load(tmp_path):
    weights = tmp_path / "r18.pt"
    torch.save(stitchkit.create_model(R18).state_dict(), weights)
    model = create_stitched(R18, R18, "1:2", "linear", input_size=SIZE, src_checkpoint=weights,
                            dst_checkpoint=weights, calibration_images=_images(16))
    path = tmp_path / "adapters.pt"
    model.save_adapters(path)
    rebuilt = stitchkit.load_stitched(path)
    assert rebuilt.config.adapter_norm == "fitted" and rebuilt.bridge.calibrated
    x = _images(2, seed=1)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_old_adapter_files_and_bad_norms_are_refused_with_the_fix(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "stitchkit.adapters.v1", "config": {}, "adapters": {}}, path)
    with pytest.raises(StitchkitError, match="retrain"):
        stitchkit.load_stitched(path)
    with pytest.raises(UnknownNameError, match="lstsq"):
        create_stitched(R18, R18, "1:2", input_size=SIZE, adapter_norm="lsq")
    with pytest.raises(UnknownNameError, match="choose one of: ") as err:
        create_stitched(R18, R18, "1:2", input_size=SIZE, adapter_norm="zzz")
    # Every built-in start is offered (other tests and scripts register more in this process).
    assert all(name in str(err.value) for name in ("dst_stats", "fitted", "fitted_quick", "lstsq", "paper_code",
                                                   "paper_text"))


def test_chain_steps_are_fitted_in_order():
    """A three-step chain: the inner steps keep the information, the last one fits the destination."""
    a, _ = _models(R18, R18)
    images = _images()
    model = create_stitched(a, a, "1:4", "linear", input_size=SIZE, adapter_norm="lstsq", calibration_images=images)
    steps: tuple[Step, ...] = model.steps
    assert len(steps) == 3
    first = model.bridge.adapters[0].adapter.block.conv.weight[:, :, 0, 0]
    c = steps[0].in_channels
    assert torch.equal(first[:c], torch.eye(c))  # 64 -> 128 channels: [I; -I]
    assert torch.equal(first[c:], -torch.eye(c))


@pytest.mark.parametrize("adapter", ["bottleneck", "linear_relu", "conv3x3_relu"])
def test_adapters_keep_the_sign_that_a_signed_destination_expects(adapter):
    """MobileNetV3's blocks end without an activation (linear bottlenecks): a fitted adapter that ended in a ReLU
    would clip half of what the destination expects. Into a ResNet (post-ReLU features) the ReLU stays."""
    images = _images()
    r18, mnv3 = _models(R18, "mobilenetv3_large_100")
    into_signed = create_stitched(r18, mnv3, "1:1", adapter=adapter, input_size=SIZE, adapter_norm="lstsq",
                                  calibration_images=images)
    assert not into_signed.dst_spec.cut(*into_signed.config.dst_cut).nonnegative
    h, target = _bridge_and_target(into_signed, mnv3, images)
    assert (target < 0).float().mean() > 0.2 and (h < 0).float().mean() > 0.2
    into_relu = create_stitched(mnv3, r18, "1:1", adapter=adapter, input_size=SIZE, adapter_norm="lstsq",
                                calibration_images=images)
    assert into_relu.dst_spec.cut(*into_relu.config.dst_cut).nonnegative
    h, _ = _bridge_and_target(into_relu, r18, images)
    assert (h >= 0).all()
    # Within one signed model, a bottleneck between equal shapes is again an exact identity (no ReLU after it).
    self_stitch = create_stitched(mnv3, mnv3, "1:1", adapter="bottleneck", input_size=SIZE, adapter_norm="lstsq",
                                  calibration_images=images)
    x = self_stitch.bridge.enter(self_stitch.front(images))
    torch.testing.assert_close(self_stitch.bridge.adapters[0](x), x)


# --- the default: fitted --------------------------------------------------------------------------------------------


class _NoMatching(stitchkit.starts.Fitted):
    """The default without its feature matching: what least squares alone starts at."""

    name = "test_fitted_without_matching"
    match_steps = 0


if _NoMatching.name not in list_starts():
    stitchkit.register_start(_NoMatching)


class _IdentityShortcut(_NoMatching):
    name = "test_fitted_identity_shortcut"
    description = "fitted without feature matching, keeping the identity shortcut in front of signed features"
    project_signed = False


if _IdentityShortcut.name not in list_starts():
    stitchkit.register_start(_IdentityShortcut)


class _PaperOnTokens(stitchkit.starts.Fitted):
    name = "test_fitted_paper_on_tokens"
    description = "fitted, the paper's starts on tokens (0.5-0.7's default)"
    token_starts = {"residual": "paper_text", "plain": "paper_code"}


if _PaperOnTokens.name not in list_starts():
    stitchkit.register_start(_PaperOnTokens)


def test_fitted_starts_the_class_token_where_the_vit_has_it():
    """Into a ViT the class token is an affine map of the patch tokens' mean, fitted to the ViT's own class token at
    its cut: far closer to it than the paper's plain mean, which is where the map starts without images."""
    a, b = _models(R18, VIT)
    images = _images()
    fitted = create_stitched(a, b, "1:3", "bottleneck", input_size=SIZE, calibration_images=images).eval()
    paper = create_stitched(a, b, "1:3", "bottleneck", input_size=SIZE, adapter_norm="paper_code").eval()
    assert fitted.config.prefix_in == "projected" and paper.config.prefix_in == "mean"
    dst_cut = fitted.dst_spec.cut(*fitted.config.dst_cut)
    with torch.no_grad():
        want = front_part(dissect(b), dst_cut.blocks)(images)[:, 0]
        got = fitted.bridge(fitted.front(images))[:, 0]
        tokens = fitted.bridge(fitted.front(images))[:, 1:]
    mean_error = ((tokens.mean(1) - want) ** 2).mean()
    assert ((got - want) ** 2).mean() < 0.5 * mean_error


@pytest.mark.parametrize("adapter, paper", [("vit_block", "paper_text"), ("linear", "paper_code")])
def test_fitted_fits_on_tokens_and_a_subclass_can_take_the_paper_start_there(adapter, paper):
    """Between two ViTs the adapters run on tokens. The default fits them there too (with its warm-up it measured
    ahead of the paper's starts): its start is nearer the destination's own features than the paper's. A subclass
    that names the paper's starts for tokens gets exactly them: the same modules, the same weights for a seed."""
    a, b = _models(VIT, VIT)
    images = _images(16)
    torch.manual_seed(3)
    fitted = create_stitched(a, a, "1:3", adapter, input_size=SIZE, calibration_images=images).eval()
    torch.manual_seed(3)
    reference = create_stitched(a, a, "1:3", adapter, input_size=SIZE, adapter_norm=paper).eval()
    assert fitted.bridge.tokens and fitted.config.adapter_norm == DEFAULT_START
    dst_cut = fitted.dst_spec.cut(*fitted.config.dst_cut)
    with torch.no_grad():
        want = front_part(dissect(a), dst_cut.blocks)(images)
        errors = [((m.bridge(m.front(images)) - want) ** 2).mean() for m in (fitted, reference)]
    assert errors[0] < 0.5 * errors[1]
    torch.manual_seed(3)
    paper_there = create_stitched(a, a, "1:3", adapter, input_size=SIZE, adapter_norm=_PaperOnTokens.name,
                                  calibration_images=images).eval()
    assert str(paper_there.bridge.adapters) == str(reference.bridge.adapters)
    mine, theirs = paper_there.bridge.adapters.state_dict(), reference.bridge.adapters.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert paper_there.bridge.warmup() == 0.0 and fitted.bridge.warmup() == 0.25


def test_fitted_linear_adapter_starts_at_least_squares_behind_a_transparent_norm():
    """The last adapter's map is the least-squares fit; the BatchNorm after it hands the fit on unchanged (in eval
    mode, and in training mode on such a batch), though the map's weights were scaled to a default initialisation's
    size behind it; into a ResNet (post-ReLU features) a LeakyReLU follows."""
    a, _ = _models(R18, R18)
    images = _images()
    lstsq = create_stitched(a, a, "1:2", "linear", input_size=SIZE, adapter_norm="lstsq", calibration_images=images)
    fitted = create_stitched(a, a, "1:2", "linear", input_size=SIZE, adapter_norm=_NoMatching.name,
                             calibration_images=images)
    adapter = fitted.bridge.adapters[-1].adapter
    assert isinstance(adapter.norm_out, nn.BatchNorm2d) and isinstance(adapter.act, nn.LeakyReLU)
    weight = adapter.block.conv.weight
    fan_in = weight[0].numel()
    assert weight.pow(2).mean().sqrt().item() == pytest.approx((3 * fan_in) ** -0.5, rel=1e-3)
    with torch.no_grad():
        h = fitted.front(images)
        want = nn.functional.leaky_relu(lstsq.bridge.adapters[-1].adapter.block(lstsq.bridge.adapters[-1].resize(h)),
                                        0.1)
        for mode in (False, True):
            fitted.bridge.train(mode)
            torch.testing.assert_close(fitted.bridge(h), want, atol=1e-3, rtol=1e-3)


def test_fitted_feature_matching_brings_the_start_closer_to_the_destination():
    a, b = _models(R18, "mobilenetv3_large_100")
    images = _images()
    alone = create_stitched(a, b, "1:2", "bottleneck", input_size=SIZE, adapter_norm=_NoMatching.name,
                            calibration_images=images)
    matched = create_stitched(a, b, "1:2", "bottleneck", input_size=SIZE, calibration_images=images)
    error = {}
    for name, model in (("alone", alone), ("matched", matched)):
        out, target = _bridge_and_target(model, b, images)
        error[name] = ((out - target) ** 2).mean().item()
    assert error["matched"] < 0.9 * error["alone"]


def test_fitted_projects_a_signed_cnn_within_one_model_and_fits_the_branch_too():
    """MobileNetV3 to itself at 1:1 (signed features): the bottleneck gets a 1x1 projection shortcut, fitted by
    least squares, and its residual branch starts at what that projection misses (not at zero); no ReLU at its end.
    It costs the projection's MACs over the paper's identity, and starts closer to the destination's features than
    the identity with a fitted branch (the start without the projection)."""
    _, mnv3 = _models(R18, "mobilenetv3_large_100")
    images = _images()
    model = create_stitched(mnv3, mnv3, "1:1", "bottleneck", input_size=SIZE, adapter_norm=_NoMatching.name,
                            calibration_images=images)
    block = model.bridge.adapters[0].adapter.block
    assert block.has_output_map() and isinstance(block.act_out, nn.Identity)
    assert block.bn3.weight.abs().sum() > 0
    paper = create_stitched(mnv3, mnv3, "1:1", "bottleneck", input_size=SIZE, adapter_norm="paper_code")
    assert isinstance(paper.bridge.adapters[0].adapter.block.shortcut, nn.Identity)
    h, w = model.bridge.steps[0].out_size
    channels = model.bridge.steps[0].out_channels
    assert stitchkit.count_macs(model, SIZE) == stitchkit.count_macs(paper, SIZE) + channels * channels * h * w
    identity = create_stitched(mnv3, mnv3, "1:1", "bottleneck", input_size=SIZE, adapter_norm=_IdentityShortcut.name,
                               calibration_images=images)
    assert isinstance(identity.bridge.adapters[0].adapter.block.shortcut, nn.Identity)
    out, target = _bridge_and_target(model, mnv3, images)
    kept, _ = _bridge_and_target(identity, mnv3, images)
    assert ((out - target) ** 2).mean() < ((kept - target) ** 2).mean()


def test_fitted_keeps_the_identity_shortcut_in_front_of_relu_features_within_one_model():
    """ResNet-18 to itself at 1:1 (post-ReLU features, blocks close to an identity): the paper's identity shortcut
    and its MACs."""
    a, _ = _models(R18, R18)
    model = create_stitched(a, a, "1:1", "bottleneck", input_size=SIZE, calibration_images=_images(16))
    paper = create_stitched(a, a, "1:1", "bottleneck", input_size=SIZE, adapter_norm="paper_code")
    assert isinstance(model.bridge.adapters[0].adapter.block.shortcut, nn.Identity)
    assert stitchkit.count_macs(model, SIZE) == stitchkit.count_macs(paper, SIZE)


def test_fitted_is_the_same_in_training_and_eval_mode_at_the_start():
    """Every norm of a chain is calibrated (random inner adapters included), so a first training step sees the
    function that was fitted."""
    a, b = _models(R18, VIT)
    images = _images()
    model = create_stitched(a, b, "1:4", "linear", input_size=SIZE, calibration_images=images)
    with torch.no_grad():
        h = model.front(images)
        model.bridge.eval()
        evaluated = model.bridge(h)
        model.bridge.train()
        trained = model.bridge(h)
    torch.testing.assert_close(trained, evaluated, atol=2e-2, rtol=2e-2)


@pytest.mark.slow
def test_fitted_starts_are_reproducible_and_follow_the_seed():
    a, _ = _models(R18, R18)
    images = _images()

    def build(seed):
        torch.manual_seed(seed)
        return create_stitched(a, a, "1:3", "linear", input_size=SIZE, calibration_images=images).bridge.state_dict()

    first, again, other = build(0), build(0), build(1)
    torch.manual_seed(0)
    model = create_stitched(a, a, "1:3", "bottleneck", input_size=SIZE, calibration_images=images)
    assert all(p.grad is None for p in model.parameters())  # the first training step sees its own gradient only
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_a_signed_stitch_saved_with_the_identity_shortcut_still_loads_as_that_network(tmp_path):
    """0.8 saved MobileNetV3 to itself at 1:1 with the identity shortcut under the name ``fitted``, which now builds
    a projection there: its adapter file and its model folder rebuild the identity and give the same outputs."""
    import json

    mnv3 = stitchkit.create_model("mobilenetv3_large_100", input_size=SIZE)
    weights = tmp_path / "mnv3.pt"
    torch.save(mnv3.state_dict(), weights)
    old = create_stitched("mobilenetv3_large_100", "mobilenetv3_large_100", "1:1", "bottleneck", input_size=SIZE,
                          src_checkpoint=weights, dst_checkpoint=weights, adapter_norm=_IdentityShortcut.name,
                          calibration_images=_images(16)).eval()
    x = _images(2, seed=1)
    with torch.no_grad():
        expected = old(x)
    path = tmp_path / "adapters.pt"
    old.save_adapters(path)
    saved = torch.load(path, weights_only=True)
    saved["config"]["adapter_norm"] = "fitted"  # as 0.8 wrote it
    torch.save(saved, path)
    folder = old.save_pretrained(tmp_path / "folder")
    config = json.loads((folder / "config.json").read_text())
    config["stitchkit"]["architecture"]["adapter_norm"] = "fitted"
    (folder / "config.json").write_text(json.dumps(config))
    assert create_stitched("mobilenetv3_large_100", "mobilenetv3_large_100", "1:1", "bottleneck", input_size=SIZE
                           ).bridge.adapters[0].adapter.block.has_output_map()  # what "fitted" builds today
    for rebuilt in (stitchkit.load_stitched(path), stitchkit.StitchedModel.from_pretrained(folder)):
        assert isinstance(rebuilt.bridge.adapters[0].adapter.block.shortcut, nn.Identity)
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval()(x), expected)
