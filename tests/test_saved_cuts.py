"""A saved stitch records where it cut its models, and loading refuses to rebuild it elsewhere: an adapter file, a
model folder and a parallel stitch's folder record their cuts and load where they match; a recorded cut this version
does not make is one clear error (Python and CLI) that leaves the file as it was; a file written before cuts were
recorded with a model whose graph split changed in 0.13.0 (torchvision ViT, MobileNet) is refused unless trusted, and
one of hand-written families (timm resnet18) loads as before."""
import json
import warnings

import pytest
import torch
from PIL import Image

import stitchkit
from stitchkit.cli import main
from stitchkit.parallel import create_parallel
from stitchkit.saved_cuts import CutsChangedError, split_changed

SIZE = 32
CHEAP = {"input_size": SIZE, "adapter_norm": "paper_code"}  # no start to fit: the tests are about files


def record(folder):
    return json.loads((folder / "config.json").read_text())["stitchkit"]


def edit_record(folder, change):
    hub = json.loads((folder / "config.json").read_text())
    change(hub["stitchkit"])
    (folder / "config.json").write_text(json.dumps(hub))


def as_written_before_0_13(folder):
    """What stitchkit 0.12.0 wrote: no cuts, format 2."""
    def change(config):
        config.update(format_version=2, stitchkit_version="0.12.0")
        for arch in config["architecture"].get("stitches", [config["architecture"]]):
            arch.pop("cuts")
    edit_record(folder, change)


def old_adapter_file(path, old):
    """What stitchkit 0.12.0's save_adapters wrote: format v3, no cuts, no version."""
    saved = torch.load(path, weights_only=True)
    del saved["cuts"], saved["stitchkit_version"]
    saved["format"] = "stitchkit.adapters.v3"
    torch.save(saved, old)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "x.png"
    Image.new("RGB", (SIZE, SIZE), (120, 30, 200)).save(path)
    return path


def test_the_models_whose_graph_split_changed_in_0_13():
    changed = ["torchvision:vit_b_16", "torchvision:mobilenet_v2", "torchvision:mobilenet_v3_small.IMAGENET1K_V1",
               "torchvision:efficientnet_b0", "torchvision:mnasnet0_5", "torchvision:regnet_y_400mf",
               "torchvision:convnext_tiny", "xcit_nano_12_p8_224", "tresnet_m"]
    kept = ["resnet18", "resnet50.a1_in1k", "vit_small_patch16_224", "convnext_tiny", "efficientnet_b0",
            "torchvision:resnet50", "torchvision:swin_t", "mobilenetv3_large_100", "no_such_model"]
    assert {n: split_changed(n) for n in changed} == {n: "0.13.0" for n in changed}
    assert {n: split_changed(n) for n in kept} == {n: None for n in kept}


def test_an_adapter_file_records_its_cuts_and_loads_where_they_match(tmp_path):
    model = stitchkit.create_stitched("resnet18", "resnet18", "1:3", **CHEAP)
    model.save_adapters(tmp_path / "adapters.pt")
    saved = torch.load(tmp_path / "adapters.pt", weights_only=True)
    assert saved["cuts"] == {"src": "layer1.0", "dst": "layer3.0"} == model.cuts()
    assert saved["format"] == "stitchkit.adapters.v3"  # nothing an earlier reader would rebuild differently
    assert saved["stitchkit_version"] == stitchkit.__version__
    assert stitchkit.load_stitched(tmp_path / "adapters.pt").cuts() == model.cuts()


