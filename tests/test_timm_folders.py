"""timm treats stitchkit's models as its own: ``timm.create_model("local-dir:FOLDER")`` opens every kind of model
folder stitchkit writes (a whole timm model with timm alone; a stitch, fine-tuning baseline, probe or torchvision
model once stitchkit is imported), folders of format 1 still load, and stitches, baselines and probes answer timm's
model surface (num_classes, get_classifier, reset_classifier, forward_features, forward_head) as timm's own models
do."""
import copy
import json
import subprocess
import sys

import pytest
import torch

import stitchkit

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _run(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def _saved(model, folder, **kwargs):
    model.eval()
    with torch.no_grad():
        expected = model(X)
    torch.save({"x": X, "y": expected}, folder.parent / f"{folder.name}.pt")
    return model


def test_timm_alone_opens_a_whole_model_folder(tmp_path):
    """No stitchkit in the process: config.json's architecture, model_args (a ViT built for 64 px) and label names
    are timm's own keys, and the weights load with every key matched."""
    torch.manual_seed(0)
    resnet = _saved(stitchkit.create_model("resnet18", num_classes=10), tmp_path / "resnet")
    stitchkit.save_pretrained(resnet, tmp_path / "resnet", input_size=32, class_names=[f"c{i}" for i in range(10)])
    vit = stitchkit.create_model("vit_tiny_patch16_224", num_classes=3, input_size=64)
    stitchkit.save_pretrained(vit, tmp_path / "vit", input_size=64)
    done = _run(f"""
import sys, torch, timm
assert "stitchkit" not in sys.modules
model = timm.create_model("local-dir:{tmp_path / 'resnet'}", pretrained=True).eval()
saved = torch.load("{tmp_path / 'resnet.pt'}")
with torch.no_grad():
    assert torch.allclose(model(saved["x"]), saved["y"], atol=1e-5)  # other thread counts here
assert model.num_classes == 10 and model.pretrained_cfg["label_names"][3] == "c3"
assert list(model.pretrained_cfg["input_size"]) == [3, 32, 32]
vit = timm.create_model("local-dir:{tmp_path / 'vit'}", pretrained=True)
assert vit.patch_embed.img_size == (64, 64) and vit.num_classes == 3
assert vit(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
new = timm.create_model("local-dir:{tmp_path / 'resnet'}", pretrained=True, num_classes=4)
assert new(saved["x"]).shape == (2, 4)
assert "stitchkit" not in sys.modules
print("ok")
""")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A stitch, a fine-tuning baseline, a probe and a whole torchvision model, saved with their outputs on X."""
    root = tmp_path_factory.mktemp("kinds")
    torch.manual_seed(0)
    models = {
        "stitch": stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", input_size=32, num_classes=10),
        "finetune": stitchkit.create_finetune_baseline("resnet10t", "1:3", input_size=32),
        "probe": stitchkit.create_probe("resnet10t", num_classes=6, input_size=32),
        "torchvision": stitchkit.create_model("torchvision:resnet18", num_classes=4),
    }
    for name, model in models.items():
        _saved(model, root / name)
        if name == "torchvision":
            stitchkit.save_pretrained(model, root / name, input_size=32, name="torchvision:resnet18")
        else:
            model.save_pretrained(root / name)
    return root, models


def test_timm_opens_every_kind_of_folder_once_stitchkit_is_imported(folders):
    root, models = folders
    import timm

    for name, model in models.items():
        opened = timm.create_model(f"local-dir:{root / name}", pretrained=True)
        assert type(opened) is type(model) and not opened.training
        with torch.no_grad():
            assert torch.equal(opened(X), torch.load(root / f"{name}.pt")["y"]), name
        assert opened.num_classes == model.num_classes if name != "torchvision" else True
        renewed = timm.create_model(f"local-dir:{root / name}", pretrained=True, num_classes=5)
        assert renewed(X).shape == (2, 5), name  # timm's meaning: a new 5-class head
        fresh = timm.create_model(f"local-dir:{root / name}")  # pretrained=False: the architecture, new weights
        assert fresh(X).shape == opened(X).shape
    hub = json.loads((root / "stitch" / "config.json").read_text())
    assert hub["architecture"] == "stitchkit_stitch" and hub["num_classes"] == 10
    assert hub["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert "stitchkit_stitch" not in stitchkit.list_models("stitchkit*")  # rebuilds folders; not a model to cut


def test_timm_scripts_open_every_kind_of_folder_with_the_arguments_they_always_pass(folders):
    """validate.py passes in_chans=3, train.py also drop_rate=0.0 (and None for what it leaves to the model): the
    folder opens as it is. device and dtype move it; pretrained_cfg_overlay changes the preprocessing timm
    resolves for it, as for a timm model."""
    import timm

    root, models = folders
    for name in models:
        folder = f"local-dir:{root / name}"
        opened = timm.create_model(folder, pretrained=True, in_chans=3, num_classes=None, drop_rate=0.0,
                                   drop_path_rate=None, drop_block_rate=None, global_pool=None, bn_momentum=None,
                                   bn_eps=None, scriptable=False, checkpoint_path="", img_size=32, device="cpu",
                                   dtype=torch.float64, pretrained_cfg_overlay=dict(crop_pct=1.0, mean=(0.5,) * 3))
        assert next(opened.parameters()).dtype == torch.float64 and not opened.training
        with torch.no_grad():
            assert torch.allclose(opened(X.double()).float(), torch.load(root / f"{name}.pt")["y"], atol=1e-4), name
        data = timm.data.resolve_model_data_config(opened)
        assert data["crop_pct"] == 1.0 and tuple(data["mean"]) == (0.5,) * 3 and data["input_size"] == (3, 32, 32)
        assert next(timm.create_model(folder, pretrained=True, dtype="bfloat16").parameters()).dtype == torch.bfloat16
        if hasattr(timm.models, "resolve_model_input_args"):  # how this timm's scripts call create_model
            asked = timm.models.resolve_model_input_args(folder, {"input_size": (3, 32, 32)}, pretrained=True,
                                                         in_chans=3)
            with torch.no_grad():
                assert torch.equal(timm.create_model(**asked)(X), torch.load(root / f"{name}.pt")["y"]), name
    stitch = timm.create_model(f"local-dir:{root / 'stitch'}", pretrained=True, global_pool="avg")
    assert stitch(X).shape == (2, 10)  # the pooling it does already


@pytest.mark.parametrize("arguments, message", [
    (dict(in_chans=1), "takes 3-channel images .* in_chans=1: give it 3-channel images"),
    (dict(img_size=64), "built for 32x32 images; it cannot be rebuilt for 64x64: resize the images"),
    (dict(pretrained_cfg_overlay=dict(input_size=(3, 64, 64))), "built for 32x32 images"),
    (dict(drop_rate=0.1), "drop_rate=0.1: pass drop_rate=0 or leave it out"),
    (dict(drop_path_rate=0.05), "drop_path_rate=0.05"),
    (dict(features_only=True), r"features_only=True\); open it without features_only and call model.forward_feat"),
    (dict(global_pool="max"), "pools as its folder's network does \\('avg' pooling\\); .* global_pool='max'"),
    (dict(bn_eps=1e-3), "cannot take bn_eps=0.001; leave it out"),
    (dict(dtype=torch.int8), "takes a floating-point dtype"),
    (dict(pretrained_cfg_overlay=dict(file="/elsewhere/weights.pth", num_classes=-1)),  # train.py --pretrained-path
     "weights are its folder's model.safetensors; .* without --pretrained-path"),
    (dict(pretrained_cfg_overlay=dict(num_classes=3)), "overlay's num_classes .* 10-class head"),
])
def test_timm_arguments_that_would_change_a_folders_network_are_one_line_naming_what_to_do(folders, arguments,
                                                                                          message):
    import timm

    root, _ = folders
    with pytest.raises(stitchkit.StitchkitError, match=message):
        timm.create_model(f"local-dir:{root / 'stitch'}", pretrained=True, **arguments)


def test_timm_refuses_a_stitch_folder_without_stitchkit_and_opens_it_with(folders):
    """In a fresh process: without stitchkit timm names the unknown architecture; with ``import stitchkit`` first
    (before timm is imported: stitchkit registers when timm's import finishes) it opens it."""
    root, _ = folders
    done = _run(f"""
import torch
import timm
try:
    timm.create_model("local-dir:{root / 'stitch'}", pretrained=True)
except RuntimeError as err:
    print(err)
""")
    assert "Unknown model (stitchkit_stitch)" in done.stdout, done.stderr[-3000:]
    done = _run(f"""
import sys, torch
import stitchkit
assert "timm" not in sys.modules  # import stitchkit stays light
import timm
model = timm.create_model("local-dir:{root / 'stitch'}", pretrained=True)
saved = torch.load("{root / 'stitch.pt'}")
with torch.no_grad():
    assert torch.allclose(model(saved["x"]), saved["y"], atol=1e-5)  # other thread counts here
print(type(model).__name__)
""")
    assert done.stdout.strip() == "StitchedModel", done.stderr[-3000:]


def test_folders_of_format_1_still_load(folders, tmp_path):
    """stitchkit 0.4 and 0.5 wrote its record alone as config.json."""
    root, models = folders
    for name in ("stitch", "probe"):
        old = tmp_path / name
        old.mkdir()
        hub = json.loads((root / name / "config.json").read_text())
        (old / "config.json").write_text(json.dumps({**hub["stitchkit"], "format_version": 1}))
        (old / "model.safetensors").write_bytes((root / name / "model.safetensors").read_bytes())
        loaded = stitchkit.load_pretrained(old)
        with torch.no_grad():
            assert torch.equal(loaded(X), torch.load(root / f"{name}.pt")["y"])


def _pair(name: str, **kwargs):
    """A timm model and its fine-tuning baseline for gap 1:1 (which keeps the first block of stage 1 and the
    blocks from the end of stage 1 on; resnet10t has one block per stage, so it is the whole network)."""
    torch.manual_seed(0)
    model = stitchkit.create_model(name, input_size=32, **kwargs).eval()
    return model, stitchkit.create_finetune_baseline(copy.deepcopy(model), "1:1", input_size=32, name=name).eval()


def _no_classifier_returns_pre_logits(ft):
    with torch.no_grad():
        pre_logits = ft.forward_head(ft.forward_features(X), pre_logits=True)
    ft.reset_classifier(0)
    with torch.no_grad():
        assert torch.allclose(ft(X), pre_logits, atol=1e-6) and ft(X).shape == (2, ft.head_hidden_size)
    assert ft.num_classes == 0 and not any(p.requires_grad for p in ft.get_classifier().parameters())
    ft.reset_classifier(3)
    assert ft(X).shape == (2, 3) and ft.num_classes == 3 and ft.get_classifier().weight.requires_grad


def test_the_timm_surface_answers_as_timms_own_model():
    model, ft = _pair("resnet10t", num_classes=7)
    with torch.no_grad():
        assert torch.allclose(ft(X), model(X), atol=1e-5)
        ours, theirs = ft.forward_features(X), model.forward_features(X)
        assert torch.allclose(ours, theirs, atol=1e-5)
        assert torch.allclose(ft.forward_head(ours), model(X), atol=1e-5)
        assert torch.allclose(ft.forward_head(ours, pre_logits=True), model.forward_head(theirs, pre_logits=True),
                              atol=1e-5)
    assert (ft.num_classes, ft.num_features) == (model.num_classes, model.num_features) == (7, 512)
    assert ft.get_classifier().weight.shape == model.get_classifier().weight.shape
    ft.reset_classifier(0)
    model.reset_classifier(0)
    with torch.no_grad():  # no classifier: the model returns what its classifier read, as timm's does
        assert torch.allclose(ft(X), model(X), atol=1e-5)
    ft.reset_classifier(7)
    _no_classifier_returns_pre_logits(ft)


def test_a_vit_head_gives_timms_pre_logits():
    """A ViT's forward_features ends with its final norm, as timm's does, and its forward_head (timm's too) does not
    norm again."""
    model, ft = _pair("vit_pico_patch4_32", num_classes=7)
    with torch.no_grad():
        tokens = ft.forward_features(X)
        assert torch.allclose(tokens, model.norm(ft.features(X)), atol=1e-6)
        assert torch.allclose(ft.forward_head(tokens, pre_logits=True),
                              model.forward_head(tokens, pre_logits=True), atol=1e-5)
        assert torch.allclose(ft.forward_head(tokens), model.forward_head(tokens), atol=1e-5)
    assert (ft.num_classes, ft.num_features) == (7, model.num_features)
    _no_classifier_returns_pre_logits(ft)


def test_a_torchvision_head_from_an_exported_graph_answers_too():
    """torchvision models are cut from an exported graph, whose classifier is weights the graph reads."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=4).eval()
    ft = stitchkit.create_finetune_baseline(copy.deepcopy(reference), "1:1", input_size=32,
                                            name="torchvision:resnet18").eval()
    with torch.no_grad():
        features = ft.forward_features(X)
        pooled = torch.flatten(reference.avgpool(features), 1)  # torchvision's forward after layer4
        assert torch.allclose(ft.forward_head(features, pre_logits=True), pooled, atol=1e-6)
        assert torch.allclose(ft(X), reference.fc(pooled), atol=1e-5)
    assert (ft.num_classes, ft.num_features) == (4, 512)
    _no_classifier_returns_pre_logits(ft)


def _tiny(name: str):
    """Small instances of timm models whose head widths differ from their features' (MobileNetV3 widens the pooled
    576 channels to 1024, a ConvNeXt with head_hidden_size to that), whose features end after the last block
    (EfficientNet's conv_head widens 320 channels to 1280) or whose features are NHWC (Swin)."""
    import timm

    torch.manual_seed(0)
    if name == "swin":
        return timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=2, embed_dim=24,
                                 depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    if name == "convnext_hidden":
        return timm.create_model("convnext_atto", head_hidden_size=64)
    return stitchkit.create_model(name, input_size=32)


@pytest.mark.parametrize("dst", ["resnet10t", "vit_pico_patch4_32", "mobilenetv3_small_100", "convnext_hidden",
                                 "swin", "efficientnet_b0", "torchvision:resnet18", "torchvision:mobilenet_v3_small"])
def test_num_features_and_head_hidden_size_mean_what_they_mean_in_timm(dst, tmp_path):
    """num_features: the channel width of forward_features' output (dim 1 of an NCHW map, the last dim of NHWC maps
    and tokens), the destination's own (timm's attribute); head_hidden_size: what the classifier reads (timm's
    forward_head(pre_logits=True)). Every kind, into timm and torchvision models; config.json's num_features is
    timm's; a new classifier reads head_hidden_size features."""
    from stitchkit.parallel import create_parallel

    model = _tiny(dst).eval()
    name = dst if ":" in dst else model.pretrained_cfg["architecture"]
    with torch.no_grad():
        features = model.forward_features(X) if hasattr(model, "forward_features") else None
    if ":" not in dst:  # timm's own answers
        expected = (model.num_features, model.head_hidden_size)
    else:  # torchvision's: what it pools, and what its last linear layer reads
        expected = {"torchvision:resnet18": (512, 512), "torchvision:mobilenet_v3_small": (576, 1024)}[dst]
    networks = {
        "stitch": stitchkit.create_stitched("resnet10t", copy.deepcopy(model), "2:3", input_size=32),
        "parallel": create_parallel(["resnet10t", "resnet10t"], copy.deepcopy(model), "2:3", input_size=32),
        "finetune": stitchkit.create_finetune_baseline(copy.deepcopy(model), "2:3", input_size=32, name=name),
        "probe": stitchkit.create_probe(copy.deepcopy(model), input_size=32, name=name),
    }
    for kind, network in networks.items():
        network.eval()
        with torch.no_grad():
            ours = network.forward_features(X)
            pre_logits = network.forward_head(ours, pre_logits=True)
        channels = ours.shape[1] if network.features_spec().format.name == "NCHW" else ours.shape[-1]
        assert (network.num_features, network.head_hidden_size) == (channels, pre_logits.shape[-1]) == expected, kind
        if features is not None:
            assert ours.shape[1:] == features.shape[1:], kind  # timm's forward_features
    baseline = networks["finetune"].train()  # reading the width changes nothing (EfficientNet's bn2 in training mode)
    before = copy.deepcopy(baseline.state_dict())
    assert baseline.num_features == expected[0] and baseline.training and baseline.get_classifier().training
    assert all(torch.equal(before[k], v) for k, v in baseline.state_dict().items())
    stitch = networks["stitch"]
    stitch.save_pretrained(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "config.json").read_text())["num_features"] == expected[0]
    stitch.reset_classifier(3)
    assert stitch.get_classifier().weight.shape[1] == expected[1]
    assert (stitch.num_features, stitch.head_hidden_size) == expected


def test_a_classifier_an_exported_graph_reads_is_a_layer_a_user_can_call(tmp_path):
    """A torchvision head's classifier is weights its graph reads: get_classifier gives them as a layer with
    in_features and out_features that computes what the graph does, and the graph still reads those weights (a
    change to them changes the model's output; the state dict and the saved folder are as before)."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=4).eval()
    ft = stitchkit.create_finetune_baseline(copy.deepcopy(reference), "1:1", input_size=32,
                                            name="torchvision:resnet18").eval()
    keys = list(ft.state_dict())
    classifier = ft.get_classifier()
    assert (classifier.in_features, classifier.out_features) == (512, 4) and ft.get_classifier() is classifier
    with torch.no_grad():
        pooled = ft.forward_head(ft.forward_features(X), pre_logits=True)
        assert torch.allclose(classifier(pooled), reference.fc(pooled), atol=1e-6)
        assert torch.allclose(classifier(pooled), ft(X), atol=1e-5)
        classifier.bias.add_(1.0)
        assert torch.allclose(ft(X), reference.fc(pooled) + 1.0, atol=1e-5)  # the graph reads these weights
    assert list(ft.state_dict()) == keys
    ft.save_pretrained(tmp_path / "ft")
    with torch.no_grad():
        assert torch.equal(stitchkit.load_pretrained(tmp_path / "ft")(X), ft(X))
    ft.reset_classifier(3)
    new = ft.get_classifier()
    with torch.no_grad():
        assert (new.in_features, new.out_features) == (512, 3) and torch.allclose(new(pooled), ft(X), atol=1e-5)


def test_default_cfg_can_be_assigned_as_on_timms_models(tmp_path):
    """timm's older name for pretrained_cfg is a plain attribute on timm's models: assigning it sets pretrained_cfg
    (what timm resolves preprocessing from and a saved folder records); the head is recorded from the head itself,
    so a pretrained_cfg without num_classes still saves a folder that loads."""
    import timm

    torch.manual_seed(0)
    stitch = stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", input_size=32, num_classes=10).eval()
    stitch.default_cfg = {k: v for k, v in stitch.default_cfg.items() if k != "num_classes"} | {"crop_pct": 1.0}
    assert stitch.pretrained_cfg is stitch.default_cfg
    assert timm.data.resolve_model_data_config(stitch)["crop_pct"] == 1.0
    stitch.save_pretrained(tmp_path / "s")
    loaded = stitchkit.load_pretrained(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(loaded(X), stitch(X))
    assert loaded.pretrained_cfg["crop_pct"] == 1.0 and loaded.pretrained_cfg["num_classes"] == 10


def test_reset_classifier_on_a_stitch_trains_a_new_head_that_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    stitch = stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", input_size=32).eval()
    with torch.no_grad():
        assert torch.allclose(stitch.forward_head(stitch.forward_features(X)), stitch(X), atol=1e-6)
        assert stitch.forward_head(stitch.forward_features(X), pre_logits=True).shape == (2, stitch.head_hidden_size)
    assert stitch.num_classes == 1000 and "head" not in stitch.trained_parts()
    stitch.reset_classifier(5)
    assert stitch.num_classes == 5 and stitch.config.num_classes == 5 and "head" in stitch.trained_parts()
    assert stitch.get_classifier().weight.requires_grad
    stitch.save_pretrained(tmp_path / "five")
    loaded = stitchkit.load_pretrained(tmp_path / "five")
    with torch.no_grad():
        assert torch.equal(loaded(X), stitch(X)) and loaded(X).shape == (2, 5)
    assert "a new 5-class head, untrained" in (tmp_path / "five" / "README.md").read_text()  # not trained since
    probe = stitchkit.create_probe("resnet10t", num_classes=6, input_size=32).eval()
    with torch.no_grad():
        assert torch.allclose(probe.forward_head(probe.forward_features(X)), probe(X), atol=1e-6)
    assert (probe.num_classes, probe.num_features) == (6, 512)
    with pytest.raises(stitchkit.StitchkitError, match="pass num_classes alone"):
        probe.reset_classifier(2, global_pool="max")


def test_a_probe_asked_for_no_classifier_has_none(tmp_path):
    """create_probe(num_classes=0) means timm's no classifier, as for create_stitched and create_parallel (it built
    a new random head of the model's own 1000 classes): the probe returns the pooled features, and saves so."""
    from stitchkit.zoo.models import fit_head

    torch.manual_seed(0)
    probe = stitchkit.create_probe("resnet10t", num_classes=0, input_size=32).eval()
    assert probe.num_classes == 0 and probe.pretrained_cfg["num_classes"] == 0 and probe(X).shape == (2, 512)
    assert not any(p.requires_grad for p in probe.get_classifier().parameters())
    probe.save_pretrained(tmp_path / "p")
    assert stitchkit.load_pretrained(tmp_path / "p").num_classes == 0
    model = stitchkit.create_model("resnet10t")
    classifier = model.fc
    assert fit_head(model, 0) is False and model.fc is classifier  # the caller drops it once the model is cut


def _network(kind: str):
    """One small random network of ``kind``, in eval mode (``finetune_torchvision``: a head cut from an exported
    graph, whose classifier is weights the graph reads)."""
    from stitchkit.parallel import create_parallel

    torch.manual_seed(0)
    build = {
        "stitch": lambda: stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", input_size=32),
        "stitch_new_head": lambda: stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", input_size=32,
                                                             num_classes=10),
        "finetune": lambda: stitchkit.create_finetune_baseline("resnet10t", "1:3", input_size=32),
        "finetune_torchvision": lambda: stitchkit.create_finetune_baseline("torchvision:resnet18", "1:1",
                                                                           input_size=32),
        "probe": lambda: stitchkit.create_probe("resnet10t", num_classes=6, input_size=32),
        "parallel": lambda: create_parallel(["resnet10t", "resnet10t"], "resnet10t", "1:3", input_size=32),
    }
    return build[kind]().eval()


