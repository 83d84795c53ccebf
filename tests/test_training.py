"""Training end to end, in-process, on tiny synthetic data and a small real Fashion-MNIST subset."""
import json
import math

import pytest
import torch

import stitchkit
from stitchkit.errors import StitchkitError
from stitchkit.training import NonFiniteLossError, RunInterrupted, load_config, train
from stitchkit.training.config import Config
from stitchkit.training.data import find_fashion_mnist

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=128", "data.synthetic_val_size=64",
        "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "train.log_every=1",
        "model.pretrained=false"]


def _cfg(tmp_path, *overrides, name="run"):
    return load_config(None, [*TINY, f"output.dir={tmp_path / name}", *overrides])


@pytest.fixture(scope="module")
def source_model(tmp_path_factory):
    """A resnet10t trained from scratch on the synthetic data: the frozen parts of the stitch tests."""
    out = tmp_path_factory.mktemp("source")
    train(load_config(None, [*TINY, "mode=scratch", "model.src=resnet10t", "train.epochs=3", f"output.dir={out}"]))
    return out / "model.pt"


def test_defaults_are_the_papers_recipe():
    c = Config()
    assert (c.optim.lr, c.optim.weight_decay, c.optim.batch_size, c.train.epochs) == (0.002, 0.05, 512, 10)
    assert (c.model.adapter, c.model.resize, c.data.auto_augment, c.data.hflip) == ("bottleneck", "bilinear", True, True)


