"""Parallel stitching (several fronts into one back): every fusion starts as the mean of its chains, only adapters
and fusion train, the model saves, loads and opens in timm, and impossible requests are one line each."""
import json
from pathlib import Path

import pytest
import torch

import stitchkit
from stitchkit.errors import IncompatibleError, StitchkitError
from stitchkit.parallel import FUSIONS, create_parallel

X = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_two_copies_of_one_front_start_as_the_single_stitch(fusion):
    """Least squares on the same images gives both chains the same start; every fusion starts as their mean."""
    torch.manual_seed(0)
    src = stitchkit.create_model("resnet10t", input_size=32)
    dst = stitchkit.create_model("resnet10t", input_size=32, num_classes=10)
    common = dict(adapter="linear", input_size=32, adapter_norm="lstsq", prefix_in="mean")
    single = stitchkit.create_stitched(src, dst, "1:2", calibration_images=IMAGES, **common).eval()
    both = create_parallel([src, src], dst, "1:2", fusion=fusion, calibration_images=[IMAGES, IMAGES],
                           **common).eval()
    with torch.no_grad():
        assert torch.allclose(both(X), single(X), atol=1e-5)


def test_only_adapters_and_fusion_train_and_frozen_parts_stay_in_eval():
    torch.manual_seed(0)
    model = create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3", fusion="gate", input_size=32)
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"bridges", "fusion"} and model.trained_parts() == ["adapters", "fusion"]
    model.train()
    assert not any(m.training for m in (*model.fronts.modules(), *model.back.modules()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.SGD(model.trainable_parameters(), lr=0.1).zero_grad()
    loss = model(X).logsumexp(1).mean()
    loss.backward()
    torch.optim.SGD(model.trainable_parameters(), lr=0.1).step()
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= {"bridges", "fusion"} and "fusion" in changed
    singles = [stitchkit.create_stitched(s, "resnet10t", "1:3", input_size=32)
               for s in ("resnet10t", "vit_pico_patch4_32")]
    assert stitchkit.count_macs(model, 32) > max(stitchkit.count_macs(s, 32) for s in singles)


def test_a_source_named_as_the_destination_is_built_once_as_a_single_stitch_to_itself(monkeypatch):
    """As create_stitched: the destination's model is that source's too (no second copy in memory), its chain
    starts within one model (a bottleneck across 2:2 then needs no projection), and the config rebuilds the same
    network (build_parallel shares the model too), as a sweep's dry run prices it."""
    from stitchkit.parallel import build_parallel
    from stitchkit.sweeps.dryrun import Heads, parallel_costs
    from stitchkit.zoo import models

    built, create = [], models.create_model
    monkeypatch.setattr(models, "create_model", lambda name, *a, **k: built.append(name) or create(name, *a, **k))
    torch.manual_seed(0)
    model = create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "2:2", input_size=32, num_classes=10,
                            adapter_norm="lstsq")
    assert built == ["resnet10t", "vit_pico_patch4_32"]
    assert [s["one_model"] for s in model.architecture()["stitches"]] == [True, False]
    assert [b.context.within_one_model for b in model.bridges] == [True, False]
    assert model.bridges.state_dict().keys() == build_parallel(model.config).bridges.state_dict().keys()
    priced = parallel_costs(("resnet10t", "vit_pico_patch4_32"), "resnet10t", "2:2", "parallel_sum_bottleneck", 32,
                            heads=Heads(num_classes=10), settings=(("adapter_norm", "lstsq"),))
    assert priced[1:] == (stitchkit.count_params(model), stitchkit.count_params(model, trainable_only=True))


def test_a_parallel_stitch_saves_loads_and_opens_in_timm(tmp_path):
    import timm

    torch.manual_seed(0)
    model = create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3", fusion="concat",
                            input_size=32, num_classes=7).eval()
    model.save_pretrained(tmp_path / "p")
    card = (tmp_path / "p" / "README.md").read_text()
    assert "# resnet10t (stage 1) + vit_pico_patch4_32 (stage 1) -> resnet10t parallel stitch, concat fusion" in card
    loaded = stitchkit.load_pretrained(tmp_path / "p")
    opened = timm.create_model(f"local-dir:{tmp_path / 'p'}", pretrained=True)
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X)) and torch.equal(opened(X), model(X))
    assert loaded.num_classes == 7 and loaded.trained_parts() == ["adapters", "fusion", "head"]


