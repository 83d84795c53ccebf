"""Stitching for a new task: a new head on the destination (model.num_classes), trained with the adapters, and
optionally the destination's last blocks (model.unfreeze_last); everything else stays frozen."""
import json

import pytest
import torch

from stitchkit import create_stitched
from stitchkit.errors import IncompatibleError, StitchkitError
from stitchkit.training import evaluate_run, load_config, train
from stitchkit.training.data import find_fashion_mnist
from stitchkit.training.optim import build_optimizer
from stitchkit.training.settings import OptimConfig

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=128", "data.synthetic_val_size=64",
        "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "train.log_every=1",
        "model.pretrained=false"]


def _states(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_new_head_and_last_block_train_and_nothing_else_moves():
    torch.manual_seed(0)
    model = create_stitched("resnet10t", "resnet18", "1:3", input_size=32, num_classes=7, unfreeze_last=1)
    assert model.config.train_head and model.trained_parts() == ["adapters", "layer4.1", "head"]
    last_block, head = len(model.back) - 2, len(model.back) - 1
    assert model.trained_back == (last_block, head)
    before_front, before_back = _states(model.front), _states(model.back)
    optimizer, _ = build_optimizer(model, OptimConfig(lr=0.01), total_steps=10, device=torch.device("cpu"))
    model.train()
    assert not model.front.training and not model.back[0].training  # frozen: eval mode, statistics fixed
    assert model.back[last_block].training and model.back[head].training
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 7, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(v, model.front.state_dict()[k]) for k, v in before_front.items())
    after_back = model.back.state_dict()
    changed = {k.split(".")[0] for k, v in before_back.items() if not torch.equal(v, after_back[k])}
    assert changed == {str(last_block), str(head)}  # the trained block (weights and BatchNorm statistics) and head
    trained = model.trained_state_dict()
    assert {k.split(".")[1] for k in trained if k.startswith("back.")} == {str(last_block), str(head)}
    assert not any(k.startswith("front.") for k in trained)


def test_new_head_settings_are_checked():
    with pytest.raises(IncompatibleError, match="must train"):
        create_stitched("resnet10t", "resnet10t", "1:3", input_size=32, num_classes=7, train_head=False)
    with pytest.raises(IncompatibleError, match="has 1 block; use 0 to 1"):
        create_stitched("resnet10t", "resnet10t", "1:3", input_size=32, unfreeze_last=2)
    same = create_stitched("resnet10t", "resnet10t", "1:3", input_size=32, num_classes=1000)
    assert same.config.num_classes is None and same.trained_parts() == ["adapters"]  # its own head, frozen
    tuned = create_stitched("resnet10t", "resnet10t", "1:3", input_size=32, train_head=True)
    assert tuned.trained_parts() == ["adapters", "head"]
    with pytest.raises(StitchkitError, match="mode=stitch"):
        load_config(None, ["mode=finetune", "model.src=resnet10t", "model.unfreeze_last=1"])


@pytest.mark.slow
def test_stitch_with_new_head_trains_resumes_and_evaluates(tmp_path, monkeypatch):
    from test_training import assert_resumes_exactly

    settings = [*TINY, "mode=stitch", "model.src=resnet10t", "model.dst=resnet18", "model.gap=1:3",
                "model.num_classes=10", "model.unfreeze_last=1", "train.epochs=2", "train.checkpoint_every=100"]
    with pytest.raises(StitchkitError, match="model.num_classes=10 to give the stitch a new head"):
        train(load_config(None, [*TINY, "mode=stitch", "model.src=resnet10t", "model.gap=1:3",
                                 f"output.dir={tmp_path / 'refused'}"]))
    reference = train(load_config(None, [*settings, f"output.dir={tmp_path / 'reference'}"]))
    assert reference["trained"] == ["adapters", "layer4.1", "head"] and reference["num_classes"] == 10
    adapters_only = 0
    for k, v in torch.load(tmp_path / "reference" / "adapters.pt", weights_only=True)["adapters"].items():
        adapters_only += not k.startswith("back.")
    assert 0 < adapters_only < len(torch.load(tmp_path / "reference" / "adapters.pt", weights_only=True)["adapters"])
    assert_resumes_exactly(monkeypatch, load_config(None, [*settings, f"output.dir={tmp_path / 'interrupted'}"]),
                           reference)
    # The trained head and block come back from the checkpoint: evaluating again gives the run's own numbers.
    again = evaluate_run(tmp_path / "reference")
    assert again["top1"] == reference["top1"] and again["loss"] == pytest.approx(reference["loss"], abs=1e-6)
    record = json.loads((tmp_path / "reference" / "result.json").read_text())
    assert record["trainable_params"] < record["params"]


