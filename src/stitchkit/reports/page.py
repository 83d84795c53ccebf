"""The paper's Table 1 as Markdown and the one-page HTML report (self-contained: images inlined, no scripts)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ..files import atomic_write_text
from .collect import distinct
from .plots import figure_title, method_label
from .words import COUNT_COLUMNS, column_label, plural


def _fmt(value, digits=2) -> str:
    """Numbers as people read them: 4,722,050 parameters, 82.53 %, 0.01958 GMACs, 0.0002 learning rate."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 1 or value == 0:
            return f"{value:.{digits}f}"
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10000:
        return f"{value:,}"
    return str(value)


def table1_rows(summary: list[dict], originals: dict) -> list[dict]:
    """Stitched models next to the reference models of similar compute (the paper's Table 1 layout).

    The rows are the reference models themselves (``originals`` with known compute: measured here by ``stitchkit
    eval-model --out``, trained from scratch in the folder, or from a model card; the pairs' source and destination
    models are among them wherever their accuracy is known) and, for each, the most accurate stitched cell whose
    compute lies within 80-102% of it. Sorted by GMACs. No reference models, no rows (:func:`table1_missing` says
    what to add).
    """
    refs = [{"model": name, "top1": o["top1"], "gmacs": o.get("gmacs"), "source": o["source"]}
            for name, o in originals.items() if o.get("gmacs")]
    finished = [r for r in summary if r["kind"] in ("stitch", "finetune") and r["top1_mean"] is not None and r["gmacs"]]
    rows, used = list(refs), set()
    for ref in refs:
        near = [r for r in finished if 0.8 * ref["gmacs"] <= r["gmacs"] <= 1.02 * ref["gmacs"]]
        # The best stitch and, apart, the best fine-tuning baseline: a baseline is no stitch, and must not take the
        # place of the stitch the table is about.
        for group in ([r for r in near if r["kind"] == "stitch"], [r for r in near if r["kind"] == "finetune"]):
            if not group:
                continue
            best = max(group, key=lambda r: r["top1_mean"])
            key = (best["pair"], best["gap"], best["method"], best["sweep"])
            if key in used:
                continue
            used.add(key)
            seeds = f"mean of {plural(best['n'], 'seed')}"
            stitch = best["kind"] == "stitch"
            what = best["method"] if stitch else f"fine-tuning baseline, learning rate {_fmt(best['lr'])}"
            rows.append({"model": f"{best['pair']} Stage {best['gap'].replace(':', ' -> ')} ({what})",
                         "top1": best["top1_mean"], "top1_text": _accuracy(best["top1_mean"], best["top1_se"], ""),
                         "gmacs": best["gmacs"],
                         "source": f"stitched, {seeds}" if stitch else f"fine-tuning baseline (no stitch), {seeds}"})
    return sorted(rows, key=lambda r: r["gmacs"])


def table1_missing(summary: list[dict], originals: dict, runs_dir: str | Path = "RUNS_DIR") -> str:
    """Why Table 1 has no rows, and how to add them. Its rows hang off reference models (:func:`table1_rows`), so
    an empty table means there are none with known compute, whether or not stitched runs have finished."""
    finished = [r for r in summary if r["kind"] in ("stitch", "finetune") and r["top1_mean"] is not None and r["gmacs"]]
    models = sorted({m for r in summary if r["gap"] for m in (r["src"], r["dst"]) if m})
    model = models[0] if models else "MODEL"
    text = (f"No reference models to compare the {plural(len(finished), 'finished stitched cell')} with"
            if finished else "No reference models and no finished stitched runs with compute yet")
    named = f" ({', '.join(models)})" if models else ""
    text += (": Table 1 puts stitched models next to models on their own of similar compute. Measure each source "
             f"and destination{named} on this data with `stitchkit eval-model "
             f"{model} --data ... --out {Path(runs_dir) / 'originals' / model}` (the report reads every result.json "
             "under the runs folder), or train it from scratch in the folder (mode=scratch). Published ImageNet top-1 "
             "from model cards stands in only for runs on ImageNet itself (an image folder of 1000 classes at 224 "
             "px): on other data it says nothing of a model's accuracy.")
    uncounted = sorted(name for name, o in originals.items() if not o.get("gmacs"))
    if uncounted:
        text += f" ({', '.join(uncounted)}: accuracy known, compute not recorded.)"
    return text


def table1_markdown(rows: list[dict], missing: str = "") -> str:
    """Table 1 in Markdown; ``missing`` (:func:`table1_missing`) says, under an empty table, what would fill it."""
    lines = ["| Model | Top-1 (%) | GMACs | Source |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r.get('top1_text') or _fmt(r['top1'], 1)} | {r['gmacs']:.3f} | {r['source']} |")
    if not rows:
        lines += ["", missing or "No reference models to compare stitched models with yet."]
    return "\n".join(lines) + "\n"


