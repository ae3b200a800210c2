"""report.html: one self-contained file (plotly.js inlined once) with the front of every
objective pair, a 3-D view, the front and headline tables, the hypervolume over trials and
per-axis effects. Built from the same `StudyTable` as the CSVs; the W&B summary run logs the
same pair and 3-D figures, so both show one picture of the front."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from vitsweep.files import write_text
from vitsweep.track.pareto import StudyTable, headline_sentence, notes, panel_pairs

AXES = (
    "param:arch.depth",
    "param:arch.embed_dim",
    "param:token.r",
    "param:precision",
    "param:runtime",
)
# the categorical choices that say how a front member runs, shown beside its number
KIND_COLUMNS = ("param:precision", "param:runtime")
LOG_AXES = ("throughput", "energy", "flops", "params", "latency_ms", "model_bytes")


def _number(v: Any) -> str:
    """Three significant digits where no interval says more (a timing that drifts 5-10%
    supports no more), large ones with k/M/G: 6.31k img/s, 5.8M params."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return html.escape("" if v is None else str(v))
    if isinstance(v, int) and abs(v) < 1000:
        return str(v)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _decimals(row: dict[str, Any], col: str) -> int | None:
    """Decimal places a value with a 95% interval in `row` supports: down to the first digit of
    the interval's half-width (0.934 for [0.929, 0.939]); None without an interval."""
    base = col.removesuffix("_lo").removesuffix("_hi")
    lo, hi = row.get(f"{base}_lo"), row.get(f"{base}_hi")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi))
    if not numbers or not math.isfinite(hi - lo) or hi <= lo:
        return None
    return max(0, -math.floor(math.log10((hi - lo) / 2)))