def _trains(model, parameter) -> bool:
    """Whether an optimizer gets ``parameter`` and a checkpoint holds it, as the training engine sees them."""
    params = model.trainable_parameters() if hasattr(model, "trainable_parameters") else [
        p for p in model.parameters() if p.requires_grad]
    saved = model.trained_state_dict().values()
    return any(p is parameter for p in params) and any(t.data_ptr() == parameter.data_ptr() for t in saved)


@pytest.mark.parametrize("kind", ["stitch", "stitch_new_head", "finetune", "finetune_torchvision", "probe",
                                  "parallel"])
def test_every_network_drops_its_classifier_and_takes_a_new_one_as_timms_models_do(kind, tmp_path):
    """reset_classifier(0): the model returns the pooled features its classifier read (N, head_hidden_size),
    forward_head works, num_classes is 0, nothing new trains; it saves and loads without a classifier (num_classes 0,
    as timm's folders say). reset_classifier(k) after it: a new k-class classifier that trains and is saved with the
    model."""
    model = _network(kind)
    width, trained = model.head_hidden_size, model.trained_parts()
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(X), pre_logits=True)
    model.reset_classifier(0)
    with torch.no_grad():
        out = model(X)
        assert out.shape == (2, width) and torch.allclose(out, pre_logits, atol=1e-5)
        assert torch.allclose(model.forward_head(model.forward_features(X)), out, atol=1e-6)
        assert torch.allclose(model.forward_head(model.forward_features(X), pre_logits=True), out, atol=1e-6)
    assert (model.num_classes, model.head_hidden_size) == (0, width) and model.pretrained_cfg["num_classes"] == 0
    assert model.trained_parts() == trained  # no classifier: nothing new to train
    assert not any(p.requires_grad for p in model.get_classifier().parameters())
    if kind.startswith("stitch"):
        assert model.config.num_classes == 0 and model.config.train_head == (kind == "stitch_new_head")
    model.save_pretrained(tmp_path / "headless")
    hub = json.loads((tmp_path / "headless" / "config.json").read_text())
    assert hub["num_classes"] == 0 and hub["num_features"] == model.num_features
    card = (tmp_path / "headless" / "README.md").read_text()
    assert "no classifier" in card and "stitchkit predict path" not in card and "num_classes=N" in card
    loaded = stitchkit.load_pretrained(tmp_path / "headless")
    with torch.no_grad():
        assert torch.equal(loaded(X), out)
    assert loaded.num_classes == 0 and loaded.trained_parts() == trained

    model.reset_classifier(3)
    assert model(X).shape == (2, 3) and model.num_classes == 3 and model.pretrained_cfg["num_classes"] == 3
    assert _trains(model, model.get_classifier().weight)
    assert "head" in model.trained_parts() or model.trained_parts() == ["all"]
    if kind.startswith("stitch"):
        assert model.config.num_classes == 3 and model.config.train_head
    model.save_pretrained(tmp_path / "three")
    assert "3-class head, untrained" in (tmp_path / "three" / "README.md").read_text()
    loaded = stitchkit.load_pretrained(tmp_path / "three")
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    assert loaded.num_classes == 3 and loaded.trained_parts() == model.trained_parts()


