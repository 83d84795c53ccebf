"""The dry run prices each cell as its run will record it: the heads its settings give the models included."""
from pathlib import Path

import pytest
import torch

import stitchkit
from stitchkit.sweeps.dryrun import cell_costs
from stitchkit.sweeps.grid import expand
from stitchkit.training.modes import mode_for

BASE = {"data": {"name": "synthetic", "input_size": 32, "synthetic_classes": 7}, "model": {"pretrained": False}}


BASELINES = {"finetune": {"lrs": [0.01]}, "scratch": {"models": ["resnet10t"]}}


@pytest.mark.parametrize("model, baselines", [({"num_classes": 7}, BASELINES), ({"new_head": True}, BASELINES),
                                              ({}, BASELINES), ({"num_classes": 7, "unfreeze_last": 1}, {}),
                                              ({"new_head": True, "unfreeze_last": 2}, {})])
def test_the_dry_run_counts_what_the_run_builds(model, baselines):
    """With model.num_classes the dry run priced a 1,000-class head (resnet10t 1:2 linear: 5.21M parameters, the
    run 4,706,050), and a scratch run priced after a stitch counted the weights the stitch had frozen as not
    trained. Each cell is compared with the network training builds from the cell's own settings."""
    sweep = expand({"base": {**BASE, "model": {**BASE["model"], **model}},
                    "pairs": [["resnet10t", "resnet10t"], ["resnet10t", "vit_pico_patch4_32"]], "gaps": ["1:2"],
                    "methods": ["downsample_linear"], "seeds": [0], "baselines": baselines}, name="heads")
    cells = sweep.runnable
    if baselines:
        assert [c.kind for c in cells] == ["stitch", "finetune", "stitch", "scratch"]  # scratch after stitches
    for cell in cells:
        config = sweep.config(cell, Path("runs"))
        if not model and cell.kind != "scratch":
            continue  # no head for 7 classes: training refuses these (the dry run prices the models' own heads)
        torch.manual_seed(0)
        built = mode_for(config).build(config, num_data_classes=7)
        costs = cell_costs(sweep, cell)
        assert costs == {"gmacs": pytest.approx(stitchkit.count_macs(built, 32) / 1e9, rel=1e-9),
                         "params": stitchkit.count_params(built),
                         "trainable_params": stitchkit.count_params(built, trainable_only=True)}, cell.name
    if model == {"num_classes": 7}:  # scratch trains every weight: resnet10t's 4,922,488 and a 7-class head
        assert cell_costs(sweep, cells[-1])["trainable_params"] == 4_922_488 + 512 * 7 + 7



@pytest.mark.parametrize("model", [{"token_adapters": False, "prefix_out": "drop"}, {"prefix_in": "learned"},
                                   {"adapter_norm": "paper_code"}, {"readd_pos_embed": True}])
def test_the_dry_run_builds_with_the_cells_stitch_settings(model):
    """The dry run priced every stitch with the default model settings: with model.token_adapters=false and
    model.prefix_out=drop it showed vit_pico -> vit_pico 1:3 linear with 0.02M trainable weights (the run trains
    28,320) and vit_pico -> resnet18 bottleneck at 0.021 GMACs (the run: 0.0203). Parallel stitches too."""
    from stitchkit.errors import IncompatibleError

    sweep = expand({"base": {**BASE, "model": {**BASE["model"], "num_classes": 7, **model}},
                    "pairs": [["vit_pico_patch4_32", "vit_pico_patch4_32"], ["vit_pico_patch4_32", "resnet10t"],
                              [["vit_pico_patch4_32", "resnet10t"], "vit_pico_patch4_32"]],
                    "gaps": ["1:3"], "methods": ["downsample_linear", "downsample_bottleneck", "parallel_sum_linear"],
                    "seeds": [0]}, name="settings")
    assert len(sweep.runnable) == 5
    for cell in sweep.runnable:
        config = sweep.config(cell, Path("runs"))
        torch.manual_seed(0)
        try:
            built = mode_for(config).build(config, num_data_classes=7)
        except IncompatibleError as err:  # readd_pos_embed into a CNN: the dry run says so as the run would
            with pytest.raises(IncompatibleError, match="readd_pos_embed needs a destination"):
                cell_costs(sweep, cell)
            assert "readd_pos_embed" in str(err)
            continue
        assert cell_costs(sweep, cell) == {
            "gmacs": pytest.approx(stitchkit.count_macs(built, 32) / 1e9, rel=1e-9),
            "params": stitchkit.count_params(built),
            "trainable_params": stitchkit.count_params(built, trainable_only=True)}, cell.name


