"""Self-contained HTML reports (no external assets), shown by the Kubeflow UI for Output[HTML]."""

from __future__ import annotations

import html
from collections.abc import Sequence

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:24px}
"""


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; floats are shown with 4 digits."""

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A complete HTML page with a title and ``(heading, html)`` sections."""
    parts = [f"<h2>{html.escape(h)}</h2>{body}" if h else body for h, body in sections]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(parts)
        + "</body></html>"
    )


def confusion_matrix_svg(matrix: Sequence[Sequence[int]], labels: Sequence[object]) -> str:
    """Draw a confusion matrix (rows: true, columns: predicted) as an inline SVG heat map."""
    n = len(labels)
    cell, margin = 48, 70
    size = margin + n * cell + 10
    row_totals = [max(1, sum(row)) for row in matrix]
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' "
        f"font-family='sans-serif' font-size='13'>",
        f"<text x='{margin + n * cell / 2}' y='14' text-anchor='middle'>predicted count</text>",
        f"<text x='12' y='{margin + n * cell / 2}' text-anchor='middle' "
        f"transform='rotate(-90 12 {margin + n * cell / 2})'>true count</text>",
    ]
    for i, label in enumerate(labels):
        centre = margin + i * cell + cell / 2
        parts.append(f"<text x='{centre}' y='{margin - 8}' text-anchor='middle'>{label}</text>")
        parts.append(f"<text x='{margin - 10}' y='{centre + 4}' text-anchor='end'>{label}</text>")
    for r, row in enumerate(matrix):
        for c, value in enumerate(row):
            share = value / row_totals[r]
            shade = int(255 - 200 * share)
            colour = f"rgb({shade},{shade},255)"
            text_colour = "#fff" if share > 0.55 else "#000"
            x, y = margin + c * cell, margin + r * cell
            parts.append(
                f"<rect x='{x}' y='{y}' width='{cell}' height='{cell}' fill='{colour}' "
                f"stroke='#fff'/><text x='{x + cell / 2}' y='{y + cell / 2 + 4}' "
                f"text-anchor='middle' fill='{text_colour}'>{value}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def line_chart_svg(series: dict[str, Sequence[float]], title: str, width=420, height=220) -> str:
    """Draw one or more series over epochs (1..N) as an inline SVG line chart."""
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    values = [v for s in series.values() for v in s]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    n = max(len(s) for s in series.values())
    left, top, plot_w, plot_h = 48, 24, width - 60, height - 50

    def point(i: int, v: float) -> str:
        x = left + (plot_w * i / max(1, n - 1))
        y = top + plot_h * (1 - (v - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"font-family='sans-serif' font-size='12'>",
        f"<text x='{width / 2}' y='14' text-anchor='middle'>{html.escape(title)}</text>",
        f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' "
        "stroke='#999'/>",
        f"<text x='{left - 4}' y='{top + 4}' text-anchor='end'>{hi:.3g}</text>",
        f"<text x='{left - 4}' y='{top + plot_h}' text-anchor='end'>{lo:.3g}</text>",
        f"<text x='{left + plot_w / 2}' y='{height - 6}' text-anchor='middle'>epoch</text>",
    ]
    for k, (name, s) in enumerate(series.items()):
        colour = colours[k % len(colours)]
        points = " ".join(point(i, v) for i, v in enumerate(s))
        parts.append(
            f"<polyline points='{points}' fill='none' stroke='{colour}' stroke-width='2'/>"
        )
        parts.append(
            f"<text x='{left + 8}' y='{top + 16 + 14 * k}' fill='{colour}'>"
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