def _cell_text(value, column: str) -> str:
    """A table cell: counts without decimals (a mean over seeds makes 684 parameters the float 684.0)."""
    if column in COUNT_COLUMNS and isinstance(value, float) and value.is_integer():
        value = int(value)
    return _fmt(value)


def html_table(rows: list[dict], columns: list[str]) -> str:
    """A table in a box of its own that scrolls sideways: a wide table never makes the whole page wider than the
    window. Headings are words; the field name (as in the CSV files) is each heading's tooltip."""
    head = "".join(f'<th title="{html.escape(c)}">{html.escape(column_label(c))}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            cls = f' class="{html.escape(str(value))}"' if c == "status" else ""
            cells.append(f"<td{cls}>{html.escape(_cell_text(value, c))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


# The pair and gap columns say all that these do; results.csv and summary.csv keep them for scripts.
LEFT_OUT_OF_PAGE = ("src", "dst", "src_stage", "dst_stage")


def _page_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c not in LEFT_OUT_OF_PAGE]


def _accuracy(top1: float, se: float | None, unit: str = " %") -> str:
    """A mean and its standard error to the same one decimal (``68.8 ± 18.8 %``)."""
    return f"{top1:.1f} ± {se:.1f}{unit}" if se is not None else f"{top1:.1f}{unit}"


def _compared_with_destination(best: dict, originals: dict) -> str:
    """``; that is 0.1 points below resnet18 on its own (88.3 % at 0.037 GMACs), with 88 % of its compute``, or
    nothing when the destination model's own accuracy is not known."""
    own = originals.get(best["dst"])
    if not own or own.get("top1") is None:
        return ""
    difference = best["top1_mean"] - own["top1"]
    side = "above" if difference >= 0 else "below"
    at = f" at {own['gmacs']:.3g} GMACs" if own.get("gmacs") else ""
    text = f"; that is {abs(difference):.1f} points {side} {best['dst']} on its own ({own['top1']:.1f} %{at})"
    if own.get("gmacs") and best.get("gmacs"):
        text += f", with {100 * best['gmacs'] / own['gmacs']:.0f} % of its compute"
    return text


def _at(row: dict) -> str:
    compute = f" at {row['gmacs']:.3g} GMACs" if row.get("gmacs") else ""
    return (f"at stage {row['src_stage']} -> {row['dst_stage']}, with {_accuracy(row['top1_mean'], row['top1_se'])} "
            f"top-1{compute}")


def _baseline_sentence(cells: list[dict]) -> str:
    """`` The fine-tuning baseline (no stitch: ...): best at stage 1 -> 3, ...``, or nothing without one."""
    done = [r for r in cells if r.get("kind") == "finetune" and r["top1_mean"] is not None]
    if not done:
        return ""
    best = max(done, key=lambda r: r["top1_mean"])
    chosen = f", learning rate {_fmt(best['lr'])}" + (f" chosen on {best['selected_on']}" if best.get("selected_on")
                                                      else "") if best.get("lr") is not None else ""
    return (f" The fine-tuning baseline (no stitch: the model cut across the gap, every weight trained): best "
            f"{_at(best)} (mean of {plural(best['n'], 'seed')}{chosen}).")


def pair_sentence(cells: list[dict], originals: dict) -> str:
    """One source -> destination pair in a sentence: its most accurate stitch (method, gap, accuracy, compute,
    seeds) and how that compares with the destination model on its own; then, named as such, the fine-tuning
    baseline's best (a baseline is never the pair's "stitch")."""
    stitches = [r for r in cells if r.get("kind", "stitch") == "stitch"]
    done = [r for r in stitches if r["top1_mean"] is not None]
    baseline = _baseline_sentence(cells)
    if not done:
        return f"no finished stitches yet ({plural(len(stitches), 'cell')} pending or failed).{baseline}"
    best = max(done, key=lambda r: r["top1_mean"])
    return (f"most accurate stitch: {method_label(best['method'])} {_at(best)} (mean of {plural(best['n'], 'seed')})"
            f"{_compared_with_destination(best, originals)}.{baseline}")


def _pairs_list(summary: list[dict], originals: dict) -> str:
    """What each stitched pair achieved, one line each: the first thing the page says."""
    by_pair: dict[str, list[dict]] = {}
    for row in distinct(summary):  # a row whose runs another sweep's row holds is counted there
        if row["gap"]:  # stitches and fine-tuning; a model trained from scratch is no pair
            by_pair.setdefault(row["pair"], []).append(row)
    if not by_pair:
        return "<p>No stitched pairs yet.</p>"
    lines = "".join(f"<li><b>{html.escape(pair)}</b>: {html.escape(pair_sentence(cells, originals))}</li>"
                    for pair, cells in sorted(by_pair.items()))
    return f'<ul class="pairs">{lines}</ul>'


def _figure(png: Path, pairs: list[str]) -> str:
    """One figure, inlined (the page stays one file), titled by what it shows rather than by its file name."""
    title = html.escape(figure_title(png, pairs))
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<h3>{title}</h3><img alt="{title}" src="data:image/png;base64,{data}">'


def _figures(images: list[Path], pairs: list[str]) -> str:
    pngs = [image for image in images if image.suffix == ".png"]  # the PDFs are for papers, next to the page
    return "".join(_figure(png, pairs) for png in pngs) or "<p>No finished runs to plot yet.</p>"


STYLE = """
*,*::before,*::after{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:1.5em auto;padding:0 1em;max-width:1200px;color:#222;line-height:1.4;
overflow-wrap:break-word}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}h2{margin-top:1.6em}h3{font-size:1em;margin:1.2em 0 .2em}
.scroll{overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f4f4;vertical-align:bottom}td:first-child,th:first-child{text-align:left}
td.failed{background:#fdd}td.pending,td.interrupted{background:#ffd}td.skipped{color:#999}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{font-size:1.4em;display:block}img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0}
ul.pairs{padding-left:1.2em}ul.pairs li{margin:.4em 0}
.note{border-left:4px solid #e0b000;background:#fffbe6;padding:.4em .8em}
"""


def _status_cards(rows: list[dict], left: list[dict]) -> str:
    """Runs by status, counting only the runs the summary counts (``left``: the others, one card of their own),
    so that "8 finished" is what the figures and tables are made of."""
    counts: dict[str, int] = {}
    outside = {id(row) for row in left}
    for row in rows:
        if id(row) not in outside:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
    cards = [(str(n), status) for status, n in sorted(counts.items())]
    if left:
        cards.append((str(len(left)), "left out: in no current sweep"))
    return "".join(f'<div class="card"><b>{n}</b>{html.escape(what)}</div>' for n, what in cards)


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="note">{html.escape(note)}.</p>' for note in notes)


def write_html(path: Path, runs_dir: Path, rows: list[dict], summary: list[dict], originals: dict,
               table1: list[dict], figures: dict[str, list[Path]], columns: dict[str, list[str]],
               notes: list[str] = (), left: list[dict] = ()) -> None:
    """The page, in the order people read it: what each pair achieved and the accuracy-vs-compute figures first,
    then Table 1 and the original models, the accuracy-vs-gap figures, and last the long per-cell and per-run
    tables. ``figures`` holds the image files under "compute" and "gap"; ``notes`` (:func:`report_notes`) say,
    under the status cards, what the report left out and why; ``left``: the runs the summary leaves out."""
    originals_rows = [{"model": k, "top1": v["top1"], "gmacs": v.get("gmacs"), "source": v["source"]}
                      for k, v in sorted(originals.items())]
    pairs = sorted({r["pair"] for r in summary})
    outside = {id(row) for row in left}
    problems = [r for r in rows if r["status"] in ("failed", "interrupted", "pending") and id(r) not in outside]
    problems_table = html_table(problems, ["run_dir", "status", "error"]) if problems else "<p>None.</p>"
    t1 = [{"model": r["model"], "top1": r.get("top1_text") or _fmt(r["top1"], 1), "gmacs": r["gmacs"],
           "source": r["source"]} for r in table1]
    t1_table = (html_table(t1, ["model", "top1", "gmacs", "source"]) if t1 else
                f"<p>{html.escape(table1_missing(distinct(summary), originals, runs_dir))}</p>")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>stitchkit report</title>
<style>{STYLE}</style></head><body>
<h1>stitchkit report</h1><p class="sub">{html.escape(str(runs_dir))}: {plural(len(rows) - len(left), 'run')}{
    f" (and {len(left)} left out)" if left else ""}. Accuracy is top-1 (%)
on the evaluation split; ± is the standard error over seeds (sample standard deviation / &radic;n); compute is GMACs
(multiply-accumulates) for one image.</p>
<div class="cards">{_status_cards(rows, left)}</div>{_notes(notes)}
<h2>Each pair in one line</h2>{_pairs_list(summary, originals)}
<h2>Accuracy vs compute</h2>{_figures(figures["compute"], pairs)}
<h2>Table 1: stitched models next to models of similar compute</h2>{t1_table}
<h2>Original models</h2>{html_table(originals_rows, ["model", "top1", "gmacs", "source"])}
<h2>Accuracy vs gap</h2>{_figures(figures["gap"], pairs)}
<h2>Failed, interrupted and pending runs</h2>{problems_table}
<h2>Summary per cell</h2>{html_table(summary, _page_columns(columns["summary"]))}
<h2>All runs</h2>{html_table(rows, _page_columns(columns["results"]))}
<p class="sub">Files: results.csv, summary.csv, table1.md, and every figure as PNG and PDF next to this page.</p>
</body></html>"""
    atomic_write_text(path, page)
