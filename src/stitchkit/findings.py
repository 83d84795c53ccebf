"""``stitchkit findings``: the paper's five findings checked at small scale, with seeds, in one command.

A findings file (``configs/findings/fashion_mnist.yaml``) names the source models (trained from scratch here), the
training of sources and stitches, the seeds, and blocks of stitches (pairs x gaps x methods). Every block is an
ordinary sweep in one output folder, so the command resumes where it stopped. Then each finding is judged from the
measured numbers by a rule written below next to it (never by hand), and ``docs/findings.md`` gets the numbers
(mean ± standard error over seeds, n), the verdict and the figures.

The rules say "beats" only when the difference in means is larger than twice its standard error
(``sqrt(se_a^2 + se_b^2)``): with three seeds that is a rough, not a formal, test. A side with fewer than two
finished seeds has no standard error: such a comparison is "not measured", shown as such and left out of the
verdict (never taken as a standard error of zero, which would let any difference count).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from .demo import fashion_mnist_base, read_study_file, run_stages, threads_per_run
from .errors import StitchkitError
from .rundir import RunDir
from .reports.plots import pareto_front
from .reports.words import plural
from .sweeps.grid import Sweep, expand
from .sweeps.runner import MANIFEST_DIR
from .sweeps.methods import list_methods
from .chain import parse_gap

FILE_KEYS = ("sources", "stitches", "val_images", "batch_size", "seeds", "blocks")
SMOKE = {"sources": {"images": 256, "epochs": 1}, "stitches": {"images": 128, "epochs": 1}, "val_images": 96,
         "batch_size": 32, "seeds": [0, 1], "gaps": ["1:4"]}
CHANCE_FACTOR = 2.0  # "works": at least this many times chance accuracy
KEPT_SHARE = 0.75  # "works": and at least this share of the destination's own accuracy


@dataclass
class Finding:
    number: int
    claim: str
    verdict: str  # confirmed | partly confirmed | not confirmed
    rule: str
    table: list[list[str]] = field(default_factory=list)  # header first
    notes: list[str] = field(default_factory=list)


def load_findings_file(path: str | Path, smoke: bool = False) -> dict:
    spec = read_study_file(path, "findings", FILE_KEYS, ("sources", "stitches", "blocks"),
                           "configs/findings/fashion_mnist.yaml",
                           {k: v for k, v in SMOKE.items() if k != "gaps"} if smoke else None)
    if smoke:
        spec["blocks"] = {name: {**block, "gaps": SMOKE["gaps"]} for name, block in spec["blocks"].items()}
    return spec


def findings_sweeps(spec: dict, out: Path, threads: int | None = None) -> list[Sweep]:
    """The sources' sweep first (every source model with every seed), then one sweep per (block, pair): the stitch
    of seed ``s`` reads the seed-``s`` checkpoints of its two models, so the standard errors over seeds include the
    sources' own variation, at the cost of one stitch per seed."""
    val, batch = spec.get("val_images", 2000), spec.get("batch_size", 128)
    src = spec["sources"]
    seeds = list(spec.get("seeds", [0]))
    sources = expand({"base": fashion_mnist_base(src["images"], src["epochs"], val, batch, threads),
                      "baselines": {"scratch": {"models": list(src["models"])}}, "seeds": seeds},
                     name="findings_sources")
    checkpoint = {(cell.src, cell.seed): str(RunDir(out / cell.name).model_weights) for cell in sources.cells}
    stitches = spec["stitches"]
    sweeps = [sources]
    seen: set[str] = set()  # run folders already asked for by an earlier block
    for block_name, block in spec["blocks"].items():
        for src_name, dst_name in block["pairs"]:
            parallel = not isinstance(src_name, str)  # [[A, B], C]: a parallel stitch (finding 6)
            for name in [*(src_name if parallel else [src_name]), dst_name]:
                if (name, seeds[0]) not in checkpoint:
                    raise StitchkitError(f"block {block_name!r} stitches {name}, which is not among sources.models "
                                         f"({', '.join(sorted({m for m, _ in checkpoint}))}); add it there")
            cells = []
            for seed in seeds:
                base = fashion_mnist_base(stitches["images"], stitches["epochs"], val, batch, threads)
                model = {"src_checkpoint": ([checkpoint[s, seed] for s in src_name] if parallel
                                            else checkpoint[src_name, seed]),
                         "dst_checkpoint": checkpoint[dst_name, seed]}
                # A parallel stitch's list of checkpoints is valid only beside its list of sources: in the cells.
                base["model"] = {"pretrained": False, **({} if parallel else model)}
                per_seed = expand({"base": base, "pairs": [[src_name, dst_name]], "gaps": block["gaps"],
                                   "methods": block["methods"], "seeds": [seed]}, name="findings")
                # The checkpoints move into each cell's own settings: one sweep holds every seed, so the report
                # averages over them (it averages within a sweep).
                cells += [replace(c, settings={**c.settings, "model": {**c.settings["model"], **model}})
                          for c in per_seed.cells if c.name not in seen]
            # A stitch two blocks ask for (blocks that overlap, or every block cut to one gap by --smoke) trains once,
            # in the first: the same run folder in two sweeps would be trained or counted twice.
            seen.update(c.name for c in cells)
            if not cells:
                continue
            common = fashion_mnist_base(stitches["images"], stitches["epochs"], val, batch, threads)
            src_label = "+".join(src_name) if parallel else src_name
            sweeps.append(Sweep(f"findings_{block_name}_{src_label}_{dst_name}", common, cells,
                                group_by_front=True))
    return sweeps