@pytest.mark.parametrize("kind", ["stitch", "finetune", "probe", "parallel"])
def test_a_reset_classifier_that_fails_leaves_the_network_as_it_was(kind):
    model = _network(kind)
    classifier, cfg, config = model.get_classifier(), dict(model.pretrained_cfg), getattr(model, "config", None)
    trained, classes = model.trained_parts(), model.num_classes
    for bad in (-1, 2.5, True, "3", None):
        with pytest.raises(stitchkit.StitchkitError, match="whole number of classes"):
            model.reset_classifier(bad)
    with pytest.raises(stitchkit.StitchkitError, match="pass num_classes alone"):
        model.reset_classifier(0, global_pool="avg")
    assert model.get_classifier() is classifier and model.num_classes == classes and model.pretrained_cfg == cfg
    assert getattr(model, "config", None) == config and model.trained_parts() == trained


def test_a_stitch_whose_record_cannot_change_keeps_its_classifier(monkeypatch):
    """The stitch's config is worked out before its classifier is swapped: a config that refuses (here, every new
    config) leaves the model whole, not a new head with the old record."""
    from stitchkit.stitching import StitchConfig

    model = _network("stitch")
    classifier, config = model.get_classifier(), model.config

    def refuse(self):
        raise stitchkit.StitchkitError("refused")

    monkeypatch.setattr(StitchConfig, "__post_init__", refuse)
    for classes in (0, 5):
        with pytest.raises(stitchkit.StitchkitError, match="refused"):
            model.reset_classifier(classes)
        assert model.get_classifier() is classifier and model.num_classes == 1000 and model.config is config
        assert "head" not in model.trained_parts() and not classifier.weight.requires_grad