def _cell(row: dict[str, Any], col: str) -> str:
    v = row.get(col, "")
    places = _decimals(row, col) if isinstance(v, float) else None
    return _number(v) if places is None else f"{v:.{places}f}"


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c.removeprefix('param:'))}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r, c)}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _points(table: StudyTable) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Complete trials with their hover text and colour (front red), computed once per table."""
    done = [r for r in table.rows if r["state"] == "COMPLETE"]
    hover = [f"trial {r['number']}" + (" (baseline)" if r["baseline"] else "") for r in done]
    colors = ["#d62728" if r["is_pareto"] else "#9e9e9e" for r in done]
    return done, hover, colors


def pair_figures(table: StudyTable) -> list[tuple[str, Any]]:
    """One scatter per objective pair, front in red; names are `<y>_vs_<x>`."""
    import plotly.graph_objects as go

    done, hover, colors = _points(table)
    out = []
    for x, y in panel_pairs(table):
        fig = go.Figure(
            go.Scatter(
                x=[r[x] for r in done],
                y=[r[y] for r in done],
                mode="markers",
                text=hover,
                marker={"color": colors, "size": 9},
            )
        )
        fig.update_layout(
            title=f"{y} vs {x} (red: Pareto front)", xaxis_title=x, yaxis_title=y, height=420
        )
        if x in LOG_AXES:
            fig.update_xaxes(type="log")
        if y in LOG_AXES:
            fig.update_yaxes(type="log")
        out.append((f"{y}_vs_{x}", fig))
    return out


def front_3d(table: StudyTable) -> Any | None:
    """The first three objectives in 3-D, front in red; None with fewer than three."""
    import plotly.graph_objects as go

    names = [n for n in table.objectives if n in table.hv_objectives]  # no derived energy
    if len(names) < 3:
        return None
    done, hover, colors = _points(table)
    a, b, c = names[:3]
    fig = go.Figure(
        go.Scatter3d(
            x=[r[a] for r in done],
            y=[r[b] for r in done],
            z=[r[c] for r in done],
            mode="markers",
            text=hover,
            marker={"color": colors, "size": 5},
        )
    )
    fig.update_layout(
        title="3-D view of the objectives (red: Pareto front)",
        height=560,
        scene={"xaxis_title": a, "yaxis_title": b, "zaxis_title": c},
    )
    return fig


def hypervolume_figure(hv: list[float]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=list(range(1, len(hv) + 1)), y=hv, mode="lines+markers"))
    fig.update_layout(
        title="Hypervolume (baseline-normalized) after each complete trial",
        xaxis_title="complete trials",
        yaxis_title="hypervolume",
        height=360,
    )
    return fig


def effect_figures(table: StudyTable) -> list[tuple[str, Any]]:
    """Accuracy and throughput against each searched axis (depth, embed dim, r, precision)."""
    import plotly.graph_objects as go

    done, _, _ = _points(table)
    out = []
    for axis in AXES:
        pts = [r for r in done if r.get(axis) is not None]
        if not pts:
            continue
        for metric in ("accuracy", "throughput"):
            if any(r.get(metric) is None for r in pts):
                continue  # a study that does not report it: no panel, nothing invented
            fig = go.Figure(
                go.Box(
                    x=[str(r[axis]) for r in pts],
                    y=[r[metric] for r in pts],
                    boxpoints="all",
                    jitter=0.4,
                )
            )
            fig.update_layout(
                title=f"{metric} by {axis.removeprefix('param:')}",
                xaxis_title=axis.removeprefix("param:"),
                yaxis_title=metric,
                height=340,
            )
            out.append((f"{metric} by {axis}", fig))
    return out


def figures(table: StudyTable, hv: list[float]) -> list[tuple[str, Any]]:
    out = pair_figures(table)
    fig3d = front_3d(table)
    if fig3d is not None:
        out.append(("3-D", fig3d))
    if hv:
        out.append(("hypervolume", hypervolume_figure(hv)))
    return out + effect_figures(table)


def _baseline_line(table: StudyTable) -> str:
    if table.baseline is None:
        return f"<b>no baseline: {html.escape(table.baseline_note or '')}</b>"
    return f"baseline: trial {table.baseline}."


def write_html(table: StudyTable, hv: list[float], path: Path, title: str) -> None:
    parts = []
    for i, (_, fig) in enumerate(figures(table, hv)):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    front = [r for r in table.rows if r["is_pareto"]]
    cols = ["number", *KIND_COLUMNS, *table.objectives, "accuracy_lo", "accuracy_hi"]
    cols += ["test_accuracy"]
    cols += ["test_accuracy_lo", "test_accuracy_hi", "params", "flops", "latency_ms"]
    cols += ["energy_source"]
    cols = [c for c in dict.fromkeys(cols) if any(c in r for r in front)]
    n_test = next((r.get("test_accuracy_n") for r in front if r.get("test_accuracy_n")), None)
    n_val = next((r.get("accuracy_n") for r in front if r.get("accuracy_n")), None)
    said = headline_sentence(table)
    sentence = f"<p><b>{html.escape(said)}</b></p>" if said else ""
    images = f" {n_val} val images, {n_test} test images." if n_val or n_test else ""
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes(table))
    headline_cols = [
        c
        for c in (table.headline[0] if table.headline else [])
        if any(h.get(c) is not None for h in table.headline)
    ]  # a column no member has (no test split, no params) is left out, not shown empty
    headline_html = (
        f"<h2>Headline: Pareto front vs baseline</h2>{_table(table.headline, headline_cols)}"
        if table.headline
        else ""
    )
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}
table{{border-collapse:collapse;font-size:13px;display:block;max-width:100%;overflow-x:auto}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
th{{white-space:normal;overflow-wrap:anywhere;max-width:7em}}</style></head><body>
<h1>{html.escape(title)}</h1>{sentence}
<p>{sum(r["state"] == "COMPLETE" for r in table.rows)} complete of {len(table.rows)} trials;
{_baseline_line(table)}{images}</p>
{note_html}
{headline_html}
<h2>Pareto front</h2>{_table(front, cols)}
<h2>Plots</h2>{"".join(parts)}
</body></html>"""
    write_text(path, doc)