def test_a_stitch_and_a_parallel_stitch_folder_record_their_cuts(tmp_path):
    single = stitchkit.create_stitched("resnet18", "resnet10t", "2:3", **CHEAP)
    single.save_pretrained(tmp_path / "single")
    assert record(tmp_path / "single")["architecture"]["cuts"] == {"src": "layer2.0", "dst": "layer3.0"}
    assert record(tmp_path / "single")["format_version"] == 2  # readable as before
    assert stitchkit.load_pretrained(tmp_path / "single").cuts() == single.cuts()
    fused = create_parallel(["resnet18", "resnet10t"], "resnet18", ["1:3", "2:3"], **CHEAP)
    fused.save_pretrained(tmp_path / "fused")
    assert [a["cuts"] for a in record(tmp_path / "fused")["architecture"]["stitches"]] == [
        {"src": "layer1.0", "dst": "layer3.0"}, {"src": "layer2.0", "dst": "layer3.0"}]
    assert stitchkit.load_pretrained(tmp_path / "fused").cuts() == fused.cuts()


def test_an_adapter_file_cut_elsewhere_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "adapters.pt"
    stitchkit.create_stitched("resnet18", "resnet18", "1:3", **CHEAP).save_adapters(path)
    saved = torch.load(path, weights_only=True)
    saved["cuts"]["src"], saved["stitchkit_version"] = "layer1.1", "0.13.0"  # shapes agree: would load silently
    torch.save(saved, path)
    before = path.read_bytes()
    with pytest.raises(CutsChangedError) as error:
        stitchkit.load_stitched(path, trust_cuts=True)  # a recorded cut is a fact: trusting cannot override it
    message = str(error.value)
    for part in ("source resnet18 cut after 'layer1.1'", "stitchkit 0.13.0", "at stage 1 (first) after 'layer1.0'",
                 "pip install stitchkit==0.13.0", "retrain the stitch"):
        assert part in message, message
    assert path.read_bytes() == before