def test_the_dry_run_counts_an_image_folders_classes(tmp_path):
    """An image folder's classes are its train/ subfolders: the dry run counts them (no image is read), so a new
    head for them (model.new_head) is priced at their number, not at the model's own 1,000."""
    for name in ("ant", "bee", "cat"):
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "train" / "notes.txt").write_text("not a class")
    sweep = expand({"base": {"data": {"name": "imagefolder", "root": str(tmp_path), "input_size": 32},
                             "model": {"pretrained": False, "new_head": True}},
                    "pairs": [["resnet10t", "resnet10t"]], "gaps": ["1:2"], "methods": ["downsample_linear"],
                    "seeds": [0]}, name="folder")
    [cell] = sweep.runnable
    config = sweep.config(cell, Path("runs"))
    built = mode_for(config).build(config, num_data_classes=3)
    assert cell_costs(sweep, cell)["params"] == stitchkit.count_params(built)


@pytest.mark.parametrize("name", ["resnet10t", "torchvision:resnet18", "mobilenetv3_small_050"])
def test_the_meta_device_knows_which_cuts_are_non_negative(name):
    """Whether a cut's feature is never negative decides a fitted start's shape (an output ReLU, or a projection
    shortcut in front of signed features). On the meta device, where dry runs and searches price models, there are
    no values to look at: every cut counted as signed, so a ResNet stitched to itself at 2:2 with a bottleneck was
    priced with a projection it is built without. The module (timm) or the ATen graph (torchvision, graph split)
    says it there: the same answer as the values on the CPU, at every cut."""
    from stitchkit.zoo.models import create_model
    from stitchkit.zoo.spec import _measure

    real = _measure(create_model(name, input_size=32), 32, name)
    with torch.device("meta"):
        meta = _measure(create_model(name, input_size=32), 32, name)
    assert [c.nonnegative for c in meta.cut_points] == [c.nonnegative for c in real.cut_points]
    assert any(c.nonnegative for c in real.cut_points) == (name != "mobilenetv3_small_050")


def test_a_stitch_within_one_model_at_one_stage_is_priced_as_built():
    sweep = expand({"base": {**BASE, "model": {**BASE["model"], "num_classes": 7}},
                    "pairs": [["resnet10t", "resnet10t"]], "gaps": ["2:2"], "methods": ["downsample_bottleneck"],
                    "seeds": [0]}, name="within")
    (cell,) = sweep.runnable
    torch.manual_seed(0)
    built = mode_for(sweep.config(cell, Path("runs"))).build(sweep.config(cell, Path("runs")), num_data_classes=7)
    assert cell_costs(sweep, cell) == {"gmacs": pytest.approx(stitchkit.count_macs(built, 32) / 1e9, rel=1e-9),
                                       "params": stitchkit.count_params(built),
                                       "trainable_params": stitchkit.count_params(built, trainable_only=True)}


def test_a_model_whose_constructor_computes_with_tensors_is_built_for_the_meta_device_on_the_cpu():
    from stitchkit.sweeps.dryrun import meta_model

    model = meta_model("torchvision:regnet_x_400mf", 32)  # its widths: torch.round(...).tolist() in __init__
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["repvgg_a0", "torchvision:regnet_x_400mf"])
def test_models_the_meta_device_cannot_build_or_split_alone_are_priced_as_built(name):
    """The dry run (and the search, which prices with it) called such models impossible to cut: a graph split
    that finds where timm's forward_features ends compares values (none on the meta device; the marker it places
    computes nothing, so it is left out there), and torchvision's RegNets compute their widths with tensors in
    their constructors (built on the CPU once, then moved to the meta device)."""
    sweep = expand({"base": {**BASE, "model": {**BASE["model"], "num_classes": 7}}, "pairs": [[name, name]],
                    "gaps": ["1:3"], "methods": ["downsample_bottleneck"], "seeds": [0]}, name="meta")
    (cell,) = sweep.runnable
    config = sweep.config(cell, Path("runs"))
    torch.manual_seed(0)
    built = mode_for(config).build(config, num_data_classes=7)
    assert cell_costs(sweep, cell) == {"gmacs": pytest.approx(stitchkit.count_macs(built, 32) / 1e9, rel=1e-9),
                                       "params": stitchkit.count_params(built),
                                       "trainable_params": stitchkit.count_params(built, trainable_only=True)}