def test_config_layers_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mode: finetune\nmodel:\n  src: resnet18\n  gap: '1:4'\ntrain:\n  epochs: 3\n")
    config = load_config(path, ["train.epochs=5"])
    assert (config.mode, config.model.src, config.model.gap, config.train.epochs) == ("finetune", "resnet18", "1:4", 5)
    with pytest.raises(StitchkitError, match="did you mean optim.lr"):
        load_config(None, ["train.lr=0.1"])
    path.write_text("model:\n  adaptor: linear\n")
    with pytest.raises(StitchkitError, match="model.adapter"):
        load_config(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(StitchkitError, match="not valid YAML"):
        load_config(path)
    for bad, message in [("optim.lr=-1", "positive"), ("train.epochs=-1", "0 or more"),
                         ("train.epochs=many", "train.epochs"), ("model.adapter=botleneck", "bottleneck"),
                         ("model.gap=3:1", "write it as 1:3"), ("mode=distill", "stitch")]:
        with pytest.raises(StitchkitError, match=message):
            load_config(None, [bad])
    with pytest.raises(StitchkitError, match="mode=stitch"):
        load_config(None, ["mode=finetune", "model.src=resnet18", "model.dst=torchvision:swin_t"])


def test_settings_a_mode_does_not_use_are_refused_and_defaults_never_are(tmp_path):
    """A stitch's settings given to a mode that ignores them (model.frozen_mode=train in a probe, whose frozen model
    keeps its BatchNorm statistics anyway) are refused naming the mode and the key, as finetune refuses
    model.unfreeze_last; at their defaults every mode takes them, and at the defaults of earlier versions too (runs
    of then recorded those, and are resumed with them given). A run's own config.yaml records every setting: it is
    read back whatever it holds."""
    from stitchkit.training.config import from_yaml_file, to_yaml
    from stitchkit.training.modes import MODES

    for bad, message in [
        (["mode=probe", "model.frozen_mode=train"], r"mode=probe does not use model.frozen_mode=train \(it would be "
                                                     r"ignored\): remove it, or use mode=stitch$"),
        (["mode=scratch", "model.gap=4:1", "model.adapter=nonsense"],
         r"mode=scratch does not use model.gap=4:1, model.adapter=nonsense .*or use mode=finetune or stitch$"),
        (["mode=scratch", "model.unfreeze_last=2"], "mode=scratch trains every weight"),
        (["mode=finetune", "model.adapter_norm=dst_stats"], "mode=finetune does not use model.adapter_norm=dst_stats"),
        (["mode=stitch", "model.fusion=concat"], r"or use a parallel stitch \(model.src=\[A, B\]\)$"),
    ]:
        with pytest.raises(StitchkitError, match=message):
            load_config(None, ["model.src=resnet18", *bad])
    for mode in MODES.names():
        assert load_config(None, [f"mode={mode}", "model.src=resnet18"]).mode == mode
    assert load_config(None, ["model.src=[resnet18,resnet18]", "model.dst=resnet18", "model.fusion=concat"])
    old_defaults = load_config(None, ["mode=scratch", "model.src=resnet18", "model.adapter_norm=lstsq",
                                      "model.prefix_in=mean", "model.init_images=256"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(old_defaults).replace("frozen_mode: eval", "frozen_mode: train"))
    assert from_yaml_file(saved).model.frozen_mode == "train"
    with pytest.raises(StitchkitError, match="mode=scratch does not use model.frozen_mode=train"):
        load_config(saved)  # given to train, it is a config like any other


def test_scratch_run_writes_a_self_describing_run_dir(tmp_path):
    result = train(_cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "train.epochs=2"))
    run = tmp_path / "run"
    assert result["status"] == "finished" and result["epochs"] == 2 and result["steps"] == 8
    assert result["top1"] > 40  # 10 tinted classes: far above chance after two epochs
    assert json.loads((run / "result.json").read_text()) == json.loads(json.dumps(result))
    # What the numbers depend on beyond the settings: the machine as the run saw it (study pages describe it).
    assert result["machine"]["threads"] == torch.get_num_threads() and result["machine"]["cpu"]
    assert result["machine"]["cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert load_config(run / "config.yaml") == load_config(None, [*TINY, f"output.dir={run}", "mode=scratch",
                                                                  "model.src=resnet10t", "train.epochs=2"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "train"] == list(range(1, 9))
    assert [r["epoch"] for r in lines if r["type"] == "eval"] == [-1, 0, 1]  # before training, after each epoch
    lrs = [r["lr"] for r in lines if r["type"] == "train"]
    # Cosine to zero, stepped per step; each line logs the rate its step took (the first the full rate, as no
    # warm-up: the last one above zero, which is the rate after it).
    assert lrs == pytest.approx([2e-3 * (1 + math.cos(math.pi * step / 8)) / 2 for step in range(8)])
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["counters"]["step"] == 8
    assert set(state) == {"format", "config_digest", "model", "optimizer", "scheduler", "scaler", "counters",
                          "epoch_loss", "log_loss", "rng", "world_size", "total_steps", "architecture",
                          "stitchkit_version"}  # one process: no "per_rank"
    assert state["world_size"] == 1 and state["total_steps"] == 8
    assert state["architecture"] is None and result["architecture"] is None  # a whole model: no cuts to record
    assert state["stitchkit_version"] == stitchkit.__version__
    assert set(torch.load(run / "model.pt", weights_only=True)) == set(stitchkit.create_model("resnet10t").state_dict())


def test_stitch_run_trains_only_the_adapters(tmp_path, source_model):
    from stitchkit.training import Run, TrainingPass

    config = _cfg(tmp_path, "mode=stitch", "model.src=resnet10t", "model.gap=1:3", f"model.src_checkpoint={source_model}",
                  f"model.dst_checkpoint={source_model}", "train.epochs=2")
    trainer = Run(config)
    result = TrainingPass([trainer]).run()[0]
    assert result["status"] == "finished" and 0 < result["trainable_params"] < result["params"]
    # Frozen weights and BatchNorm statistics after training equal the source model's.
    source = stitchkit.create_model("resnet10t", checkpoint_path=source_model)
    untouched = stitchkit.create_stitched(source, source, "1:3", input_size=32)
    for part in ("front", "back"):
        trained, original = getattr(trainer.model, part).state_dict(), getattr(untouched, part).state_dict()
        assert trained.keys() == original.keys()
        assert all(torch.equal(trained[k], original[k]) for k in trained), part
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in trainer.model.bridge.parameters()}
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert set(checkpoint["model"]) == set(trainer.model.trained_state_dict())
    rebuilt = stitchkit.load_stitched(tmp_path / "run" / "adapters.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), trainer.model.eval()(x), atol=1e-6)


def test_runs_record_their_accuracy_before_training_and_after_every_epoch(tmp_path, source_model):
    """Time to accuracy: top-1 before the first step (the start alone) and after each epoch, in result.json and
    metrics.jsonl; evaluating before training changes nothing about the training itself."""
    settings = ["mode=stitch", "model.src=resnet10t", "model.gap=1:3", f"model.src_checkpoint={source_model}",
                f"model.dst_checkpoint={source_model}", "train.epochs=2"]
    result = train(_cfg(tmp_path, *settings, name="with"))
    assert isinstance(result["top1_at_start"], float)
    # Honest throughput: wall time split by phase; images/s counts training images per second of training.
    seconds = result["seconds"]
    assert set(seconds) == {"setup", "calibration", "compile", "train", "evaluation", "checkpoint"}
    assert seconds["compile"] == 0  # nothing compiled
    assert all(v >= 0 for v in seconds.values()) and seconds["calibration"] > 0 and seconds["evaluation"] > 0
    assert result["wall_time_s"] == pytest.approx(sum(seconds.values()))
    assert result["images_per_s"] == pytest.approx(result["images_seen"] / seconds["train"])
    assert len(result["top1_after_epoch"]) == 2 and result["top1_after_epoch"][-1] == result["top1"]
    evals = [json.loads(line) for line in (tmp_path / "with" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["type"] == "eval"]
    assert [(r["step"], r["epoch"]) for r in evals][0] == (0, -1) and evals[0]["top1"] == result["top1_at_start"]
    assert result["host_syncs_per_step"] is None  # counted on CUDA, when asked
    # Neither evaluating at the start nor asking to count host synchronisations (on the CPU: nothing to count)
    # changes the training.
    without = train(_cfg(tmp_path, *settings, "train.eval_at_start=false", "train.count_host_syncs=true",
                         name="without"))
    assert "top1_at_start" not in without and without["host_syncs_per_step"] is None
    assert (without["top1"], without["train_loss"]) == (result["top1"], result["train_loss"])


def test_zero_epochs_saves_the_start_as_a_usable_run(tmp_path, source_model):
    """train.epochs=0: the adapters start (fitted on the calibration images), are evaluated and saved; the run's
    weights and its model folder give the same model as the start."""
    from stitchkit.training import Run, TrainingPass

    config = _cfg(tmp_path, "mode=stitch", "model.src=resnet10t", "model.gap=1:3", "train.epochs=0",
                  f"model.src_checkpoint={source_model}", f"model.dst_checkpoint={source_model}")
    run = Run(config)
    result = TrainingPass([run]).run()[0]
    assert (result["status"], result["steps"], result["epochs"]) == ("finished", 0, 0)
    assert result["top1"] == result["top1_at_start"] and result["top1_after_epoch"] == []
    assert result["images_per_s"] is None  # no image trained: no throughput (a 0 would be averaged into tables)
    rebuilt = stitchkit.load_stitched(tmp_path / "run" / "adapters.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), run.model.eval()(x))
    # The run has its checkpoint, which export (as README says), eval and predict read.
    from stitchkit.export import export_run

    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    export_run(tmp_path / "run", tmp_path / "folder", formats=())
    with torch.no_grad():
        assert torch.equal(stitchkit.load_pretrained(tmp_path / "folder" / "model").eval()(x), run.model(x))


def test_finetune_run_trains_everything(tmp_path, source_model):
    result = train(_cfg(tmp_path, "mode=finetune", "model.src=resnet10t", "model.gap=1:3",
                        f"model.src_checkpoint={source_model}", "train.epochs=1"))
    assert result["trainable_params"] == result["params"]


def _interrupt_at(monkeypatch, step):
    from stitchkit.training import logging as training_logging

    original = training_logging.MetricsLog.advance

    def advance(self, steps=1):
        original(self, steps)
        advance.calls += steps
        if advance.calls == step:
            raise KeyboardInterrupt

    advance.calls = 0
    monkeypatch.setattr(training_logging.MetricsLog, "advance", advance)


@pytest.mark.parametrize("stop_at", [3, 4, 6])  # mid-epoch, at an epoch boundary, in the second epoch
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch, stop_at):
    settings = ["mode=scratch", "model.src=resnet10t", "train.epochs=2", "train.checkpoint_every=100"]
    reference = train(_cfg(tmp_path, *settings, name="reference"))
    config = _cfg(tmp_path, *settings, name="interrupted")
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_at)
        with pytest.raises(RunInterrupted):
            train(config)
    assert not (tmp_path / "interrupted" / "result.json").exists()
    resumed = train(config, resume=True)
    # The stretches before and after the interruption add up, phase by phase.
    assert resumed["seconds"]["train"] > 0 and resumed["seconds"]["checkpoint"] > 0
    for key in ("top1", "top5", "loss", "train_loss", "steps", "epochs", "images_seen", "top1_at_start",
                "top1_after_epoch"):
        assert resumed[key] == reference[key], key


def test_grad_checkpointing_trains_the_same_run(tmp_path):
    """train.grad_checkpointing (a speed setting) reaches the network and changes nothing the run computes, BatchNorm
    statistics included; a whole library model (mode=scratch) is refused."""
    from stitchkit.training import Run, TrainingPass

    settings = ["mode=finetune", "model.src=resnet10t", "model.num_classes=10", "train.epochs=1"]
    plain = train(_cfg(tmp_path, *settings, name="plain"))
    trainer = Run(_cfg(tmp_path, *settings, "train.grad_checkpointing=true", name="checkpointed"))
    checkpointed = TrainingPass([trainer]).run()[0]
    assert trainer.model.grad_checkpointing
    for key in ("train_loss", "loss", "top1", "top1_at_start"):
        assert checkpointed[key] == pytest.approx(plain[key], rel=1e-5), key
    ours = torch.load(tmp_path / "checkpointed" / "model.pt", weights_only=True)
    theirs = torch.load(tmp_path / "plain" / "model.pt", weights_only=True)
    for name, value in theirs.items():  # running statistics updated once per step, as without
        assert torch.allclose(ours[name].float(), value.float(), atol=1e-5), name
    with pytest.raises(StitchkitError, match="drop train.grad_checkpointing"):
        _cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "train.grad_checkpointing=true")


