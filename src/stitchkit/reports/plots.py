"""The paper's figures from summary rows: accuracy vs gap (Figures 3, 4, 9-11) and accuracy vs compute with the
Pareto front and the original models as stars (Figures 5, 6, 12-15). Each is written as PNG and PDF."""
from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..files import atomic_write_bytes  # noqa: E402
from ..pareto import front_points as pareto_front  # noqa: E402  (the points, as the figures use them)
from ..sweeps.methods import get_method  # noqa: E402
from .words import plural  # noqa: E402


def method_label(method: str) -> str:
    """A method as the paper's legends name it: ``Downsample, Bottleneck`` for ``downsample_bottleneck``."""
    try:
        return get_method(method).label
    except Exception:  # finetune, scratch and unregistered names are their own labels
        return {"finetune": "Fine-Tuning"}.get(method, method)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


# Each figure's file name starts with what it shows; figure_title reads it back for the report page.
FIGURE_KINDS = {"compute": "Accuracy vs compute", "gap": "Accuracy vs gap"}
OVERVIEW_STEM = "pairs_overview"


def figure_title(path: Path, pairs: list[str]) -> str:
    """What a figure shows, in words, from its file name: ``Accuracy vs compute: resnet18 -> resnet18`` for
    ``compute_resnet18_resnet18.png`` (``pairs`` are the report's pairs, whose slugs the names hold), and
    ``Accuracy vs gap: resnet18 -> resnet18 (sweep tiny)`` for ``gap_resnet18_resnet18__tiny.png``, one of the
    figures of a pair trained in several ways (see :func:`_figures_of_pair`)."""
    if path.stem == OVERVIEW_STEM:
        return "Accuracy vs compute, every pair (full-block adapters)"
    kind, _, rest = path.stem.partition("_")
    slug, _, suffix = rest.partition("__")
    by_slug = {_slug(pair): pair for pair in pairs}
    if kind in FIGURE_KINDS and slug in by_slug:
        return f"{FIGURE_KINDS[kind]}: {by_slug[slug]}" + (f" ({_suffix_words(suffix)})" if suffix else "")
    return path.stem.replace("_", " ")  # a figure this module does not name: its file name is all there is


def _suffix_words(suffix: str) -> str:
    """``sweep tiny``, ``sweeps a, b`` or ``settings 2`` for a file name's suffix (:func:`_figures_of_pair`)."""
    parts = suffix.split("__")
    if parts[0].startswith("settings_"):
        return parts[0].replace("_", " ")
    return f"sweep{'s' if len(parts) > 1 else ''} {', '.join(parts)}"


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for path in paths:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix[1:], dpi=130, bbox_inches="tight")
        atomic_write_bytes(path, buffer.getvalue())
    plt.close(fig)
    return paths


def original_label(name: str, originals: dict) -> str:
    """``resnet18 (original: trained from scratch: fashion_mnist 32 px, 2 epochs x 16000 images, 1 seed)``."""
    source = originals[name].get("source")
    return f"{name} (original: {source})" if source else f"{name} (original)"


def bands_note(rows: list[dict], what: str = "bands") -> str:
    """What the shaded bands (or the error bars: ``what="error bars"``) are, honestly: standard error over n seeds,
    or nothing when every point is one run."""
    counts = sorted({r["n"] for r in rows if r.get("n")})
    if not counts or counts[-1] < 2:
        return f"one seed per point: no {'error bands' if what == 'bands' else what}"
    n = f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]}-{counts[-1]}"
    return f"{what}: standard error over seeds, {n}"


def training_note(rows: list[dict]) -> str:
    """What the plotted runs were trained on (``fashion_mnist 32 px, 2 epochs x 6000 images``), when one thing."""
    labels = sorted({r["training"] for r in rows if r.get("training")})
    return labels[0] if len(labels) == 1 else ""


def _title(pair: str, what: str, rows: list[dict], note: str = "") -> str:
    training = training_note(rows)
    details = "; ".join(part for part in (f"stitches trained on {training}" if training else "", note) if part)
    return f"{pair}: {what}" + (f"\n{details}" if details else "")