def test_a_stitch_opened_by_timm_drops_its_classifier_and_saves_and_opens_without_it(folders, tmp_path):
    """The README's use: timm.create_model("local-dir:...") then reset_classifier(0); the folder saved from it opens
    in timm without a classifier, takes a new head with num_classes=, and refuses to predict classes."""
    import timm

    from stitchkit.predict import Predictor

    root, _ = folders
    model = timm.create_model(f"local-dir:{root / 'stitch'}", pretrained=True)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(X), pre_logits=True)
    model.reset_classifier(0)
    with torch.no_grad():
        assert torch.equal(model(X), pre_logits) and model(X).shape == (2, 512)
    assert model.num_classes == 0 and model.config.num_classes == 0
    model.save_pretrained(tmp_path / "headless")
    hub = json.loads((tmp_path / "headless" / "config.json").read_text())
    assert hub["num_classes"] == 0 and hub["pretrained_cfg"]["num_classes"] == 0
    architecture = hub["stitchkit"]["architecture"]
    assert architecture["num_classes"] == 0 and architecture["head_classes"] == 0
    reopened = timm.create_model(f"local-dir:{tmp_path / 'headless'}", pretrained=True)
    asked = timm.create_model(f"local-dir:{root / 'stitch'}", pretrained=True, num_classes=0)  # timm's other way
    with torch.no_grad():
        assert torch.equal(reopened(X), pre_logits) and torch.equal(asked(X), pre_logits)
    assert reopened.num_classes == asked.num_classes == 0
    renewed = timm.create_model(f"local-dir:{tmp_path / 'headless'}", pretrained=True, num_classes=4)
    assert renewed(X).shape == (2, 4) and "head" in renewed.trained_parts()
    assert timm.create_model(f"local-dir:{tmp_path / 'headless'}")(X).shape == (2, 512)  # pretrained=False
    with pytest.raises(stitchkit.StitchkitError, match="has no classifier"):
        Predictor(tmp_path / "headless")