def test_a_run_whose_parameters_were_grouped_otherwise_is_refused_in_one_line(tmp_path, monkeypatch):
    """Before 0.10 optim.no_decay_norm_bias=true decayed a ViT's class token and position embedding; a run started
    then has optimizer groups of other sizes and cannot resume exactly."""
    from stitchkit.training import optim

    config = _cfg(tmp_path, "mode=finetune", "model.src=vit_pico_patch4_32", "model.num_classes=10",
                  "optim.no_decay_norm_bias=true", "train.epochs=1", "train.eval_at_start=false")
    with monkeypatch.context() as patch:
        patch.setattr(optim, "_no_weight_decay", lambda model: set())  # the grouping before 0.10
        _interrupt_at(patch, 2)
        with pytest.raises(RunInterrupted):
            train(config)
    with pytest.raises(StitchkitError, match="no_decay_norm_bias=true also exempts .* --overwrite"):
        train(config, resume=True)


def test_resuming_with_another_number_of_processes_is_refused_in_one_line(tmp_path, monkeypatch):
    """A step's images and each process's share of the epoch depend on the number of processes: a run checkpointed
    by 2 (torchrun) does not resume in one, and the checkpoint is left as it was."""
    config = _cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "train.epochs=1", "train.eval_at_start=false")
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        with pytest.raises(RunInterrupted):
            train(config)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["world_size"] == 1
    torch.save({**state, "world_size": 2}, last)  # as a 2-process run writes it (its per_rank table aside)
    written = last.read_bytes()
    with pytest.raises(StitchkitError, match=r"trained by 2 processes and this resume has 1: .*Resume it with 2 "
                                             r"\(torchrun --nproc_per_node 2 .*--overwrite$"):
        train(config, resume=True)
    assert last.read_bytes() == written
    torch.save({**state, "world_size": 1}, last)
    assert train(config, resume=True)["status"] == "finished"


