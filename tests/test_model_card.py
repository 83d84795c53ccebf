"""The model card (README.md of a model folder) says only what is true of the model it describes: a part's top-1
stands beside the model's only where both were measured on the same task. The cards are written from records made
here by hand (a source run is its result.json and config.yaml), so no test trains anything."""
import json

import yaml

from stitchkit.export import parts_record
from stitchkit.modelfolder import folder_config, model_card
from stitchkit.training import load_config

TEN = ["bag", "boot", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "trouser", "tshirt"]
PREPROCESSING = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                 "crop_pct": 1.0}
STITCH = {"src": "resnet10t", "dst": "resnet10t", "gap": [1, 3], "adapter": "bottleneck", "resize": "bilinear",
          "one_model": True}


def source_run(folder, data_root, top1=72.0, class_names=TEN, images=100, **data):
    """A finished stitchkit scratch run of resnet10t, as parts_record reads it: its result and its settings."""
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"")
    (folder / "result.json").write_text(json.dumps({
        "status": "finished", "mode": "scratch", "top1": top1, "dataset": "imagefolder", "class_names": class_names,
        "classes": len(class_names), "eval_images": images, "input_size": 32, "gmacs": 0.0224}))
    settings = {"name": "imagefolder", "root": str(data_root), "input_size": 32, "classes": None, "limit_val": None,
                "holdout_seed": 0, **data}
    (folder / "config.yaml").write_text(yaml.safe_dump({"mode": "scratch", "data": settings}))
    return folder / "model.pt"


def stitch_card(checkpoint, data_root, class_names, top1, images, *overrides):
    """The card of a stitch run of ``checkpoint`` onto itself with this result, as export writes it."""
    config = load_config(None, ["mode=stitch", "model.src=resnet10t", "model.dst=resnet10t", "model.gap=1:3",
                                f"model.src_checkpoint={checkpoint}", f"model.dst_checkpoint={checkpoint}",
                                "data.name=imagefolder", f"data.root={data_root}", "data.input_size=32", *overrides])
    record = folder_config("stitch", {**STITCH, "num_classes": len(class_names), "head_classes": len(class_names)},
                           PREPROCESSING, class_names,
                           result={"top1": top1, "dataset": "imagefolder", "eval_images": images, "gmacs": 0.0158,
                                   "epochs": 1, "steps": 9},
                           trained=["adapters", "head"], sources=parts_record(config, 32))
    return model_card(record)


def section(card: str, title: str) -> list[str]:
    """The lines of the card's ``## title`` section, up to the next one."""
    lines = card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0].strip().splitlines()
    return [line for line in lines if line.strip()]


def parts_table(card: str) -> dict[str, dict[str, str]]:
    """The rows of the card's parts table by role: {role: {column: cell}}."""
    rows = [line for line in section(card, "Compared with its parts") if line.startswith("| ")]  # not |---|
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    table = {}
    for line in rows[1:]:
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
        table[cells["role"].split(",")[0]] = cells
    return table


def test_a_part_measured_on_other_classes_is_not_set_beside_a_new_task(tmp_path):
    """A 5-class task (data.classes) stitched from a 10-class scratch run: the source's 72.00 on 10 classes is not
    in the column of the model's 88.00 on 5; it is listed with the classes and images it was measured on."""
    data = tmp_path / "data"
    checkpoint = source_run(tmp_path / "source", data)
    five = TEN[5:]
    card = stitch_card(checkpoint, data, five, 88.0, 50, "data.classes=[5,6,7,8,9]", "model.num_classes=5")
    table = parts_table(card)
    column = "top-1 (%) on this model's task"
    assert table["-"][column] == "88.00"
    assert table["source (front)"][column] == "-" and table["destination (back)"][column] == "-"
    below = section(card, "Compared with its parts")
    assert ("Measured on another task, so not comparable (this model's 88.00% is on 5 classes (sandal, shirt, "
            "sneaker, trouser, tshirt), 50 validation images of an image folder, at 32 px):") in below
    assert ("- resnet10t (source (front)): 72.00% top-1 on 10 classes (bag, boot, coat, dress, pullover, sandal, "
            "shirt, sneaker, trouser, tshirt), 100 validation images of an image folder, at 32 px (not this model's "
            "evaluation data: another folder, class selection or validation subset)") in below


def test_a_part_measured_on_the_same_task_stands_beside_the_model(tmp_path):
    data = tmp_path / "data"
    checkpoint = source_run(tmp_path / "source", data)
    card = stitch_card(checkpoint, data, TEN, 70.0, 100)
    assert parts_table(card)["source (front)"]["top-1 (%) on this model's task"] == "72.00"
    assert "not comparable" not in card


def test_the_same_classes_in_another_folder_or_subset_are_another_task(tmp_path):
    """Class names and image counts alike are not enough: the part's run read other images (another data folder,
    another data.limit_val draw), or its settings are gone and nobody can tell."""
    data = tmp_path / "data"
    elsewhere = source_run(tmp_path / "elsewhere", tmp_path / "other-data")
    other_draw = source_run(tmp_path / "other-draw", data, limit_val=100, holdout_seed=1)
    unknown = source_run(tmp_path / "unknown", data)
    (tmp_path / "unknown" / "config.yaml").unlink()
    for checkpoint, note in [(elsewhere, "not this model's evaluation data"),
                             (other_draw, "not this model's evaluation data"),
                             (unknown, "whether these were this model's images could not be checked")]:
        overrides = ["data.limit_val=100"] if checkpoint == other_draw else []
        card = stitch_card(checkpoint, data, TEN, 70.0, 100, *overrides)
        assert parts_table(card)["source (front)"]["top-1 (%) on this model's task"] == "-"
        assert note in card


def test_a_part_recorded_without_its_task_is_not_compared(tmp_path):
    """A folder exported by an earlier stitchkit says only "imagefolder, scratch run" of its parts' top-1."""
    record = folder_config("stitch", {**STITCH, "num_classes": 5, "head_classes": 5}, PREPROCESSING, TEN[5:],
                           result={"top1": 88.0, "dataset": "imagefolder", "eval_images": 50, "steps": 9},
                           trained=["adapters", "head"],
                           sources=[{"name": "resnet10t", "role": "source (front)", "gmacs": 0.0224, "top1": 72.0,
                                     "top1_on": "imagefolder, scratch run",
                                     "weights": "checkpoint model.pt (a stitchkit scratch run)"}])
    card = model_card(record)
    assert parts_table(card)["source (front)"]["top-1 (%) on this model's task"] == "-"
    assert ("- resnet10t (source (front)): 72.00% top-1 on imagefolder, scratch run (its classes and images are not "
            "recorded)") in section(card, "Compared with its parts")