# --- forward_features: what the model's own returns, after its final norm --------------------------------------------


def _timm(name: str, **kwargs):
    torch.manual_seed(0)
    return stitchkit.create_model(name, input_size=32, num_classes=5, **kwargs).eval()


def _same_features_as_timms(model, ft):
    """Check that the fine-tuning baseline ``ft`` of ``model`` ends its features where timm's forward_features does
    (with its removed blocks skipped) and that its head reads them as timm's does; returns (ours, theirs)."""
    theirs = _own_features(model, X, dict.fromkeys(ft.removed_blocks))
    ours = ft.forward_features(X)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)
    assert torch.equal(ft.forward_head(ours), ft(X))
    assert torch.allclose(ft(X), model.forward_head(theirs), atol=1e-5)
    return ours, theirs


def _own_features(model, x, replace: dict | None = None):
    """timm's own ``model.forward_features(x)``, with the output of each block named in ``replace`` swapped for the
    tensor given (what an adapter hands the destination at its cut), and blocks given None skipped."""
    hooks = [model.get_submodule(name).register_forward_hook(
        (lambda out: lambda module, args, output: args[0] if out is None else out)(out))
        for name, out in (replace or {}).items()]
    try:
        return model.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()


def _answers_as_timm(net, model, x, theirs):
    """``net``'s forward_features is ``theirs`` (timm's own), and ``model``'s own forward_head on it gives ``net``'s
    logits and pre-logits: nothing of the head is run twice or left out."""
    with torch.no_grad():
        ours = net.forward_features(x)
        assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)
        assert torch.equal(net.forward_head(ours), net(x))
        assert torch.allclose(net(x), model.forward_head(theirs), atol=1e-5)
        assert torch.allclose(net.forward_head(ours, pre_logits=True), model.forward_head(theirs, pre_logits=True),
                              atol=1e-5)