def test_fashion_mnist_modes(tmp_path):
    try:
        find_fashion_mnist(None)
    except StitchkitError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    data = ["data.name=fashion_mnist", "data.limit_train=512", "data.limit_val=256", "data.random_resized_crop=false",
            "data.auto_augment=false", "data.crop_pct=1.0", "train.batch_size=32", "optim.batch_size=32"]
    scratch = train(load_config(None, [*TINY, *data, "mode=scratch", "model.src=resnet10t", "train.epochs=2",
                                       f"output.dir={tmp_path / 'scratch'}"]))
    assert scratch["classes"] == 10 and scratch["top1"] > 40  # real images: well above 10% chance
    checkpoint = tmp_path / "scratch" / "model.pt"
    for mode in ("stitch", "finetune"):
        result = train(load_config(None, [*TINY, *data, f"mode={mode}", "model.src=resnet10t", "model.gap=1:3",
                                          f"model.src_checkpoint={checkpoint}", f"model.dst_checkpoint={checkpoint}",
                                          "train.epochs=1", f"output.dir={tmp_path / mode}"]))
        assert result["status"] == "finished" and result["top1"] > 10


def test_holdout_split_is_evaluated(tmp_path):
    result = train(_cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "data.holdout_fraction=0.25",
                        "train.epochs=1"))
    assert "holdout_top1" in result and result["images_seen"] == 6 * 16  # 96 of 128 images train