# --- judging ------------------------------------------------------------------------------------------------------


def _fmt(row: dict | None) -> str:
    if not row or row.get("top1_mean") is None:
        return "-"
    se = row.get("top1_se")
    return f"{row['top1_mean']:.1f}" + (f" ± {se:.1f}" if se is not None else "") + f" (n={row['n']})"


MIN_SEEDS = 2  # a comparison needs a standard error on both sides: at least this many finished seeds each


def _measured(row: dict | None) -> bool:
    return bool(row) and row.get("top1_mean") is not None


def _unmeasured(a: dict | None, b: dict | None) -> bool:
    """Both measured, but one side has fewer than :data:`MIN_SEEDS` finished seeds (no standard error): the
    comparison is not measured. A missing standard error is unknown, not zero."""
    return _measured(a) and _measured(b) and any(
        (row.get("n") or 0) < MIN_SEEDS or row.get("top1_se") is None for row in (a, b))


def _diff(a: dict | None, b: dict | None) -> tuple[float, float] | None:
    """``(mean_a - mean_b, its standard error)``; None when either is missing or has fewer than two seeds."""
    if not _measured(a) or not _measured(b) or _unmeasured(a, b):
        return None
    return a["top1_mean"] - b["top1_mean"], math.sqrt(a["top1_se"] ** 2 + b["top1_se"] ** 2)


def _beats(a: dict | None, b: dict | None) -> bool | None:
    """Ahead by more than twice the standard error of the difference; None when that cannot be said (a side
    missing, or with fewer than two seeds)."""
    d = _diff(a, b)
    return None if d is None else d[0] > 2 * d[1] and d[0] > 0


def _fmt_diff(a: dict | None, b: dict | None) -> str:
    """``a - b`` as ``+x.x ± y.y``; ``-`` when a side is missing; ``not measured (n=1)`` with too few seeds."""
    if _unmeasured(a, b):
        return f"not measured (n={min(a.get('n') or 0, b.get('n') or 0)})"
    d = _diff(a, b)
    return "-" if d is None else f"{d[0]:+.1f} ± {d[1]:.1f}"


class Verdict(str):
    """``confirmed`` (at least 3 in 4 comparisons hold), ``partly confirmed`` (at least 1 in 4), ``not confirmed``
    or ``not measured``; it also keeps how many of its comparisons held, which the page shows next to it, and how
    many could not be made (a side with fewer than two seeds), which it leaves out."""

    held: int = 0
    checks: int = 0
    unmeasured: int = 0


def _verdict(outcomes: list[bool], unmeasured: int = 0) -> Verdict:
    share = sum(outcomes) / len(outcomes) if outcomes else None
    if share is None:
        text = "not measured"
    else:
        text = "confirmed" if share >= 0.75 else ("partly confirmed" if share >= 0.25 else "not confirmed")
    verdict = Verdict(text)
    verdict.held, verdict.checks, verdict.unmeasured = sum(outcomes), len(outcomes), unmeasured
    return verdict


class _Rows:
    def __init__(self, summary: list[dict]):
        self.by_key = {(r["src"], r["dst"], r["gap"], r["method"]): r for r in summary if r["kind"] == "stitch"}

    def get(self, src, dst, gap, method) -> dict | None:
        row = self.by_key.get((src, dst, gap, method))
        return row if row and row.get("top1_mean") is not None else None

    def gaps(self, src, dst, method=None) -> list[str]:
        return sorted({g for (s, d, g, m) in self.by_key if s == src and d == dst and (method is None or m == method)})

    def pairs(self, parallel: bool = False) -> list[tuple[str, str]]:
        """Single-source pairs; ``parallel``: the parallel stitches' (sources joined, ``A+B``) instead."""
        return sorted({(s, d) for (s, d, _, _) in self.by_key if ("+" in s) == parallel})


