"""Each setting's class is declared once, on its config field; every digest and key set derives from it."""
from stitchkit.sweeps.grid import _identity
from stitchkit.training import load_config
from stitchkit.training.settings import keys_of_kind, per_run_keys
from stitchkit.training.identity import (NOT_IDENTITY, RESUMABLE_CHANGES, accepted_digests,
                                       resume_differences, settings_id)
from stitchkit.training.grouped import PER_RUN_KEYS


def test_setting_classes():
    assert keys_of_kind("speed") == {"train.amp", "train.channels_last", "train.compile", "train.grad_checkpointing"}
    assert keys_of_kind("location") == {"data.root"}
    assert {"train.device", "train.workers", "output.dir", "train.log_every"} <= keys_of_kind("run")
    assert RESUMABLE_CHANGES == keys_of_kind("run", "speed")
    assert NOT_IDENTITY == RESUMABLE_CHANGES | {"data.root"}
    assert PER_RUN_KEYS == per_run_keys() and "model.gap" in PER_RUN_KEYS and "train.epochs" not in PER_RUN_KEYS


def test_resume_accepts_speed_and_run_changes_only():
    saved = load_config(None, ["mode=scratch"])
    faster = load_config(None, ["mode=scratch", "train.channels_last=true", "train.amp=bf16", "train.workers=0"])
    assert resume_differences(saved, faster) == []
    assert resume_differences(saved, load_config(None, ["mode=scratch", "train.epochs=3"])) == ["train.epochs: 10 -> 3"]
    assert resume_differences(saved, load_config(None, ["mode=scratch", "data.root=/elsewhere"])) != []


def test_digests_keep_what_earlier_versions_wrote():
    """Values computed by stitchkit 0.2.1 (commit f0166ab) for these settings: a sweep cell keeps its folder name,
    and a 0.2 checkpoint is still accepted when its run is resumed or evaluated. 0.5 changed two defaults (the start,
    model.adapter_norm: lstsq -> fitted; the class token, model.prefix_in: mean -> the start's choice): such a run
    is resumed with its own values given, as config.yaml records them; so is one from before 0.13, which changed
    model.init_images (256 -> null: the start chooses)."""
    old_defaults = ["model.adapter_norm=lstsq", "model.prefix_in=mean"]
    config = load_config(None, ["mode=scratch", "model.src=resnet10t", "train.channels_last=true", *old_defaults])
    assert accepted_digests(config)[1] == "76b118c59238773c"
    then = {"src": "resnet18", "adapter_norm": "lstsq", "prefix_in": "mean", "init_images": 256}
    assert _identity({"train": {"epochs": 2}}, {"model": then}) == "bf3c5442"
    # With 0.5's defaults the same cell is another run (another start), so it gets another folder: never reused.
    assert _identity({"train": {"epochs": 2}}, {"model": {"src": "resnet18"}}) != "bf3c5442"
    # A setting added since (data.classes) counts only once it is set: then it is another run.
    subset = load_config(None, ["mode=scratch", "model.src=resnet10t", "train.channels_last=true", *old_defaults,
                                "data.classes=[0, 1]"])
    assert accepted_digests(subset)[0] != accepted_digests(config)[0]
    assert _identity({"data": {"classes": [0, 1]}}, {"model": {"src": "resnet18"}}) != _identity({}, {"model": {"src": "resnet18"}})


def test_a_stitch_settings_new_default_renames_stitches_only():
    """0.13 changed model.init_images (256 -> null: the start chooses how many): a stitch at the new default is
    another run (another start), a scratch, finetune or probe run, which does not use it, keeps its folder, its
    checkpoints and its settings_id."""
    for mode in ("scratch", "finetune", "probe"):
        now = load_config(None, [f"mode={mode}", "model.src=resnet18"])
        then = load_config(None, [f"mode={mode}", "model.src=resnet18", "model.init_images=256"])
        assert accepted_digests(now) == accepted_digests(then) and settings_id(now) == settings_id(then)
        cell = {"mode": mode, "model": {"src": "resnet18"}}
        assert _identity({}, cell) == _identity({"model": {"init_images": 256}}, cell)
    stitch = {"mode": "stitch", "model": {"src": "resnet18"}}
    assert _identity({}, stitch) != _identity({"model": {"init_images": 256}}, stitch)
    assert settings_id(load_config(None, ["model.src=resnet18"])) != settings_id(
        load_config(None, ["model.src=resnet18", "model.init_images=256"]))


def test_settings_id_ignores_the_seed_and_how_a_run_ran_but_not_its_precision():
    base = load_config(None, ["mode=scratch"])
    assert settings_id(base) == settings_id(load_config(None, ["mode=scratch", "train.seed=3", "train.workers=1"]))
    assert settings_id(base) != settings_id(load_config(None, ["mode=scratch", "train.amp=bf16"]))
    assert settings_id(base) != settings_id(load_config(None, ["mode=scratch", "train.epochs=2"]))


def test_help_texts_name_every_choice_the_code_accepts():
    """The settings' help is static text (kept light to import); it must not fall behind the resize modes and starts
    the code accepts, nor the commands that take them."""
    from stitchkit.chain import RESIZE_MODES
    from stitchkit.cli import build_parser
    from stitchkit.starts import get_start, list_starts
    from stitchkit.training.settings import describe_settings

    settings = {line.split("=")[0].strip(): line for line in describe_settings().splitlines() if "=" in line}
    resize_help, start_help = settings["model.resize"], settings["model.adapter_norm"]
    assert all(mode in resize_help for mode in RESIZE_MODES), resize_help
    built_in = [n for n in list_starts() if type(get_start(n)).__module__ == "stitchkit.starts"]  # not tests' own
    assert len(built_in) >= 6 and all(name in start_help for name in built_in), start_help
    parser = build_parser()
    for command in ("inspect", "bench"):
        text = parser._subparsers._group_actions[0].choices[command].format_help()
        assert all(mode in text for mode in RESIZE_MODES), (command, text)
