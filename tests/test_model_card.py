"""The model card (README.md of a model folder) says only what is true of the model it describes: a part's top-1
stands beside the model's only where both were measured on the same task. The cards are written from records made
here by hand (a source run is its result.json and config.yaml), so no test trains anything."""
import json

import yaml

from stitchkit.export import parts_record
from stitchkit.modelfolder import folder_config
from stitchkit.modelfolder import model_card as _model_card
from stitchkit.pretrained import network_class
from stitchkit.training import load_config

TEN = ["bag", "boot", "coat", "dress", "pullover", "sandal", "shirt", "sneaker", "trouser", "tshirt"]
PREPROCESSING = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                 "crop_pct": 1.0}
STITCH = {"src": "resnet10t", "dst": "resnet10t", "gap": [1, 3], "adapter": "bottleneck", "resize": "bilinear",
          "one_model": True}


def model_card(config, model=None):
    """The card as a folder of that kind gets it, also when written from a record alone."""
    return _model_card(config, model, network_class(config["kind"]))


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


# One record of each kind stitchkit exports, with what its top-1 before training measured.
KINDS = {
    "stitch": ({**STITCH, "head_classes": 10}, {}, "the adapters as they started"),
    "stitch with a new head": ({**STITCH, "num_classes": 10, "head_classes": 10}, {},
                               "the adapters as they started, with the new head untrained"),
    "parallel": ({"fusion": "gate", "stitches": [{**STITCH, "one_model": False},
                                                 {**STITCH, "src": "vit_pico_patch4_32", "one_model": False}]},
                 {}, "the adapters and the fusion as they started"),
    "finetune": ({"model": "resnet10t", "gap": [1, 3], "input_size": 32, "num_classes": 10}, {},
                 "resnet10t cut for gap 1:3, before any fine-tuning"),
    "probe": ({"model": "resnet10t", "input_size": 32, "num_classes": 10, "unfreeze_last": 0}, {},
              "the frozen resnet10t with the probe's initial head"),
    "model": ({"name": "resnet10t", "input_size": 32, "num_classes": 10}, {"provenance": {"mode": "scratch"}},
              "its random initialisation"),
}
TRAINED = {"stitch": ["adapters"], "stitch with a new head": ["adapters", "head"], "parallel": ["adapters", "fusion"],
           "finetune": ["all"], "probe": ["head"], "model": ["all"]}


def kind_card(name: str, **result) -> str:
    architecture, extra, _ = KINDS[name]
    kind = name.split()[0]
    return model_card(folder_config(kind, architecture, PREPROCESSING, TEN, trained=TRAINED[name], **extra, result={
        "top1": 76.0, "top1_at_start": 22.0, "dataset": "imagefolder", "eval_images": 100, "epochs": 1,
        "steps": 9, **result}))


def test_the_top1_before_training_says_what_each_kind_started_from():
    """"the adapters' start alone" was said of every kind: a probe, a fine-tuning baseline and a scratch model have
    no adapters."""
    for name, (_, _, start) in KINDS.items():
        evaluation = section(kind_card(name), "Evaluation")
        ending = f" after 9 optimizer steps (1 full epoch(s)); 22.00% before training ({start})."
        assert evaluation[0].endswith(ending), (name, evaluation)
        assert ("adapters" in evaluation[0]) == ("stitch" in name or name == "parallel"), name


def test_a_run_of_no_steps_says_its_model_is_untrained():
    """train.epochs=0: the card said "Trained: adapters" of adapters no step had changed."""
    card = kind_card("stitch with a new head", top1=22.0, epochs=0, steps=0)
    assert ("Not trained: its run took 0 optimizer steps, so what trains (adapters, head) is as it started; "
            "everything else is frozen as its source left it.") in card.splitlines()
    assert "Trained:" not in card and "with a new 10-class head, untrained (its run took 0 optimizer steps)." in card
    assert section(card, "Evaluation")[0].endswith(", untrained: its run took 0 optimizer steps, so this is the "
                                                   "adapters as they started, with the new head untrained.")
    finetune = kind_card("finetune", epochs=0, steps=0)
    assert "Not trained: its run took 0 optimizer steps, so what trains (every weight) is as it started." in finetune
    assert "Trained: every weight." in kind_card("finetune")