def test_stitch_of_two_1000_class_models_learns_fashion_mnist_with_a_new_head(tmp_path):
    """Two ImageNet-shaped models (1000-class heads; random weights, as nothing can be downloaded here) stitched for
    Fashion-MNIST's 10 classes: the new head and the adapters learn the task well above chance."""
    try:
        find_fashion_mnist(None)
    except StitchkitError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    result = train(load_config(None, [
        "data.name=fashion_mnist", "data.input_size=32", "data.limit_train=1024", "data.limit_val=256",
        "data.random_resized_crop=false", "data.auto_augment=false", "data.hflip=false", "data.crop_pct=1.0",
        "train.batch_size=64", "optim.batch_size=64", "train.workers=0", "train.threads=1", "train.epochs=2",
        "model.pretrained=false", "mode=stitch", "model.src=resnet10t", "model.dst=resnet18", "model.gap=1:3",
        "model.num_classes=10", "optim.lr=0.01", f"output.dir={tmp_path / 'run'}"]))
    assert result["classes"] == 10 and result["trained"] == ["adapters", "head"]
    assert result["top1"] > 50, result["top1"]  # chance is 10%; measured 67.2 at seed 0


def test_probe_trains_a_new_head_on_a_frozen_model_and_exports(tmp_path):
    """mode=probe: the destination given a new head alone (the baseline of a new-task stitch)."""
    import stitchkit
    from stitchkit.cli import main

    train(load_config(None, [*TINY, "mode=scratch", "model.src=resnet10t", "train.epochs=1", "data.synthetic_classes=5",
                             f"output.dir={tmp_path / 'source'}"]))
    settings = [*TINY, "mode=probe", "model.src=resnet10t", f"model.src_checkpoint={tmp_path / 'source' / 'model.pt'}",
                "train.epochs=2"]
    result = train(load_config(None, [*settings, f"output.dir={tmp_path / 'probe'}"]))
    assert result["trained"] == ["head"] and result["trainable_params"] == 512 * 10 + 10 and result["classes"] == 10
    assert evaluate_run(tmp_path / "probe")["top1"] == result["top1"]
    deeper = train(load_config(None, [*settings, "model.unfreeze_last=1", f"output.dir={tmp_path / 'deeper'}"]))
    assert deeper["trained"] == ["layer4.0", "head"] and deeper["trainable_params"] > result["trainable_params"]
    assert main(["export", str(tmp_path / "deeper"), "--out", str(tmp_path / "folder"), "--format", "safetensors"]) == 0
    loaded = stitchkit.load_pretrained(tmp_path / "folder")
    assert isinstance(loaded, stitchkit.HeadProbe) and loaded.trained_parts() == ["layer4.0", "head"]
    for bad, message in [("model.dst=resnet18", "mode=probe trains a head on one model"),
                         ("model.train_head=false", "a probe trains its head")]:
        with pytest.raises(StitchkitError, match=message):
            load_config(None, [*settings, bad])


def test_new_head_for_a_task_with_as_many_classes():
    """As in timm, a head of the model's own size is kept unless model.new_head asks for a fresh one."""
    from stitchkit import create_probe

    def head_weight(build, **kwargs):
        torch.manual_seed(0)  # the same random model each time: only a new head can differ
        model = build(**kwargs)
        return model, next(v for k, v in model.state_dict().items() if k.endswith("fc.weight"))

    stitch = lambda **kw: create_stitched("resnet10t", "resnet18", "1:3", input_size=32, **kw)  # noqa: E731
    kept, kept_fc = head_weight(stitch, num_classes=1000)
    again, again_fc = head_weight(stitch)
    fresh, fresh_fc = head_weight(stitch, num_classes=1000, new_head=True)
    assert kept.trained_parts() == ["adapters"] and fresh.trained_parts() == ["adapters", "head"]
    assert kept.config.num_classes is None and fresh.config.num_classes == 1000
    assert torch.equal(kept_fc, again_fc) and not torch.equal(kept_fc, fresh_fc)
    probe = lambda **kw: create_probe("resnet18", input_size=32, **kw)  # noqa: E731
    _, own = head_weight(probe)
    _, own_again = head_weight(probe, num_classes=1000)
    _, new = head_weight(probe, new_head=True)
    assert torch.equal(own, own_again) and not torch.equal(own, new)


@pytest.mark.slow
def test_new_task_demonstration_script_at_smoke_size(tmp_path):
    """scripts/new_task.py (the README's new-task table) on a few hundred real images: every method trains what it
    says, and a second run reads the finished runs back instead of training them again."""
    import subprocess
    import sys

    try:
        find_fashion_mnist(None)
    except StitchkitError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    command = [sys.executable, "scripts/new_task.py", "--out", str(tmp_path / "runs"), "--smoke", "--threads", "1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = json.loads((tmp_path / "runs" / "results.json").read_text())["rows"]
    assert [r["trained"] for r in rows] == [["head"], ["layer4.1", "head"], ["adapters", "head"],
                                           ["adapters", "layer4.1", "head"], ["adapters"], ["adapters", "head"],
                                           ["adapters", "head"], ["adapters", "head"], ["all"]]
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout == first.stdout and "training" not in again.stderr


def test_new_head_alone_fits_the_data(tmp_path):
    """model.new_head=true without model.num_classes: a new head for the data's classes (here 10, the destination
    has 1000)."""
    result = train(load_config(None, [*TINY, "mode=stitch", "model.src=resnet10t", "model.dst=resnet18",
                                      "model.gap=1:3", "model.new_head=true", "train.max_steps=1",
                                      f"output.dir={tmp_path / 'run'}"]))
    assert result["classes"] == 10 and result["trained"] == ["adapters", "head"]