def _legend_below(fig, *axes) -> None:
    """One legend under the panels, where long labels (an original's training) cover no data, with every entry
    of every panel once (a pair drawn only in the first panel is listed too)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(list(entries.values()), list(entries), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               fontsize=7, frameon=False)


def _by_line(rows: list[dict], key: str = "method") -> dict[tuple, list[dict]]:
    """The rows of a figure's lines: one line per method (``key``), joining its points across sweeps, except where
    two sweeps have a point at the same place (source and destination stage): then one line per (method, sweep),
    so that no line zig-zags between two sweeps' results. Runs outside sweeps (no sweep) at the same place under
    different settings are told apart the same way, as ``settings 1``, ``settings 2``. Keys are ``(method, what)``,
    with ``what`` the words that tell the line apart (``sweep tiny``), None for a line that is the method's whole."""
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row[key], []).append(row)
    lines: dict[tuple, list[dict]] = {}
    for name, members in by_key.items():
        places = [(r["src_stage"], r["dst_stage"]) for r in members]
        if len(places) == len(set(places)):
            lines[(name, None)] = members
            continue
        loose = sorted({repr(r.get("_scope")) for r in members if not r.get("sweep")})
        for row in members:
            what = (f"sweep {row['sweep']}" if row.get("sweep") else
                    f"settings {loose.index(repr(row.get('_scope'))) + 1}")
            lines.setdefault((name, what), []).append(row)
    return lines


def _line_colours(lines: dict[tuple, list[dict]]) -> dict[tuple, str]:
    """One colour per line for a whole figure, so a line has the same colour in every panel."""
    return {k: f"C{i % 10}" for i, k in enumerate(sorted(lines, key=lambda k: (k[0], k[1] or "")))}


def _line_label(text: str, what: str | None) -> str:
    return f"{text} ({what})" if what else text


def _figures_of_pair(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """A pair's rows in figures: one per way of training (data, image size, epochs x images, the rows'
    ``training``), as each of the paper's figures shows runs trained one way, so a figure's title can say how its
    stitches were trained. ``(file name suffix, rows)``; the suffix names the figure's sweeps (``tiny``,
    ``a__b``), or ``settings_N`` without sweeps, and is empty when the pair has one figure."""
    by_training: dict[str, list[dict]] = {}
    for row in rows:
        by_training.setdefault(row.get("training") or "", []).append(row)
    if len(by_training) <= 1:
        return [("", rows)]
    figures = []
    for number, (_, members) in enumerate(sorted(by_training.items()), 1):
        sweeps = sorted({r["sweep"] for r in members if r.get("sweep")})
        figures.append(("__".join(_slug(s) for s in sweeps) if sweeps else f"settings_{number}", members))
    return figures


def _figure_originals(names, originals: dict, summary: list[dict], rows: list[dict], pair_rows: list[dict]) -> dict:
    """The originals a figure shows as its reference (the destination's dashed line, the stars): a model trained
    from scratch in one of the figure's own sweeps first; else the folder's original, unless that was trained in
    another sweep of this pair (it is that sweep's figure's reference, trained another way, not this one's)."""
    sweeps = {r.get("sweep") for r in rows if r.get("sweep")}
    others = {r.get("sweep") for r in pair_rows if r.get("sweep")} - sweeps
    chosen = {}
    for name in names:
        own = [r for r in summary if r["kind"] == "scratch" and r["src"] == name and r.get("sweep") in sweeps
               and r["top1_mean"] is not None]
        if own:
            best = max(own, key=lambda r: (r["n"], r["sweep"]))
            chosen[name] = {"top1": best["top1_mean"], "gmacs": best["gmacs"],
                            "source": f"trained from scratch: {best['training']}, {plural(best['n'], 'seed')}"}
        elif name in originals and originals[name].get("sweep") not in others:
            chosen[name] = originals[name]
    return chosen


def accuracy_vs_gap(summary: list[dict], originals: dict, out: Path) -> list[Path]:
    """Per pair: one panel per source stage, accuracy vs destination stage, one line (± standard error) per method
    (see :func:`_by_line`); one figure per way the pair was trained (:func:`_figures_of_pair`)."""
    paths = []
    for pair in sorted({r["pair"] for r in summary if r["gap"]}):
        pair_rows = [r for r in summary if r["pair"] == pair and r["gap"] and r["top1_mean"] is not None]
        for suffix, rows in _figures_of_pair(pair_rows):
            paths += _gap_figure(pair, suffix, rows, _figure_originals([rows[0]["dst"]] if rows else [], originals,
                                                                       summary, rows, pair_rows), out)
    return paths


def _stage_panels(rows: list[dict]):
    """A figure with one panel per source stage of ``rows`` (None without rows), one colour per line of the whole
    figure, and per panel its axes, stage, rows and lines (``((method, sweep), rows)``, in a stable order)."""
    stages = sorted({r["src_stage"] for r in rows})
    if not stages:
        return None, {}, []
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4), squeeze=False)
    panels = []
    for ax, stage in zip(axes[0], stages):
        panel = [r for r in rows if r["src_stage"] == stage]
        lines = sorted(_by_line(panel).items(), key=lambda item: (item[0][0], item[0][1] or ""))
        panels.append((ax, stage, panel, lines))
    return fig, _line_colours(_by_line(rows)), panels