def test_the_fine_tuning_baseline_says_which_blocks_go_by_the_rule():
    """A ResNet of one block per stage keeps every block of gap 1:3 (each starts a stage): "the gap's blocks
    removed" was false of it."""
    import stitchkit

    assert stitchkit.create_finetune_baseline("resnet10t", "1:3", input_size=32).removed_blocks == ()
    card = kind_card("finetune")
    assert "gap's blocks removed" not in card
    assert ("(the blocks inside the gap removed, but for the first block of each stage it enters and any block "
            "that changes the features' shape; every weight trains)") in card


X = None  # a batch of images, made once the tests need torch


def images():
    import torch

    global X
    if X is None:
        X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return X


def train_a_step(model) -> None:
    """One optimizer step on what the model trains: its classifier's weights change."""
    import torch

    trained = [p for p in model.parameters() if p.requires_grad]
    model(images()).logsumexp(1).mean().backward()
    torch.optim.SGD(trained, lr=0.1).step()


def card_of(folder) -> str:
    return (folder / "README.md").read_text()


def build(kind: str):
    import torch

    import stitchkit
    from stitchkit.parallel import create_parallel

    torch.manual_seed(0)
    ten = lambda: stitchkit.create_model("resnet10t", num_classes=10, input_size=32)  # its own head: TEN's size
    return {"stitch": lambda: stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", input_size=32),
            "stitch of ten classes": lambda: stitchkit.create_stitched(ten(), ten(), "1:3", input_size=32),
            "parallel": lambda: create_parallel(["resnet10t", "resnet10t"], "resnet10t", "1:3", input_size=32),
            "finetune": lambda: stitchkit.create_finetune_baseline("resnet10t", "1:3", input_size=32),
            "probe": lambda: stitchkit.create_probe("resnet10t", num_classes=6, input_size=32)}[kind]().eval()


TRAINED_RESULT = {"top1": 72.0, "top5": 99.0, "dataset": "imagefolder", "eval_images": 100, "epochs": 1, "steps": 9,
                  "gmacs": 0.0158}


def test_a_head_from_reset_classifier_is_new_and_untrained_until_it_trains(tmp_path):
    """The audit's case: a trained stitch loaded, reset_classifier(7), saved: the card said "a new 7-class head,
    trained" and "Trained: adapters, head". It says the head is untrained, with no accuracy of the old head, and
    so again after a load and save; once the head has trained a step it no longer does."""
    import torch

    import stitchkit

    parts = [{"name": "resnet10t", "role": "source (front)", "gmacs": 0.0224, "top1": 72.0,
              "measured_on": {"dataset": "imagefolder", "class_names": TEN, "eval_images": 100, "input_size": 32,
                              "same_data": True}}]
    build("stitch of ten classes").save_pretrained(tmp_path / "trained", class_names=TEN, result=TRAINED_RESULT, sources=parts)
    assert "Trained: adapters; everything else is frozen" in card_of(tmp_path / "trained")
    assert parts_table(card_of(tmp_path / "trained"))["source (front)"]["top-1 (%) on this model's task"] == "72.00"
    model = stitchkit.load_pretrained(tmp_path / "trained")
    model.reset_classifier(7)
    model.save_pretrained(tmp_path / "reset")
    card = card_of(tmp_path / "reset")
    assert ("with a new 7-class head, untrained (random weights from reset_classifier: train it before use)."
            in card)
    assert ("What trains: adapters, head (no training run is recorded with this model); the head is untrained "
            "(random weights from reset_classifier); everything else is frozen as its source left it.") in card
    assert "Trained:" not in card and ", trained" not in card
    assert "## Evaluation" not in card and "72.00" not in card.split("## Compared")[0] and "## Classes" not in card
    assert "another task" not in card  # nobody measured the new head on any
    assert any(line.startswith("- resnet10t (source (front)): 72.00% top-1 on 10 classes (bag,")
               for line in section(card, "Compared with its parts"))
    assert record(tmp_path / "reset")["untrained_head"] is True

    stitchkit.load_pretrained(tmp_path / "reset").save_pretrained(tmp_path / "again")  # the folder carries it
    assert "a new 7-class head, untrained" in card_of(tmp_path / "again")
    model.to(torch.float64).save_pretrained(tmp_path / "cast")  # a cast is no training
    assert "a new 7-class head, untrained" in card_of(tmp_path / "cast")

    train_a_step(model.float())
    model.save_pretrained(tmp_path / "trained-head")
    card = card_of(tmp_path / "trained-head")
    assert "untrained" not in card and "with a new 7-class head, trainable." in card
    assert "untrained_head" not in record(tmp_path / "trained-head")