# Every timm family laid out by hand whose forward_features runs something after the last block (ViT and Swin: the
# final norm; ConvNeXt: norm_pre, here not an identity; EfficientNet: conv_head and bn2; RegNet-Z: final_conv), and
# two that run nothing after it (ResNet, MobileNetV3).
FAMILIES = {"vit_tiny_patch16_224": {}, "swin_tiny_patch4_window7_224": {}, "resnet18": {},
            "convnext_atto": {"head_norm_first": True}, "efficientnet_b0": {}, "regnetz_005": {},
            "mobilenetv3_small_050": {}}


@pytest.mark.parametrize("name", FAMILIES)
def test_a_probe_returns_the_features_timms_forward_features_returns(name):
    model = _timm(name, **FAMILIES[name])
    probe = stitchkit.create_probe(copy.deepcopy(model), input_size=32, name=name).eval()
    with torch.no_grad():
        _answers_as_timm(probe, model, X, model.forward_features(X))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "resnet18"])
def test_a_fine_tuning_baseline_returns_timms_features_of_the_blocks_it_keeps(name):
    """The reference is timm's own forward_features with the baseline's removed blocks skipped."""
    model = _timm(name)
    ft = stitchkit.create_finetune_baseline(copy.deepcopy(model), "1:3", input_size=32, name=name).eval()
    assert ft.removed_blocks
    with torch.no_grad():
        theirs = _own_features(model, X, dict.fromkeys(ft.removed_blocks))
    _answers_as_timm(ft, model, X, theirs)


def _stitch_into_vit():
    """A stitch from a ResNet into a ViT with a new 5-class head, and the ViT (which it shares its back with)."""
    dst = _timm("vit_tiny_patch16_224")
    stitch = stitchkit.create_stitched("resnet10t", dst, "2:3", input_size=32, num_classes=5, new_head=True).eval()
    return stitch, dst


def _vit_reference(dst, x, cut: str, h):
    """timm's forward_features of the destination, from the adapters' output ``h`` at the block ``cut`` on."""
    with torch.no_grad():
        return _own_features(dst, x, {cut: h})


def _stitch_reference(stitch, dst, x):
    with torch.no_grad():
        h = stitch.bridge(stitch.front(x))
    return _vit_reference(dst, x, stitch.dst_spec.cut(*stitch.config.dst_cut).module, h)


