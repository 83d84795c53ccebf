"""stitchkit search: candidates priced without building them (checked against the built stitch), the proxies'
mathematics (CKA, NASWOT, rank correlations, frontiers) against values worked out by hand, the errors a user meets,
and a whole search at smoke size through the CLI, killed-and-rerun safe."""
import json
import math

import pytest
import torch

import stitchkit
from stitchkit.cli import main
from stitchkit.errors import StitchkitError
from stitchkit.stitch_search.candidates import check_models, enumerate_candidates
from stitchkit.pareto import hypervolume, pareto_front
from stitchkit.stitch_search.frontier import bootstrap_interval, kendall, select, spearman, top_by_score
from stitchkit.stitch_search.run import DEFAULT_PROXY
from stitchkit.stitch_search.proxies import linear_cka, naswot_score

TINY = {"data.name": "synthetic", "data.input_size": 32, "data.synthetic_train_size": 192,
        "data.synthetic_val_size": 32, "model.pretrained": False, "model.num_classes": 10, "train.workers": 0,
        "train.batch_size": 32, "optim.batch_size": 32, "train.epochs": 1}


def test_frontier_and_hypervolume_by_hand():
    points = [(1.0, 50.0), (2.0, 60.0), (2.0, 55.0), (3.0, 58.0), (4.0, 70.0)]
    assert pareto_front(points) == [0, 1, 4]  # (2, 55) and (3, 58) are beaten by (2, 60)
    # dominated area above accuracy 40 and left of 5 GMACs: (2-1)*10 + (4-2)*20 + (5-4)*30
    assert hypervolume(points, 5.0, 40.0) == pytest.approx(10 + 40 + 30)
    assert hypervolume([(6.0, 90.0)], 5.0, 40.0) == 0.0  # beyond the reference compute counts nothing


def test_selection_walks_the_predicted_frontier_layer_by_layer():
    costs = [1.0, 2.0, 3.0, 1.5, 2.5, 9.0]
    scores = [10.0, 20.0, 30.0, 5.0, 15.0, float("nan")]
    assert select(costs, scores, 3) == [0, 1, 2]  # the predicted frontier first
    assert sorted(select(costs, scores, 4)) == [0, 1, 2, 4]  # then the best of the next layer
    assert top_by_score(scores, 2) == [2, 1]
    assert 5 not in select(costs, scores, 10)  # no score, not chosen