def test_every_kind_says_its_reset_head_is_untrained(tmp_path):
    for kind in ("stitch", "parallel", "finetune", "probe"):
        model = build(kind)
        model.reset_classifier(3)
        model.save_pretrained(tmp_path / kind)
        card = card_of(tmp_path / kind)
        assert "3-class head, untrained (random weights from reset_classifier" in card, kind
        assert "; the head is untrained (random weights from reset_classifier)" in card, kind
        train_a_step(model)
        model.save_pretrained(tmp_path / f"{kind}-trained")
        assert "untrained" not in card_of(tmp_path / f"{kind}-trained"), kind


def record(folder) -> dict:
    return json.loads((folder / "config.json").read_text())["stitchkit"]


def test_a_whole_model_given_another_head_keeps_no_score_of_the_old_one(tmp_path):
    """timm's own reset_classifier on a loaded whole model (stitchkit cannot see it): the old head's top-1 and its
    10 class names are not this model's, and its card said "its 7-class head, trained" beside both."""
    import stitchkit

    model = stitchkit.create_model("resnet10t", num_classes=10)
    stitchkit.save_pretrained(model, tmp_path / "ten", input_size=32, class_names=TEN, trained=["all"],
                              result=TRAINED_RESULT, provenance={"mode": "scratch"})
    loaded = stitchkit.load_pretrained(tmp_path / "ten")
    stitchkit.save_pretrained(loaded, tmp_path / "same")  # unchanged: its record stands
    assert "Top-1 **72.00%**" in card_of(tmp_path / "same") and "## Classes (10)" in card_of(tmp_path / "same")
    loaded.reset_classifier(7)
    stitchkit.save_pretrained(loaded, tmp_path / "seven")
    card = card_of(tmp_path / "seven")
    assert "72.00" not in card and "model-index" not in card and "## Classes" not in card
    assert "**resnet10t.c3_in1k**, its 7-class head, trainable." in card
    assert "What trains: every weight (no training run is recorded with this model)." in card
    assert "result" not in record(tmp_path / "seven") and "class_names" not in record(tmp_path / "seven")

    again = stitchkit.load_pretrained(tmp_path / "ten")  # the same head trained further: the score is stale too
    train_a_step(again)
    stitchkit.save_pretrained(again, tmp_path / "further")
    assert "72.00" not in card_of(tmp_path / "further") and record(tmp_path / "further")["class_names"] == TEN


def test_a_stitch_trained_further_keeps_no_score_of_its_earlier_adapters(tmp_path):
    """A loaded stitch trains only its adapters (its head is frozen): the card kept the old top-1 after further
    training, because only a changed classifier dropped it. A lossless cast keeps it; a rounding one does not."""
    import torch

    import stitchkit

    build("stitch of ten classes").save_pretrained(tmp_path / "trained", class_names=TEN, result=TRAINED_RESULT)
    loaded = stitchkit.load_pretrained(tmp_path / "trained")
    loaded.save_pretrained(tmp_path / "same")
    assert "Top-1 **72.00%**" in card_of(tmp_path / "same")
    loaded.to(torch.float64).save_pretrained(tmp_path / "float64")  # nothing rounded: the same model
    assert "Top-1 **72.00%**" in card_of(tmp_path / "float64")
    loaded.to(torch.bfloat16).save_pretrained(tmp_path / "bfloat16")  # rounded: not the model that scored 72
    assert "72.00" not in card_of(tmp_path / "bfloat16")

    further = stitchkit.load_pretrained(tmp_path / "trained")
    head = [p.detach().clone() for p in further.get_classifier().parameters()]
    train_a_step(further)
    assert all(torch.equal(a, b) for a, b in zip(head, further.get_classifier().parameters()))  # adapters alone
    further.save_pretrained(tmp_path / "further")
    card = card_of(tmp_path / "further")
    assert "72.00" not in card and "## Evaluation" not in card and "result" not in record(tmp_path / "further")
    assert record(tmp_path / "further")["class_names"] == TEN


