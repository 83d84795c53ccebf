"""``stitchkit search --study FILE``: how well each proxy ranks stitches, measured by training all of them.

A study file (``configs/search/fashion_mnist.yaml``) names a zoo trained from scratch here, the stitches' training,
and the search's grid. The study trains the zoo, measures every proxy of every candidate, then trains *every*
candidate (the ground truth a real search never has), and reports:

* Spearman's and Kendall's rank correlation of each proxy with trained top-1, with 95% bootstrap intervals, over all
  stitches and per destination;
* what a search that trains only the top ``top_fraction`` by the best proxy would have found: its frontier's
  hypervolume against the exhaustive frontier's, and the compute both took, beside a random choice of as many.

It resumes (sources, proxies and runs are all reused), and ``--smoke`` runs the same code at toy size.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

from ..demo import fashion_mnist_base, read_study_file, run_stages, threads_per_run
from ..errors import StitchkitError
from ..files import atomic_write_json, atomic_write_text
from ..pareto import hypervolume, pareto_front
from ..rundir import RunDir
from ..starts import get_start
from ..sweeps.grid import _flat, expand
from .frontier import bootstrap_interval, kendall, select, spearman, top_by_score
from .proxies import PROXIES, proxy_seconds, score
from .run import _train, search

STUDY_KEYS = ("sources", "stitches", "val_images", "batch_size", "search")
SMOKE = {"sources": {"images": 256, "epochs": 1}, "stitches": {"images": 128, "epochs": 1}, "val_images": 64,
         "batch_size": 32, "search": {"gaps": ["1:3"], "calibration_images": 32, "probe_images": 32}}
RANDOM_DRAWS = 200


def load_study(path: str | Path, smoke: bool = False) -> dict:
    return read_study_file(path, "study", STUDY_KEYS, ("sources", "stitches", "search"),
                           "configs/search/fashion_mnist.yaml", SMOKE if smoke else None)


def run_study(path: str | Path, out: str | Path = "runs/search_study", doc: str | Path | None = None,
              smoke: bool = False, threads: int | None = None, workers: int = 1, log=print) -> dict:
    """Train the zoo and every candidate, measure every proxy, write ``doc``; returns the analysis."""
    from ..training.data import find_fashion_mnist

    find_fashion_mnist(None)
    spec = load_study(path, smoke)
    out = Path(out)
    began = time.time()
    threads = threads_per_run(threads, workers)
    val, batch = spec.get("val_images", 2000), spec.get("batch_size", 128)
    src, grid = spec["sources"], spec["search"]
    models = list(src["models"])
    sources = expand({"base": fashion_mnist_base(src["images"], src["epochs"], val, batch, threads),
                      "baselines": {"scratch": {"models": models}}, "seeds": [0]}, name="search_sources")
    failures, _ = run_stages([[sources]], out / "sources", log, workers)
    if failures:
        raise StitchkitError(f"{len(failures)} source models failed to train: {', '.join(failures)}")
    source_runs = {cell.src: RunDir(out / "sources" / cell.name) for cell in sources.cells}
    checkpoints = {name: str(run.model_weights) for name, run in source_runs.items()}
    originals = {name: run.read_result() or {} for name, run in source_runs.items()}
    stitches = spec["stitches"]
    settings = _flat(fashion_mnist_base(stitches["images"], stitches["epochs"], val, batch, threads))
    proxy_began = time.time()
    records = search(models, grid.get("budget_gmacs"), checkpoints=checkpoints, gaps=grid.get("gaps"),
                     adapters=grid.get("adapters"), settings=settings, cache=out / "proxies",
                     calibration_images=grid.get("calibration_images"),
                     probe_images=grid.get("probe_images", 256), log=log)
    del proxy_began
    within = [r for r in records if r.get("skip_reason") is None and r.get("proxy_error") is None]
    log(f"training all {len(within)} candidates (the study's ground truth)")
    trained = _train(within, out, settings, checkpoints, (0,), workers, log)
    results = {name: RunDir(out / "runs" / name).read_result() or {} for t in trained for name in t["runs"]}
    for t in trained:
        t["train_seconds"] = _run_seconds([results[name] for name in t["runs"]])
    costs = {name: sum(proxy_seconds(name, r) for r in within) for name in PROXIES}
    analysis = analyse(trained, costs, grid.get("top_fraction", 0.2))
    sources_seconds = sum((originals[m].get("wall_time_s") or 0.0) for m in models)
    analysis.update(models=models, originals={m: {k: originals[m].get(k) for k in ("top1", "gmacs")}
                                              for m in models},
                    candidates=len(within), minutes=(time.time() - began) / 60,
                    cost_minutes={"sources": sources_seconds / 60,
                                  "proxies": sum(r.get("seconds") or 0.0 for r in within) / 60,
                                  "stitches": analysis["exhaustive_train_seconds"] / 60})
    from ..findings import environment

    analysis["environment"] = environment(threads, [*originals.values(), *results.values()])  # as the runs recorded
    # whether this study's stitches are the ones the quick proxy's start was tuned on (its page must say so)
    analysis["quick_in_sample"] = Path(path).resolve().as_posix().endswith(get_start("fitted_quick").tuned_on)
    atomic_write_json(out / "study.json", analysis)
    if doc is not None:
        doc = Path(doc)
        assets = doc.parent / doc.stem
        assets.mkdir(parents=True, exist_ok=True)
        figures = _figures(assets, trained, analysis)
        command = f"stitchkit search --study {path} --out {out} --doc {doc}" + (" --smoke" if smoke else "")
        atomic_write_text(doc, study_markdown(analysis, spec, command, [f"{assets.name}/{f}" for f in figures]))
        log(f"wrote {doc}")
    return analysis


def _run_seconds(results: list[dict]) -> float:
    """The training time of a stitch's runs (their result.json records); runs trained in one pass share its time
    evenly."""
    return sum((r.get("wall_time_s") or 0.0) / max(r.get("group_size") or 1, 1) for r in results)


def analyse(trained: list[dict], proxy_costs: dict[str, float], top_fraction: float) -> dict:
    """Correlations of every proxy with trained top-1 (overall and per destination), and the frontier a search
    choosing ``top_fraction`` of the candidates by each proxy finds, against the exhaustive one; ``proxy_costs``:
    seconds each proxy took over every candidate (a search pays them before it trains)."""
    accuracy = [t["top1"] for t in trained]
    correlations = {}
    for name in PROXIES:
        pairs = [(score(name, t.get(name)), t["top1"]) for t in trained]
        pairs = [(s, a) for s, a in pairs if s is not None and math.isfinite(s)]
        if len(pairs) < 3:
            continue
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        per_dst = {}
        for dst in sorted({t["dst"] for t in trained}):
            sub = [(score(name, t.get(name)), t["top1"]) for t in trained if t["dst"] == dst]
            sub = [(s, a) for s, a in sub if s is not None and math.isfinite(s)]
            if len(sub) >= 3:
                per_dst[dst] = {"spearman": spearman([p[0] for p in sub], [p[1] for p in sub]), "n": len(sub)}
        correlations[name] = {"n": len(pairs), "spearman": spearman(xs, ys),
                              "spearman_ci": bootstrap_interval(xs, ys, spearman),
                              "kendall": kendall(xs, ys), "kendall_ci": bootstrap_interval(xs, ys, kendall, 300),
                              "per_destination": per_dst}
    if not correlations:
        raise StitchkitError("no proxy could be measured on the trained stitches")
    # The best proxy: the highest Spearman, unless a cheaper one lies inside its 95% interval; over these stitches
    # the two rank alike, and a search pays the proxy over every candidate, so the cheapest of those is chosen.
    ranked_first = max(correlations, key=lambda n: correlations[n]["spearman"])
    low = correlations[ranked_first]["spearman_ci"][0]
    alike = [n for n in correlations if low is not None and correlations[n]["spearman"] >= low] or [ranked_first]
    best = min(alike, key=lambda n: (proxy_costs.get(n, 0.0), -correlations[n]["spearman"]))
    costs = [t["gmacs"] for t in trained]
    # The reference point is the exhaustive frontier's nadir (its dearest compute, its lowest accuracy), as is usual
    # for hypervolumes: a reference at chance and the dearest candidate counts so much easy area that a random fifth
    # scores 94% (measured in the first study), which says nothing.
    every = pareto_front(list(zip(costs, accuracy)))
    ref_gmacs, ref_accuracy = max(costs[i] for i in every), min(accuracy[i] for i in every)
    exhaustive = hypervolume(list(zip(costs, accuracy)), ref_gmacs, ref_accuracy)
    count = max(1, math.ceil(top_fraction * len(trained)))
    all_seconds = sum(t.get("train_seconds", 0.0) for t in trained)

    def outcome(chosen: list[int], proxy_cost: float) -> dict:
        points = [(costs[i], accuracy[i]) for i in chosen]
        seconds = sum(trained[i].get("train_seconds", 0.0) for i in chosen)
        if exhaustive > 0:
            ratio = hypervolume(points, ref_gmacs, ref_accuracy) / exhaustive
        else:  # a frontier of one point dominates no area from its own nadir: found it or not
            ratio = float(any(i in every for i in chosen))
        return {"count": len(chosen), "hypervolume_ratio": ratio,
                "train_seconds": seconds, "proxy_seconds": proxy_cost,
                "compute_share": (seconds + proxy_cost) / all_seconds if all_seconds else float("nan"),
                "frontier": [_key(trained[chosen[k]]) for k in pareto_front(points)]}

    def scores_of(name: str) -> list[float]:
        raw = [score(name, t.get(name)) for t in trained]
        return [s if s is not None and math.isfinite(s) else float("nan") for s in raw]

    by_proxy = {name: {"frontier": outcome(select(costs, scores_of(name), count), proxy_costs.get(name, 0.0)),
                       "top": outcome(top_by_score(scores_of(name), count), proxy_costs.get(name, 0.0))}
                for name in correlations}
    rng = random.Random(0)
    draws = [outcome(rng.sample(range(len(trained)), count), 0.0)["hypervolume_ratio"] for _ in range(RANDOM_DRAWS)]
    cheapest = outcome(sorted(range(len(trained)), key=lambda i: costs[i])[:count], 0.0)
    meets = [f"{name} ({how})" for name, outcomes in by_proxy.items() for how, o in outcomes.items()
             if o["hypervolume_ratio"] >= 0.9 and o["compute_share"] <= 0.25]
    return {"stitches": len(trained), "best_proxy": best, "ranked_first": ranked_first,
            "correlations": correlations, "meets_goal": meets,
            "top_fraction": top_fraction, "exhaustive_hypervolume": exhaustive,
            "reference": [ref_gmacs, ref_accuracy], "cheapest": cheapest,
            "exhaustive_train_seconds": all_seconds, "proxy_seconds": proxy_costs,
            "exhaustive_frontier": [_key(trained[i]) for i in pareto_front(list(zip(costs, accuracy)))],
            "by_proxy": by_proxy,
            "selection": {**by_proxy[best], "random_mean_ratio": sum(draws) / len(draws),
                          "random_p90_ratio": sorted(draws)[int(0.9 * (len(draws) - 1))]},
            "per_stitch": [{**{k: t[k] for k in ("src", "dst", "gap", "method", "gmacs", "top1")},
                            **{p: t.get(p) for p in PROXIES}} for t in trained]}


def _key(t: dict) -> str:
    return f"{t['src']} -> {t['dst']} {t['gap']} {t['method']}"


def _figures(assets: Path, trained: list[dict], analysis: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = analysis["best_proxy"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = plt.get_cmap("tab10")
    for k, dst in enumerate(sorted({t["dst"] for t in trained})):
        points = [(t.get(best), t["top1"]) for t in trained if t["dst"] == dst and t.get(best) is not None]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=14, color=colours(k), label=f"into {dst}")
    c = analysis["correlations"][best]
    ax.set_xlabel(f"{best} (before training)")
    ax.set_ylabel("top-1 after training (%)")
    ax.set_title(f"{best} vs trained accuracy: Spearman {c['spearman']:.2f}, n={c['n']}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(assets / "proxy_vs_accuracy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter([t["gmacs"] for t in trained], [t["top1"] for t in trained], s=10, color="#bbbbbb",
               label="every candidate, trained")
    keyed = {_key(t): t for t in trained}
    for label, keys, style in (("exhaustive frontier", analysis["exhaustive_frontier"], "-o"),
                               (f"frontier of the {analysis['selection']['frontier']['count']} chosen by {best}",
                                analysis["selection"]["frontier"]["frontier"], "--s")):
        points = sorted((keyed[k]["gmacs"], keyed[k]["top1"]) for k in keys)
        ax.plot([p[0] for p in points], [p[1] for p in points], style, ms=4, label=label)
    ax.set_xlabel("compute (GMACs)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("The frontier a search finds training a fifth of the candidates")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(assets / "frontiers.png", dpi=120)
    plt.close(fig)
    return ["proxy_vs_accuracy.png", "frontiers.png"]


def _ci(values) -> str:
    low, high = values
    return f"[{low:.2f}, {high:.2f}]"


def study_markdown(a: dict, spec: dict, command: str, figures: list[str]) -> str:
    best, sel = a["best_proxy"], a["selection"]
    first = a.get("ranked_first", best)
    c = a["correlations"][best]
    spearman_ok = c["spearman"] >= 0.7
    frontier = sel["frontier"]
    hv_ok = frontier["hypervolume_ratio"] >= 0.9 and frontier["compute_share"] <= 0.25
    src, st, grid = spec["sources"], spec["stitches"], spec["search"]
    quick = get_start("fitted_quick")
    lines = ["# Which stitch to train: training-free proxies against trained accuracy", "",
             f"Regenerate with `{command}` (resumable: sources, proxies and runs are reused). What it cost, on "
             f"{a.get('environment', 'this machine')}: "
             + ", ".join(f"{k} {v:.0f} min" for k, v in a["cost_minutes"].items())
             + f", {sum(a['cost_minutes'].values()):.0f} min in all, counted per process (training runs in "
             "`--workers` processes side by side, so from start to end it takes less).",
             "",
             "## Set-up", "",
             f"A zoo of {len(a['models'])} models trained from scratch on Fashion-MNIST at 32 px ({src['images']:,} "
             f"images x {src['epochs']} epochs, seed 0): "
             + ", ".join(f"{m} ({a['originals'][m]['top1']:.1f}%)" if a["originals"][m].get("top1") is not None
                         else m for m in a["models"]) + ". "
             f"Every ordered pair (each model with itself too) at gaps {', '.join(grid.get('gaps') or ['all nine'])} "
             f"with {', '.join(grid.get('adapters') or ['downsample_linear', 'downsample_bottleneck'])}: "
             f"{a['candidates']} candidates, every one then trained ({st['images']:,} images x {st['epochs']} "
             f"epochs, the paper's recipe, one seed) so that each proxy can be held against the accuracy it "
             f"predicts: {a['stitches']} trained stitches. Proxies are measured on "
             f"{grid.get('probe_images', 256)} training images the start was not fitted on (it is fitted on "
             + (f"{grid['calibration_images']} others)." if grid.get("calibration_images") else
                "as many others as a run's start measures, 256 to 2,048).")
             + ("" if "init_accuracy_quick" not in a["correlations"] else
                f" `init_accuracy_quick`'s start (`fitted_quick`: {quick.match_steps} feature-matching steps at "
                f"lr {quick.match_lr:g}) was chosen among variants "
                + ("on these same stitches (`stitchkit.starts.FittedQuick` lists each variant's Spearman), so its "
                   "figures are in-sample." if a.get("quick_in_sample") else
                   f"on the stitches of {quick.tuned_on}, not on these: here its figures are out-of-sample.")),
             "",
             "## How well each proxy ranks the trained stitches", "",
             "| proxy | better when | Spearman (95% CI) | Kendall (95% CI) | n |", "|---|---|---|---|---|"]
    for name, r in sorted(a["correlations"].items(), key=lambda kv: -kv[1]["spearman"]):
        lines.append(f"| {name} | {'higher' if PROXIES[name] > 0 else 'lower'} | {r['spearman']:.2f} "
                     f"{_ci(r['spearman_ci'])} | {r['kendall']:.2f} {_ci(r['kendall_ci'])} | {r['n']} |")
    dsts = sorted({d for r in a["correlations"].values() for d in r["per_destination"]})
    lines += ["", "Spearman per destination (the stitches into one model):", "",
              "| proxy | " + " | ".join(dsts) + " |", "|---|" + "---|" * len(dsts)]
    for name, r in sorted(a["correlations"].items(), key=lambda kv: -kv[1]["spearman"]):
        cells = [f"{r['per_destination'][d]['spearman']:.2f}" if d in r["per_destination"] else "-" for d in dsts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![{best} against trained accuracy]({figures[0]})", "",
              "## What a search that trains a fifth finds", "",
              f"A search trains {frontier['count']} of the candidates ({100 * a['top_fraction']:.0f}%): those a proxy "
              "predicts best for their compute (frontier layers, `--selection frontier`, the default: the predicted "
              "frontier first, then the next layer) or its top scores (`--selection top`). Hypervolume: the area the "
              "trained frontier dominates, measured from the exhaustive "
              f"frontier's nadir ({a['reference'][1]:.2f}% at {a['reference'][0]:.4f} GMACs: its lowest accuracy "
              "and its dearest compute).",
              "Compute: the proxy's own measuring over every candidate plus the chosen stitches' training, against "
              "training every candidate (wall time on this machine; a stitch's training is its share of the pass it "
              "trained in here, where stitches sharing a front train together, so a search training fewer of them "
              "would pay somewhat more per stitch). "
              f"A stitch trains {a['exhaustive_train_seconds'] / max(a['stitches'], 1):.1f} s here on average, so "
              "each second a proxy spends per candidate costs "
              f"{100 * max(a['stitches'], 1) / max(a['exhaustive_train_seconds'], 1e-9):.1f}% of exhaustive "
              "training: a search whose stitches train longer pays relatively less for its proxy.", "",
              "| chosen by | how | trained | hypervolume vs exhaustive | compute vs exhaustive (proxy minutes) |",
              "|---|---|---|---|---|"]
    for name in sorted(a["by_proxy"], key=lambda n: -a["by_proxy"][n]["frontier"]["hypervolume_ratio"]):
        for how, label in (("frontier", "frontier layers"), ("top", "top scores")):
            o = a["by_proxy"][name][how]
            lines.append(f"| {name} | {label} | {o['count']} | {100 * o['hypervolume_ratio']:.1f}% | "
                         f"{100 * o['compute_share']:.1f}% ({o['proxy_seconds'] / 60:.1f}) |")
    lines += [f"| at random (mean of {RANDOM_DRAWS} draws; 90th percentile) | - | {frontier['count']} | "
              f"{100 * sel['random_mean_ratio']:.1f}% ({100 * sel['random_p90_ratio']:.1f}%) | - |",
              f"| the cheapest | - | {a['cheapest']['count']} | {100 * a['cheapest']['hypervolume_ratio']:.1f}% | "
              f"{100 * a['cheapest']['compute_share']:.1f}% |",
              f"| every candidate | - | {a['stitches']} | 100% | 100% ({a['exhaustive_train_seconds'] / 60:.0f} min "
              "of training) |", "",
              f"![frontiers]({figures[1]})", "", "## Verdict", "",
              f"* Best proxy: `{best}`, Spearman {c['spearman']:.2f} {_ci(c['spearman_ci'])} over {c['n']} stitches: "
              + ("meets the goal of 0.7." if spearman_ok else "below the goal of 0.7.")
              + ("" if first == best else
                 f" The highest is `{first}`'s, {a['correlations'][first]['spearman']:.2f} "
                 f"{_ci(a['correlations'][first]['spearman_ci'])}; `{best}` lies inside that interval (over these "
                 f"stitches the two rank alike) and costs {a['proxy_seconds'][best] / 60:.1f} of its "
                 f"{a['proxy_seconds'][first] / 60:.1f} proxy minutes, so it is the one a search should use."),
              f"* Training the top {100 * a['top_fraction']:.0f}% by it recovers "
              f"{100 * frontier['hypervolume_ratio']:.1f}% of the exhaustive frontier's hypervolume for "
              f"{100 * frontier['compute_share']:.1f}% of its compute: "
              + ("meets the goal (at least 90% for at most 25%)." if hv_ok else
                 "does not meet the goal of at least 90% for at most 25%."),
              "* Choices that meet that goal: " + (", ".join(f"`{m}`" for m in a["meets_goal"]) if a["meets_goal"]
                                                    else "none") + ".", ""]
    return "\n".join(lines)