def _gap_figure(pair: str, suffix: str, rows: list[dict], originals: dict, out: Path) -> list[Path]:
    fig, colours, panels = _stage_panels(rows)
    if fig is None:
        return []
    for ax, stage, _, lines in panels:
        for (method, sweep), members in lines:
            members.sort(key=lambda r: r["dst_stage"])
            x = [r["dst_stage"] for r in members]
            y = [r["top1_mean"] for r in members]
            se = [r["top1_se"] or 0.0 for r in members]
            line, = ax.plot(x, y, marker="o", label=_line_label(method_label(method), sweep),
                            color=colours[(method, sweep)])
            ax.fill_between(x, [a - b for a, b in zip(y, se)], [a + b for a, b in zip(y, se)],
                            color=line.get_color(), alpha=0.2)
        dst = rows[0]["dst"]
        if dst in originals:
            ax.axhline(originals[dst]["top1"], color="grey", linestyle="--", label=original_label(dst, originals))
        ax.set_title(f"Stage {stage} -> Stage y")
        ax.set_xlabel("destination stage")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_xticks(range(stage, 5))
        ax.grid(alpha=0.3)
    _legend_below(fig, *(ax for ax, *_ in panels))
    fig.suptitle(_title(_pair_title(pair, suffix), "accuracy vs gap", rows, bands_note(rows)), fontsize=10, y=1.08)
    return _save(fig, out, f"gap_{_slug(pair)}" + (f"__{suffix}" if suffix else ""))


def _pair_title(pair: str, suffix: str) -> str:
    return f"{pair} ({_suffix_words(suffix)})" if suffix else pair


STAR_COLOURS = ("gold", "silver", "sandybrown", "plum", "lightskyblue", "palegreen")


def _stars(ax, names, originals):
    for name, colour in zip(names, STAR_COLOURS * 4):
        if name in originals and originals[name].get("gmacs"):
            ax.scatter([originals[name]["gmacs"]], [originals[name]["top1"]], marker="*", s=240, zorder=5,
                       color=colour, edgecolor="black", label=original_label(name, originals))


def _sources(row: dict) -> list[str]:
    """The source models of a row: one, or a parallel stitch's (recorded joined, ``A+B``)."""
    return row["src"].split("+")


def _parallel_rows(summary: list[dict], src: str, dst: str) -> list[dict]:
    """Parallel stitches into ``dst`` that have ``src`` among their sources: points on its single stitches'
    accuracy-compute figure (does fusing another front beat the single front at its compute?)."""
    return [r for r in summary if len(_sources(r)) > 1 and src in _sources(r) and r["dst"] == dst and r["gap"]
            and r["top1_mean"] is not None and r["gmacs"]]


def accuracy_vs_compute(summary: list[dict], originals: dict, out: Path) -> list[Path]:
    """Per pair: one panel per source stage, accuracy vs GMACs per method, the Pareto front, originals as stars;
    parallel stitches that fuse this pair's source with others (trained the same way) appear on it as diamonds.
    One figure per way the pair was trained (:func:`_figures_of_pair`), lines as :func:`_by_line` draws them."""
    paths = []
    for pair in sorted({r["pair"] for r in summary if r["gap"]}):
        pair_rows = [r for r in summary if r["pair"] == pair and r["gap"] and r["top1_mean"] is not None
                     and r["gmacs"]]
        for suffix, rows in _figures_of_pair(pair_rows):
            if rows and len(_sources(rows[0])) == 1:
                trainings = {r.get("training") for r in rows}
                rows = rows + [{**r, "method": f"{r['method']}:{r['src']}"}
                               for r in _parallel_rows(summary, rows[0]["src"], rows[0]["dst"])
                               if r.get("training") in trainings]
            names = sorted({n for r in rows for n in (*_sources(r), r["dst"])})
            paths += _compute_figure(pair, suffix, rows,
                                     _figure_originals(names, originals, summary, rows, pair_rows), out)
    return paths