def test_a_model_given_for_two_sources_is_copied_so_the_stitch_reloads_and_is_priced_whole(tmp_path):
    """A front under two names was saved once and loaded into no rebuilt model; the dry run counted it once."""
    from stitchkit.sweeps.dryrun import parallel_costs

    torch.manual_seed(0)
    src = stitchkit.create_model("resnet10t", input_size=32)
    model = create_parallel([src, src], "resnet18", "1:3", adapter="linear", input_size=32).eval()
    assert not {id(p) for p in model.fronts[0].parameters()} & {id(p) for p in model.fronts[1].parameters()}
    model.save_pretrained(tmp_path / "p")
    with torch.no_grad():
        assert torch.equal(model.fronts[1](X), model.fronts[0](X))  # a copy: the same front
        assert torch.equal(stitchkit.load_pretrained(tmp_path / "p")(X), model(X))
    priced = parallel_costs(("resnet10t", "resnet10t"), "resnet18", "1:3", "parallel_sum_linear", 32)
    built = create_parallel(["resnet10t", "resnet10t"], "resnet18", "1:3", adapter="linear", input_size=32)
    assert priced[1:] == (stitchkit.count_params(built), stitchkit.count_params(built, trainable_only=True))


def test_impossible_parallel_stitches_are_one_clear_error():
    with pytest.raises(StitchkitError, match="two sources or more"):
        create_parallel(["resnet10t"], "resnet10t", "1:3", input_size=32)
    with pytest.raises(StitchkitError, match="unknown fusion 'gated'.*gate"):
        create_parallel(["resnet10t", "resnet10t"], "resnet10t", "1:3", fusion="gated", input_size=32)
    with pytest.raises(IncompatibleError, match="meet the destination at one cut.*same destination stage"):
        create_parallel(["resnet10t", "resnet10t"], "resnet10t", ["1:3", "1:4"], input_size=32)
    with pytest.raises(IncompatibleError, match="use resize='bilinear'"):
        create_parallel(["resnet10t", "resnet10t"], "resnet10t", ["1:3", "2:3"], resize="none", input_size=32)
    with pytest.raises(StitchkitError, match="2 sources but 3 gaps"):
        create_parallel(["resnet10t", "resnet10t"], "resnet10t", ["1:3", "2:3", "1:3"], input_size=32)


def test_calibration_images_are_one_entry_per_source_or_a_clear_error():
    """One entry short built a stitch without the last front, without a word; one batch for all failed on
    ``bool(tensor)``. Both are refused before any model is built, naming the fix."""
    for images, got in [([IMAGES], "got 1 entries"), ([IMAGES] * 3, "got 3 entries"), (IMAGES, "got one batch")]:
        with pytest.raises(StitchkitError, match=f"one entry per source, 2 here.*{got}.*\\[images\\] \\* 2"):
            create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3", input_size=32,
                            calibration_images=images)


# --- training: mode=stitch with several sources (model.src=[A, B]) ---------------------------------------------------

from stitchkit.training import load_config, train  # noqa: E402

TINY = ["data.name=synthetic", "data.input_size=32", "data.synthetic_train_size=128", "data.synthetic_val_size=64",
        "optim.batch_size=32", "train.batch_size=16", "train.workers=0", "train.threads=1", "model.pretrained=false",
        "model.init_images=32"]
PARALLEL = ["mode=stitch", "model.src=[resnet10t,vit_pico_patch4_32]", "model.dst=resnet10t", "model.gap=1:3",
            "model.num_classes=10", "model.fusion=gate", "train.epochs=2", "train.checkpoint_every=100"]


def _cfg(tmp_path, *overrides, name="run"):
    return load_config(None, [*TINY, *PARALLEL, f"output.dir={tmp_path / name}", *overrides])