def test_a_freshly_built_model_is_not_called_trained(tmp_path):
    """save_pretrained of a model nobody has trained: what trains, not "Trained:"; a whole model's head is not
    "frozen"."""
    import stitchkit

    build("stitch").save_pretrained(tmp_path / "stitch")
    assert "What trains: adapters (no training run is recorded with this model); everything else is frozen" in \
        card_of(tmp_path / "stitch")
    stitchkit.save_pretrained(stitchkit.create_model("resnet10t", num_classes=3), tmp_path / "whole", input_size=32)
    card = card_of(tmp_path / "whole")
    assert "**resnet10t.c3_in1k**, its 3-class head.\n" in card and "frozen" not in card and "Trained" not in card


def test_timm_without_pretrained_weights_keeps_no_score(tmp_path):
    """timm.create_model("local-dir:...", pretrained=False) builds the architecture with fresh weights: the folder's
    top-1 is not theirs."""
    import timm

    build("stitch of ten classes").save_pretrained(tmp_path / "trained", class_names=TEN, result=TRAINED_RESULT)
    fresh = timm.create_model(f"local-dir:{tmp_path / 'trained'}", pretrained=False)
    fresh.save_pretrained(tmp_path / "fresh")
    assert "72.00" not in card_of(tmp_path / "fresh") and "result" not in record(tmp_path / "fresh")


def test_a_result_on_some_classes_is_not_given_as_one_on_the_dataset():
    """data.classes=[5,6,7,8,9] of Fashion-MNIST: the Hub's metadata and the card said the top-1 was on
    fashion_mnist's validation split, as if on its 10 classes."""
    def card(**evaluation):
        return model_card(folder_config(
            "probe", KINDS["probe"][0], PREPROCESSING, TEN[5:], trained=["head"], evaluation=evaluation or None,
            result={"top1": 88.0, "dataset": "fashion_mnist", "eval_images": 5000, "val_split_images": 5000,
                    "steps": 9}))

    subset = card(data={"name": "fashion_mnist", "classes": [5, 6, 7, 8, 9]})
    header = subset.split("\n---\n")[0]
    assert 'name: "fashion_mnist (5 of its classes)"' in header
    assert 'split: "validation, data.classes=[5, 6, 7, 8, 9] (5,000 images)"' in header
    assert ("Top-1 **88.00%** on the 5,000 validation images of fashion_mnist, 5 of its classes "
            "(data.classes=[5, 6, 7, 8, 9]) after 9 optimizer steps.") in subset
    whole = card(data={"name": "fashion_mnist", "classes": None})
    assert 'name: "fashion_mnist"' in whole and "Top-1 **88.00%** on the 5,000 validation images of fashion_mnist " \
        "after 9 optimizer steps." in whole


def test_a_probe_is_not_titled_trained_before_it_is():
    """The title (and the Hub's model name) said "resnet10t with a trained head" of every probe, a freshly built or
    reset one too."""
    import stitchkit

    for unfreeze_last, title in [(0, "# resnet10t probe (frozen but for its head)"),
                                 (1, "# resnet10t probe (frozen but for its head and last 1 block)")]:
        probe = stitchkit.create_probe("resnet10t", num_classes=5, input_size=32, unfreeze_last=unfreeze_last)
        card = model_card(folder_config("probe", probe.architecture(), PREPROCESSING), probe)
        assert title in card.splitlines() and "trained head" not in card


def test_a_top5_of_five_classes_or_fewer_is_left_out():
    """Every image is among the top 5 of 5 classes: the new-task card's "top-5 100.00%" (also in the Hub's metrics)
    said nothing of the model."""
    record = folder_config("probe", KINDS["probe"][0], PREPROCESSING, TEN[5:], trained=["head"],
                           result={"top1": 76.0, "top5": 100.0, "dataset": "imagefolder", "eval_images": 50,
                                   "steps": 9})
    card = model_card(record)
    assert "top-5" not in card.lower() and "top_5" not in card
    ten = kind_card("probe", top5=99.0)  # 10 classes
    assert "top-5 99.00%" in ten and "type: top_5_accuracy" in ten


