"""Run folders, fine-tuning baselines and probes record where their networks cut their models, and are refused where
this version would rebuild them elsewhere (stitchkit.saved_cuts): a run's checkpoint and result.json record the cuts,
resuming or loading a run (eval, export, predict) checks them, and a run written before cuts were recorded (0.12) with
a model whose graph split changed (torchvision:mobilenet_v3_small) is refused in one line that leaves the run as it
was, while one of a hand-written family (timm resnet10t) resumes as before. A sweep fails such a cell, and goes on.
Fine-tuning baseline and probe model folders record their cuts and are checked on load as a stitch's folder is."""
import json
from pathlib import Path

import pytest
import torch

import stitchkit
from stitchkit.cli import main
from stitchkit.finetune import FinetuneBaseline, create_finetune_baseline
from stitchkit.probe import HeadProbe, create_probe
from stitchkit.saved_cuts import CutsChangedError
from stitchkit.training import load_config, train
from stitchkit.training.trained import load_trained

SIZE = 32
MOBILENET = "torchvision:mobilenet_v3_small"
TINY = ["data.name=synthetic", f"data.input_size={SIZE}", "data.synthetic_train_size=32", "data.synthetic_val_size=16",
        "optim.batch_size=16", "train.batch_size=16", "train.workers=0", "train.threads=1", "train.log_every=1",
        "model.pretrained=false", "train.epochs=1", "train.eval_at_start=false"]
CHEAP = ["model.adapter_norm=paper_code"]  # no start to fit: the tests are about the records
RUNS = {  # mode: settings of a run of a model whose cuts changed in 0.13.0
    "stitch": ["mode=stitch", "model.src=resnet10t", f"model.dst={MOBILENET}", "model.gap=1:3",
               "model.num_classes=10", *CHEAP],
    "parallel": ["mode=stitch", f"model.src=[resnet10t,{MOBILENET}]", "model.dst=resnet10t", "model.gap=1:3",
                 "model.num_classes=10", *CHEAP],
    "finetune": ["mode=finetune", f"model.src={MOBILENET}", "model.gap=1:3", "model.num_classes=10"],
    "probe": ["mode=probe", f"model.src={MOBILENET}", "model.unfreeze_last=2"],
}


def _cfg(tmp_path, *settings, name="run"):
    return load_config(None, [*TINY, f"output.dir={tmp_path / name}", *settings])


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupted(config):
    """A finished run made unfinished: its last checkpoint, no result.json (what a kill before the end leaves)."""
    train(config)
    run = Path(config.output.dir)
    (run / "result.json").unlink()
    return run


def as_run_before_0_13(run):
    """What stitchkit 0.12.0 wrote: a checkpoint (and result.json) without cuts or the checkpoint's version."""
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["architecture"], state["stitchkit_version"]
    torch.save(state, last)
    if (run / "result.json").is_file():
        result = json.loads((run / "result.json").read_text())
        del result["architecture"]
        result["versions"]["stitchkit"] = "0.12.0"
        (run / "result.json").write_text(json.dumps(result))