def _full_block(rows: _Rows, src: str, dst: str, gap: str) -> dict | None:
    """The paper's "full block" adapter: the ViT block between ViTs when measured, else the bottleneck."""
    return rows.get(src, dst, gap, "vit_block") or rows.get(src, dst, gap, "downsample_bottleneck")


def judge(summary: list[dict], originals: dict, chance: float) -> list[Finding]:
    """The five findings, each judged from ``summary`` (report summary rows) by its rule."""
    rows = _Rows(summary)
    cnn = next(((s, d) for s, d in rows.pairs() if s == d and rows.get(s, d, "1:4", "integrated_bottleneck")), None)
    findings = [_finding1(rows, originals, chance), _finding2(rows, cnn), _finding3(rows), _finding4(rows, cnn),
                _finding5(rows, originals)]
    if rows.pairs(parallel=True):  # the findings file has a parallel block
        findings.append(_finding6(rows))
    return findings


def _largest_gap(gaps: list[str]) -> str | None:
    from .chain import parse_gap

    ones = [g for g in gaps if parse_gap(g)[0] == 1]
    return max(ones, key=lambda g: parse_gap(g)[1]) if ones else None


def _finding1(rows: _Rows, originals: dict, chance: float) -> Finding:
    table = [["pair", "gap", "full-block stitch top-1", "before training", "destination alone", "kept",
              f">= {CHANCE_FACTOR:g}x chance", f"keeps >= {KEPT_SHARE:.0%}"]]
    outcomes = []
    for src, dst in rows.pairs():
        gap = _largest_gap(rows.gaps(src, dst))
        row = _full_block(rows, src, dst, gap) if gap else None
        if row is None:
            continue
        own = originals.get(dst, {}).get("top1")
        above_floor = row["top1_mean"] >= CHANCE_FACTOR * chance
        share = row["top1_mean"] / own if own else None
        keeps = share is not None and share >= KEPT_SHARE
        outcomes.append(above_floor and keeps)
        start = row.get("top1_at_start_mean")
        table.append([f"{src} -> {dst}", gap, _fmt(row), f"{start:.1f}" if start is not None else "-",
                      _fmt_original(originals.get(dst)), f"{100 * share:.0f}%" if share is not None else "-",
                      "yes" if above_floor else "no", "yes" if keeps else "no"])
    return Finding(1, "Stitching works across large gaps (Stage 1 -> 4) and across very different architectures, "
                      "when the feature maps are resized.", _verdict(outcomes),
                   f"every pair's full-block stitch (bilinear downsampling; ViT block between ViTs) at its largest gap "
                   f"from Stage 1 reaches at least {CHANCE_FACTOR:g}x chance ({CHANCE_FACTOR * chance:.0f}%) and keeps "
                   f"at least {KEPT_SHARE:.0%} of the destination's own accuracy (the paper's Stage 1 -> 4 stitches "
                   "keep 84-85%)", table)


def _fmt_original(original: dict | None) -> str:
    if not original or original.get("top1") is None:
        return "-"
    se = original.get("top1_se")
    return f"{original['top1']:.1f}" + (f" ± {se:.1f}" if se is not None else "")


def _finding2(rows: _Rows, cnn) -> Finding:
    table = [["gap", "adapter", "downsample", "integrated", "no resize", "downsample - integrated",
              "downsample - no resize", "downsample ahead of integrated"]]
    outcomes, behind, beats_none, compared_none, unmeasured = [], [], 0, 0, 0
    if cnn:
        src, dst = cnn
        for gap in rows.gaps(src, dst):
            if gap in ("1:1", "2:2", "3:3"):
                continue  # no change of scale: the three resize modes are the same network
            for adapter in ("linear", "linear_relu", "conv3x3_relu", "bottleneck"):
                down = rows.get(src, dst, gap, f"downsample_{adapter}")
                integ = rows.get(src, dst, gap, f"integrated_{adapter}")
                none = rows.get(src, dst, gap, f"noresize_{adapter}")
                if down is None or (integ is None and none is None):
                    continue
                d_int, d_none = _diff(down, integ), _diff(down, none)
                ahead = ""
                if d_int is not None:  # the claim: integrating the downsampling is worse
                    held = bool(_beats(down, integ))
                    outcomes.append(held)
                    ahead = "yes" if held else "no"
                elif _unmeasured(down, integ):
                    unmeasured += 1
                    ahead = "not measured"
                table.append([gap, adapter, _fmt(down), _fmt(integ), _fmt(none), _fmt_diff(down, integ),
                              _fmt_diff(down, none), ahead])
                if d_int is not None and -d_int[0] > 2 * d_int[1]:
                    behind.append(f"{gap} {adapter} ({d_int[0]:+.1f} ± {d_int[1]:.1f})")
                if d_none is not None and d_none[0] > 2 * d_none[1]:
                    beats_none += 1
                compared_none += d_none is not None
    notes = []
    if behind:
        notes.append("Integrated is clearly ahead (by more than 2 standard errors) in: " + ", ".join(behind) + ". "
                     "The first half of the claim holds more widely: downsampling beats no resizing by more than 2 "
                     f"standard errors in {beats_none} of {compared_none} comparisons.")
    return Finding(2, "A plain bilinear downsample before each adapter is enough, and integrating the downsampling "
                      "into the adapter (a strided convolution) is worse.", _verdict(outcomes, unmeasured),
                   "at every gap that changes scale, for every adapter measured both ways, the downsample method beats "
                   "the integrated one by more than twice the standard error of the difference (the no-resize "
                   "column is shown, not counted)", table, notes)