def test_a_parallel_stitch_trains_resumes_exactly_evaluates_and_exports(tmp_path, monkeypatch):
    """The whole life of a parallel stitch, as of a single one: trained with the fitted start (both chains fitted,
    the ViT's front fed renormalised pixels), resumed exactly after an interruption, evaluated again from its run
    folder, exported to a model folder that predicts what the run measured."""
    from test_training import assert_resumes_exactly

    from stitchkit.training.evaluation import evaluate_run

    reference = train(_cfg(tmp_path, name="reference"))
    assert reference["status"] == "finished" and reference["mode"] == "stitch"
    assert (reference["src"], reference["srcs"], reference["dst"], reference["gap"], reference["fusion"]) == (
        "resnet10t+vit_pico_patch4_32", ["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3", "gate")
    assert reference["trained"] == ["adapters", "fusion", "head"] and reference["top1_at_start"] is not None
    assert reference["seconds"]["calibration"] > 0  # both chains' starts were fitted on training images
    assert_resumes_exactly(monkeypatch, _cfg(tmp_path, name="interrupted"), reference)
    again = evaluate_run(tmp_path / "reference")
    assert again["top1"] == reference["top1"] and again["loss"] == pytest.approx(reference["loss"], abs=1e-6)

    from stitchkit.export import export_run

    export_run(tmp_path / "reference", tmp_path / "out", formats=["safetensors"])
    model = stitchkit.load_pretrained(tmp_path / "out" / "model")
    assert type(model).__name__ == "ParallelStitchedModel" and model.architecture()["fusion"] == "gate"
    assert [type(m).__name__ for m in model.inputs] == ["Identity", "Renormalize"]


def test_parallel_runs_record_their_checkpoints(tmp_path):

    source = tmp_path / "src"
    scratch = [s for s in TINY if not s.startswith("model.init_images")]  # a stitch's setting: scratch refuses it
    train(load_config(None, [*scratch, "mode=scratch", "model.src=resnet10t", "train.max_steps=1",
                             f"output.dir={source}"]))
    config = _cfg(tmp_path, f"model.src_checkpoint=[{source / 'model.pt'},null]", "train.max_steps=1",
                  "model.adapter_norm=paper_code", "model.fusion=sum")
    assert config.model.source_checkpoints() == [str(source / "model.pt"), None]
    result = train(config)
    import json

    recorded = json.loads((tmp_path / "run" / "sources.json").read_text())
    assert set(recorded) == {"model.src_checkpoint.0"} and result["status"] == "finished"


@pytest.mark.parametrize("overrides, message", [
    (["model.src=[resnet10t]"], "lists one source.*model.src=resnet10t"),
    (["model.src=[]"], "lists no source: .*model.src=NAME"),
    (["mode=finetune", "model.dst=null"], "only a parallel stitch \\(mode=stitch\\)"),
    (["model.gap=[1:3,2:3,1:3]"], "model.gap lists 3 entries for 2 sources"),
    (["model.gap=[1:3,1:4]"], "meet resnet10t at one cut"),
    (["model.fusion=mean"], "unknown fusion 'mean'"),
    (["model.dst=null"], "set model.dst=NAME"),
    (["model.src=resnet10t", "model.gap=[1:3,2:3]"], "model.gap is a list but model.src names one source"),
    (["model.src_checkpoint=[a.pt]"], "model.src_checkpoint lists 1 entries for 2 sources"),
    (["model.src=[resnet10t,resnet_typo]"], "model.src: unknown model"),
])
def test_bad_parallel_settings_are_one_line_that_names_the_fix(tmp_path, overrides, message):
    from stitchkit.errors import StitchkitError

    with pytest.raises(StitchkitError, match=message):
        _cfg(tmp_path, *overrides)


def test_sweeps_expand_and_price_parallel_pairs_with_the_parallel_method_family():
    from stitchkit.sweeps.dryrun import cell_costs
    from stitchkit.sweeps.grid import expand
    from stitchkit.sweeps.methods import get_method

    sweep = expand({"base": {"data": {"input_size": 32}, "model": {"pretrained": False}},
                    "pairs": [[["resnet10t", "vit_pico_patch4_32"], "resnet10t"], ["resnet10t", "resnet10t"]],
                    "gaps": ["1:3"], "methods": ["downsample_linear", "parallel_concat_linear"]})
    by = {(c.src, c.method): c for c in sweep.cells}
    fused = by[("resnet10t+vit_pico_patch4_32", "parallel_concat_linear")]
    assert fused.skip_reason is None and fused.settings["model"]["src"] == ["resnet10t", "vit_pico_patch4_32"]
    assert fused.settings["model"]["fusion"] == "concat" and get_method("parallel_concat_linear").parallel
    assert "use a parallel_* method" in by[("resnet10t+vit_pico_patch4_32", "downsample_linear")].skip_reason
    assert "fuses several sources" in by[("resnet10t", "parallel_concat_linear")].skip_reason
    config = sweep.config(fused, Path("runs"))  # a valid training config, as the runner builds it
    assert config.model.parallel and config.model.fusion == "concat"
    torch.manual_seed(0)
    built = create_parallel(["resnet10t", "vit_pico_patch4_32"], "resnet10t", "1:3", fusion="concat",
                            adapter="linear", input_size=32)
    costs = cell_costs(sweep, fused)  # priced on the meta device, as the real model counts
    assert costs["gmacs"] == pytest.approx(stitchkit.count_macs(built, 32) / 1e9)
    assert costs["trainable_params"] == sum(p.numel() for p in built.trainable_parameters())
    with pytest.raises(StitchkitError, match=r"\[\[src, src, ...\], dst\]"):
        expand({"pairs": [[["resnet10t"], "resnet10t"]]})


def test_a_parallel_result_is_its_method_in_reports_and_a_point_on_its_fronts_compute_figure():
    from stitchkit.reports.collect import _cell_from_result
    from stitchkit.reports.plots import _parallel_rows

    result = {"mode": "stitch", "src": "resnet10t+vit_pico_patch4_32", "dst": "resnet10t", "gap": "1:3",
              "adapter": "bottleneck", "resize": "bilinear", "fusion": "gate"}
    assert _cell_from_result(result)["method"] == "parallel_gate_bottleneck"
    assert _cell_from_result({**result, "src": "resnet10t", "fusion": None})["method"] == "downsample_bottleneck"
    row = {"src": "resnet10t+vit_pico_patch4_32", "dst": "resnet10t", "gap": "1:3", "top1_mean": 50.0,
           "gmacs": 0.02}
    assert _parallel_rows([row], "vit_pico_patch4_32", "resnet10t") == [row]
    assert _parallel_rows([row], "resnet18", "resnet10t") == [] == _parallel_rows([row], "resnet10t", "resnet18")


def test_inspect_shows_every_front_and_the_whole_cost(capsys):
    from stitchkit.cli import main

    assert main(["inspect", "--src", "resnet10t", "vit_pico_patch4_32", "--dst", "resnet10t", "--gap", "1:3",
                 "--input-size", "32", "--fusion", "concat", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [f["src"] for f in report["fronts"]] == ["resnet10t", "vit_pico_patch4_32"]
    assert report["fusion"] == "concat" and report["trained"] == ["adapters", "fusion"]
    assert report["fusion_params"] == 256 * 512 + 256  # two 256-channel chains projected back to 256
    assert main(["inspect", "--src", "resnet10t", "--dst", "resnet10t", "--gap", "1:3", "2:3"]) == 2
    assert "several are for a parallel stitch" in capsys.readouterr().err


def test_parallel_stitches_over_the_same_fronts_train_in_one_pass_as_they_would_alone(tmp_path):
    """Three fusions of the same two fronts (and a chain of another gap's end) compute the fronts once per batch:
    bitwise the results of separate runs on the CPU, with one copy of the fronts in memory."""
    from stitchkit.training.grouped import check_groupable, group_key
    from stitchkit.training.loop import TrainingPass
    from stitchkit.training.run import Run

    def configs(prefix):
        return [_cfg(tmp_path, *extra, "train.max_steps=3", "model.adapter_norm=lstsq", name=f"{prefix}{i}")
                for i, extra in enumerate([["model.fusion=sum"], ["model.fusion=gate"],
                                           ["model.fusion=concat", "model.adapter=linear"]])]

    check_groupable(configs("check"))
    assert group_key(_cfg(tmp_path, "model.gap=[1:3,2:3]")) != group_key(_cfg(tmp_path))  # another source stage
    separate = [train(c) for c in configs("alone")]
    members = [Run(c) for c in configs("group")]
    grouped = TrainingPass(members).run()
    for i, (s, g) in enumerate(zip(separate, grouped)):
        assert g["status"] == "finished" and g["group_size"] == 3
        assert (g["top1"], g["loss"], g["train_loss"]) == (s["top1"], s["loss"], s["train_loss"])
        alone = torch.load(tmp_path / f"alone{i}" / "checkpoints" / "last.pt", weights_only=False)["model"]
        together = torch.load(tmp_path / f"group{i}" / "checkpoints" / "last.pt", weights_only=False)["model"]
        assert alone.keys() == together.keys() and all(torch.equal(alone[k], together[k]) for k in alone)
    models = [m.model for m in members]
    assert all(m.fronts is models[0].fronts for m in models)
    assert models[0].back is not models[1].back  # each trains its own new head


def test_a_parallel_stitch_without_a_classifier_saves_loads_and_takes_a_new_head(tmp_path):
    """num_classes=0 (timm's no classifier) when it is built, or reset_classifier(0) after: the pooled features,
    recorded in every source's record; reset_classifier(k) then gives a head that trains and is saved."""
    torch.manual_seed(0)
    model = create_parallel(["resnet10t", "resnet10t"], "resnet10t", "1:3", input_size=32, num_classes=0).eval()
    assert model(X).shape == (3, 512) and model.num_classes == 0
    assert [s.num_classes for s in model.config.stitches] == [0, 0]
    model.save_pretrained(tmp_path / "features")
    loaded = stitchkit.load_pretrained(tmp_path / "features")
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    model.reset_classifier(4)
    assert model.trained_parts() == ["adapters", "fusion", "head"]
    assert [(s.num_classes, s.train_head) for s in model.config.stitches] == [(4, True), (4, True)]
    assert any(p is model.get_classifier().weight for p in model.trainable_parameters())
    assert "back.1.owner.fc.weight" in model.trained_state_dict()
    model.save_pretrained(tmp_path / "four")
    loaded = stitchkit.load_pretrained(tmp_path / "four")
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X)) and loaded(X).shape == (3, 4)


@pytest.mark.parametrize("head", ["own", "new", "reset", "none"])
def test_a_reopened_parallel_stitch_reports_its_classes_and_keeps_its_head_when_asked_for_as_many(head, tmp_path):
    """A parallel stitch records its head inside each source's record: reopened, it says how many classes it
    predicts (as a single stitch does), timm's num_classes= of that count keeps the trained head, the folder it is
    saved into again loads (it rebuilt the destination's 1000-class head around a 10-class one), and one without a
    classifier still refuses to predict classes."""
    import timm

    from stitchkit.predict import Predictor

    torch.manual_seed(0)
    model = create_parallel(["resnet10t", "resnet10t"], "resnet10t", "1:3", input_size=32,
                            num_classes={"own": None, "new": 10, "reset": None, "none": 0}[head]).eval()
    if head == "reset":
        model.reset_classifier(5)
    classes = model.num_classes
    model.save_pretrained(tmp_path / "p")
    loaded = stitchkit.load_pretrained(tmp_path / "p")
    assert loaded.pretrained_cfg["num_classes"] == classes == {"own": 1000, "new": 10, "reset": 5, "none": 0}[head]
    opened = timm.create_model(f"local-dir:{tmp_path / 'p'}", pretrained=True, num_classes=classes)
    loaded.save_pretrained(tmp_path / "again")
    again = stitchkit.load_pretrained(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(opened(X), model(X)) and torch.equal(again(X), model(X))
    assert again.pretrained_cfg["num_classes"] == classes
    if head == "none":
        with pytest.raises(StitchkitError, match="has no classifier"):
            Predictor(tmp_path / "p")


@pytest.mark.parametrize("kwargs, message", [
    ({"adapter": "bottelneck"}, "bottleneck"), ({"resize": "bilinar"}, "bilinear"), ({"gaps": "3:1"}, "gap"),
    ({"prefix_out": "drip"}, "drop"), ({"adapter_norm": "fited"}, "fitted"), ({"colour": 1}, "unknown option")])
def test_names_and_gaps_are_checked_before_any_model_is_built(kwargs, message, monkeypatch):
    """create_parallel refuses a misspelt choice at once, as create_stitched does, not after building every model."""
    from stitchkit import parallel

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built before the choices were checked")

    monkeypatch.setattr(parallel, "resolve_model", no_build)
    with pytest.raises(StitchkitError, match=message):
        parallel.create_parallel(["resnet10t", "resnet18"], "resnet10t", **{"gaps": "1:3", **kwargs})