def test_a_stitch_into_a_vit_returns_the_vits_features_after_its_norm_and_trains_what_it_did():
    stitch, dst = _stitch_into_vit()
    _answers_as_timm(stitch, dst, X, _stitch_reference(stitch, dst, X))
    # Only forward_features and forward_head moved: the norm stays in the head, trains with the new classifier,
    # and is saved under the head's keys.
    head = len(stitch.back) - 1
    assert stitch.trained_parts() == ["adapters", "head"] and dst.norm.weight.requires_grad
    assert f"back.{head}.owner.norm.weight" in stitch.trained_state_dict()


def test_a_parallel_stitch_into_a_vit_returns_the_vits_features_after_its_norm():
    from stitchkit.parallel import create_parallel

    dst = _timm("vit_tiny_patch16_224")
    parallel = create_parallel(["resnet10t", "resnet10t"], dst, "2:3", input_size=32, num_classes=5).eval()
    with torch.no_grad():
        h = parallel.fused(X)
    cut = parallel.dst_spec.cut(*parallel.config.stitches[0].dst_cut).module
    _answers_as_timm(parallel, dst, X, _vit_reference(dst, X, cut, h))


@pytest.mark.parametrize("kind", ["stitch", "probe"])
def test_a_folder_timm_reopens_returns_timms_features(kind, tmp_path):
    """Saved with stitchkit.save_pretrained and opened with timm.create_model("local-dir:..."): the same features
    (after the ViT's norm) and the same head on them."""
    import timm

    if kind == "stitch":
        net, dst = _stitch_into_vit()
        theirs = _stitch_reference(net, dst, X)
    else:
        dst = _timm("vit_tiny_patch16_224")
        net = stitchkit.create_probe(copy.deepcopy(dst), input_size=32, name="vit_tiny_patch16_224").eval()
        with torch.no_grad():
            theirs = dst.forward_features(X)
    stitchkit.save_pretrained(net, tmp_path / kind)
    opened = timm.create_model(f"local-dir:{tmp_path / kind}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(opened.forward_features(X), net.forward_features(X))
    _answers_as_timm(opened, dst, X, theirs)


def test_a_torchvision_swin_returns_its_features_after_its_norm_before_its_pooling():
    """torchvision has no forward_features: its nearest is the normed map before the pooling (channels last, as
    timm's Swin returns it)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.swin_t(num_classes=4).eval()
    probe = stitchkit.create_probe(copy.deepcopy(model), input_size=32, name="torchvision:swin_t").eval()
    with torch.no_grad():
        theirs = model.norm(model.features(X))
        ours = probe.forward_features(X)
        assert torch.allclose(ours, theirs, atol=1e-5) and torch.equal(probe.forward_head(ours), probe(X))
        pooled = model.flatten(model.avgpool(model.permute(theirs)))
        assert torch.allclose(probe.forward_head(ours, pre_logits=True), pooled, atol=1e-5)
        assert torch.allclose(probe(X), model.head(pooled), atol=1e-5)


# --- forward_features of models cut from their exported graph ---------------------------------------------------------


# Graph-family models (no hand-written family) whose timm forward_features runs something after the last block:
# XCiT its class-attention blocks and final norm, MLP-Mixer its norm, ResNetV2 its pre-activation norm (BatchNorm,
# then an in-place ReLU), NF-Net its final_conv and activation, MaxViT its norm, FastViT its final_conv.
GRAPH_LEADS = ["xcit_nano_12_p16_224", "mixer_s16_224", "resnetv2_18", "test_nfnet", "test_maxvit", "fastvit_t8"]


@pytest.mark.parametrize("name", GRAPH_LEADS)
def test_a_baseline_cut_from_a_graph_returns_timms_features(name):
    """The head cut from the graph has a lead up to where timm's forward_features ends (found by value): the
    baseline's forward_features is timm's (with the baseline's removed blocks skipped), its forward_head takes that
    and gives its logits, and num_features is timm's."""
    from stitchkit.zoo import family_of
    from stitchkit.zoo.split import split_head

    model = _timm(name)
    assert family_of(model).name == "graph"
    ft = stitchkit.create_finetune_baseline(copy.deepcopy(model), "1:1", input_size=32, name=name).eval()
    assert split_head(ft.head())[0] is not None
    with torch.no_grad():
        ours, theirs = _same_features_as_timms(model, ft)
        if not ft.removed_blocks:
            assert torch.allclose(ft.forward_head(ours), model(X), atol=1e-5)
        # (ResNetV2's classifier is a 1x1 convolution, which get_classifier does not find in a graph head)
        if isinstance(model.get_classifier(), torch.nn.Linear):
            assert torch.allclose(ft.forward_head(ours, pre_logits=True), model.forward_head(theirs, pre_logits=True),
                                  atol=1e-5)
    assert ft.num_features == model.num_features


def test_a_graph_heads_lead_changes_nothing_but_where_forward_features_ends(tmp_path):
    """The lead is a marker in the head's graph: the head computes what it did bit for bit, lead and rest compose to
    it, the state dict and MACs are the model's, and the marker survives pickling (which re-traces the graph)."""
    from stitchkit.zoo.split import split_head

    model = _timm("test_nfnet")
    ft = stitchkit.create_finetune_baseline(copy.deepcopy(model), "1:1", input_size=32, name="test_nfnet").eval()
    assert not ft.removed_blocks
    head = ft.head()
    lead, rest = split_head(head)
    with torch.no_grad():
        h = ft.features(X)
        assert torch.equal(rest(lead(h)), head(h))
    assert lead.features_format == "NCHW"
    assert sorted(k.split(".", 1)[1] for k in ft.state_dict()) == sorted(model.state_dict())  # "0.stem...": stem
    assert stitchkit.count_macs(ft, 32) == stitchkit.count_macs(model, 32)
    torch.save(ft, tmp_path / "ft.pt")
    loaded = torch.load(tmp_path / "ft.pt", weights_only=False).eval()  # our own file: unpickling is trusted here
    assert split_head(loaded.head())[0] is not None
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(X), ft.forward_features(X)) and torch.equal(loaded(X), ft(X))


def test_a_graph_model_whose_features_end_at_its_last_block_has_no_lead():
    """ByobNet's forward_features ends at its last block. Its head pools a 1x1 map at 32 px, whose output has the
    features' very values: the first match (the last block's own output) wins, so the pooling stays in the head."""
    from stitchkit.zoo.split import split_head

    model = _timm("test_byobnet")
    ft = stitchkit.create_finetune_baseline(copy.deepcopy(model), "1:1", input_size=32, name="test_byobnet").eval()
    assert split_head(ft.head())[0] is None
    with torch.no_grad():
        theirs = _own_features(model, X, dict.fromkeys(ft.removed_blocks))
        assert theirs.shape[-2:] == (1, 1) and torch.allclose(ft.forward_features(X), theirs, atol=1e-5)
    assert ft.num_features == model.num_features


@pytest.mark.parametrize("name, lead",
                         [("poolformerv2_s12", False), ("efficientvit_b0", False), ("caformer_s18", True)])
def test_a_graph_baselines_features_stop_before_the_classifier_head(name, lead):
    """MetaFormer's head pools then norms, EfficientViT's starts with a convolution: modules inside the classifier head
    are never blocks, so the baseline's forward_features is timm's (with the baseline's removed blocks skipped; no
    pooling, no head convolution), its forward_head timm's, and its num_features timm's. CAFormer's last stage hands
    on tokens, which its stage turns back into a map: that is the head's lead (before, the head's pooling and norm
    were its last blocks and its token blocks were no cut at all)."""
    from stitchkit.zoo.split import split_head

    model = _timm(name)
    ft = stitchkit.create_finetune_baseline(copy.deepcopy(model), "1:1", input_size=32, name=name).eval()
    assert (split_head(ft.head())[0] is not None) == lead
    with torch.no_grad():
        _same_features_as_timms(model, ft)
    assert ft.num_features == model.num_features


@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:vit_b_16", "vit_tiny_patch16_224"])
def test_a_whole_model_saved_without_input_size_records_the_size_it_was_built_for(name, tmp_path):
    """save_pretrained without input_size= recorded 224 px for a model built for 32: a torchvision ViT's folder then
    could not be loaded (its position table is built for 32 px), and a ResNet's told predict and timm's data config
    to resize images to 224. It records the size create_model built it for."""
    torch.manual_seed(0)
    model = stitchkit.create_model(name, input_size=32, num_classes=3).eval()
    stitchkit.save_pretrained(model, tmp_path / "m", name=name)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert list(config["pretrained_cfg"]["input_size"]) == [3, 32, 32]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(stitchkit.load_pretrained(tmp_path / "m")(x), model(x))


def test_a_torchvision_model_opened_by_timm_with_a_new_head_says_so(tmp_path):
    """timm's num_classes=0 asks for features: a torchvision model's folder gave a zero-width output (its classifier
    became nn.Linear(512, 0)). A new head of 5 classes kept the old head's 10 in pretrained_cfg with their names."""
    torch.manual_seed(0)
    model = stitchkit.create_model("torchvision:resnet18", input_size=32, num_classes=10).eval()
    stitchkit.save_pretrained(model, tmp_path / "tv", name="torchvision:resnet18",
                              class_names=[f"c{i}" for i in range(10)])
    import timm

    features = timm.create_model(f"local-dir:{tmp_path / 'tv'}", pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert features(X).shape == (2, 512)
    five = timm.create_model(f"local-dir:{tmp_path / 'tv'}", pretrained=True, num_classes=5)
    assert five(X).shape == (2, 5)
    assert five.pretrained_cfg["num_classes"] == 5 and five.pretrained_cfg["label_names"] is None
    assert "class_names" not in five.stitchkit_info
    kept = timm.create_model(f"local-dir:{tmp_path / 'tv'}", pretrained=True, num_classes=10)
    assert kept.pretrained_cfg["label_names"][3] == "c3"  # the same head: its names still describe it


def test_a_hub_name_pinned_to_a_revision_loads_that_revision(tmp_path, monkeypatch):
    """timm.create_model("hf-hub:owner/name@v1") failed for every stitchkit folder ("'owner/name@v1' is not a
    folder"): the revision reached stitchkit inside the repository id. It loads the pinned revision, not main's
    (an offline Hub cache made by hand: two snapshots with different weights)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--you--stitch"
    x = torch.randn(1, 3, 32, 32)
    outputs = {}
    for seed, (ref, commit) in enumerate((("main", "a" * 40), ("v1", "b" * 40))):
        torch.manual_seed(seed)
        model = stitchkit.create_stitched("resnet10t", "resnet10t", gap="1:3", input_size=32).eval()
        model.save_pretrained(repo / "snapshots" / commit)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        with torch.no_grad():
            outputs[ref] = model(x)
    import timm

    for name, ref in (("you/stitch", "main"), ("you/stitch@v1", "v1"), (f"you/stitch@{'b' * 40}", "v1")):
        model = timm.create_model(f"hf-hub:{name}", pretrained=True, cache_dir=str(tmp_path)).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), outputs[ref], msg=name)
    loaded = stitchkit.load_pretrained("you/stitch@v1", cache_dir=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), outputs["v1"])
    with pytest.raises(stitchkit.StitchkitError, match="give one of them"):
        stitchkit.load_pretrained("you/stitch@v1", revision="main", cache_dir=tmp_path)