def _finding3(rows: _Rows) -> Finding:
    table = [["pair", "gap", "linear", "linear + ReLU", "conv3x3 + ReLU", "bottleneck", "bottleneck - linear",
              "nonlinear ahead"]]
    outcomes, small, missed, unmeasured = [], [], [], 0
    nonlinear = ("downsample_linear_relu", "downsample_conv3x3_relu", "downsample_bottleneck")
    for src, dst in rows.pairs():
        for gap in rows.gaps(src, dst):
            linear = rows.get(src, dst, gap, "downsample_linear")
            others = {m: rows.get(src, dst, gap, m) for m in nonlinear}
            if linear is None or not any(others.values()):
                continue
            x, y = parse_gap(gap)
            ahead = ""
            if y - x >= 2:  # a large gap (1:3 and up): every nonlinear adapter measured must beat the linear one
                compared = [row for row in others.values() if _diff(row, linear) is not None]
                not_measured = sum(_unmeasured(row, linear) for row in others.values())
                held = [bool(_beats(row, linear)) for row in compared]
                outcomes += held
                unmeasured += not_measured
                missed += [_diff(row, linear) for row in compared if not _beats(row, linear)]
                ahead = ", ".join(([f"{sum(held)} of {len(held)}"] if held else [])
                                  + ([f"{not_measured} not measured"] if not_measured else []))
            elif gap == "1:1" and _diff(others["downsample_bottleneck"], linear) is not None:
                small.append(_diff(others["downsample_bottleneck"], linear))
            table.append([f"{src} -> {dst}", gap, _fmt(linear), _fmt(others["downsample_linear_relu"]),
                          _fmt(others["downsample_conv3x3_relu"]), _fmt(others["downsample_bottleneck"]),
                          _fmt_diff(others["downsample_bottleneck"], linear), ahead])
    notes = []
    if missed:
        ahead = sum(1 for d in missed if d and d[0] > 0)
        notes.append(f"Of the {len(missed)} comparisons that miss, the nonlinear adapter is ahead on average in "
                     f"{ahead}, by less than twice the standard error. With stitchkit 0.7 this page held 13 of 14: "
                     "0.8's warm-up of the fitted start (docs/adapter_start.md) lifted linear chains at large gaps "
                     "(the linear adapter, ResNet-18 -> itself at 1:4: 81.1 with 0.7; ResNet-18 -> ViT at 1:4: "
                     "65.0), so nonlinear adapters lead by less than with the paper's starts.")
    if small:
        close = sum(abs(d[0]) <= max(2 * d[1], 1.0) for d in small if d)
        notes.append(f"At gap 1:1 the linear adapter is within noise (or 1 point) of the bottleneck in {close} of "
                     f"{len(small)} pairs (the paper: linear adapters suffice for small gaps).")
    return Finding(3, "Nonlinear adapters beat linear ones on large gaps.", _verdict(outcomes, unmeasured),
                   "at every gap of two stages or more (1:3, 1:4, 2:4), every nonlinear adapter measured (linear + ReLU, "
                   "conv3x3 + ReLU, bottleneck) beats the linear adapter by more than twice the standard error of the "
                   "difference", table, notes)


