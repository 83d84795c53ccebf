"""One self-contained model folder (config.json + model.safetensors + README.md, the Hugging Face Hub layout): a
moved run, with its source checkpoints gone, evaluates and predicts from its exported folder with the run's own
top-1; every kind of model saves and loads; bad folders are one clear error each."""
import json
import shutil

import pytest
import torch

import stitchkit
from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.training import load_config, train
from stitchkit.training.data import SyntheticSource

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=128", "data.synthetic_val_size=40",
        "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "model.pretrained=false",
        "train.epochs=2"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A stitch of a scratch-trained source to a random 1000-class destination with a new 10-class head, exported;
    then the run moved and the source checkpoint deleted."""
    root = tmp_path_factory.mktemp("folder")
    train(load_config(None, [*TINY, "mode=scratch", "model.src=resnet10t", f"output.dir={root / 'source'}"]))
    result = train(load_config(None, [
        *TINY, "mode=stitch", "model.src=resnet10t", f"model.src_checkpoint={root / 'source' / 'model.pt'}",
        "model.dst=resnet18", "model.gap=1:3", "model.num_classes=10", f"output.dir={root / 'runs' / 'stitch'}"]))
    assert main(["export", str(root / "runs" / "stitch"), "--out", str(root / "exported"), "--format",
                 "safetensors"]) == 0
    shutil.move(root / "runs", root / "moved")
    shutil.rmtree(root / "source")  # a copy on a machine without the source checkpoints
    images = root / "images"
    images.mkdir()
    val = SyntheticSource(40, 10, 32 + 32 // 8, offset=10**6)  # the run's validation images, as files
    labels = {}
    for i in range(len(val)):
        image, labels[f"{i:03d}.png"] = val.load(i)
        image.save(images / f"{i:03d}.png")
    return root / "exported", images, labels, result


def record(folder):
    """stitchkit's record in a model folder's config.json (timm's keys around it)."""
    return json.loads((folder / "config.json").read_text())["stitchkit"]


def test_the_folder_is_the_hub_layout_and_describes_the_model(exported):
    from huggingface_hub import constants

    out, _, _, result = exported
    # the Hub folder holds the model alone; the deployment files sit beside it, so pushing it uploads no export
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model", "preprocessing.json"]
    folder = out / "model"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [constants.CONFIG_NAME, constants.SAFETENSORS_SINGLE_FILE, "README.md"])
    hub = json.loads((folder / "config.json").read_text())
    assert (hub["architecture"], hub["num_classes"], len(hub["label_names"])) == ("stitchkit_stitch", 10, 10)
    config = hub["stitchkit"]
    assert config["format"] == "stitchkit.model" and config["kind"] == "stitch" and config["format_version"] == 2
    arch = config["architecture"]
    assert (arch["src"], arch["dst"], arch["gap"], arch["num_classes"], arch["head_classes"]) == (
        "resnet10t", "resnet18", [1, 3], 10, 10)
    assert config["preprocessing"]["input_size"] == [3, 32, 32] and len(config["class_names"]) == 10
    assert config["result"]["top1"] == result["top1"] and config["trained"] == ["adapters", "head"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: stitchkit") and "resnet10t" in card and "stitchkit.load_pretrained" in card
    # a title in words, the Hub's metadata, the evaluation set's size, the parts' accuracy and compute, the head
    assert "\n# resnet10t -> resnet18 stitch, stage 1 -> 3 (bottleneck adapters)\n" in card
    assert "license: unknown" in card and "model-index:" in card and 'split: "validation (40 images)"' in card
    assert f"value: {result['top1']:.2f}" in card and "on the 40 validation images of stitchkit's synthetic data" in card
    assert "## Compared with its parts" in card and "| resnet10t | source (front), checkpoint model.pt" in card
    assert "with a new 10-class head, trained" in card and "seed" not in card.split("\n# ")[1].splitlines()[0]


def test_a_moved_run_without_its_sources_evaluates_and_predicts_from_its_folder(exported, capsys, monkeypatch,
                                                                                tmp_path):
    folder, images, labels, result = exported
    monkeypatch.chdir(tmp_path)  # from anywhere
    assert main(["eval", str(folder), "--workers", "0"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["top1"] == result["top1"] and record["top5"] == result["top5"]
    assert main(["predict", str(folder), str(images), "--json", "--top-k", "2"]) == 0
    answers = json.loads(capsys.readouterr().out)
    correct = sum(a["top"][0]["index"] == labels[a["file"].rsplit("/", 1)[-1]] for a in answers)
    assert 100.0 * correct / len(labels) == pytest.approx(result["top1"])
    assert answers[0]["top"][0]["class"].startswith("class_")  # the run's class names
    assert main(["eval", str(folder), "data.synthetic_classes=5"]) == 2
    assert "predicts 10 classes but the data has 5" in capsys.readouterr().err


def test_loaded_model_carries_its_preprocessing_and_saves_again(exported, tmp_path):
    import timm.data

    folder = exported[0]
    model = stitchkit.load_pretrained(folder)
    assert isinstance(model, stitchkit.StitchedModel) and not model.training
    data_config = timm.data.resolve_model_data_config(model)
    assert data_config["input_size"] == (3, 32, 32) and timm.data.create_transform(**data_config) is not None
    again = model.save_pretrained(tmp_path / "again")
    reloaded = stitchkit.StitchedModel.from_pretrained(again)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert record(again)["class_names"] == model.stitchkit_info["class_names"]
    with pytest.raises(StitchkitError, match="holds a stitch model, not a finetune"):
        stitchkit.FinetuneBaseline.from_pretrained(again)


def test_a_finetune_run_of_a_torchvision_model_exports_and_loads(tmp_path):
    """The folder names the model as the run did (torchvision:..., not the class name of the instance)."""
    result = train(load_config(None, [*TINY, "train.epochs=1", "mode=finetune", "model.src=torchvision:resnet18",
                                      "model.gap=1:3", "model.num_classes=10", f"output.dir={tmp_path / 'ft'}"]))
    assert main(["export", str(tmp_path / "ft"), "--out", str(tmp_path / "folder"), "--format", "safetensors"]) == 0
    config = record(tmp_path / "folder" / "model")
    assert config["kind"] == "finetune" and config["architecture"]["model"] == "torchvision:resnet18"
    model = stitchkit.load_pretrained(tmp_path / "folder")
    assert isinstance(model, stitchkit.FinetuneBaseline) and config["result"]["top1"] == result["top1"]


@pytest.mark.parametrize("kind", ["finetune", "model", "vit-stitch", "pos-embed", "hiera"])
def test_every_kind_saves_and_loads_offline(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "finetune":
        model = stitchkit.create_finetune_baseline("torchvision:resnet18", "1:3", input_size=32)
        model.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                                "interpolation": "bilinear", "crop_pct": 1.0}
        model.save_pretrained(tmp_path / "m")
    elif kind == "model":
        model = stitchkit.create_model("resnet10t", num_classes=3)
        stitchkit.save_pretrained(model, tmp_path / "m", input_size=32)
    elif kind == "pos-embed":  # computed from the destination's weights and kept out of state dicts
        model = stitchkit.create_stitched("vit_micro_patch4_32", "vit_pico_patch4_32", "1:3", input_size=32,
                                          readd_pos_embed=True, prefix_in="learned")
        model.save_pretrained(tmp_path / "m")
    elif kind == "hiera":  # its token reordering between the parts
        model = stitchkit.create_stitched("hiera_tiny_224", "resnet10t", "2:3", input_size=32)
        model.save_pretrained(tmp_path / "m")
    else:
        model = stitchkit.create_stitched("vit_micro_patch4_32", "resnet10t", "2:3", adapter="linear", input_size=32,
                                          unfreeze_last=1)
        model.save_pretrained(tmp_path / "m", class_names=[f"c{i}" for i in range(1000)])
    torch.manual_seed(1)  # other random weights while it is rebuilt: only the folder's may count
    loaded = stitchkit.load_pretrained(tmp_path / "m")
    assert type(loaded) is type(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_hub_ids_download_and_push_uploads_the_folder(exported, tmp_path, monkeypatch):
    """No network here: the Hub calls are replaced by fakes that check what they are given."""
    import huggingface_hub

    folder = exported[0]
    asked = {}

    def snapshot_download(repo, revision=None, allow_patterns=None, **hub):
        asked.update(hub)
        if repo != "someone/my-stitch":
            raise OSError("offline")
        return str(folder / "model")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = stitchkit.load_pretrained("someone/my-stitch", cache_dir=str(tmp_path / "cache"), local_files_only=True,
                                      token="hf_x")
    assert model.config.dst == "resnet18"
    assert asked == {"cache_dir": str(tmp_path / "cache"), "local_files_only": True, "token": "hf_x"}
    with pytest.raises(StitchkitError, match="could not be downloaded from the Hugging Face Hub"):
        stitchkit.load_pretrained("someone/missing")
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, commit_message):
            uploaded["files"] = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
            return "https://huggingface.co/someone/copy/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert model.push_to_hub("someone/copy").endswith("/commit/1")
    assert uploaded == {"repo": "someone/copy", "files": ["README.md", "config.json", "model.safetensors"]}


def test_bad_folders_are_one_clear_error_each(exported, tmp_path, capsys):
    folder = exported[0] / "model"

    def broken(name, change):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        change(copy)
        return copy

    def newer(copy):
        hub = json.loads((copy / "config.json").read_text())
        hub["stitchkit"].update(format_version=99, stitchkit_version="9.0")
        (copy / "config.json").write_text(json.dumps(hub))

    def other_weights(copy):
        stitchkit.save_pretrained(stitchkit.create_model("resnet10t", num_classes=3), tmp_path / "other",
                                  input_size=32)
        shutil.copy(tmp_path / "other" / "model.safetensors", copy / "model.safetensors")

    cases = [
        (broken("newer", newer), "newer stitchkit (9.0, model format 99; this one reads up to 3): upgrade"),
        (broken("mismatch", other_weights), "do not match the model its config.json describes"),
        (broken("torn", lambda c: (c / "model.safetensors").write_bytes(b"\x00" * 64)), "not a readable safetensors"),
        (broken("unsaved", lambda c: (c / "config.json").unlink()), "an interrupted save, or the file was removed"),
        (broken("noweights", lambda c: (c / "model.safetensors").unlink()), "has no model.safetensors"),
        (broken("foreign", lambda c: (c / "config.json").write_text('{"model_type": "bert"}')),
         "does not describe a stitchkit model"),
    ]
    for path, message in cases:
        with pytest.raises(StitchkitError) as error:
            stitchkit.load_pretrained(path)
        assert message in str(error.value), str(error.value)
        assert main(["predict", str(path), str(exported[1] / "000.png")]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(StitchkitError, match="holds other files"):
        stitchkit.load_pretrained(folder).save_pretrained(tmp_path / "mine")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_saving_again_replaces_an_earlier_save_and_nothing_else(tmp_path):
    first, second = (stitchkit.create_model("resnet10t", num_classes=3) for _ in range(2))
    folder = tmp_path / "m"
    stitchkit.save_pretrained(first, folder, input_size=32)
    stitchkit.save_pretrained(second, folder, input_size=32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(stitchkit.load_pretrained(folder)(x), second.eval()(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging folder left
    (folder / "model.onnx").write_bytes(b"an export of the first")
    with pytest.raises(StitchkitError, match=r"holds other files \(model.onnx\)"):
        stitchkit.save_pretrained(first, folder, input_size=32)


def test_a_loaded_whole_model_saves_again_with_its_name_and_class_names(tmp_path):
    model = stitchkit.create_model("resnet10t", num_classes=3)
    stitchkit.save_pretrained(model, tmp_path / "a", input_size=32, class_names=["x", "y", "z"])
    stitchkit.save_pretrained(stitchkit.load_pretrained(tmp_path / "a"), tmp_path / "b")
    first, config = (record(tmp_path / f) for f in ("a", "b"))
    assert first["architecture"]["name"] == "resnet10t.c3_in1k"  # timm's architecture.tag
    assert json.loads((tmp_path / "a" / "config.json").read_text())["architecture"] == "resnet10t"  # timm's key
    assert config["architecture"] == first["architecture"] and config["class_names"] == ["x", "y", "z"]
    stitchkit.save_pretrained(stitchkit.load_pretrained(tmp_path / "b"), tmp_path / "c", class_names=["p", "q", "r"])
    assert record(tmp_path / "c")["class_names"] == ["p", "q", "r"]
    # a name per output: two names for three classes were written as given, and predict named the third "2"
    with pytest.raises(StitchkitError, match="class_names lists 2 names but the model predicts 3 classes"):
        stitchkit.save_pretrained(model, tmp_path / "d", input_size=32, class_names=["p", "q"])
    assert not (tmp_path / "d").exists()


def test_the_card_of_pretrained_parts_names_them_for_the_hub():
    """Base models with their Hub ids and license, the dataset's Hub id, and an evaluation on part of the split
    said as such (data.limit_val)."""
    from stitchkit.export import parts_record
    from stitchkit.modelfolder import folder_config, model_card

    config = load_config(None, ["mode=stitch", "model.src=resnet18.a1_in1k", "model.dst=resnet34.a1_in1k",
                                "model.gap=1:3", "data.name=fashion_mnist", "data.input_size=32"])
    sources = parts_record(config, 32)
    assert [s["hub_id"] for s in sources] == ["timm/resnet18.a1_in1k", "timm/resnet34.a1_in1k"]
    record = folder_config("stitch", {"src": "resnet18.a1_in1k", "dst": "resnet34.a1_in1k", "gap": [1, 3],
                                      "adapter": "bottleneck", "resize": "downsample", "head_classes": 10,
                                      "num_classes": 10},
                           {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
                            "interpolation": "bilinear", "crop_pct": 1.0},
                           result={"top1": 81.25, "dataset": "fashion_mnist", "eval_images": 2000,
                                   "val_split_images": 10000, "gmacs": 0.2},
                           trained=["adapters", "head"], sources=sources)
    card = model_card(record)
    header = card.split("\n---\n")[0]
    assert "license: apache-2.0" in header and '- "zalando-datasets/fashion_mnist"' in header
    assert 'base_model:\n- "timm/resnet18.a1_in1k"\n- "timm/resnet34.a1_in1k"' in header
    assert 'split: "validation (2,000 of 10,000 images)"' in header and "value: 81.25" in header
    assert "81.25%** on 2,000 of the 10,000 validation images of fashion_mnist (a random subset" in card
    assert "| resnet18.a1_in1k | source (front), timm pretrained, timm/resnet18.a1_in1k |" in card


def test_a_folder_saved_without_a_classifier_refuses_to_evaluate_or_predict(exported, capsys, tmp_path):
    """After reset_classifier(0) the model returns features: eval and predict say so instead of scoring them as
    classes ("predicts 0 classes", softmax over 512 features)."""
    folder, images, _, _ = exported
    model = stitchkit.load_pretrained(folder)
    model.reset_classifier(0)
    model.save_pretrained(tmp_path / "features")
    assert record(tmp_path / "features")["evaluation"]  # it still says what data it was evaluated on
    card = (tmp_path / "features" / "README.md").read_text()  # its Use section says what it is for instead
    assert "stitchkit predict path/to/this/folder" not in card and "stitchkit predict path/to/this/folder" in (
        folder / "model" / "README.md").read_text()
    assert "model.forward_features(images)" in card and "pretrained=True, num_classes=N)" in card
    for command in (["eval", str(tmp_path / "features"), "--workers", "0"],
                    ["predict", str(tmp_path / "features"), str(images)]):
        assert main(command) == 2
        assert "has no classifier" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_loading_onto_a_device_the_machine_lacks_blames_the_device_not_the_folder(tmp_path):
    """A folder copied from a GPU machine, loaded with device="cuda" on one without: the error said the weights did
    not match config.json ("the two files come from different models: export the folder again")."""
    import timm

    model = stitchkit.create_stitched("vit_micro_patch4_32", "vit_pico_patch4_32", "1:3", input_size=32)
    model.save_pretrained(tmp_path / "m")
    for load in (lambda: stitchkit.load_pretrained(tmp_path / "m", device="cuda"),
                 lambda: timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True, device="cuda")):
        with pytest.raises(StitchkitError) as err:
            load()
        assert "cannot load the model onto device 'cuda'" in str(err.value), str(err.value)
        assert "device='cpu'" in str(err.value) and "different models" not in str(err.value)


def test_timms_prefixes_given_to_stitchkit_name_the_folder_to_pass(tmp_path, capsys):
    """README shows timm.create_model("local-dir:FOLDER") beside stitchkit.load_pretrained(FOLDER): given the timm
    name, stitchkit called a folder that exists "not a folder" (predict: "neither a run folder nor a model
    folder")."""
    model = stitchkit.create_stitched("vit_micro_patch4_32", "vit_pico_patch4_32", "1:3", input_size=32)
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    with pytest.raises(StitchkitError, match="timm model name .* without the prefix: 'someone/my-stitch'"):
        stitchkit.load_pretrained("hf-hub:someone/my-stitch")
    with pytest.raises(StitchkitError, match=f"without the prefix: '{folder}'"):
        stitchkit.load_pretrained(f"local-dir:{folder}")
    (tmp_path / "image.png").write_bytes(b"")
    assert main(["predict", f"local-dir:{folder}", str(tmp_path / "image.png")]) == 2
    assert f"without the prefix: '{folder}'" in capsys.readouterr().err


def test_preprocessing_for_another_image_size_than_the_model_is_refused(tmp_path):
    """save_pretrained(preprocessing=timm's data config of the source) for a stitch built at 32 px wrote a folder
    that rebuilt the stitch at 32 and told predict, eval and timm to feed it 176 px images: every reader failed."""
    model = stitchkit.create_stitched("resnet10t", "vit_pico_patch4_32", "1:3", input_size=32)
    prep = {"input_size": (3, 176, 176), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "crop_pct": 0.875}
    with pytest.raises(StitchkitError, match="input_size is 176x176 but the model is built for 32x32"):
        model.save_pretrained(tmp_path / "m", preprocessing=prep)
    assert not (tmp_path / "m").exists()
    model.save_pretrained(tmp_path / "m", preprocessing={**prep, "input_size": (3, 32, 32)})
    assert stitchkit.load_pretrained(tmp_path / "m").pretrained_cfg["input_size"] == (3, 32, 32)


def test_a_model_of_other_than_rgb_images_is_refused_before_a_folder_is_written(tmp_path):
    """A grayscale model (timm's in_chans=1) saved as a folder could not be loaded again (the folder rebuilds its
    models by name, with 3 channels), and the load blamed the folder: it is refused when saving, writing nothing."""
    import timm

    model = timm.create_model("resnet10t", in_chans=1, num_classes=10)
    for kind, network in [("whole", model), ("stitch", stitchkit.create_stitched(model, model, "1:3", input_size=32)),
                          ("probe", stitchkit.create_probe(model, num_classes=5, input_size=32))]:
        with pytest.raises(StitchkitError, match="1-channel images"):
            stitchkit.save_pretrained(network, tmp_path / kind)
        assert not (tmp_path / kind).exists()
