"""The paper's Table 1 as Markdown and the one-page HTML report (self-contained: images inlined, no scripts)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ..files import atomic_write_text


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

    For each reference model (trained from scratch here, or a model card), the most accurate stitched cell whose
    compute lies within 80-102% of it; plus the source models themselves. Sorted by GMACs.
    """
    refs = [{"model": name, "top1": o["top1"], "gmacs": o.get("gmacs"), "source": o["source"]}
            for name, o in originals.items() if o.get("gmacs")]
    stitched = [r for r in summary if r["kind"] in ("stitch", "finetune") and r["top1_mean"] is not None and r["gmacs"]]
    rows, used = list(refs), set()
    for ref in refs:
        near = [r for r in stitched if 0.8 * ref["gmacs"] <= r["gmacs"] <= 1.02 * ref["gmacs"]]
        if not near:
            continue
        best = max(near, key=lambda r: r["top1_mean"])
        key = (best["pair"], best["gap"], best["method"])
        if key in used:
            continue
        used.add(key)
        se = f" ± {best['top1_se']:.2f}" if best["top1_se"] is not None else ""
        rows.append({"model": f"{best['pair']} Stage {best['gap'].replace(':', ' -> ')} ({best['method']})",
                     "top1": best["top1_mean"], "top1_text": f"{best['top1_mean']:.1f}{se}", "gmacs": best["gmacs"],
                     "source": f"stitched, mean of {best['n']} seeds"})
    return sorted(rows, key=lambda r: r["gmacs"])


def table1_markdown(rows: list[dict]) -> str:
    lines = ["| Model | Top-1 (%) | GMACs | Source |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r.get('top1_text') or _fmt(r['top1'], 1)} | {r['gmacs']:.3f} | {r['source']} |")
    if len(lines) == 2:
        lines.append("| (no finished runs with compute yet) | | | |")
    return "\n".join(lines) + "\n"


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            cls = f' class="{html.escape(str(value))}"' if c == "status" else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
td.failed{background:#fdd}td.pending,td.interrupted{background:#ffd}td.skipped{color:#999}
.cards{display:flex;gap:1em}.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{font-size:1.4em;display:block}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
"""


def write_html(path: Path, runs_dir: Path, rows: list[dict], summary: list[dict], originals: dict,
               table1: list[dict], images: list[Path], columns: dict[str, list[str]]) -> None:
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    cards = "".join(f'<div class="card"><b>{n}</b>{html.escape(status)}</div>' for status, n in sorted(counts.items()))
    originals_rows = [{"model": k, "top1": v["top1"], "gmacs": v.get("gmacs"), "source": v["source"]}
                      for k, v in sorted(originals.items())]
    figures = []
    for image in images:
        if image.suffix == ".png":
            data = base64.b64encode(image.read_bytes()).decode()
            figures.append(f'<h3>{html.escape(image.stem)}</h3><img alt="{html.escape(image.stem)}" '
                           f'src="data:image/png;base64,{data}">')
    problems = [r for r in rows if r["status"] in ("failed", "interrupted", "pending")]
    t1 = [{"model": r["model"], "top1": r.get("top1_text") or _fmt(r["top1"], 1), "gmacs": r["gmacs"],
           "source": r["source"]} for r in table1]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>stitchkit report</title>
<style>{STYLE}</style></head><body>
<h1>stitchkit report</h1><p class="sub">{html.escape(str(runs_dir))}: {len(rows)} runs. Accuracy is top-1 (%) on the
evaluation split; ± is the standard error over seeds (sample standard deviation / &radic;n); compute is GMACs
(multiply-accumulates) for one image.</p>
<div class="cards">{cards}</div>
<h2>Table 1: stitched models next to models of similar compute</h2>{_table(t1, ["model", "top1", "gmacs", "source"])}
<h2>Original models</h2>{_table(originals_rows, ["model", "top1", "gmacs", "source"])}
<h2>Summary per cell</h2>{_table(summary, columns["summary"])}
<h2>Figures</h2>{''.join(figures) or '<p>No finished runs to plot yet.</p>'}
<h2>Failed, interrupted and pending runs</h2>{_table(problems, ["run_dir", "status", "error"]) if problems else '<p>None.</p>'}
<h2>All runs</h2>{_table(rows, columns["results"])}
<p class="sub">Files: results.csv, summary.csv, table1.md, and every figure as PNG and PDF next to this page.</p>
</body></html>"""
    atomic_write_text(path, page)