def _finding4(rows: _Rows, cnn) -> Finding:
    table = [["gap", "method", "GMACs", "top-1", "on the Pareto front"]]
    outcomes, unmeasured = [], 0
    if cnn:
        src, dst = cnn
        points = [r for (s, d, g, m), r in rows.by_key.items() if s == src and d == dst and g.startswith("1:")
                  and r.get("top1_mean") is not None and r.get("gmacs")]
        front = set(pareto_front([(r["gmacs"], r["top1_mean"]) for r in points]))
        for gap in rows.gaps(src, dst):
            if not gap.startswith("1:"):
                continue
            bottleneck = rows.get(src, dst, gap, "downsample_bottleneck")
            conv = rows.get(src, dst, gap, "downsample_conv3x3_relu")
            d = _diff(bottleneck, conv)
            if d is not None:  # the bottleneck gives as much accuracy for less compute than a full conv3x3
                outcomes.append(bottleneck["gmacs"] < conv["gmacs"] and d[0] >= -2 * d[1])
            elif _unmeasured(bottleneck, conv):
                unmeasured += 1
        for r in sorted(points, key=lambda r: (r["gap"], r["gmacs"])):
            on = (r["gmacs"], r["top1_mean"]) in front
            table.append([r["gap"], r["method"], f"{r['gmacs']:.4f}", _fmt(r), "yes" if on else ""])
        outcomes.append(any(r["method"] == "downsample_bottleneck" and (r["gmacs"], r["top1_mean"]) in front
                            for r in points))
    return Finding(4, "Bottleneck adapters are on the accuracy-compute Pareto front: as accurate as a full Conv3x3 "
                      "adapter for a fraction of its compute.", _verdict(outcomes, unmeasured),
                   "at every gap from Stage 1 the downsample bottleneck costs fewer MACs than the downsample conv3x3 and "
                   "is not less accurate by more than twice the standard error, and at least one bottleneck point is "
                   "on the Pareto front of all methods and gaps from Stage 1", table)


def _finding5(rows: _Rows, originals: dict) -> Finding:
    table = [["pair", "ViT is", "mean top-1 over gaps (full block)", "mean share of the destination's accuracy"]]
    retention: dict[tuple[str, str], float] = {}
    # A ViT is a model whose features are token sequences with a class token: asked of its family, not its name.
    from .zoo.models import is_token_model

    vit_names = {name for pair in rows.pairs() for name in pair if is_token_model(name)}
    for src, dst in rows.pairs():
        gaps = [g for g in rows.gaps(src, dst) if g.startswith("1:")]
        found = [r for g in gaps if (r := _full_block(rows, src, dst, g))]
        own = originals.get(dst, {}).get("top1")
        if not found or not own:
            continue
        mean = sum(r["top1_mean"] for r in found) / len(found)
        retention[(src, dst)] = mean / own
        role = ("both" if src in vit_names and dst in vit_names else "destination" if dst in vit_names
                else "source" if src in vit_names else "-")
        table.append([f"{src} -> {dst}", role, f"{mean:.1f}", f"{100 * mean / own:.0f}%"])
    into_vit = [v for (s, d), v in retention.items() if d in vit_names]  # from any family, a ViT included
    out_of_vit = [v for (s, d), v in retention.items() if s in vit_names and d not in vit_names]
    others = [v for (s, d), v in retention.items() if s not in vit_names and d not in vit_names]
    outcomes = []
    if into_vit and others:
        outcomes.append(max(into_vit) < min(others))  # ViT as destination stitches worst
    if into_vit and out_of_vit:
        outcomes.append(max(into_vit) < min(out_of_vit))  # especially as the destination
    if out_of_vit and others:
        outcomes.append(max(out_of_vit) < min(others))
    notes = []
    if into_vit and others and not outcomes[0]:
        weakest = min(originals, key=lambda n: originals[n].get("top1") or 0)
        notes.append(
            f"Stitches into the ViT keep {100 * min(into_vit):.0f}-{100 * max(into_vit):.0f}% of its accuracy, "
            f"stitches between non-ViT models {100 * min(others):.0f}-{100 * max(others):.0f}%. "
            + (f"The ViT is the weakest model at this scale ({originals[weakest]['top1']:.1f}% top-1), so a "
               "stronger front can lift it above its own accuracy. " if weakest in vit_names else "")
            + "Up to stitchkit 0.4 this page confirmed the finding with the least-squares start, whose class token "
            "started at chance (ResNet-18 -> ViT at 1:4 then kept 71%, ViT -> ViT at 1:4 79%); with the fitted start, which "
            "sets the class token the way the ViT makes its own, it no longer holds at this scale: the ViT's "
            "disadvantage here came mostly from how the adapter started. docs/adapter_start.md compares "
            "the starts cell by cell.")
    return Finding(5, "ViTs (BERT-style, with a class token) stitch worst, especially as the destination.",
                   _verdict(outcomes),
                   "share of the destination's own accuracy kept (mean over gaps from Stage 1): every stitch into a "
                   "ViT (from a ViT too) keeps less than every stitch between non-ViT models, and less than every "
                   "stitch out of a ViT into another family; stitches out of a ViT keep less than those between "
                   "non-ViT models", table, notes)