def test_refuses_to_clobber_and_to_resume_a_changed_config(tmp_path):
    settings = ["mode=scratch", "model.src=resnet10t", "train.max_steps=2"]
    train(_cfg(tmp_path, *settings))
    with pytest.raises(StitchkitError, match="--overwrite"):
        train(_cfg(tmp_path, *settings))
    with pytest.raises(StitchkitError, match=r"optim.lr: 0.002 -> 0.01"):
        train(_cfg(tmp_path, *settings, "optim.lr=0.01"), resume=True)
    assert train(_cfg(tmp_path, *settings), overwrite=True)["status"] == "finished"


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    config = _cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "optim.lr=1e30", "train.epochs=3",
                  "train.checkpoint_every=1", "train.log_every=100")
    with pytest.raises(NonFiniteLossError, match="optimizer step") as error:
        train(config)
    assert "last good checkpoint" in str(error.value)
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "failed" and "NaN" in record["error"]


@pytest.mark.parametrize("bad_call", [1, 2])  # the evaluation of the start; the one after the epoch
def test_a_non_finite_evaluation_loss_fails_the_run(tmp_path, monkeypatch, bad_call):
    """An evaluation whose loss is NaN has no meaningful top-1: the run fails, as a NaN training loss fails it, and
    neither metrics.jsonl nor result.json gets that evaluation (nor a bare NaN: both stay strict JSON)."""
    from stitchkit.training import loop

    original, calls = loop.evaluate_heads, []

    def evaluate_heads(*args, **kwargs):
        results = original(*args, **kwargs)
        calls.append(1)
        return [{**r, "loss": float("nan")} for r in results] if len(calls) == bad_call else results

    monkeypatch.setattr(loop, "evaluate_heads", evaluate_heads)
    expected = "before any optimizer step" if bad_call == 1 else "at the evaluation after optimizer step 4.*optim.lr"
    with pytest.raises(NonFiniteLossError, match=f"val loss (became NaN or infinite )?{expected}"):
        train(_cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "train.epochs=1", "train.log_every=100"))
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))  # noqa: E731
    record = strict((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "failed" and "NaN or infinite" in record["error"]
    metrics = tmp_path / "run" / "metrics.jsonl"  # none yet when the first evaluation fails
    evaluations = [line for line in map(strict, metrics.read_text().splitlines() if metrics.exists() else [])
                   if line["type"] == "eval"]
    assert len(evaluations) == bad_call - 1


def test_non_finite_numbers_are_written_as_null():
    from stitchkit.training.logging import json_safe

    assert json_safe({"a": float("nan"), "b": [1.5, float("-inf")], "c": ("x", 2)}) == {"a": None, "b": [1.5, None],
                                                                                        "c": ["x", 2]}


def test_a_resumed_run_logs_the_training_loss_an_uninterrupted_one_logs(tmp_path, monkeypatch):
    """The log line after a resume averages over the steps since the last line, as without the interruption: the
    checkpoint holds the running sum (it used to restart at the checkpoint, so the line covered fewer steps)."""
    settings = ["mode=scratch", "model.src=resnet10t", "train.epochs=1", "train.log_every=2",
                "train.checkpoint_every=100"]
    reference = train(_cfg(tmp_path, *settings, name="reference"))
    assert_resumes_exactly(monkeypatch, _cfg(tmp_path, *settings, name="interrupted"), reference, stop_at=3)
    train_lines = lambda name: [(r["step"], r["loss"]) for r in map(  # noqa: E731
        json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]
    assert [step for step, _ in train_lines("reference")] == [2, 4]
    assert train_lines("interrupted") == train_lines("reference")


def test_batch_sizes_must_divide(tmp_path):
    with pytest.raises(StitchkitError, match="not a multiple"):
        train(_cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "optim.batch_size=40", "train.batch_size=16"))


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path, source_model):
    result = train(_cfg(tmp_path, "mode=stitch", "model.src=resnet10t", "model.gap=2:3", "model.adapter=linear",
                        f"model.src_checkpoint={source_model}", f"model.dst_checkpoint={source_model}",
                        "train.amp=bf16", "train.channels_last=true", "train.max_steps=2"))
    assert result["status"] == "finished" and result["amp"] == "bfloat16" and result["steps"] == 2


def test_seeds_change_initialisation_and_data_order(tmp_path):
    base = ["mode=scratch", "model.src=resnet10t", "train.max_steps=2"]
    a = train(_cfg(tmp_path, *base, "train.seed=1", name="a"))
    b = train(_cfg(tmp_path, *base, "train.seed=2", name="b"))
    again = train(_cfg(tmp_path, *base, "train.seed=1", name="c"))
    assert a["train_loss"] == again["train_loss"] and a["train_loss"] != b["train_loss"]


@pytest.mark.slow
def test_paper_frozen_mode_resumes_exactly(tmp_path, monkeypatch, source_model):
    """frozen_mode=train moves the frozen BatchNorm statistics: checkpoints carry them, so resuming is exact."""
    settings = ["mode=stitch", "model.src=resnet10t", "model.gap=1:3", f"model.src_checkpoint={source_model}",
                f"model.dst_checkpoint={source_model}", "model.frozen_mode=train", "train.epochs=2",
                "train.checkpoint_every=100"]
    reference = train(_cfg(tmp_path, *settings, name="reference"))
    assert_resumes_exactly(monkeypatch, _cfg(tmp_path, *settings, name="interrupted"), reference)


def assert_resumes_exactly(monkeypatch, config, reference: dict, stop_at: int = 3) -> None:
    """Interrupt ``config``'s run at step ``stop_at``, resume it, and compare with the uninterrupted ``reference``."""
    with monkeypatch.context() as patch:
        _interrupt_at(patch, stop_at)
        with pytest.raises(RunInterrupted):
            train(config)
    resumed = train(config, resume=True)
    # The stretches before and after the interruption add up, phase by phase.
    assert resumed["seconds"]["train"] > 0 and resumed["seconds"]["checkpoint"] > 0
    for key in ("top1", "loss", "train_loss", "steps"):
        assert resumed[key] == reference[key], key


def test_a_registered_mode_trains_like_the_built_in_ones(tmp_path):
    """The engine, the run folder and the result record ask the mode: a new one (here a linear probe: the model
    frozen, a new head trained) needs nothing outside its own class."""
    from stitchkit.training.modes import MODES, Mode, get_mode, register_mode
    from stitchkit.zoo.models import create_model, reset_classifier

    class LinearProbe(Mode):
        name = "linear_probe"
        has_gap = False

        def build(self, config, num_data_classes, calibration=None, device=None):
            model = create_model(config.model.src, input_size=config.data.input_size)
            model.requires_grad_(False)
            reset_classifier(model, num_data_classes)  # a new head, trainable
            return model

    assert (get_mode("stitch").shares_front, get_mode("finetune").shares_front) == (True, False)
    register_mode(LinearProbe())
    try:
        result = train(load_config(None, [*TINY, "mode=linear_probe", "model.src=resnet10t", "train.epochs=1",
                                          f"output.dir={tmp_path / 'probe'}"]))
        assert result["status"] == "finished" and result["mode"] == "linear_probe" and result["gap"] is None
        assert result["trainable_params"] == 512 * 10 + 10  # resnet10t's 512 features -> 10 classes
        assert load_config(None, ["mode=linear_probe", "model.src=resnet10t"]).mode == "linear_probe"
    finally:
        MODES._items.pop("linear_probe")
    with pytest.raises(StitchkitError, match="unknown mode 'linear_probe'"):
        load_config(None, ["mode=linear_probe"])


def test_evaluating_an_unstitched_model_records_what_its_numbers_depend_on(tmp_path):
    from stitchkit.training.evaluation import evaluate_model

    config = load_config(None, ["data.name=synthetic", "data.input_size=32", "data.synthetic_classes=1000",
                                "data.synthetic_val_size=8", "model.pretrained=false", "train.device=cpu",
                                "train.workers=0"])
    record = evaluate_model("resnet10t", config, tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "result.json").read_text()) == json.loads(json.dumps(record))
    assert record["versions"]["stitchkit"] == stitchkit.__version__
    assert record["machine"]["threads"] == torch.get_num_threads() and "gpu" not in record["machine"]


