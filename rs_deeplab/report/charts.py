"""Charts drawn in Python as inline SVG (no chart library, nothing to load): line charts and a confusion matrix.

Each plotted value of a series with ``points`` is one ``<circle class="pt">`` carrying ``data-series``, ``data-x``
and ``data-y`` (and a ``<title>`` tooltip), so a page's tests can count and read them in the DOM. NaN values
(a class absent from a validation) break the line and draw no point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rs_deeplab.report.page import esc

WIDTH, HEIGHT = 560, 230
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 24, 36


@dataclass(frozen=True)
class Series:
    """One line of a chart: its name, values, colour (``#rrggbb``) and whether each value gets a point."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str = "#1f77b4"
    points: bool = False


def hex_colour(rgb: Sequence[int]) -> str:
    """``#rrggbb`` of an RGB triple."""
    return "#" + "".join(f"{int(v) & 255:02x}" for v in rgb[:3])


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / max(1, count - 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def _limits(values: list[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    return lo, hi


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    *,
    ylim: tuple[float, float] | None = None,
    xlabel: str = "iteration",
) -> str:
    """An SVG line chart of ``series`` against a shared x axis; an empty chart says "no values yet"."""
    xs = [float(x) for s in series for x in s.xs]
    ys = [float(y) for s in series for y in s.ys]
    x0, x1 = _limits(xs, None)
    y0, y1 = _limits(ys, ylim)
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [
        f'<svg id="{esc(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
        f'height="{HEIGHT}" role="img" aria-label="{esc(title)}">',
        f'<text x="{LEFT}" y="15" class="title">{esc(title)}</text>',
    ]
    for t in nice_ticks(y0, y1):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
            f'<text x="{LEFT - 4}" y="{py(t) + 4:.1f}" class="ytick">{_fmt(t)}</text>'
        )
    for t in nice_ticks(x0, x1, 6):
        parts.append(f'<text x="{px(t):.1f}" y="{HEIGHT - BOTTOM + 14}" class="xtick">{_fmt(t)}</text>')
    parts.append(f'<text x="{LEFT + pw / 2}" y="{HEIGHT - 4}" class="xlabel">{esc(xlabel)}</text>')
    parts.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/>')
    if not ys:
        parts.append(f'<text x="{LEFT + pw / 2}" y="{TOP + ph / 2}" class="empty">no values yet</text>')
    for s in series:
        parts.extend(_series(s, px, py))
    parts.append("</svg>")
    return "".join(parts)


def _series(s: Series, px: object, py: object) -> list[str]:
    assert callable(px) and callable(py)
    runs: list[list[str]] = [[]]
    dots = []
    for x, y in zip(s.xs, s.ys, strict=True):
        if not math.isfinite(float(y)):
            runs.append([])
            continue
        runs[-1].append(f"{px(float(x)):.1f},{py(float(y)):.1f}")
        if s.points:
            dots.append(
                f'<circle class="pt" data-series="{esc(s.name)}" data-x="{float(x)!r}" data-y="{float(y)!r}" '
                f'cx="{px(float(x)):.1f}" cy="{py(float(y)):.1f}" r="3" fill="{s.colour}">'
                f"<title>{esc(s.name)} {_fmt(float(y))} at {_fmt(float(x))}</title></circle>"
            )
    lines = [
        f'<polyline class="line" data-series="{esc(s.name)}" points="{" ".join(r)}" stroke="{s.colour}"/>'
        for r in runs
        if r
    ]
    return lines + dots


def legend(series: Sequence[Series]) -> str:
    """A one-line HTML legend of the series' colours and names."""
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{s.colour}"></span>{esc(s.name)}</span>'
        for s in series
    )
    return f'<div class="chart-legend">{items}</div>'


def confusion_table(cm: np.ndarray, class_names: Sequence[str], table_id: str = "confusion") -> str:
    """Row-normalised confusion matrix (rows truth, columns prediction) as an HTML table shaded by value.

    Each cell shows the share of its truth row and carries the raw count in ``data-count`` and its tooltip.
    """
    cm = np.asarray(cm, dtype=np.int64)
    rows_sum = cm.sum(axis=1)
    head = "".join(f'<th class="pred">{esc(n)}</th>' for n in class_names)
    body = []
    for i, name in enumerate(class_names):
        cells = []
        for j in range(len(class_names)):
            share = cm[i, j] / rows_sum[i] if rows_sum[i] else 0.0
            ink = "#fff" if share > 0.55 else "#222"
            cells.append(
                f'<td data-count="{int(cm[i, j])}" data-share="{share!r}" title="truth {esc(name)}, '
                f'predicted {esc(class_names[j])}: {int(cm[i, j])} px" style="background:rgba(31,119,180,'
                f'{share:.3f});color:{ink}">{share:.2f}</td>'
            )
        body.append(f'<tr><th class="truth">{esc(name)}</th>{"".join(cells)}<td class="n">{int(rows_sum[i])}</td></tr>')
    return (
        f'<table id="{esc(table_id)}" class="confusion"><thead><tr><th>truth \\ predicted</th>{head}'
        f'<th class="n">pixels</th></tr></thead><tbody>{"".join(body)}</tbody></table>'
    )