PARALLEL_METHODS = {m.name: m for m in list_methods() if m.parallel}
FUSED_LEAD = 1.0  # finding 6's strong form: fused ahead of the better single front by this many points beyond 2 SE


def _finding6(rows: _Rows) -> Finding:
    """Beyond the paper: parallel stitches (``A+B -> C``, a ``parallel_<fusion>_<adapter>`` method) against each of
    their single fronts (``A -> C``, ``B -> C``) with the same adapter, bilinear resizing and gap."""
    table = [["fronts -> destination", "gap", "fusion", "fused top-1", "better single front", "its top-1",
              "fused - single", "beyond 2 SE", f"by >= {FUSED_LEAD:g} point beyond 2 SE", "GMACs fused / single"]]
    outcomes, strong, costs, unmeasured = [], [], [], 0
    for (src, dst, gap, name), fused in sorted(rows.by_key.items()):  # by pair, gap, method
        method = PARALLEL_METHODS.get(name) if "+" in src else None
        if method is None or fused.get("top1_mean") is None:
            continue
        single = f"downsample_{method.adapter}"  # the same adapter, resized bilinearly as the parallel chains are
        singles = [r for front in src.split("+") if (r := rows.get(front, dst, gap, single))]
        if len(singles) < len(src.split("+")):
            continue
        best = max(singles, key=lambda r: r["top1_mean"])
        diff = _diff(fused, best)
        ratio = fused["gmacs"] / best["gmacs"] if fused.get("gmacs") and best.get("gmacs") else None
        if diff is None:  # a side with fewer than two seeds: not measured
            unmeasured += 1
            held = lead = "not measured"
        else:
            held, lead = _beats(fused, best), diff[0] - 2 * diff[1] >= FUSED_LEAD
            outcomes.append(held)
            strong.append(lead)
            costs.append(ratio)
            held, lead = "yes" if held else "no", "yes" if lead else "no"
        table.append([f"{src.replace('+', ' + ')} -> {dst}", gap, f"{method.fusion} ({method.adapter})", _fmt(fused),
                      best["src"], _fmt(best), _fmt_diff(fused, best), held, lead, f"{ratio:.2f}x" if ratio else "-"])
    notes = []
    if outcomes:
        known = [c for c in costs if c]
        notes.append(
            f"The issue's bar (a fusion ahead of the better single front by at least {FUSED_LEAD:g} point beyond "
            f"twice the standard error, in at least one configuration): met in {sum(strong)} of {len(strong)} "
            "configurations. "
            + (f"Fusing costs {min(known):.2f}x to {max(known):.2f}x the better single front's MACs (every front "
               "runs on every image). " if known else "")
            + "Every fusion starts as the mean of its fronts' fitted chains, so it starts no worse than their "
            "average; what it gains is the second front's complementary features.")
    return Finding(6, "Beyond the paper (its future work): two fronts fused into one destination beat the better "
                      "of the two single fronts at the same gap.",
                   _verdict(outcomes, unmeasured),
                   "each parallel stitch (two sources' fronts, each with its own chain of the same adapter, fused) is "
                   "ahead of the better of its two single-front stitches (downsampling, same adapter, same gap, "
                   "same destination) by more than twice the standard error of the difference", table, notes)


# --- the page -----------------------------------------------------------------------------------------------------


def _add_compute_time(out: Path, seconds: float) -> float:
    """Add this invocation's training time to the folder's total (a resumed or doc-only run adds little) and
    return the total, so the page states what the whole run cost, not what its last invocation did."""
    path = out / "findings_time.json"
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    path.write_text(json.dumps({"seconds": total}))
    return total


def environment(threads: int | None, runs: list[dict] | None = None) -> str:
    """What the numbers depend on beyond the settings: stitchkit's version (its defaults, such as where adapters
    start), torch's and timm's, the thread count (a model trained on one thread differs from one trained on two, and
    every stitch from it), and the CPU with the vector kernels torch chose for it. With ``runs`` (their result.json
    records), as the runs recorded it: a study resumed elsewhere says that its runs were made in several
    environments, and how many in each. Without, or for runs made before stitchkit recorded it: this process's."""
    from .training.runtime import machine, package_versions

    here = _environment(package_versions(), {**machine(), **({"threads": threads} if threads else {})})
    if not runs:
        return here
    seen = Counter(_environment(r.get("versions") or {}, r["machine"]) if r.get("machine") else None for r in runs)
    unrecorded = seen.pop(None, 0)
    if len(seen) == 1 and not unrecorded:
        return next(iter(seen))
    parts = [f"{text} ({plural(n, 'run')})" for text, n in seen.most_common()]
    if unrecorded:
        parts.append(f"not recorded by {plural(unrecorded, 'run')} (made before stitchkit 0.9.1; the process that "
                     f"wrote this page: {here})")
    return ("runs made in more than one environment: " if len(seen) > 1 else "") + "; ".join(parts)


