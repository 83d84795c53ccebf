"""Which timm and torchvision classification models stitchkit can cut and stitch: measured, one model per class.

For every model class among ``timm.list_models()`` (one representative each: the one with the fewest parameters)
and every torchvision classification model, with random weights at the smallest input size it accepts
(32, 64, 96, 128 px, else its default):

* split parity at all 8 cut points: ``back(front(x))`` against ``model(x)``, max abs difference relative to the
  output's scale, must be at most 1e-4;
* a stitch from it into a ResNet-18 and from a ResNet-18 into it at gap 1:3 (bottleneck adapter, bilinear resizing)
  that runs and gives finite outputs of the destination's shape (logits; an encoder's own
  features for the few timm encoders without a classifier);
* its MACs at that size.

Writes ``docs/models.md`` (the table, with the reason for each failure) and ``src/stitchkit/zoo/coverage.json``
(read by ``stitchkit models`` and by the error message for an unsupported name). Each model is checked in its own
process with a time limit, so one that hangs or runs out of memory is recorded as such. It resumes: results are kept
in ``--work`` and only missing models are checked again.

    python scripts/model_coverage.py --jobs 2            # about an hour on 2 cores
    python scripts/model_coverage.py --only densenet121  # one model, printed
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = (32, 64, 96, 128)  # 96: models whose patch grid needs multiples of 48 (Gemma-4 ViT encoders)
TOLERANCE = 1e-4


# --- one model (runs in a child process) --------------------------------------------------------------------------


def _build(name: str, size: int | None):
    from stitchkit.zoo.models import create_model

    return create_model(name, input_size=size, num_classes=10)


def _smallest_size(name: str):
    """``(model, size)`` at the smallest size in SIZES the model accepts, else at its default size."""
    import torch
    from stitchkit.zoo import default_input_size

    errors = []
    for size in SIZES:
        try:
            model = _build(name, size)
            with torch.no_grad():
                model(torch.zeros(2, 3, size, size))
            return model, size
        except Exception as err:  # any failure means "not at this size"
            errors.append(f"{size}: {str(err).splitlines()[0][:120] if str(err) else type(err).__name__}")
    model = _build(name, None)
    size = default_input_size(model)[0]
    with torch.no_grad():
        model(torch.zeros(2, 3, size, size))
    return model, size


def check_one(name: str) -> dict:
    import torch
    import stitchkit
    from stitchkit.compute import count_macs, count_params
    from stitchkit.zoo import STAGES, POSITIONS, dissect, family_of, model_spec
    from stitchkit.zoo.split import back_part, front_part

    from stitchkit.zoo import models

    models._coverage_status = lambda: {}  # measure the model itself, not what the last table said about it
    torch.manual_seed(0)
    torch.set_num_threads(1)
    row = {"name": name, "status": "fail"}
    step = "build"
    try:
        model, size = _smallest_size(name)
        row.update(cls=f"{type(model).__module__}.{type(model).__qualname__}", size=size,
                   family=family_of(model).name, params=count_params(model))
        step = "split"
        spec = model_spec(model, size, name)
        anatomy = dissect(model, (size, size))
        row["blocks"] = [len(s) for s in anatomy.stages]
        row["formats"] = [str(f) for f in anatomy.formats]
        x = torch.randn(2, 3, size, size)
        worst = 0.0
        with torch.no_grad():
            reference = model(x)
            scale = reference.abs().max().item() or 1.0
            for stage in STAGES:
                for position in POSITIONS:
                    n = spec.cut(stage, position).blocks
                    out = back_part(anatomy, n)(front_part(anatomy, n)(x))
                    worst = max(worst, (out - reference).abs().max().item() / scale)
        row["parity"] = worst
        if not worst <= TOLERANCE:
            raise RuntimeError(f"split parity error {worst:.1e} > {TOLERANCE:g}")
        # Counted before the stitches, which freeze the parts they take (count_macs counts a frozen model alike; it
        # did not before 0.12.1, and counting first keeps this table independent of that).
        step = "macs"
        gmacs = count_macs(model, (3, size, size)) / 1e9
        step = "stitch"
        resnet = _build("resnet18", size)
        for src, dst, label in ((model, resnet, "to"), (resnet, model, "from")):
            step = f"stitch {label} resnet18"
            stitched = stitchkit.create_stitched(src, dst, "1:3", adapter="bottleneck", resize="bilinear",
                                                 input_size=size)
            with torch.no_grad():
                logits = stitched(x)
                # A stitch ends in its destination's head: logits for a classifier, the encoder's own output
                # (tokens, a feature map) for the few timm encoders that have no classifier.
                expected = tuple(dst(x).shape)
            if tuple(logits.shape) != expected or not torch.isfinite(logits).all():
                raise RuntimeError(f"stitch {label} resnet18 gave {tuple(logits.shape)} (expected {expected}) "
                                   "or non-finite outputs")
        row["gmacs"] = gmacs
        row["status"] = "ok"
    except Exception as err:
        row["step"] = step
        row["reason"] = _reason(err)
    return row


def _reason(err: Exception, most: int = 600) -> str:
    """Why a model failed, as stitchkit states it when the model is asked for (zoo.models.family_for_name adds the
    advice): the graph split's own finding without the size it was checked at or its advice, else the error's type
    and first line; cut at a word, never mid-word."""
    from stitchkit.zoo.graph import GraphSplitError

    cause = err.__cause__ if isinstance(err, GraphSplitError) and isinstance(err.__cause__, GraphSplitError) else None
    text = str(cause or err).strip()
    message = text.splitlines()[0] if text else ""
    reason = message if cause is not None else f"{type(err).__name__}: {message}" if message else type(err).__name__
    return reason if len(reason) <= most else reason[:most].rsplit(" ", 1)[0] + " ..."


# --- the scan -------------------------------------------------------------------------------------------------------


def timm_classes(work: Path) -> dict[str, dict]:
    """Model class -> {representative, names}, built on the meta device (cached in ``work``)."""
    cache = work / "timm_classes.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    import timm
    import torch

    classes: dict[str, dict] = {}
    for name in timm.list_models():
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = timm.create_model(name, pretrained=False)
        except Exception:  # counted under "(cannot build)"; the check itself names the error
            classes.setdefault("(cannot build)", {"representative": None, "names": [], "params": 0})["names"].append(name)
            continue
        cls = f"{type(model).__module__}.{type(model).__qualname__}"
        params = sum(p.numel() for p in model.parameters())
        entry = classes.setdefault(cls, {"representative": name, "params": params, "names": []})
        entry["names"].append(name)
        if params < entry["params"]:
            entry.update(representative=name, params=params)
    cache.write_text(json.dumps(classes, indent=1))
    return classes


def torchvision_models() -> list[str]:
    import torchvision

    return ["torchvision:" + n for n in torchvision.models.list_models(module=torchvision.models)]


def run_all(work: Path, jobs: int, timeout: int) -> dict[str, dict]:
    results_file = work / "results.jsonl"
    done = {}
    if results_file.is_file():
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            done[row["name"]] = row
    classes = timm_classes(work)
    todo = [e["representative"] for c, e in sorted(classes.items()) if e["representative"]] + torchvision_models()
    todo = [n for n in todo if n not in done]
    running: list[tuple[str, subprocess.Popen, float]] = []
    start = time.time()
    with results_file.open("a") as out:
        while todo or running:
            while todo and len(running) < jobs:
                name = todo.pop(0)
                proc = subprocess.Popen([sys.executable, __file__, "--one", name], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
                running.append((name, proc, time.time()))
            time.sleep(0.2)
            for item in list(running):
                name, proc, began = item
                if proc.poll() is None and time.time() - began < timeout:
                    continue
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    row = {"name": name, "status": "fail", "step": "time", "reason": f"took more than {timeout} s"}
                else:
                    lines = (proc.stdout.read() or "").strip().splitlines()
                    row = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {
                        "name": name, "status": "fail", "step": "crash",
                        "reason": f"the check process died (exit {proc.returncode}; out of memory?)"}
                running.remove(item)
                done[name] = row
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(f"[{len(done)}] {time.time() - start:6.0f}s {name}: {row['status']} "
                      f"{row.get('reason', '')[:100]}", flush=True)
    return done


# --- outputs --------------------------------------------------------------------------------------------------------


def write_outputs(work: Path, results: dict[str, dict], doc: Path, data: Path) -> None:
    classes = timm_classes(work)
    timm_rows, coverage = [], {"timm": {}, "torchvision": {}}
    for cls, entry in sorted(classes.items()):
        rep = entry["representative"]
        if rep is None:
            continue
        row = results.get(rep, {"status": "unchecked", "reason": "not checked yet (run the script to finish)"})
        coverage["timm"][cls] = {"representative": rep, "status": row["status"], "reason": row.get("reason"),
                                 "names": sorted(entry["names"])}
        timm_rows.append((cls, rep, len(entry["names"]), row))
    tv_rows = []
    for name in torchvision_models():
        row = results.get(name, {"status": "unchecked", "reason": "not checked yet (run the script to finish)"})
        coverage["torchvision"][name] = {"status": row["status"], "reason": row.get("reason")}
        tv_rows.append((name, row))
    data.write_text(json.dumps(coverage, indent=1, sort_keys=True) + "\n")

    import timm
    import torch
    import torchvision

    ok_timm = sum(r[3]["status"] == "ok" for r in timm_rows)
    ok_names = sum(len(classes[c]["names"]) for c, _, _, r in timm_rows if r["status"] == "ok")
    all_names = sum(len(e["names"]) for e in classes.values())
    ok_tv = sum(r["status"] == "ok" for _, r in tv_rows)
    unchecked = sum(r[3]["status"] == "unchecked" for r in timm_rows) + sum(r["status"] == "unchecked" for _, r in tv_rows)
    lines = [
        "# Models stitchkit can cut and stitch",
        "",
        "Generated by `python scripts/model_coverage.py` (do not edit by hand) with "
        f"timm {timm.__version__}, torchvision {torchvision.__version__}, torch {torch.__version__.split('+')[0]}.",
        "",
        f"**timm: {ok_timm} of {len(timm_rows)} model classes** ({100 * ok_timm / max(1, len(timm_rows)):.0f}%, "
        f"{ok_names} of {all_names} model names) split with parity at all 8 cut points and stitch both ways with "
        f"a ResNet-18 at gap 1:3. **torchvision: {ok_tv} of {len(tv_rows)} classification models.**"
        + (f" **{unchecked} models are not checked yet**: the run was stopped before the end (it resumes)."
           if unchecked else ""),
        "",
        "Each class is represented by its smallest model, with random weights, at the smallest input size it accepts "
        "(32, 64, 96 or 128 px, else its default). *Parity*: the largest |back(front(x)) - model(x)| over the 8 cut "
        f"points, relative to the largest logit (must be <= {TOLERANCE:g}). *Family*: the hand-written family that "
        "cuts it, or `graph` for the generic split of the exported graph (how it works and what it costs: "
        "`src/stitchkit/zoo/graph.py`). *Blocks*: blocks per stage.",
        "",
        "What the table does not show:",
        "",
        "* **Models that pass several tensors between their blocks** (HRNet's parallel resolutions, NASNet's and "
        "PNASNet's cells that take the two previous cells' outputs, TNT's pixel and patch streams, CrossViT's two "
        "branches) have no point where one tensor carries everything, so there is nothing for an adapter to map; the "
        "refusal says so. Register a Family to cut one by hand at its few single-tensor points.",
        "* **Hiera** keeps its tokens in mask-unit (unrolled) order between blocks, not row by row. A front of Hiera "
        "ends with its tokens put row by row (the order the model's own `reroll` gives, so they equal timm's "
        "`forward_intermediates` at every stage end: tested) and a back of Hiera puts them back, so a stitch with "
        "another model sees positions where they are. (Before 0.4 they arrived scrambled.)",
        "* **Coarse splits**: where a model's blocks hand on a layout the graph split cannot read as an image or "
        "tokens (Nest's blocked tokens), or dense connections tie blocks together (DLA), only stage boundaries are "
        "cuts (a `1/1/1/1` row): every cut is exact, there are just fewer of them. torchvision's RegNet and ConvNeXt "
        "are no longer among them: their stages are cut after every block, as timm's twins (regnety, convnext) are, "
        "where the stages' containers (RegNet's `AnyStage`, a Sequential subclass) or blocks (ConvNeXt's `CNBlock`, "
        "which holds a Sequential of its own) used to hide them.",
        "* **Encoders without a classifier** (the `_enc` models): a stitch into one ends in the encoder's own "
        "output (tokens or a feature map), which is what the check compares; training one needs a head.",
        "* Models cut by the graph split are specialised to the input size they were exported for, and their graph "
        "was exported in eval mode: BatchNorm uses its running statistics even in the fine-tuning baseline.",
        "",
        "## timm",
        "",
        "| class | representative | names | size | family | blocks | parity | GMACs | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(row):
        blocks = "/".join(str(b) for b in row.get("blocks", [])) or "-"
        parity = f"{row['parity']:.0e}" if "parity" in row else "-"
        gmacs = f"{row['gmacs']:.3f}" if "gmacs" in row else "-"
        if row["status"] == "unchecked":
            status = "not checked yet"
        else:
            status = "ok" if row["status"] == "ok" else f"**no** ({row.get('step', '?')}): {row.get('reason', '')}"
        status = status.replace("|", "\\|")
        return f"{row.get('size', '-')} | {row.get('family', '-')} | {blocks} | {parity} | {gmacs} | {status}"

    for cls, rep, count, row in timm_rows:
        lines.append(f"| `{cls.split('.')[-1]}` | `{rep}` | {count} | {cells(row)} |")
    lines += ["", "## torchvision", "", "| model | size | family | blocks | parity | GMACs | status |",
              "|---|---|---|---|---|---|---|"]
    for name, row in tv_rows:
        lines.append(f"| `{name}` | {cells(row)} |")
    doc.write_text("\n".join(lines) + "\n")
    print(f"timm {ok_timm}/{len(timm_rows)} classes, torchvision {ok_tv}/{len(tv_rows)}; wrote {doc} and {data}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--only", help="check one model name and print its row")
    parser.add_argument("--work", default="runs/model_coverage", help="folder for the resumable results")
    parser.add_argument("--jobs", type=int, default=2, help="models checked at once")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per model")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "models.md"))
    parser.add_argument("--data", default=str(ROOT / "src" / "stitchkit" / "zoo" / "coverage.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.one:
        print(json.dumps(check_one(args.one)))
        return 0
    if args.only:
        print(json.dumps(check_one(args.only), indent=1))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = run_all(work, args.jobs, args.timeout)
    write_outputs(work, results, Path(args.doc), Path(args.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
