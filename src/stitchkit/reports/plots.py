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
    ``compute_resnet18_resnet18.png`` (``pairs`` are the report's pairs, whose slugs the names hold)."""
    if path.stem == OVERVIEW_STEM:
        return "Accuracy vs compute, every pair (full-block adapters)"
    kind, _, slug = path.stem.partition("_")
    by_slug = {_slug(pair): pair for pair in pairs}
    if kind in FIGURE_KINDS and slug in by_slug:
        return f"{FIGURE_KINDS[kind]}: {by_slug[slug]}"
    return path.stem.replace("_", " ")  # a figure this module does not name: its file name is all there is


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


def bands_note(rows: list[dict]) -> str:
    """What the shaded bands are, honestly: standard error over n seeds, or nothing when every point is one run."""
    counts = sorted({r["n"] for r in rows if r.get("n")})
    if not counts or counts[-1] < 2:
        return "one seed per point: no error bands"
    n = f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]}-{counts[-1]}"
    return f"bands: standard error over seeds, {n}"


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


def _method_colours(rows) -> dict[str, str]:
    """One colour per method for a whole figure, so a method has the same colour in every panel."""
    return {m: f"C{i % 10}" for i, m in enumerate(sorted({r["method"] for r in rows}))}


def _by_method(rows):
    methods = {}
    for row in rows:
        methods.setdefault(row["method"], []).append(row)
    return methods


def accuracy_vs_gap(summary: list[dict], originals: dict, out: Path) -> list[Path]:
    """Per pair: one panel per source stage, accuracy vs destination stage, one line (± standard error) per method."""
    paths = []
    for pair in sorted({r["pair"] for r in summary if r["gap"]}):
        rows = [r for r in summary if r["pair"] == pair and r["gap"] and r["top1_mean"] is not None]
        stages = sorted({r["src_stage"] for r in rows})
        if not stages:
            continue
        fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4), squeeze=False)
        colours = _method_colours(rows)
        for ax, stage in zip(axes[0], stages):
            for method, members in sorted(_by_method([r for r in rows if r["src_stage"] == stage]).items()):
                members.sort(key=lambda r: r["dst_stage"])
                x = [r["dst_stage"] for r in members]
                y = [r["top1_mean"] for r in members]
                se = [r["top1_se"] or 0.0 for r in members]
                line, = ax.plot(x, y, marker="o", label=method_label(method), color=colours[method])
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
        _legend_below(fig, *axes[0])
        fig.suptitle(_title(pair, "accuracy vs gap", rows, bands_note(rows)), fontsize=10, y=1.08)
        paths += _save(fig, out, f"gap_{_slug(pair)}")
    return paths


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
    parallel stitches that fuse this pair's source with others appear on it as diamonds."""
    paths = []
    for pair in sorted({r["pair"] for r in summary if r["gap"]}):
        rows = [r for r in summary if r["pair"] == pair and r["gap"] and r["top1_mean"] is not None and r["gmacs"]]
        if rows and len(_sources(rows[0])) == 1:
            rows += [{**r, "method": f"{r['method']}:{r['src']}"} for r in _parallel_rows(summary, rows[0]["src"],
                                                                                          rows[0]["dst"])]
        stages = sorted({r["src_stage"] for r in rows})
        if not stages:
            continue
        fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 4), squeeze=False)
        colours = _method_colours(rows)
        for ax, stage in zip(axes[0], stages):
            panel = [r for r in rows if r["src_stage"] == stage]
            for method, members in sorted(_by_method(panel).items()):
                members.sort(key=lambda r: r["gmacs"])
                fused = len(_sources(members[0])) > 1 and ":" in method
                label = (f"{method_label(method.split(':')[0])} with {members[0]['src'].replace('+', ' + ')}"
                         if fused else method_label(method))
                ax.plot([r["gmacs"] for r in members], [r["top1_mean"] for r in members], marker="D" if fused else "o",
                        linestyle="--" if fused else "-", label=label, color=colours[method])
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
        _legend_below(fig, *axes[0])
        fig.suptitle(_title(pair, "accuracy vs compute (up and left is better)", rows), fontsize=10, y=1.08)
        paths += _save(fig, out, f"compute_{_slug(pair)}")
    return paths


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
    colours = {pair: f"C{i % 10}" for i, pair in enumerate(sorted(by_pair))}  # one colour per pair in every panel
    for ax, stage in zip(axes[0], stages):
        for pair, members in sorted(by_pair.items()):
            members = sorted((r for r in members if r["src_stage"] == stage), key=lambda r: r["gmacs"])
            if members:
                ax.plot([r["gmacs"] for r in members], [r["top1_mean"] for r in members], marker="o", label=pair,
                        color=colours[pair])
        _stars(ax, sorted({r["src"] for r in rows}), originals)
        ax.set_title(f"Stage {stage} -> Stage y, full-block adapters")
        ax.set_xlabel("GMACs")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    _legend_below(fig, *axes[0])
    return _save(fig, out, OVERVIEW_STEM)
