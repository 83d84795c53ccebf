"""``stitchkit search``: which stitches of a zoo to train under a compute budget.

1. Every (source, destination, gap, method) of the zoo is priced on the meta device; those within the budget are
   the candidates (a model that cannot be cut is listed with its reason).
2. Each candidate is scored by training-free proxies (:mod:`stitchkit.stitch_search.proxies`) on a few hundred training
   images; each score is cached in ``OUT/proxies/`` the moment it is measured, so a killed search continues.
3. The ``train_top`` candidates the chosen proxy predicts best for their compute (:func:`~stitchkit.stitch_search.frontier.select`) train as
   one resumable sweep with fronts shared (``OUT/runs``), and the trained stitches' accuracy-compute frontier is
   written: ``frontier.csv``, ``frontier.md``, ``frontier.png``, a model folder per frontier stitch
   (``OUT/frontier/``) and the sweep report (``OUT/runs/report``).
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

from ..errors import StitchkitError
from ..files import atomic_write_json, atomic_write_text, read_json
from ..training.config import flatten
from ..training.identity import NOT_IDENTITY, settings_digest
from .candidates import Candidate, check_models, enumerate_candidates, price
from .cells import search_sweep
from ..pareto import pareto_front
from ..version import __version__
from .frontier import select, top_by_score
from .frontier_folders import export_frontier
from .proxies import (PROXIES, PROXY_VERSION, Zoo, calibration_and_probe, measure, proxy_path, proxy_revision,
                      score)

# The measured best for what a search is for (docs/search.md, 160 trained stitches): accuracy at the default start
# with an eighth of its feature matching ranks nearly as the full start does (Spearman 0.84 vs 0.88, inside its 95%
# interval) for a seventh of its cost, and a fifth chosen by it recovers the whole exhaustive frontier's hypervolume
# for 23.1% of exhaustive training (lstsq_accuracy, the default before: the same frontier for 21.6%, but Spearman 0.64
# and 91.7% when choosing by top scores).
DEFAULT_PROXY = "init_accuracy_quick"
SELECTIONS = ("frontier", "top")
SMOKE = {"data.limit_train": 256, "data.limit_val": 64, "train.epochs": 1}


def _base_config(settings: dict):
    from ..sweeps.grid import _nest
    from ..training.config import load_config

    return load_config(layers=[("the search's settings", _nest(settings))])


def _records(candidates: list[Candidate], settings: dict, checkpoints: dict[str, str], seed: int,
             data_classes: int | None, budget_gmacs: float | None) -> list[dict]:
    """Each candidate priced as the cell that would train it (the search's settings and checkpoints)."""
    sweep, cells = search_sweep(candidates, settings, checkpoints, (seed,))
    records = []
    for candidate in candidates:
        record = {**candidate.record(), **price(sweep, cells[candidate][0], data_classes)}
        if record.get("gmacs") is not None and budget_gmacs is not None and record["gmacs"] > budget_gmacs:
            record["skip_reason"] = f"{record['gmacs']:.4f} GMACs, over the budget of {budget_gmacs:g}"
        records.append(record)
    return records


def search(models: list[str], budget_gmacs: float | None = None, *, checkpoints: dict[str, str] | None = None,
           gaps: list[str] | None = None, adapters: list[str] | None = None, settings: dict | None = None,
           proxies: bool | list[str] = True, cache: str | Path | None = None, calibration_images: int | None = None,
           probe_images: int = 256, seed: int = 0, log=None) -> list[dict]:
    """The candidates of a zoo as plain records, one per (src, dst, gap, method): ``gmacs``, ``params``,
    ``trainable_params``, ``skip_reason`` (over the budget, cannot be built, a model that cannot be cut) and, with
    ``proxies`` (True: every one of :data:`~stitchkit.stitch_search.proxies.PROXIES`; or a list of names), those
    proxies for the candidates within the budget.

    ``settings``: training settings as for ``stitchkit train`` (``{"data.name": "fashion_mnist", ...}``): the data
    the proxies are measured on, the input size and whether weights are pretrained; ``checkpoints``: model name ->
    weights file. ``cache``: a folder where each candidate's proxies are kept (a rerun reads them).
    ``calibration_images``: how many images each start is fitted on; None (the default): as many as training's start
    measures for that stitch (``model.init_images`` in ``settings``, or as its start asks: 256 to 2,048), so that a
    proxy scores the start the stitch's run will have.

    Example:
        >>> records = stitchkit.search(["resnet18", "vit_micro_patch4_32"], budget_gmacs=0.05,
        ...     settings={"data.name": "fashion_mnist", "data.input_size": 32, "model.pretrained": False},
        ...     proxies=False)
    """
    log = log or (lambda *_: None)
    _check_budget(budget_gmacs)
    _check_image_counts(calibration_images, probe_images)
    config = _base_config(settings or {})
    if calibration_images is None:  # what training's start measures: model.init_images, or (null) its own choice
        calibration_images = config.model.init_images
    size = config.data.input_size
    checkpoints = dict(checkpoints or {})
    for name in checkpoints:
        if name not in models:
            raise StitchkitError(f"--checkpoint names {name!r}, which is not among --models ({', '.join(models)})")
    usable, unusable = check_models(models, size)
    data_classes = _data_classes(config)
    records = _records(enumerate_candidates(usable, size, gaps, adapters), settings or {}, checkpoints, seed,
                       data_classes, budget_gmacs)
    records += [{"src": name, "dst": None, "gap": None, "method": None, "skip_reason": reason}
                for name, reason in unusable.items()]
    within = [r for r in records if r.get("skip_reason") is None]
    priced = [r for r in records if r.get("gmacs") is not None]
    if not within:
        if priced:
            cheapest = min(priced, key=lambda r: r["gmacs"])
            raise StitchkitError(f"no candidate fits a budget of {budget_gmacs:g} GMACs: the cheapest, "
                                 f"{cheapest['src']} -> {cheapest['dst']} {cheapest['gap']} {cheapest['method']}, "
                                 f"costs {cheapest['gmacs']:.6g} GMACs; raise --budget-gmacs to at least "
                                 f"{_rounded_up(cheapest['gmacs'])}")
        raise StitchkitError("no candidate can be built from these models: "
                             + "; ".join(f"{r['src']}: {r['skip_reason']}" for r in records[:3]))
    log(f"{len(within)} candidates within the budget ({len(records) - len(within)} not: over it, not buildable or "
        f"not cuttable)")
    if proxies:
        wanted = list(PROXIES) if proxies is True else list(proxies)
        for name in wanted:
            if name not in PROXIES:
                from ..errors import unknown_name

                raise unknown_name("proxy", name, list(PROXIES))
        _measure_all(within, config, checkpoints, calibration_images, probe_images, seed, cache, wanted,
                     data_classes, log)
    return records


def _check_budget(budget_gmacs: float | None) -> None:
    """None (no budget) or a positive finite number: NaN compares false with every price, so it let every
    candidate through as within the budget; infinity, zero and negatives are mistakes, not budgets."""
    if budget_gmacs is None:
        return
    if isinstance(budget_gmacs, bool) or not isinstance(budget_gmacs, (int, float)) or \
            not math.isfinite(budget_gmacs) or budget_gmacs <= 0:
        raise StitchkitError(f"--budget-gmacs must be a positive finite number of GMACs (e.g. 0.5), got "
                             f"{budget_gmacs!r}; leave it out for no budget")


def _check_image_counts(calibration_images: int | None, probe_images: int) -> None:
    """Each proxy fits a start on calibration images and measures on probe images: with none (or a negative count)
    the first stitch stopped on torch's "stack expects a non-empty TensorList". No calibration count (None) is as
    many as training's start measures."""
    for option, count, default in (("--calibration-images", calibration_images, "as many as a run's start"),
                                   ("--probe-images", probe_images, "256")):
        if count is None and option == "--calibration-images":
            continue
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise StitchkitError(f"{option} must be a whole number of images, 1 or more (default {default}), got "
                                 f"{count!r}")


def _data_classes(config) -> int | None:
    """How many classes the data has (None where it cannot be read yet): read once per search, since reading a
    dataset's sources can mean decoding all of it."""
    from ..training.data import raw_sources

    try:
        return len(raw_sources(config.data)["train"].classes)
    except (StitchkitError, AttributeError, OSError):
        return None


def _measure_all(records: list[dict], config, checkpoints: dict[str, str], calibration: int | None, probe: int,
                 seed: int, cache: str | Path | None, wanted: list[str], data_classes: int | None, log) -> None:
    # what the proxies depend on: the data (not where it is stored, nor how fast it loads), the weights, the counts
    data = {k: v for k, v in flatten(config).items() if k.startswith("data.")}
    # the weights by their contents, not their paths: a moved or renamed output folder keeps its cached proxies
    weights = {name: _file_digest(path) for name, path in sorted(checkpoints.items())}
    digest = settings_digest({**data, "checkpoints": repr(sorted(weights.items())),
                              "model.pretrained": config.model.pretrained,
                              # the stitches' heads: the destination's own or a new one
                              "model.num_classes": config.model.num_classes, "model.new_head": config.model.new_head,
                              **{f"model.{k}": v for k, v in _run_shape(config.model).items()},
                              "calibration": calibration if calibration is not None else _calibration_rule(),
                              "probe": probe, "seed": seed, "proxies": PROXY_VERSION}, skip=NOT_IDENTITY)
    folder = Path(cache) if cache is not None else None
    todo = []
    for record in records:
        candidate = Candidate(record["src"], record["dst"], record["gap"], record["method"])
        saved = read_json(proxy_path(folder, candidate)) if folder is not None else None
        known = dict(saved["proxies"]) if saved and saved.get("settings") == digest else {}
        revisions = (saved or {}).get("revisions", {})
        for name in [p for p in known if p in PROXIES and revisions.get(p, 1) != proxy_revision(p)]:
            del known[name]  # measured by an earlier revision of this proxy: measured again, the others kept
        if "proxy_error" in known and (saved or {}).get("stitchkit") != __version__:
            # A stitch an earlier stitchkit could not build or measure may be one this version can (0.13.2 cut
            # dla34 and inception_v3 on the meta device, which 0.13.1 refused): its error is retried once per
            # version, and stays cached for this one (the same settings give the same error).
            del known["proxy_error"]
        record.update(known)
        missing = [p for p in wanted if p not in known]
        if missing and "proxy_error" not in known:
            todo.append((record, candidate, missing, known))
    if not todo:
        return
    log(f"measuring proxies of {len(todo)} candidates ({len(records) - len(todo)} cached)")
    models = sorted({r["src"] for r, *_ in todo} | {r["dst"] for r, *_ in todo})
    images, labels = calibration_and_probe(config.data, models, calibration, probe, seed)
    m = config.model
    zoo = Zoo(config.data.input_size, checkpoints, m.pretrained, images, labels,  # heads as Stitch.build makes them
              num_classes=m.num_classes or (data_classes if m.new_head else None), new_head=m.new_head,
              calibration=calibration, shape=_run_shape(m))
    _check_heads(zoo, sorted({r["dst"] for r, *_ in todo}), config, data_classes)
    began = time.time()
    for k, (record, candidate, missing, known) in enumerate(todo, 1):
        try:
            measured = measure(candidate, zoo, seed, missing)
        except StitchkitError as err:  # a stitch whose parts do not join at these weights: its reason, not the end
            measured = {"proxy_error": str(err).splitlines()[0]}
        # what was cached and what is new: the seconds of every part measured so far, once each
        parts = {**(known.get("part_seconds") or {}), **(measured.get("part_seconds") or {})}
        proxies = {**known, **measured, **({"part_seconds": parts, "seconds": sum(parts.values())}
                                           if "proxy_error" not in measured else {})}
        record.update(proxies)
        if folder is not None:
            atomic_write_json(proxy_path(folder, candidate), {
                "candidate": candidate.record(), "settings": digest, "proxies": proxies,
                "revisions": {p: proxy_revision(p) for p in proxies if p in PROXIES}, "stitchkit": __version__})
        if k % 10 == 0 or k == len(todo):
            log(f"  proxies {k}/{len(todo)} ({time.time() - began:.0f} s)")


def _run_shape(model_config) -> dict:
    """The model settings besides the start that shape a run's stitch, which its proxies must build alike."""
    from ..training.modes import stitch_settings

    return {k: v for k, v in stitch_settings(model_config).items() if k not in ("adapter_norm", "frozen_mode")}


def _calibration_rule() -> str:
    """The rule by which each start chooses its calibration images (and so which images are probe images, after
    the most it may ask for): proxies measured under another rule are measured again."""
    from ..starts import get_start
    from .proxies import CALIBRATED_STARTS

    return "start's choice " + repr([(get_start(s).fit_rows, get_start(s).fit_images, get_start(s).fit_memory)
                                     for s in CALIBRATED_STARTS])


def _file_digest(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise StitchkitError(f"cannot read the checkpoint {path!r} ({err.strerror}); check --checkpoint") from None
    return digest.hexdigest()[:16]


def _check_heads(zoo: Zoo, destinations: list[str], config, classes: int | None) -> None:
    """Every destination must predict the data's classes (or every stitch gets a new head, model.num_classes):
    found before any proxy is measured, not by the first run that trains."""
    from ..zoo.models import classes_or_none

    if config.model.num_classes is not None or config.model.new_head or classes is None:  # None: the images say
        return
    for name in destinations:
        own = classes_or_none(zoo.model(name))
        if own != classes:
            raise StitchkitError(f"{name} predicts {own} classes but the data has {classes}: pass --checkpoint "
                                 f"{name}=PATH of a model trained on this data, or set model.num_classes={classes} "
                                 "(every stitch then gets a new head that trains with its adapters)")


def run_search(models: list[str], out: str | Path, budget_gmacs: float | None = None, *, train_top: int = 10,
               proxy: str = DEFAULT_PROXY, selection: str = "frontier", checkpoints: dict[str, str] | None = None,
               gaps: list[str] | None = None, adapters: list[str] | None = None, settings: dict | None = None,
               calibration_images: int | None = None, probe_images: int = 256, seeds: tuple[int, ...] = (0,),
               workers: int = 1, smoke: bool = False, log=print) -> dict:
    """Search, train the chosen candidates and write the frontier into ``out`` (see the module's docstring);
    returns ``{"candidates", "trained", "frontier"}`` as plain records."""
    if proxy not in PROXIES:
        from ..errors import unknown_name

        raise unknown_name("proxy", proxy, list(PROXIES))
    if selection not in SELECTIONS:
        from ..errors import unknown_name

        raise unknown_name("selection", selection, SELECTIONS)
    if train_top < 0:
        raise StitchkitError(f"--train-top must be 0 or more, got {train_top}")
    if not seeds or len(set(seeds)) != len(seeds):  # the sweep refuses them too, but only after every proxy
        raise StitchkitError(f"--seeds takes distinct integers (one run per seed), got {','.join(map(str, seeds))}")
    out = Path(out)
    settings = dict(settings or {})
    if smoke:
        settings = {**settings, **SMOKE}
        calibration_images, probe_images = (32 if calibration_images is None else min(calibration_images, 32),
                                           min(probe_images, 32))
    began = time.time()
    records = search(models, budget_gmacs, checkpoints=checkpoints, gaps=gaps, adapters=adapters,
                     settings=settings, proxies=[proxy], cache=out / "proxies", calibration_images=calibration_images,
                     probe_images=probe_images, seed=seeds[0], log=log)  # only what the choice needs
    proxy_seconds = time.time() - began
    within = [r for r in records if r.get("skip_reason") is None and r.get("proxy_error") is None]
    scores = [score(proxy, r.get(proxy)) for r in within]
    costs = [r["gmacs"] for r in within]
    chosen = (select(costs, scores, train_top) if selection == "frontier" else top_by_score(scores, train_top))
    for i, record in enumerate(within):
        record["selected"] = i in chosen
    log(f"training {len(chosen)} of {len(within)} candidates, chosen by {proxy} ({selection})")
    trained = _train([within[i] for i in chosen], out, settings, checkpoints or {}, seeds, workers, log)
    trained, over_budget = _within_budget(trained, budget_gmacs, log)
    train_seconds = time.time() - began - proxy_seconds
    front = [trained[i] for i in pareto_front([(t["gmacs"], t["top1"]) for t in trained])]
    _write_outputs(out, records, trained, front, proxy, selection, proxy_seconds, train_seconds, log,
                   over_budget)
    return {"candidates": records, "trained": trained, "frontier": front, "over_budget": over_budget}


def _within_budget(trained: list[dict], budget_gmacs: float | None, log) -> tuple[list[dict], list[dict]]:
    """The trained stitches whose runs measured at most the budget, and the others. A candidate is priced as its
    run is built, so there should be none over it; one that is (a price that missed a setting) is named and left
    out of the frontier, never reported as a stitch within the budget."""
    if budget_gmacs is None:
        return trained, []
    over = [t for t in trained if t["gmacs"] > budget_gmacs]
    for t in over:
        log(f"left out of the frontier: {t['src']} -> {t['dst']} {t['gap']} {t['method']} was priced at "
            f"{t['priced_gmacs']:.6g} GMACs but its run measured {t['gmacs']:.6g}, over the budget of "
            f"{budget_gmacs:g} (a stitchkit pricing fault: please report it)")
    return [t for t in trained if t["gmacs"] <= budget_gmacs], over


def _train(chosen: list[dict], out: Path, settings: dict, checkpoints: dict[str, str], seeds: tuple[int, ...],
           workers: int, log) -> list[dict]:
    """The chosen candidates as one sweep (fronts shared), trained or resumed in ``out/runs``; one record per
    trained stitch, with its run's top-1 and measured GMACs (averaged over seeds)."""
    if not chosen:
        return []
    from ..demo import run_stages
    from ..rundir import RunDir

    candidates = [Candidate(r["src"], r["dst"], r["gap"], r["method"]) for r in chosen]
    sweep, cells = search_sweep(candidates, settings, checkpoints, seeds)
    by_candidate = {id(record): cells[candidate] for record, candidate in zip(chosen, candidates)}
    runs = out / "runs"
    failures, _ = run_stages([[sweep]], runs, log, workers)
    if failures:
        raise StitchkitError(f"{len(failures)} search runs failed (see their result.json): {', '.join(failures[:3])};"
                             " run the same command again to retry them")
    trained, missing = [], []
    for record in chosen:
        results = [RunDir(runs / c.name).read_result() or {} for c in by_candidate[id(record)]]
        top1 = [r["top1"] for r in results if r.get("top1") is not None]
        if not top1:  # chosen to train, and nothing to show for it: never a quiet gap in the frontier
            cell = by_candidate[id(record)][0]
            why = f"the sweep skipped it: {cell.skip_reason}" if cell.skip_reason else \
                f"its run recorded no top-1 ({runs / cell.name})"
            missing.append(f"{record['src']} -> {record['dst']} {record['gap']} {record['method']} ({why})")
            continue
        trained.append({**{k: record[k] for k in ("src", "dst", "gap", "method")},
                        "top1": sum(top1) / len(top1), "seeds": len(top1),
                        "gmacs": results[0].get("gmacs", record["gmacs"]), "priced_gmacs": record["gmacs"],
                        "runs": [c.name for c in by_candidate[id(record)]],
                        **{p: record.get(p) for p in PROXIES}})
    if missing:
        raise StitchkitError(f"{len(missing)} of the {len(chosen)} chosen candidates have no result: "
                             f"{'; '.join(missing[:3])}")
    return trained


def _write_outputs(out: Path, records: list[dict], trained: list[dict], front: list[dict], proxy: str,
                   selection: str, proxy_seconds: float, train_seconds: float, log,
                   over_budget: list[dict] = ()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fields = ["src", "dst", "gap", "method", "gmacs", "params", "trainable_params", *PROXIES, "selected",
              "skip_reason", "proxy_error"]
    atomic_write_text(out / "candidates.csv", _csv(records, fields))
    frontier_fields = ["src", "dst", "gap", "method", "gmacs", "top1", "seeds", proxy]
    atomic_write_text(out / "frontier.csv", _csv(front, frontier_fields))
    lines = [f"# Search frontier ({len(front)} of {len(trained)} trained stitches)", "",
             f"Chosen by `{proxy}` ({selection} selection); proxies {proxy_seconds / 60:.1f} min, training "
             f"{train_seconds / 60:.1f} min.", "", "| stitch | gap | method | GMACs | top-1 (%) |", "|---|---|---|---|---|"]
    lines += [f"| {t['src']} -> {t['dst']} | {t['gap']} | {t['method']} | {t['gmacs']:.4f} | {t['top1']:.2f} |"
              for t in front]
    atomic_write_text(out / "frontier.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "search.json", {"proxy": proxy, "selection": selection, "proxy_seconds": proxy_seconds,
                                            "train_seconds": train_seconds, "trained": trained, "frontier": front,
                                            "over_budget": list(over_budget)})
    if trained:
        _figure(out / "frontier.png", records, trained, front, proxy)
        from ..reports import write_report

        write_report(out / "runs")
    else:  # an earlier run's figure would stand on this run's page
        (out / "frontier.png").unlink(missing_ok=True)
    export_frontier(out, front, log)  # with an empty frontier too: frontier/ holds exactly the current one
    _page(out / "index.html", records, trained, front, proxy, selection)
    log(f"frontier: {len(front)} stitches; {out / 'index.html'}")


def _page(path: Path, records: list[dict], trained: list[dict], front: list[dict], proxy: str,
          selection: str) -> None:
    """The search's page: what was chosen and why, the frontier first, then every trained stitch (the sweep's own
    report, with every run, is linked)."""
    import base64
    import html

    from ..reports.page import STYLE, html_table

    within = sum(r.get("skip_reason") is None for r in records)
    rows = [{"stitch": f"{t['src']} -> {t['dst']}", "gap": t["gap"], "method": t["method"], "gmacs": t["gmacs"],
             "top1": t["top1"], proxy: t.get(proxy)} for t in sorted(trained, key=lambda t: t["gmacs"])]
    frontier_rows = [r for r in rows if any((r["stitch"], r["gap"], r["method"]) == (f"{t['src']} -> {t['dst']}",
                                                                                      t["gap"], t["method"])
                                            for t in front)]
    figure = path.parent / "frontier.png"
    image = (f'<img alt="accuracy against compute of the trained stitches" src="data:image/png;base64,'
             f'{base64.b64encode(figure.read_bytes()).decode()}">' if figure.is_file() else "")
    how = ("the best predicted stitch at each compute first (non-dominated layers of cost against score)"
           if selection == "frontier" else "the best scores")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>stitchkit search</title>
<style>{STYLE}</style></head><body>
<h1>stitchkit search</h1><p class="sub">{within} candidates within the budget; {len(trained)} trained, chosen by
{html.escape(proxy)} ({html.escape(how)}); {len(front)} on the accuracy-compute frontier. Accuracy is top-1 (%) on the
evaluation split; compute is GMACs for one image.</p>
<h2>The frontier</h2>{image}{html_table(frontier_rows, ["stitch", "gap", "method", "gmacs", "top1", proxy])}
<p>Model folders of these stitches: <code>frontier/</code>. Every candidate with its cost and proxies:
<code>candidates.csv</code>. The trained runs' own report: <a href="runs/report/index.html">runs/report</a>.</p>
<h2>Every trained stitch</h2>{html_table(rows, ["stitch", "gap", "method", "gmacs", "top1", proxy])}
</body></html>"""
    atomic_write_text(path, page)


def _csv(rows: list[dict], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in fields})
    return buffer.getvalue()


def _figure(path: Path, records: list[dict], trained: list[dict], front: list[dict], proxy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter([t["gmacs"] for t in trained], [t["top1"] for t in trained], s=18, color="#4c72b0",
               label="trained stitches")
    ax.plot([t["gmacs"] for t in front], [t["top1"] for t in front], "-o", color="#dd8452", ms=4,
            label="frontier")
    ax.set_xlabel("compute (GMACs)")
    ax.set_ylabel("top-1 accuracy (%)")
    candidates = sum(r.get("skip_reason") is None for r in records)
    ax.set_title(f"Stitches trained by the search: {len(trained)} of {candidates} candidates ({proxy})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _rounded_up(gmacs: float, digits: int = 4) -> str:
    """``gmacs`` to ``digits`` decimals, rounded up, so that a budget of that value admits it (0.012243968 -> 0.0123,
    where rounding to the nearest gave 0.0122, which the stitch is over)."""
    scale = 10**digits
    return f"{math.ceil(gmacs * scale - 1e-9) / scale:.{digits}f}"