@pytest.mark.skipif(not __import__("shutil").which("cc"), reason="torch.compile on the CPU needs a C compiler")
def test_compiled_training_keeps_compilation_out_of_the_training_speed(tmp_path, source_model):
    """train.compile=true: the first step (which compiles) is the 'compile' phase and its images are not counted in
    images_per_s, so that is the compiled model's speed; what is trained is the same as without compiling."""
    settings = ["mode=stitch", "model.src=resnet10t", "model.gap=1:3", f"model.src_checkpoint={source_model}",
                f"model.dst_checkpoint={source_model}", "train.epochs=1", "train.eval_at_start=false"]
    eager = train(_cfg(tmp_path, *settings, name="eager"))
    compiled = train(_cfg(tmp_path, *settings, "train.compile=true", name="compiled"))
    seconds = compiled["seconds"]
    assert seconds["compile"] > 0 and eager["seconds"]["compile"] == 0
    first_step = 32  # optim.batch_size: one optimizer step of two micro-batches
    assert compiled["images_seen"] == eager["images_seen"] == 128
    assert compiled["images_per_s"] == pytest.approx((compiled["images_seen"] - first_step) / seconds["train"])
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    assert compiled["top1"] == eager["top1"]
    lines = [json.loads(line) for line in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in lines if r["type"] == "train"]
    assert rates[0] is None and all(r > 0 for r in rates[1:]) and len(rates) == 4  # log_every=1, 4 steps