def _this_invocation(rows: list[dict], originals: dict, sweeps: list[Sweep], out: Path) -> tuple[list[dict], dict]:
    """``collect(out)``'s rows and originals cut to the cells of ``sweeps`` (what this invocation asked for), each
    row under the sweep that asks for it now: manifests of earlier runs into the same folder (a full run before a
    --smoke one, a block since removed) stay on disk and are read by the report, but are not judged. Originals
    measured with eval-model are kept; those trained from scratch come from these sweeps' source runs."""
    from .reports.collect import scratch_originals

    owner = {str(out / cell.name): sweep.name for sweep in sweeps for cell in sweep.cells}
    rows = [{**row, "sweep": owner[row["run_dir"]]} for row in rows if row["run_dir"] in owner]
    measured = {name: o for name, o in originals.items() if "sweep" not in o}  # eval-model runs, not scratch ones
    return rows, {**scratch_originals(rows, exclude=set(measured)), **measured}


def _environment(versions: dict, machine: dict) -> str:
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (f"stitchkit {versions.get('stitchkit', '?')}, torch {versions.get('torch', '?')}, timm "
            f"{versions.get('timm', '?')}, {machine['threads']} torch thread(s) per run, {machine.get('cores', '?')} "
            f"CPU cores ({machine['cpu']}, torch's {machine['cpu_kernels']} kernels){gpu}, Python "
            f"{versions.get('python', '?')}")


def findings_markdown(findings: list[Finding], originals: dict, spec: dict, command: str, figures: list[str],
                      minutes: float | None, setup: str = "", failures: list[tuple[str, str]] = (),
                      left_out: list[str] = ()) -> str:
    """The page. ``failures``: ``(run folder, error)`` of the runs that failed, listed before the findings (their
    numbers are missing from every table); ``left_out``: the sweeps in the output folder that are not this findings
    file's (an earlier run with other settings), named as left out of the verdicts."""
    from .starts import DEFAULT_START

    src, st = spec["sources"], spec["stitches"]
    seeds = len(spec.get("seeds", [0]))
    lines = [
        "# The paper's five findings at small scale" + (", and one beyond it" if len(findings) > 5 else ""),
        "",
        f"Regenerate with `{command}` (resumable; {minutes:.0f} minutes of training in all on the machine that made "
        "this page, over every invocation)." if minutes else
        f"Regenerate with `{command}` (resumable).",
        "",
        f"Fashion-MNIST at 32 px. Sources trained from scratch on {src['images']} images for {src['epochs']} "
        f"epoch(s); every stitch trains its adapters on {st['images']} images for {st['epochs']} epoch(s) with the "
        f"paper's recipe (AdamW 2e-3, weight decay 0.05, cosine), evaluated on {spec.get('val_images', 2000)} test "
        f"images; {seeds} seeds; mean ± standard error over seeds (n). Every source model is trained with each seed "
        "and the stitch of seed s joins the seed-s sources, so the standard errors include the sources' own "
        f"variation. Adapters start from stitchkit's default (`model.adapter_norm={DEFAULT_START}`, "
        "docs/adapter_start.md).",
        "",
        f"Measured with {setup}." if setup else "",
        "",
        "At 32 px the stages' feature maps are small: ResNet-18's are 8x8, 4x4, 2x2 and 1x1 (ViTs keep an 8x8 token "
        "grid throughout), so a stitch into Stage 3 or 4 of a CNN sees a 2x2 or 1x1 map, where resizing has little "
        "to do and a 3x3 convolution is mostly padding.",
        "",
    ]
    if failures:
        lines += [f"**{plural(len(failures), 'run')} failed** and {'is' if len(failures) == 1 else 'are'} missing from "
                  "every number below (a failed source model also keeps the stitches that read it from training; each "
                  "run's result.json says why):", ""]
        lines += [f"- `{name}`: {error}" for name, error in failures[:20]]
        lines += [f"- and {len(failures) - 20} more" for _ in [0] if len(failures) > 20]
        lines.append("")
    if left_out:
        lines += [f"Left out of the verdicts and tables: {plural(len(left_out), 'sweep')} in the output folder that "
                  f"{'is' if len(left_out) == 1 else 'are'} not this findings file's (an earlier run with other "
                  f"settings, such as --smoke, or a block since removed: {', '.join(left_out[:3])}"
                  f"{' ...' if len(left_out) > 3 else ''}); their runs stay on disk, and the figures, drawn from "
                  "the whole folder's report, still show them.", ""]
    lines += [
        "| source model | top-1 | GMACs at 32 px | trained |",
        "|---|---|---|---|",
    ]
    for name, o in sorted(originals.items()):
        lines.append(f"| {name} | {_fmt_original(o)} | {o.get('gmacs') or 0:.4f} | {o.get('source', '')} |")
    for f in findings:
        unmeasured = getattr(f.verdict, "unmeasured", 0)
        lines += ["", f"## Finding {f.number}: {f.claim}", "", f"**Verdict at this scale: {f.verdict}** ({getattr(f.verdict, 'held', '?')} of "
                  f"{getattr(f.verdict, 'checks', '?')} comparisons hold; confirmed needs 3 in 4"
                  + (f"; {unmeasured} not measured, left out: a side has fewer than {MIN_SEEDS} finished seeds, so no "
                     "standard error" if unmeasured else "") + f"). Rule: {f.rule}.",
                  ""]
        if len(f.table) > 1:
            lines.append("| " + " | ".join(f.table[0]) + " |")
            lines.append("|" + "---|" * len(f.table[0]))
            lines += ["| " + " | ".join(row) + " |" for row in f.table[1:]]
        lines += [""] + f.notes if f.notes else []
    lines += ["", "## What this scale cannot show", "",
              "- ImageNet accuracy and the paper's absolute numbers: the sources are small models trained for minutes "
              "on 28 px grayscale clothes, not ImageNet-pretrained networks; a stitch can keep at most what its parts "
              "learned.",
              "- Out-of-memory failures of No Downsample on large gaps: at 32 px the largest feature map is 8 x 8, so "
              "keeping the full resolution costs compute (see the GMACs) but never memory.",
              "- Swin: the hierarchical family here is MobileNetV3; a Swin at 32 px has 1 x 1 windows in its last "
              "stage.",
              "- Differences smaller than about two standard errors: three seeds separate only clear effects.",
              "", "## Figures", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in figures]
    return "\n".join(lines) + "\n"