def test_a_folder_cut_elsewhere_is_refused_in_python_and_by_the_cli(tmp_path, image, capsys):
    folder = tmp_path / "stitch"
    stitchkit.create_stitched("resnet18", "resnet10t", "1:3", **CHEAP).save_pretrained(folder)
    edit_record(folder, lambda c: c["architecture"]["cuts"].update(dst="layer3.1"))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(CutsChangedError, match="destination resnet10t cut after 'layer3.1'.*after 'layer3.0'"):
        stitchkit.load_pretrained(folder)
    with pytest.raises(CutsChangedError):
        stitchkit.StitchedModel.from_pretrained(folder)
    for command in (["predict", str(folder), str(image)], ["export", str(folder), "--out", str(tmp_path / "out")],
                    ["eval", str(folder), "data.name=synthetic", f"data.input_size={SIZE}"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "cut after 'layer3.1'" in err and "retrain the stitch" in err and len(err.splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not (tmp_path / "out").exists()


def test_a_parallel_folder_with_one_source_cut_elsewhere_is_refused(tmp_path):
    folder = tmp_path / "fused"
    create_parallel(["resnet18", "resnet10t"], "resnet18", "1:3", **CHEAP).save_pretrained(folder)
    edit_record(folder, lambda c: c["architecture"]["stitches"][1]["cuts"].update(src="layer1.1"))
    with pytest.raises(CutsChangedError, match="source resnet10t cut after 'layer1.1'"):
        stitchkit.load_pretrained(folder)


def test_an_old_adapter_file_with_a_torchvision_vit_is_refused_unless_trusted(tmp_path):
    name = "torchvision:vit_b_16"
    model = stitchkit.create_stitched(name, name, "1:3", **CHEAP)
    model.save_adapters(tmp_path / "new.pt")
    # 0.12 and earlier would rebuild this ViT at their cuts: they refuse the new format instead
    assert torch.load(tmp_path / "new.pt", weights_only=True)["format"] == "stitchkit.adapters.v4"
    old_adapter_file(tmp_path / "new.pt", tmp_path / "old.pt")
    with pytest.raises(CutsChangedError) as error:
        stitchkit.load_stitched(tmp_path / "old.pt")
    message = str(error.value)
    for part in ("records no cuts", "before 0.13.0", f"cuts {name} (its source)",
                 "after 'encoder.layers.encoder_layer_0'", "pip install stitchkit==0.12.0", "retrain the stitch",
                 "trust_cuts=True"):
        assert part in message, message
    trusted = stitchkit.load_stitched(tmp_path / "old.pt", trust_cuts=True)
    trusted.save_adapters(tmp_path / "again.pt")  # saved again, it records the cuts it was loaded at
    assert stitchkit.load_stitched(tmp_path / "again.pt").cuts() == model.cuts()


def test_an_old_folder_with_a_torchvision_mobilenet_is_refused_unless_trusted(tmp_path, image, capsys):
    name = "torchvision:mobilenet_v3_small"
    folder = tmp_path / "stitch"
    stitchkit.create_stitched("resnet18", name, "1:3", **CHEAP).save_pretrained(folder)
    assert record(folder)["format_version"] == 3  # what 0.12 refuses ("written by a newer stitchkit")
    as_written_before_0_13(folder)
    with pytest.raises(CutsChangedError, match=f"written by stitchkit 0.12.0 before 0.13.0.*{name} \\(its "
                                               "destination\\).*pip install stitchkit==0.12.0"):
        stitchkit.load_pretrained(folder)
    assert main(["predict", str(folder), str(image)]) == 2
    assert "load_pretrained(FOLDER, trust_cuts=True)" in capsys.readouterr().err
    import timm

    for pretrained in (True, False):  # timm's local-dir: the folder's network, with its weights or fresh ones
        with pytest.raises(CutsChangedError, match="records no cuts"):
            timm.create_model(f"local-dir:{folder}", pretrained=pretrained)
    assert stitchkit.load_pretrained(folder, trust_cuts=True).cuts()["dst"] == "features.4"
    assert stitchkit.StitchedModel.from_pretrained(folder, trust_cuts=True).cuts()["dst"] == "features.4"


def test_an_old_parallel_folder_with_a_changed_source_is_refused_unless_trusted(tmp_path):
    folder = tmp_path / "fused"
    create_parallel(["resnet18", "torchvision:mobilenet_v3_small"], "resnet18", "1:3", **CHEAP).save_pretrained(folder)
    assert record(folder)["format_version"] == 3
    as_written_before_0_13(folder)
    with pytest.raises(CutsChangedError, match="torchvision:mobilenet_v3_small \\(its source\\)"):
        stitchkit.load_pretrained(folder)
    stitchkit.load_pretrained(folder, trust_cuts=True)


def test_old_files_of_hand_written_families_load_as_before(tmp_path):
    model = stitchkit.create_stitched("resnet18", "resnet18", "1:3", **CHEAP)
    model.save_adapters(tmp_path / "new.pt")
    old_adapter_file(tmp_path / "new.pt", tmp_path / "old.pt")
    model.save_pretrained(tmp_path / "folder")
    as_written_before_0_13(tmp_path / "folder")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stitchkit.load_stitched(tmp_path / "old.pt").cuts() == model.cuts()
        assert stitchkit.load_pretrained(tmp_path / "folder").cuts() == model.cuts()


def test_an_adapter_file_of_a_newer_format_says_to_upgrade(tmp_path):
    path = tmp_path / "adapters.pt"
    torch.save({"format": "stitchkit.adapters.v9", "stitchkit_version": "9.0", "config": {}, "adapters": {}}, path)
    with pytest.raises(stitchkit.StitchkitError, match="newer stitchkit \\(9.0.*pip install -U stitchkit"):
        stitchkit.load_stitched(path)


def test_an_end_asked_for_elsewhere_is_not_held_to_its_saved_cut(tmp_path):
    """load_stitched(path, gap=...) asks for another stitch: its moved end has no saved cut to keep (its weights then
    do not fit, as before), while the end left where it was is still checked."""
    path = tmp_path / "adapters.pt"
    stitchkit.create_stitched("resnet18", "resnet18", "1:3", **CHEAP).save_adapters(path)
    with pytest.raises(stitchkit.StitchkitError, match="do not fit"):
        stitchkit.load_stitched(path, gap=[1, 4])
    saved = torch.load(path, weights_only=True)
    saved["cuts"]["src"] = "layer1.1"
    torch.save(saved, path)
    with pytest.raises(CutsChangedError, match="cut after 'layer1.1'"):
        stitchkit.load_stitched(path, gap=[1, 4])


def test_integrated_resizing_strides_where_a_cnn_makes_odd_sizes():
    """A ResNet's own padded stride-2 convolutions make 25 -> 13 -> 7 -> 4 at 100 px (ceil(n / 2)), and 7 -> 4 at
    112 px: resize='integrated' strides its adapters there too (before 0.13.1 it found no stride, 25 // 13 = 1, and
    resized bilinearly in front of a stride-1 adapter, though the stitch was labelled integrated)."""
    from stitchkit.chain import plan_chain

    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    assert [conv(torch.zeros(1, 1, n, n)).shape[-1] for n in (25, 13, 7)] == [13, 7, 4]
    steps = plan_chain(64, (25, 25), 512, (4, 4), 3, "integrated")
    assert [(s.resize, s.stride) for s in steps] == [("stride", 2)] * 3
    assert [(s.resize, s.stride) for s in plan_chain(64, (24, 24), 512, (3, 3), 3, "integrated")] == [("stride", 2)] * 3
    assert plan_chain(64, (9, 9), 128, (4, 4), 1, "integrated")[0].resize == "bilinear"  # no stride makes 9 -> 4
    model = stitchkit.create_stitched("resnet18", "resnet18", "1:4", "conv3x3_relu", "integrated", input_size=112,
                                      adapter_norm="paper_code")
    assert [(s.in_size, s.out_size, s.resize) for s in model.steps] == [
        ((28, 28), (14, 14), "stride"), ((14, 14), (7, 7), "stride"), ((7, 7), (4, 4), "stride")]
    assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 1000)


def test_an_integrated_stitch_saved_before_its_odd_steps_strided_is_refused(tmp_path, image, capsys):
    """A file of 0.13.0 or earlier whose integrated chain this version strides where that one resized bilinearly
    holds weights of the same shapes for another network: refused (adapter file, folder), in one line by the CLI;
    files of this version, and old ones whose sizes a stride divides, load."""
    odd = stitchkit.create_stitched("resnet18", "resnet18", "2:4", "linear", "integrated", input_size=112,
                                    adapter_norm="paper_code")
    path = tmp_path / "adapters.pt"
    odd.save_adapters(path)
    assert stitchkit.load_stitched(path).steps == odd.steps
    saved = torch.load(path, weights_only=True)
    saved["stitchkit_version"] = "0.13.0"
    torch.save(saved, path)
    before = path.read_bytes()
    with pytest.raises(CutsChangedError) as error:
        stitchkit.load_stitched(path, trust_cuts=True)  # the chain is not a cut: trusting the cuts does not cover it
    message = str(error.value)
    for part in ("stitchkit 0.13.0", "from 7x7 to 4x4 bilinearly", "strides that adapter by 2",
                 "pip install stitchkit==0.13.0", "retrain the stitch"):
        assert part in message, message
    assert path.read_bytes() == before
    odd.save_pretrained(tmp_path / "folder")
    edit_record(tmp_path / "folder", lambda config: config.update(stitchkit_version="0.13.0"))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "folder"), str(image)]) == 2
    assert "from 7x7 to 4x4 bilinearly" in capsys.readouterr().err
    even = stitchkit.create_stitched("resnet18", "resnet18", "2:4", "linear", "integrated", input_size=128,
                                     adapter_norm="paper_code")
    even.save_adapters(path)
    saved = torch.load(path, weights_only=True)
    saved["stitchkit_version"] = "0.13.0"
    torch.save(saved, path)
    assert stitchkit.load_stitched(path).steps == even.steps  # 16 -> 8 -> 4: strided in 0.13.0 too