def _compute_figure(pair: str, suffix: str, rows: list[dict], originals: dict, out: Path) -> list[Path]:
    fig, colours, panels = _stage_panels(rows)
    if fig is None:
        return []
    for ax, stage, panel, lines in panels:
        for (method, sweep), members in lines:
            members.sort(key=lambda r: r["gmacs"])
            fused = len(_sources(members[0])) > 1 and ":" in method
            label = (f"{method_label(method.split(':')[0])} with {members[0]['src'].replace('+', ' + ')}"
                     if fused else method_label(method))
            ax.plot([r["gmacs"] for r in members], [r["top1_mean"] for r in members], marker="D" if fused else "o",
                    linestyle="--" if fused else "-", label=_line_label(label, sweep), color=colours[(method, sweep)])
            spread = [r for r in members if r.get("top1_se")]  # ± one standard error, where a point has seeds
            if spread:
                ax.errorbar([r["gmacs"] for r in spread], [r["top1_mean"] for r in spread],
                            yerr=[r["top1_se"] for r in spread], fmt="none", ecolor=colours[(method, sweep)],
                            elinewidth=1, capsize=3, alpha=0.7)
            for r in members:  # which gap each point is
                ax.annotate(r["gap"], (r["gmacs"], r["top1_mean"]), textcoords="offset points", xytext=(4, 3),
                            fontsize=7, color="dimgrey")
        front = pareto_front([(r["gmacs"], r["top1_mean"]) for r in panel])
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linestyle=":",
                label="Pareto front")
        _stars(ax, sorted({*_sources(panel[0]), panel[0]["dst"]}), originals)
        ax.set_title(f"Stage {stage} -> Stage y")
        ax.set_xlabel("GMACs (multiply-accumulates, one image)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    _legend_below(fig, *(ax for ax, *_ in panels))
    fig.suptitle(_title(_pair_title(pair, suffix), "accuracy vs compute (up and left is better)", rows,
                        bands_note(rows, "error bars")), fontsize=10, y=1.08)
    return _save(fig, out, f"compute_{_slug(pair)}" + (f"__{suffix}" if suffix else ""))


def pairs_overview(summary: list[dict], originals: dict, out: Path) -> list[Path]:
    """Figure 6: the full-block method of every pair (ViT block for ViT to ViT, bottleneck otherwise)."""
    rows = [r for r in summary if r["gap"] and r["top1_mean"] is not None and r["gmacs"]
            and r["method"] in ("downsample_bottleneck", "vit_block")]
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["pair"], []).append(r)
    for pair, members in list(by_pair.items()):  # ViT to ViT: the ViT block replaces the bottleneck, as in the paper
        if any(r["method"] == "vit_block" for r in members):
            by_pair[pair] = [r for r in members if r["method"] == "vit_block"]
    stages = sorted({r["src_stage"] for r in rows})
    if not stages:
        return []
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4), squeeze=False)
    # One line per pair, or per (pair, sweep) where two sweeps trained the same stitch of a pair.
    lines = _by_line([r for members in by_pair.values() for r in members], key="pair")
    colours = _line_colours(lines)  # one colour per line in every panel
    for ax, stage in zip(axes[0], stages):
        for (pair, sweep), members in sorted(lines.items(), key=lambda item: (item[0][0], item[0][1] or "")):
            members = sorted((r for r in members if r["src_stage"] == stage), key=lambda r: r["gmacs"])
            if members:
                ax.plot([r["gmacs"] for r in members], [r["top1_mean"] for r in members], marker="o",
                        label=_line_label(pair, sweep), color=colours[(pair, sweep)])
        _stars(ax, sorted({r["src"] for r in rows}), originals)
        ax.set_title(f"Stage {stage} -> Stage y, full-block adapters")
        ax.set_xlabel("GMACs")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    _legend_below(fig, *axes[0])
    return _save(fig, out, OVERVIEW_STEM)