def test_rank_correlations_by_hand():
    x = [1, 2, 3, 4, 5]
    assert spearman(x, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert kendall(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swapped pair of five: 9 concordant, 1 discordant -> tau 0.8; spearman 1 - 6*2/(5*24) = 0.9
    assert kendall(x, [1, 3, 2, 4, 5]) == pytest.approx(0.8)
    assert spearman(x, [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    # ties: tau-b = (C - D) / sqrt((C+D+Tx)(C+D+Ty)); x ties one pair, y none: (9 - 0) / sqrt(9 * 10)
    assert kendall([1, 1, 2, 3, 4], [1, 2, 3, 4, 5]) == pytest.approx(9 / math.sqrt(90))
    low, high = bootstrap_interval(list(range(30)), [v + (v % 3) for v in range(30)], spearman, resamples=200)
    assert low <= spearman(list(range(30)), [v + (v % 3) for v in range(30)]) <= high <= 1.0


def test_linear_cka_is_one_for_the_same_features_up_to_rotation_and_scale():
    torch.manual_seed(0)
    a = torch.randn(64, 20)
    rotation, _ = torch.linalg.qr(torch.randn(20, 20))
    assert linear_cka(a, 3.0 * a @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(a, torch.randn(64, 20)) < 0.5  # unrelated features
    assert linear_cka(a.reshape(64, 5, 2, 2), a) == pytest.approx(1.0)  # any shape after the batch


def test_naswot_counts_agreeing_activation_codes():
    """Two images with the same codes make the kernel singular (a network that cannot tell them apart)."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 256), torch.nn.ReLU())
    torch.manual_seed(0)
    apart = naswot_score(net, torch.randn(8, 4))
    assert math.isfinite(apart)
    same = torch.randn(1, 4).repeat(8, 1)
    assert math.isnan(naswot_score(net, same))  # log-determinant of a singular kernel: no score


def _built(src: str, dst: str, gap: str, method: str, settings: dict, classes: int = 10):
    """The network ``stitchkit train`` builds for this stitch with these settings."""
    from stitchkit.sweeps.grid import _nest
    from stitchkit.sweeps.methods import get_method
    from stitchkit.training.config import load_config
    from stitchkit.training.modes import build_model

    m = get_method(method)
    stitch = {"mode": "stitch", "model.src": src, "model.dst": dst, "model.gap": gap, "model.adapter": m.adapter,
              "model.resize": m.resize}
    torch.manual_seed(0)
    return build_model(load_config(layers=[("test", _nest({**settings, **stitch}))]), classes)


@pytest.mark.parametrize("model", [{}, {"model.token_adapters": False},
                                   {"model.token_adapters": False, "model.prefix_out": "drop"},
                                   {"model.unfreeze_last": 1, "model.prefix_in": "learned"}])
def test_a_candidate_costs_what_its_run_builds(model):
    """Priced as the sweep cell that trains it, with the search's own model settings. Candidates were priced with
    the default settings: with model.token_adapters=false, vit_pico -> vit_pico 1:3 linear was priced 0.0127
    GMACs, its run measured 0.0133 and stood on the frontier over a budget of 0.013; trainable weights ignored the
    new head that trains with the adapters."""
    settings = {**TINY, **model}
    records = stitchkit.search(["resnet10t", "vit_pico_patch4_32"], gaps=["1:3"], adapters=["bottleneck", "linear"],
                               settings=settings, proxies=False)
    assert len(records) == 8 and all(r.get("skip_reason") is None for r in records)
    for r in records:
        built = _built(r["src"], r["dst"], r["gap"], r["method"], settings)
        assert r["gmacs"] == pytest.approx(stitchkit.count_macs(built, 32) / 1e9, rel=1e-9), r
        assert (r["params"], r["trainable_params"]) == (stitchkit.count_params(built),
                                                        stitchkit.count_params(built, trainable_only=True)), r
    if model == {"model.token_adapters": False}:  # the audit's case: over a budget of 0.013 now
        vit = next(r for r in records if r["src"] == r["dst"] == "vit_pico_patch4_32" and r["method"] ==
                   "downsample_linear")
        assert vit["gmacs"] > 0.013
    skipped = stitchkit.search(["resnet10t"], gaps=["1:2"], adapters=["vit_block", "linear"], settings=settings,
                               proxies=False)
    assert skipped[0]["skip_reason"].startswith("vit_block") and skipped[1].get("skip_reason") is None
    assert len(enumerate_candidates(["a", "b"], 32, gaps=["1:2", "2:3"], adapters=["bottleneck", "linear"])) == 16


def test_a_trained_run_over_the_budget_is_named_and_left_out_of_the_frontier(tmp_path, monkeypatch):
    """The guard behind the prices: a run that measures more than the budget (here: a price made too low on
    purpose) is never reported on the frontier, and the search says which one and why."""
    from stitchkit.sweeps import dryrun

    true_costs = dryrun.cell_costs

    def half_price(*args, **kwargs):
        costs = true_costs(*args, **kwargs)
        return {**costs, "gmacs": costs["gmacs"] / 2}

    monkeypatch.setattr(dryrun, "cell_costs", half_price)
    real = _built("resnet10t", "resnet10t", "1:3", "downsample_linear", TINY)
    budget = 0.75 * stitchkit.count_macs(real, 32) / 1e9
    lines = []
    result = stitchkit.run_search(["resnet10t"], tmp_path / "search", budget, gaps=["1:3"], adapters=["linear"],
                                  train_top=1, settings=TINY, smoke=True, calibration_images=8, probe_images=8,
                                  log=lines.append)
    assert result["frontier"] == [] and result["trained"] == []
    assert [t["method"] for t in result["over_budget"]] == ["downsample_linear"]
    assert any(line.startswith("left out of the frontier: resnet10t -> resnet10t 1:3 downsample_linear was priced")
               for line in lines), lines
    saved = json.loads((tmp_path / "search" / "search.json").read_text())
    assert saved["frontier"] == [] and saved["over_budget"][0]["gmacs"] > budget


def test_bad_input_is_one_clear_line(capsys, tmp_path):
    usable, reasons = check_models(["resnet10t", "hrnet_w18_small"], 32)
    assert usable == ["resnet10t"] and "cannot cut" in reasons["hrnet_w18_small"]
    args = ["search", "--models", "resnet10t,vit_pico_patch4_32", "--list", "data.input_size=32",
            "model.pretrained=false"]
    assert main([*args, "--budget-gmacs", "0.0001"]) == 2
    err = capsys.readouterr().err
    assert "no candidate fits a budget of 0.0001 GMACs: the cheapest" in err and "raise --budget-gmacs" in err
    suggested = float(err.rsplit("raise --budget-gmacs to at least ", 1)[1].split()[0])
    assert main([*args, "--budget-gmacs", str(suggested)]) == 0  # the suggestion admits the cheapest (rounded up)
    capsys.readouterr()
    assert main(["search", "--models", "resnet10t,resnt18", "--list"]) == 2
    assert "unknown model 'resnt18'; did you mean: resnet18" in capsys.readouterr().err
    assert main(["search", "--models", "resnet10t,hrnet_w18_small", "--list", "--gaps", "1:3",
                 "data.input_size=32", "model.pretrained=false"]) == 0
    out = capsys.readouterr().out
    assert "resnet10t -> resnet10t  1:3" in out and "hrnet_w18_small -> -" in out and "cannot cut" in out
    assert main(["search", "--models", "resnet10t", "--adapters", "botleneck", "--list"]) == 2
    assert "bottleneck" in capsys.readouterr().err
    assert main(["search", "--models", "resnet10t", "--proxy", "accuracy", "--out", "x"]) == 2
    assert "init_accuracy" in capsys.readouterr().err
    # a seed twice: refused before any proxy is measured or anything written (the sweep refused it only after)
    assert main(["search", "--models", "resnet10t", "--seeds", "0,1,0", "--out", str(tmp_path / "s")]) == 2
    assert "--seeds takes distinct integers (one run per seed), got 0,1,0" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_parallel_methods_are_refused_and_a_chosen_candidate_without_a_result_is_an_error(tmp_path, capsys):
    """--adapters parallel_gate_linear was priced as a single stitch; the sweep that was to train it skipped it (one
    source), and the search ended "frontier: 0 stitches" with exit 0 after "training 1 of 1 candidates"."""
    from stitchkit.stitch_search.candidates import DEFAULT_METHODS, method_names
    from stitchkit.stitch_search.run import _train
    from stitchkit.sweeps.methods import get_method

    assert not any(get_method(m).parallel for m in method_names(None)) and method_names(None) == list(DEFAULT_METHODS)
    for adapters in ("parallel_gate_linear", "linear,parallel_sum_bottleneck"):
        assert main(["search", "--models", "resnet10t", "--gaps", "1:4", "--adapters", adapters, "--list",
                     "data.input_size=32", "model.pretrained=false"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "a parallel_* method fuses several sources, but a search ranks " \
            "single stitches; drop it" in err, err
    chosen = [{"src": "resnet10t", "dst": "resnet10t", "gap": "1:4", "method": "parallel_gate_linear", "gmacs": 0.01}]
    with pytest.raises(StitchkitError, match=r"1 of the 1 chosen candidates have no result: resnet10t -> resnet10t "
                                             r"1:4 parallel_gate_linear \(the sweep skipped it: .*fuses several"):
        _train(chosen, tmp_path, TINY, {}, (0,), 1, lambda *_: None)


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", "0", "-0.5"])
def test_a_budget_that_is_not_a_positive_finite_number_is_refused(budget, tmp_path, capsys):
    """--budget-gmacs nan switched the budget off (every comparison with NaN is false: no candidate over it)."""
    args = ["search", "--models", "resnet10t", "--gaps", "1:3", "--adapters", "linear", f"--budget-gmacs={budget}",
            "data.input_size=32", "model.pretrained=false"]
    for extra in (["--list"], ["--out", str(tmp_path / "search")]):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--budget-gmacs must be a positive finite number of GMACs" in err, err
    with pytest.raises(StitchkitError, match="positive finite number"):
        stitchkit.search(["resnet10t"], float("nan"), gaps=["1:3"], adapters=["linear"], proxies=False,
                         settings={"data.input_size": 32, "model.pretrained": False})


@pytest.mark.parametrize("option, count", [("--calibration-images", "0"), ("--probe-images", "0"),
                                           ("--calibration-images", "-4"), ("--probe-images", "-1")])
def test_no_calibration_or_probe_images_is_refused(option, count, tmp_path, capsys):
    """A count of 0 or less ended in a traceback from the first proxy (stack expects a non-empty TensorList)."""
    args = ["search", "--models", "resnet10t", "--gaps", "1:3", "--adapters", "linear", f"{option}={count}",
            "--smoke", *[f"{k}={v}" for k, v in TINY.items()]]
    for extra in (["--list"], ["--out", str(tmp_path / "search")]):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        default = "256" if option == "--probe-images" else "as many as a run's start"
        assert err.endswith(f"{option} must be a whole number of images, 1 or more (default {default}), got "
                            f"{count}"), err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "search").exists()  # refused before anything was measured or written


def test_a_destination_for_other_classes_is_refused_before_any_proxy(tmp_path):
    settings = {k: v for k, v in TINY.items() if k != "model.num_classes"}  # random 1000-class heads, 10 classes
    with pytest.raises(StitchkitError, match=r"predicts 1000 classes but the data has 10: pass --checkpoint "
                                             r"resnet10t=PATH .* or set model.num_classes=10"):
        stitchkit.search(["resnet10t"], gaps=["1:3"], adapters=["linear"], settings=settings,
                         calibration_images=16, probe_images=16)


def test_a_smoke_search_trains_its_choice_writes_the_frontier_and_continues(tmp_path, capsys):
    out = tmp_path / "search"
    args = ["search", "--models", "resnet10t,vit_pico_patch4_32", "--gaps", "1:3", "--adapters", "linear",
            "--train-top", "2", "--out", str(out), "--smoke", "--calibration-images", "16", "--probe-images", "16",
            *[f"{k}={v}" for k, v in TINY.items()]]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "measuring proxies of 4 candidates" in printed.out
    records = json.loads((out / "search.json").read_text())
    assert len(records["trained"]) == 2 and records["frontier"]
    for name in ("candidates.csv", "frontier.csv", "frontier.md", "frontier.png", "index.html",
                 "runs/report/index.html"):
        assert (out / name).is_file(), name
    cached = sorted(p.name for p in (out / "proxies").iterdir())
    saved = [json.loads((out / "proxies" / c).read_text())["proxies"] for c in cached]
    assert DEFAULT_PROXY == "init_accuracy_quick"  # the measured best for a search (docs/search.md)
    assert len(cached) == 4 and all(p[DEFAULT_PROXY] is not None for p in saved)
    # the default proxy pays for its quick start only, not for the full one nor the other proxies' parts
    assert all(set(p["part_seconds"]) <= {"features", "fitted_quick"} for p in saved)
    folders = sorted((out / "frontier").iterdir())
    assert len(folders) == len(records["frontier"])
    model = stitchkit.load_pretrained(folders[0])
    assert isinstance(model, stitchkit.StitchedModel)
    # the same command again: every proxy from the cache, every run finished, the same frontier
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "measuring proxies" not in again and "training stitch run" not in again
    assert json.loads((out / "search.json").read_text())["frontier"] == records["frontier"]
    # one stitch of the two (nothing new trains): frontier/ holds exactly the new frontier's folders
    from stitchkit.stitch_search.frontier_folders import exported_by_search

    assert all(exported_by_search(out, f) for f in folders)  # what export writes is recognised as the search's
    assert main([*args, "--train-top", "1"]) == 0
    one = json.loads((out / "search.json").read_text())
    assert "training stitch run" not in capsys.readouterr().out and len(one["trained"]) == 1
    keys = {f"{t['src']}--{t['dst']}--{t['gap'].replace(':', 'to')}--{t['method']}" for t in one["frontier"]}
    assert {f.name for f in (out / "frontier").iterdir()} == keys


def test_a_rerun_removes_the_frontier_folders_it_exported_for_stitches_off_the_frontier_and_nothing_else(tmp_path):
    """A rerun with a tighter budget left resnet18--resnet18--1to4--downsample_linear (0.0122 GMACs) in frontier/
    over a budget of 0.010. A folder is the search's own when it is named as a candidate, holds the export's files and
    records a stitch run of that candidate in OUT/runs; everything else stays."""
    from stitchkit.stitch_search.frontier_folders import export_frontier

    out = tmp_path / "search"

    def exported(name: str, run: str | None, with_run_folder: bool = True):
        folder = out / "frontier" / name
        (folder / "model").mkdir(parents=True)
        (folder / "export.json").write_text("{}")
        (folder / "model" / "config.json").write_text(json.dumps({"stitchkit": {"provenance": {"run": run}}}))
        src, dst, gap, method = name.split("--")
        if with_run_folder:
            (out / "runs" / "stitch" / f"{src}--{dst}" / gap / method / run).mkdir(parents=True, exist_ok=True)
        return folder

    stale = exported("resnet18--resnet18--1to4--downsample_linear", "seed0-3ccb6f4c")
    kept = [exported("resnet18--resnet18--1to3--downsample_linear", "seed0-aaaaaaaa", with_run_folder=False),
            exported("resnet18--resnet18--2to3--downsample_linear", "../../..")]
    notes = out / "frontier" / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("a user's file")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "export.json").write_text("{}")
    (out / "frontier" / "resnet18--resnet18--3to4--downsample_linear").symlink_to(elsewhere)
    (out / "frontier" / "resnet18--resnet18--4to4--downsample_linear").write_text("a file")
    lines = []
    export_frontier(out, [], lines.append)
    assert not stale.exists() and lines == ["removed 1 frontier model folders of stitches no longer on the frontier: "
                                            "resnet18--resnet18--1to4--downsample_linear"]
    assert all(k.is_dir() for k in kept) and (notes / "mine.txt").is_file() and (elsewhere / "export.json").is_file()
    assert len(list((out / "frontier").iterdir())) == 5


@pytest.mark.slow
def test_the_proxy_study_runs_at_smoke_size_and_writes_its_page(tmp_path, capsys):
    """The study's whole path (a zoo from scratch on Fashion-MNIST, every proxy, every candidate trained, the
    analysis and the page) on a toy zoo; its numbers mean nothing at this size."""
    pytest.importorskip("matplotlib")
    from stitchkit.training.data import find_fashion_mnist

    try:
        find_fashion_mnist(None)
    except StitchkitError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    study = tmp_path / "study.yaml"
    study.write_text("sources: {models: [resnet10t, vit_pico_patch4_32], images: 128, epochs: 1}\n"
                     "stitches: {images: 64, epochs: 1}\nval_images: 32\nbatch_size: 32\n"
                     "search: {gaps: ['1:3', '2:3'], adapters: [linear], calibration_images: 16, probe_images: 16}\n")
    doc = tmp_path / "docs" / "search.md"
    assert main(["search", "--study", str(study), "--out", str(tmp_path / "out"), "--doc", str(doc)]) == 0
    page = doc.read_text()
    analysis = json.loads((tmp_path / "out" / "study.json").read_text())
    assert analysis["stitches"] == analysis["candidates"] == 8
    assert set(analysis["correlations"]) >= {"init_accuracy", "lstsq_accuracy", "cka", "fit_residual", "naswot"}
    assert all(-1 <= r["spearman"] <= 1 for r in analysis["correlations"].values())
    # The environment as the study's runs recorded it: every run was made here, in one environment.
    environment = analysis["environment"]
    assert environment.startswith("stitchkit ") and "torch thread(s) per run" in environment, environment
    assert "not recorded" not in environment and "more than one environment" not in environment
    assert environment in page
    for name in ("Spearman (95% CI)", "hypervolume vs exhaustive", "## Verdict", "search/frontiers.png"):
        assert name in page, name
    assert (doc.parent / "search" / "proxy_vs_accuracy.png").is_file()
    # One run made elsewhere (as if the study were resumed on another machine): the page says so, from the records.
    moved = next((tmp_path / "out" / "runs").rglob("result.json"))
    record = json.loads(moved.read_text())
    moved.write_text(json.dumps({**record, "machine": {**record["machine"], "cpu_kernels": "ELSEWHERE"}}))
    assert main(["search", "--study", str(study), "--out", str(tmp_path / "out"), "--doc", str(doc)]) == 0
    environment = json.loads((tmp_path / "out" / "study.json").read_text())["environment"]
    assert environment.startswith("runs made in more than one environment: ") and "torch's ELSEWHERE kernels" in \
        environment and "(1 run)" in environment


def test_search_in_python_returns_plain_records_within_and_over_the_budget():
    settings = {"data.input_size": 32, "model.pretrained": False}
    everything = stitchkit.search(["resnet10t", "vit_pico_patch4_32"], gaps=["1:3"], adapters=["linear"],
                                  settings=settings, proxies=False)
    costs = sorted(r["gmacs"] for r in everything)
    budget = costs[1]  # two of the four fit
    records = stitchkit.search(["resnet10t", "vit_pico_patch4_32"], budget, gaps=["1:3"], adapters=["linear"],
                               settings=settings, proxies=False)
    json.dumps(records)  # plain values only
    assert {(r["src"], r["dst"]) for r in records} == {(a, b) for a in ("resnet10t", "vit_pico_patch4_32")
                                                       for b in ("resnet10t", "vit_pico_patch4_32")}
    within = [r for r in records if r.get("skip_reason") is None]
    assert len(within) == 2 and all(r["gmacs"] <= budget for r in within)
    assert all("over the budget" in r["skip_reason"] for r in records if r not in within)


def test_naswot_reads_timms_own_activation_classes():
    """ConvNeXt's GELU is timm's class, not torch's: counted all the same; a network without any gives no score."""
    import timm.layers

    net = torch.nn.Sequential(torch.nn.Linear(4, 256), timm.layers.activations.GELU())
    assert math.isfinite(naswot_score(net, torch.randn(8, 4, generator=torch.Generator().manual_seed(0))))
    assert math.isnan(naswot_score(torch.nn.Sequential(torch.nn.Linear(4, 8)), torch.randn(8, 4)))


def test_a_search_measures_only_what_its_proxy_needs_and_adds_to_the_cache(tmp_path):
    """The cheap least-squares proxy costs no fitted start; asking for another proxy later measures only that."""
    from stitchkit.stitch_search.run import search

    kwargs = dict(gaps=["1:3"], adapters=["linear"], settings=TINY, calibration_images=16, probe_images=16,
                  cache=tmp_path / "proxies")
    search(["resnet10t"], proxies=["lstsq_accuracy"], **kwargs)
    saved = json.loads(next((tmp_path / "proxies").iterdir()).read_text())["proxies"]
    assert "lstsq_accuracy" in saved and "init_accuracy" not in saved and "fitted" not in saved["part_seconds"]
    records = search(["resnet10t"], proxies=["init_accuracy", "lstsq_accuracy"], **kwargs)
    saved = json.loads(next((tmp_path / "proxies").iterdir()).read_text())["proxies"]
    assert {"lstsq_accuracy", "init_accuracy", "fit_residual"} <= set(saved)
    assert {"lstsq", "fitted"} <= set(saved["part_seconds"])
    assert records[0]["lstsq_accuracy"] == saved["lstsq_accuracy"]
    with pytest.raises(StitchkitError, match="unknown proxy"):
        search(["resnet10t"], proxies=["accuracy"], **kwargs)


def test_the_quick_proxy_fits_the_default_start_with_fewer_steps_and_costs_only_its_own_part(tmp_path):
    """init_accuracy_quick is the default start with an eighth of its feature matching: the same network (same
    parameters), a start of its own that the search measures without the full one."""
    from stitchkit.starts import Fitted, get_start
    from stitchkit.stitch_search.run import search

    quick = get_start("fitted_quick")
    assert isinstance(quick, Fitted) and 0 < quick.match_steps < Fitted.match_steps
    full = stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", adapter="linear", input_size=32)
    fast = stitchkit.create_stitched("resnet10t", "resnet10t", "1:3", adapter="linear", input_size=32,
                                     adapter_norm="fitted_quick")
    assert {k: v.shape for k, v in full.state_dict().items()} == {k: v.shape for k, v in fast.state_dict().items()}
    search(["resnet10t"], proxies=["init_accuracy_quick"], gaps=["1:3"], adapters=["linear"], settings=TINY,
           calibration_images=16, probe_images=16, cache=tmp_path / "proxies")
    saved = json.loads(next((tmp_path / "proxies").iterdir()).read_text())["proxies"]
    assert 0 <= saved["init_accuracy_quick"] <= 100 and "init_accuracy" not in saved
    assert "fitted_quick" in saved["part_seconds"] and "fitted" not in saved["part_seconds"]


def test_a_revised_proxy_is_measured_again_and_the_others_are_kept(tmp_path, monkeypatch):
    """A proxy whose definition changed (its revision raised) is stale in the cache: the next search measures it
    again and keeps every other cached proxy as it was; files written before revisions existed are revision 1."""
    from stitchkit.stitch_search import proxies as proxies_module
    from stitchkit.stitch_search.run import search

    kwargs = dict(gaps=["1:3"], adapters=["linear"], settings=TINY, calibration_images=16, probe_images=16,
                  cache=tmp_path / "proxies")
    search(["resnet10t"], proxies=["lstsq_accuracy", "init_accuracy_quick"], **kwargs)
    path = next((tmp_path / "proxies").iterdir())
    first = json.loads(path.read_text())
    assert first["revisions"]["init_accuracy_quick"] == proxies_module.proxy_revision("init_accuracy_quick")
    first["proxies"]["lstsq_accuracy"] = -1.0  # a mark: kept only if the cache is read, not measured again
    first["proxies"]["init_accuracy_quick"] = -2.0
    path.write_text(json.dumps(first))
    records = search(["resnet10t"], proxies=["lstsq_accuracy", "init_accuracy_quick"], **kwargs)
    assert records[0]["lstsq_accuracy"] == -1.0 and records[0]["init_accuracy_quick"] == -2.0  # both current
    monkeypatch.setitem(proxies_module.PROXY_REVISIONS, "init_accuracy_quick", 99)
    records = search(["resnet10t"], proxies=["lstsq_accuracy", "init_accuracy_quick"], **kwargs)
    again = json.loads(path.read_text())
    assert records[0]["lstsq_accuracy"] == -1.0 and 0 <= records[0]["init_accuracy_quick"] <= 100
    assert again["proxies"]["lstsq_accuracy"] == -1.0 and again["revisions"]["init_accuracy_quick"] == 99
    del again["revisions"]  # as written before revisions: every proxy at revision 1, so the revised one is stale
    path.write_text(json.dumps(again))
    records = search(["resnet10t"], proxies=["lstsq_accuracy"], **kwargs)
    assert records[0]["lstsq_accuracy"] == -1.0 and "init_accuracy_quick" not in records[0]


def test_a_cached_proxy_error_stands_for_its_version_and_is_retried_by_another(tmp_path):
    """A candidate whose proxies failed (a stitch that could not be built) is not measured again by the same
    stitchkit, which would fail alike, but is by another version, which may build it."""
    from stitchkit.stitch_search.run import search

    kwargs = dict(gaps=["1:3"], adapters=["linear"], settings=TINY, calibration_images=16, probe_images=16,
                  cache=tmp_path / "proxies")
    search(["resnet10t"], proxies=["lstsq_accuracy"], **kwargs)
    path = next((tmp_path / "proxies").iterdir())
    saved = json.loads(path.read_text())
    assert saved["stitchkit"] == stitchkit.__version__
    saved["proxies"] = {"proxy_error": "resnet10t cannot be cut"}
    path.write_text(json.dumps(saved))
    records = search(["resnet10t"], proxies=["lstsq_accuracy"], **kwargs)
    assert records[0]["proxy_error"] == "resnet10t cannot be cut" and "lstsq_accuracy" not in records[0]
    path.write_text(json.dumps({**saved, "stitchkit": "0.13.1"}))
    records = search(["resnet10t"], proxies=["lstsq_accuracy"], **kwargs)
    assert "proxy_error" not in records[0] and 0 <= records[0]["lstsq_accuracy"] <= 100
    assert "proxy_error" not in json.loads(path.read_text())["proxies"]


def test_the_study_chooses_the_cheapest_proxy_that_ranks_within_the_best_ones_interval():
    """A proxy whose Spearman lies inside the highest one's bootstrap interval ranks alike over these stitches: the
    cheaper of the two is the best proxy (a search pays it over every candidate); one outside the interval is not
    chosen however cheap."""
    from stitchkit.stitch_search.study import analyse

    rng = torch.Generator().manual_seed(0)
    top1 = (torch.rand(60, generator=rng) * 60 + 30).tolist()
    noise = torch.randn(3, 60, generator=rng).tolist()
    trained = [{"src": "a", "dst": "b", "gap": "1:3", "method": f"m{i}", "gmacs": 0.01 * (i + 1), "top1": t,
                "train_seconds": 10.0, "init_accuracy": t + 5 * n, "init_accuracy_quick": t + 6 * q,
                "lstsq_accuracy": t + 40 * r} for i, (t, n, q, r) in enumerate(zip(top1, *noise))]
    costs = {"init_accuracy": 600.0, "init_accuracy_quick": 150.0, "lstsq_accuracy": 40.0}
    a = analyse(trained, costs, 0.2)
    assert a["ranked_first"] == "init_accuracy"
    assert a["correlations"]["lstsq_accuracy"]["spearman"] < a["correlations"]["init_accuracy"]["spearman_ci"][0]
    assert a["best_proxy"] == "init_accuracy_quick"
    assert a["selection"]["frontier"]["proxy_seconds"] == 150.0
    # The page says whether the quick proxy's start was tuned on this study's stitches or judged out of sample.
    from stitchkit.stitch_search.study import study_markdown

    a.update(models=["a"], originals={"a": {"top1": 80.0}}, candidates=60, cost_minutes={"stitches": 10.0})
    spec = {"sources": {"images": 100, "epochs": 1}, "stitches": {"images": 50, "epochs": 1},
            "search": {"gaps": ["1:3"], "adapters": ["linear"]}}
    tuned = study_markdown({**a, "quick_in_sample": True}, spec, "cmd", ["p.png", "f.png"])
    held_out = study_markdown({**a, "quick_in_sample": False}, spec, "cmd", ["p.png", "f.png"])
    assert "so its figures are in-sample" in tuned and "out-of-sample" not in tuned
    assert "here its figures are out-of-sample" in held_out and "in-sample." not in held_out
    a = analyse([{**t, "init_accuracy_quick": t["lstsq_accuracy"]} for t in trained], costs, 0.2)
    assert a["best_proxy"] == "init_accuracy"


def test_every_search_study_file_loads_and_names_valid_gaps_and_adapters():
    """configs/search holds the study and its held-out check: each must load, and its gaps and adapters must be ones
    the search enumerates (a typo would otherwise surface only an hour into a study)."""
    from pathlib import Path

    from stitchkit.chain import parse_gap
    from stitchkit.stitch_search.study import load_study
    from stitchkit.sweeps.methods import get_method

    files = sorted((Path(__file__).parents[1] / "configs" / "search").glob("*.yaml"))
    assert len(files) >= 2
    gaps = set()
    for path in files:
        grid = load_study(path)["search"]
        for gap in grid["gaps"]:
            parse_gap(gap)
        for adapter in grid["adapters"]:
            get_method(adapter)
        gaps.update(grid["gaps"])
    assert {"1:1", "3:4"} <= gaps  # the study's grid and the held-out later gaps


def test_each_start_is_fitted_on_as_many_images_as_its_run_measures_and_never_on_a_probe_image():
    """--calibration-images was a fixed 256 while a run's start measures model.init_images or, by default, as many
    as its chain asks for (256 to 2,048): the proxy scored a start fitted on an eighth of the run's images exactly
    where that count matters (ResNet-18 to itself at 1:4: 79.8% at the full start on 256 images, 86.2% on 2,048),
    and so underrated the cheap stitches into late stages. Now the same count as the run (at most what the split
    leaves beside the probe images), and the probe images come after the most a start may ask for."""
    from stitchkit.stitch_search.proxies import calibration_and_probe
    from stitchkit.stitch_search.run import _base_config, search

    settings = {**TINY, "data.synthetic_train_size": 600}
    kwargs = dict(gaps=["1:1", "1:3"], adapters=["linear"], settings=settings, probe_images=16,
                  proxies=["lstsq_accuracy"])
    counts = {r["gap"]: r["calibration_images"] for r in search(["resnet10t"], **kwargs)}
    # 1:1 fits 64 channels on 8 x 8 positions (256 images give 256 rows per channel); 1:3 256 channels on 2 x 2,
    # which asks for 4,096 images, so 2,048, of which this split has 584 beside the 16 probe images
    assert counts == {"1:1": 256, "1:3": 584}
    runs = search(["resnet10t"], **{**kwargs, "gaps": ["1:3"], "settings": {**settings, "model.init_images": 48}})
    assert runs[0]["calibration_images"] == 48  # a number fixes the count, as model.init_images fixes a run's
    images, _ = calibration_and_probe(_base_config(settings).data, ["resnet10t"], None, 16, 0)
    calibration, probe = images("resnet10t", "calibration").flatten(1), images("resnet10t", "probe").flatten(1)
    assert len(calibration) == 584 and len(probe) == 16
    first = images("resnet10t", "calibration", 100).flatten(1)
    assert torch.equal(first, calibration[:100])  # a smaller count: the first images of a larger one
    assert torch.cdist(probe, calibration).min() > 0  # no probe image is a calibration image


def test_a_destination_that_predicts_the_datas_classes_keeps_its_head_in_the_proxies_as_in_its_run(tmp_path,
                                                                                                  monkeypatch):
    """model.num_classes equal to the destination's own keeps its head in a run (as timm's create_model does), but
    the proxies gave every stitch a new random head whenever model.num_classes was set: accuracy at the start was
    then chance for every candidate, and KL was not measured. model.new_head=true, which a run honours, the proxies
    ignored."""
    import timm

    from stitchkit.stitch_search import proxies as proxies_module

    checkpoint = tmp_path / "resnet10t.pt"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), checkpoint)
    own = torch.load(checkpoint)["fc.weight"]
    heads = []
    started = proxies_module._started

    def record(stitch, *args):
        heads.append(stitch.back.state_dict()[next(k for k in stitch.back.state_dict() if k.endswith("fc.weight"))])
        return started(stitch, *args)

    monkeypatch.setattr(proxies_module, "_started", record)
    settings = {k: v for k, v in TINY.items() if k != "model.num_classes"}
    kwargs = dict(checkpoints={"resnet10t": str(checkpoint)}, gaps=["1:3"], adapters=["linear"],
                  calibration_images=16, probe_images=16, proxies=["lstsq_accuracy"])
    for extra, kept in (({"model.num_classes": 10}, True), ({"model.new_head": True}, False)):
        heads.clear()
        stitchkit.search(["resnet10t"], settings={**settings, **extra}, **kwargs)
        assert len(heads) == 1 and torch.equal(heads[0], own) == kept, extra


def test_a_proxy_builds_the_stitch_its_run_builds_with_the_runs_model_settings(monkeypatch):
    """The search priced candidates with the run's model settings but measured their proxies on stitches of the
    default shape: with model.token_adapters=false a run sends ViT-to-ViT linear adapters through an image, while
    the proxy scored them on tokens; model.prefix_in, prefix_out and readd_pos_embed were ignored likewise."""
    from stitchkit.stitch_search import proxies as proxies_module

    built = []
    started = proxies_module._started
    monkeypatch.setattr(proxies_module, "_started", lambda stitch, *args: (built.append(stitch.config),
                                                                          started(stitch, *args))[1])
    shape = {"model.token_adapters": False, "model.prefix_in": "mean", "model.prefix_out": "drop",
             "model.readd_pos_embed": True}
    stitchkit.search(["vit_pico_patch4_32"], gaps=["1:3"], adapters=["linear"], settings={**TINY, **shape},
                     calibration_images=16, probe_images=16, proxies=["lstsq_accuracy"])
    assert len(built) == 1
    assert (built[0].token_adapters, built[0].prefix_in, built[0].prefix_out, built[0].readd_pos_embed) == \
        (False, "mean", "drop", True)