def test_a_train_line_logs_the_learning_rate_its_step_took(tmp_path, monkeypatch):
    """metrics.jsonl's lr is the rate of the logged step, not of the next one (it was one step ahead: above the
    step's rate in the warm-up, 0 on the last line)."""
    from stitchkit.training import run as run_module

    used, original = [], run_module.Run.optimizer_step

    def optimizer_step(self, images, skipped):
        used.append(self.optimizer.param_groups[0]["lr"])
        original(self, images, skipped)

    monkeypatch.setattr(run_module.Run, "optimizer_step", optimizer_step)
    train(_cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "train.epochs=2", "optim.warmup_steps=3"))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [line["lr"] for line in lines if line["type"] == "train"]
    assert len(logged) == len(used) == 8 and logged == pytest.approx(used)
    assert logged[0] == pytest.approx(2e-3 / 3) and logged[-1] > 0


def test_a_warmup_as_long_as_the_run_is_said_before_it_trains(tmp_path, capsys):
    """optim.warmup_steps not shorter than the run: the rate never reaches optim.lr, and the run says so."""
    result = train(_cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "train.epochs=1", "optim.warmup_steps=100"))
    assert result["status"] == "finished" and result["warmup_steps"] == 100
    err = capsys.readouterr().err
    assert "optim.warmup_steps=100 is not shorter than the run's 4 optimizer steps" in err
    train(_cfg(tmp_path, "mode=scratch", "model.src=resnet10t", "train.epochs=1", "optim.warmup_steps=2", name="short"))
    assert "warmup_steps" not in capsys.readouterr().err