def test_a_stitch_says_one_model_only_of_one_set_of_weights():
    """Two checkpoints of resnet10t stitched are two models of one architecture: the title said "(one model)"."""
    def title(**architecture):
        return model_card(folder_config("stitch", {**STITCH, **architecture}, PREPROCESSING)).split("\n# ")[1]

    assert title().startswith("resnet10t -> resnet10t (one model) stitch")
    assert title(one_model=False).startswith("resnet10t -> resnet10t stitch")


def test_frozen_parts_in_train_mode_are_not_said_to_be_as_their_source_left_them():
    """frozen_mode=train: the frozen parts' BatchNorm statistics move with training (the checkpoint keeps them)."""
    card = model_card(folder_config("stitch", {**STITCH, "frozen_mode": "train"}, PREPROCESSING,
                                    trained=["adapters"], result={"top1": 70.0, "steps": 9}))
    assert ("Trained: adapters; everything else keeps its source's weights, but its BatchNorm statistics moved with "
            "training (frozen_mode=train).") in card.splitlines()
    assert "Trained: adapters; everything else is frozen as its source left it." in kind_card("stitch")


def test_exported_runs_compare_with_their_parts_only_on_the_same_task(tmp_path):
    """The audit's runs, small: a scratch source on 10 classes, a new-task stitch of it on 5 (data.classes) and a
    probe of it on the same 10, exported: the stitch's card lists the source's top-1 under its table, the probe's
    sets it beside its own; each says what it started from."""
    from stitchkit.cli import main
    from stitchkit.training import train

    tiny = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=64", "data.synthetic_val_size=40",
            "optim.batch_size=16", "train.batch_size=16", "train.workers=0", "train.threads=1",
            "model.pretrained=false", "train.epochs=1"]
    source = train(load_config(None, [*tiny, "mode=scratch", "model.src=resnet10t", f"output.dir={tmp_path / 'src'}"]))
    checkpoint = tmp_path / "src" / "model.pt"
    train(load_config(None, [*tiny, "mode=stitch", "model.src=resnet10t", "model.dst=resnet10t", "model.gap=1:3",
                             f"model.src_checkpoint={checkpoint}", f"model.dst_checkpoint={checkpoint}",
                             "data.classes=[5,6,7,8,9]", "model.num_classes=5", f"output.dir={tmp_path / 'newtask'}"]))
    probe = train(load_config(None, [*tiny, "mode=probe", "model.src=resnet10t", f"model.src_checkpoint={checkpoint}",
                                     f"output.dir={tmp_path / 'probe'}"]))
    for run in ("newtask", "probe"):
        assert main(["export", str(tmp_path / run), "--out", str(tmp_path / f"{run}-folder"), "--format",
                     "safetensors"]) == 0
    column = "top-1 (%) on this model's task"

    card = card_of(tmp_path / "newtask-folder" / "model")
    assert {role: row[column] for role, row in parts_table(card).items()} == {
        "-": parts_table(card)["-"][column], "source (front)": "-", "destination (back)": "-"}
    below = section(card, "Compared with its parts")
    assert any(line.startswith("Measured on another task, so not comparable (this model's ") and
               "is on 5 classes (class_5, class_6, class_7, class_8, class_9), 20 validation images" in line
               for line in below)
    assert f"- resnet10t (source (front)): {source['top1']:.2f}% top-1 on 10 classes (class_0, " in "\n".join(below)
    evaluation = section(card, "Evaluation")[0]
    assert "of stitchkit's synthetic data, 5 of its classes (data.classes=[5, 6, 7, 8, 9])" in evaluation
    assert evaluation.endswith("before training (the adapters as they started, with the new head untrained).")
    assert "top-5" not in card.lower()

    card = card_of(tmp_path / "probe-folder" / "model")
    assert parts_table(card)["frozen body"][column] == f"{source['top1']:.2f}"
    assert parts_table(card)["-"][column] == f"{probe['top1']:.2f}" and "not comparable" not in card
    assert section(card, "Evaluation")[0].endswith("before training (the frozen resnet10t with the probe's initial "
                                                   "head).")
    assert "adapters" not in card and "# resnet10t probe (frozen but for its head)" in card.splitlines()