@pytest.mark.parametrize("mode", list(RUNS))
def test_a_run_records_its_cuts_and_an_old_one_with_a_changed_model_is_not_resumed(tmp_path, mode, capsys):
    config = _cfg(tmp_path, *RUNS[mode])
    run = _interrupted(config)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    arch = state["architecture"]
    cuts = [s["cuts"] for s in arch["stitches"]] if mode == "parallel" else [arch["cuts"]]
    assert all(isinstance(c, dict) and c for c in cuts), arch
    assert state["stitchkit_version"] == stitchkit.__version__
    resumed = train(config, resume=True)  # its own cuts: resumed
    assert resumed["architecture"] == arch
    (run / "result.json").unlink()
    as_run_before_0_13(run)
    before = _files(run)
    with pytest.raises(CutsChangedError) as error:
        train(config, resume=True)
    message = str(error.value)
    for part in (f"the run in {str(run)!r} records no cuts", MOBILENET, "pip install stitchkit==0.12.0",
                 "new output.dir"):
        assert part in message, message
    assert "trust_cuts" not in message and "\n" not in message
    assert main(["train", *TINY, *RUNS[mode], f"output.dir={run}", "--resume"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "records no cuts" in err[-1] and "new output.dir" in err[-1], err
    assert _files(run) == before


def test_a_run_whose_recorded_cut_moved_is_not_resumed(tmp_path):
    config = _cfg(tmp_path, "mode=stitch", "model.src=resnet10t", "model.gap=1:3", "model.num_classes=10", *CHEAP)
    run = _interrupted(config)
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["architecture"]["cuts"] == {"src": "layer1.0", "dst": "layer3.0"}
    state["architecture"]["cuts"]["dst"] = "layer3.1"
    torch.save(state, last)
    with pytest.raises(CutsChangedError, match="destination resnet10t cut after 'layer3.1'.*after 'layer3.0'.*"
                                               "Finish the run with the stitchkit that started it"):
        train(config, resume=True)


def test_old_runs_of_hand_written_families_resume_as_before(tmp_path):
    for mode, settings in {"stitch": ["mode=stitch", "model.src=resnet10t", "model.gap=1:3", "model.num_classes=10", *CHEAP],
                           "finetune": ["mode=finetune", "model.src=resnet10t", "model.gap=1:3", "model.num_classes=10"],
                           "probe": ["mode=probe", "model.src=resnet10t", "model.unfreeze_last=1"]}.items():
        config = _cfg(tmp_path, *settings, name=mode)
        run = _interrupted(config)
        as_run_before_0_13(run)
        assert train(config, resume=True)["status"] == "finished"


def test_an_old_finished_run_with_a_changed_model_is_not_loaded(tmp_path, capsys):
    """eval, export and predict load a run from its checkpoint, or from its saved weights once the checkpoint is
    deleted (then result.json says where it was cut): an old run of a changed model is refused in both."""
    config = _cfg(tmp_path, *RUNS["finetune"])
    train(config)
    run = Path(config.output.dir)
    assert load_trained(run)[2].cuts() == json.loads((run / "result.json").read_text())["architecture"]["cuts"]
    as_run_before_0_13(run)
    capsys.readouterr()
    for _ in ("with its checkpoint", "without"):
        before = _files(run)
        with pytest.raises(CutsChangedError, match="records no cuts.*pip install stitchkit==0.12.0.*train it again"):
            load_trained(run)
        assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert "records no cuts" in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "out").exists() and _files(run) == before
        (run / "checkpoints" / "last.pt").unlink(missing_ok=True)


def test_a_sweep_fails_an_old_cell_with_a_changed_model_and_goes_on(tmp_path, capsys):
    sweep = tmp_path / "one.yaml"
    sweep.write_text(f"""
base:
  model: {{pretrained: false, num_classes: 10, adapter_norm: paper_code}}
  data: {{name: synthetic, input_size: {SIZE}, synthetic_train_size: 16, synthetic_val_size: 16,
         random_resized_crop: false, auto_augment: false, crop_pct: 1.0}}
  optim: {{batch_size: 16}}
  train: {{batch_size: 16, epochs: 1, workers: 0, threads: 1, log_every: 1, eval_at_start: false}}
pairs: [[resnet10t, "{MOBILENET}"], [resnet10t, resnet10t]]
gaps: ["1:3"]
methods: [downsample_linear]
seeds: [0]
""")
    runs = tmp_path / "runs"
    assert main(["sweep", str(sweep), "--out", str(runs)]) == 0
    cells = sorted(p.parent for p in runs.rglob("result.json"))
    assert len(cells) == 2
    for cell in cells:
        (cell / "result.json").unlink()
        as_run_before_0_13(cell)
    capsys.readouterr()
    code = main(["sweep", str(sweep), "--out", str(runs)])
    assert code == 1  # a failed cell, not a crash
    results = {c.name: json.loads((c / "result.json").read_text()) for c in cells}
    failed = [r for r in results.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "records no cuts" in failed[0]["error"] and "new output.dir" in failed[0]["error"]
    assert sum(r["status"] == "finished" for r in results.values()) == 1  # the resnet10t cell resumed


# --- model folders of a fine-tuning baseline and a probe --------------------------------------------------------------

def _record(folder):
    return json.loads((folder / "config.json").read_text())["stitchkit"]


def _edit(folder, change):
    hub = json.loads((folder / "config.json").read_text())
    change(hub["stitchkit"])
    (folder / "config.json").write_text(json.dumps(hub))


def _as_folder_before_0_13(folder):
    def change(config):
        config.update(format_version=2, stitchkit_version="0.12.0")
        config["architecture"].pop("cuts")
    _edit(folder, change)


BUILDERS = {
    "finetune": (FinetuneBaseline, lambda name: create_finetune_baseline(name, "1:3", input_size=SIZE)),
    "probe": (HeadProbe, lambda name: create_probe(name, num_classes=3, unfreeze_last=2, input_size=SIZE)),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_baseline_or_probe_folder_records_its_cuts_and_an_old_one_of_a_changed_model_is_refused(tmp_path, kind):
    cls, build = BUILDERS[kind]
    model = build(MOBILENET)
    folder = tmp_path / kind
    model.save_pretrained(folder)
    assert _record(folder)["architecture"]["cuts"] == model.cuts()
    assert _record(folder)["format_version"] == 3  # 0.12 would rebuild it at its cuts: it refuses format 3
    assert stitchkit.load_pretrained(folder).cuts() == model.cuts()
    _as_folder_before_0_13(folder)
    before = _files(folder)
    with pytest.raises(CutsChangedError, match=f"records no cuts.*{MOBILENET} \\(its model\\).*"
                                               "pip install stitchkit==0.12.0.*trust_cuts=True"):
        stitchkit.load_pretrained(folder)
    with pytest.raises(CutsChangedError):
        cls.from_pretrained(folder)
    assert _files(folder) == before
    assert stitchkit.load_pretrained(folder, trust_cuts=True).cuts() == model.cuts()


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_baseline_or_probe_folder_cut_elsewhere_is_refused_and_an_old_resnet_one_loads(tmp_path, kind):
    cls, build = BUILDERS[kind]
    model = build("resnet10t")
    folder = tmp_path / kind
    model.save_pretrained(folder)
    assert _record(folder)["format_version"] == 2  # nothing an earlier reader would rebuild differently
    _edit(folder, lambda c: c["architecture"]["cuts"].update(dst="layer3.1"))
    with pytest.raises(CutsChangedError, match="its model resnet10t cut after 'layer3.1'"):
        stitchkit.load_pretrained(folder, trust_cuts=True)  # a recorded cut is a fact
    _as_folder_before_0_13(folder)
    assert cls.from_pretrained(folder).cuts() == model.cuts()