def run_findings(path: str | Path, out: str | Path = "runs/findings", doc: str | Path | None = None,
                 smoke: bool = False, threads: int | None = None, workers: int = 1, log=print) -> list[Finding]:
    """Train what the findings file asks for (resuming), judge the five findings, write ``doc`` and its figures.

    ``workers`` processes train side by side (one torch thread each unless ``threads`` says otherwise)."""
    from .reports import write_report
    from .reports.collect import collect, summarize
    from .training.data import find_fashion_mnist

    find_fashion_mnist(None)
    spec = load_findings_file(path, smoke)
    out = Path(out)
    start = time.time()
    threads = threads_per_run(threads, workers)
    sources, *stitches = findings_sweeps(spec, out, threads)
    failures, cells = run_stages([[sources], stitches], out, log, workers)
    minutes = _add_compute_time(out, time.time() - start) / 60
    index = write_report(out)
    built = [sources, *stitches]
    rows, originals = _this_invocation(*collect(out), built, out)
    names = {sweep.name for sweep in built}
    left_out = sorted(p.stem for p in (out / MANIFEST_DIR).glob("*.json") if p.stem not in names)
    if left_out:
        log(f"left out of the findings: {plural(len(left_out), 'sweep')} in {out / MANIFEST_DIR} not in this findings "
            f"file ({', '.join(left_out[:3])}{' ...' if len(left_out) > 3 else ''}); their runs stay on disk")
    summary = summarize(rows)
    findings = judge(summary, originals, chance=10.0)
    for f in findings:
        log(f"finding {f.number}: {f.verdict}")
    if doc is not None:
        doc = Path(doc)
        assets = doc.parent / doc.stem
        assets.mkdir(parents=True, exist_ok=True)
        figures = []
        for png in sorted(index.parent.glob("*.png")):
            shutil.copyfile(png, assets / png.name)
            figures.append(f"{assets.name}/{png.name}")
        command = f"stitchkit findings {path} --out {out} --doc {doc}" + (" --smoke" if smoke else "")
        runs = [RunDir(out / cell.name).read_result() or {} for sweep in built for cell in sweep.cells]
        errors = {name: str((RunDir(out / name).read_result() or {}).get("error") or "").strip() for name in failures}
        failed = [(name, (error or "no error recorded").splitlines()[0][:300]) for name, error in errors.items()]
        doc.write_text(findings_markdown(findings, originals, spec, command, figures, minutes,
                                         environment(threads, runs), failed, left_out))
        log(f"wrote {doc}")
    log(f"{cells} runs in {time.time() - start:.0f} s; report: {index.resolve()}")
    if failures:
        raise StitchkitError(f"{len(failures)} runs failed (see their result.json): {', '.join(failures[:3])}")
    return findings
