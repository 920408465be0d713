"""A small SVG writer: line charts (training curves, check history) and stacked bars, as text.

Standard library only, no JavaScript, nothing fetched: the output is inlined into the report page and
written as `curve.svg` beside a training run's results.json. Every plot area carries its data domain
(`data-domain="x0 x1 y0 y1"`) and its box in pixels (`data-box="left top width height"`), so a test
or a reader can turn a polyline's points back into the data it was drawn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape

FONT = "font-family:system-ui,-apple-system,'Segoe UI',sans-serif"


@dataclass
class Line:
    label: str
    xs: list[float]
    ys: list[float | None]  # None: not logged there (the line breaks)
    color: str
    dashed: bool = False


@dataclass
class Chart:
    title: str
    lines: list[Line]
    x_label: str = ""
    y_label: str = ""
    time_axis: bool = False  # xs are POSIX seconds: ticks show dates
    from_zero: bool = False  # counts: the y axis starts at 0
    integer_x: bool = False  # steps: ticks only on whole numbers
    width: int = 460
    height: int = 220
    notes: list[str] = field(default_factory=list)


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


_SPANS = (3600, 6 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400, 365 * 86400)


def time_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """Tick times on whole hours or days (UTC) covering [lo, hi], at most COUNT of them."""
    span = next((s for s in _SPANS if (hi - lo) / s <= count), _SPANS[-1])
    first = math.ceil(lo / span) * span
    return [float(t) for t in range(int(first), int(hi) + 1, span)] or [lo]


def domain(lines: list[Line], from_zero: bool = False) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) over every finite point, padded so a flat line still has a height."""
    xs = [x for ln in lines for x, y in zip(ln.xs, ln.ys) if _finite(y)]
    ys = [y for ln in lines for y in ln.ys if _finite(y)]
    if not xs:
        return 0.0, 1.0, 0.0, 1.0
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)  # type: ignore[type-var]
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.1 or 1.0  # type: ignore[operator]
    low = 0.0 if from_zero and y0 >= 0 else float(y0) - pad  # type: ignore[arg-type,operator]
    return float(x0), float(x1), low, float(y1) + pad  # type: ignore[arg-type]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _label(value: float, time_axis: bool) -> str:
    if time_axis:
        when = datetime.fromtimestamp(value, timezone.utc)
        return when.strftime("%m-%d %H:%M" if when.hour or when.minute else "%m-%d")
    if abs(value) >= 1000 and value == int(value):
        return f"{value:.0f}"
    return f"{value:.4g}"


def segments(line: Line, scale: tuple[float, float, float, float, float, float, float, float]) -> list[str]:
    """The polyline `points` of LINE in pixels: one string per run of logged values."""
    x0, x1, y0, y1, left, top, width, height = scale
    runs: list[list[str]] = [[]]
    for x, y in zip(line.xs, line.ys):
        if not _finite(y):
            runs.append([])
            continue
        px = left + (x - x0) / (x1 - x0) * width
        py = top + height - (y - y0) / (y1 - y0) * height  # type: ignore[operator]
        runs[-1].append(f"{_num(px)},{_num(py)}")
    return [" ".join(r) for r in runs if r]


def line_chart(chart: Chart) -> str:
    """CHART as one <svg> element: axes with round ticks, one polyline per line, a legend."""
    outside = len(chart.lines) > 2  # many lines: the legend goes right of the plot, not over it
    left, top, right, bottom = 56, 26, (132 if outside else 12), 40 + 12 * len(chart.notes)
    width, height = chart.width - left - right, chart.height - top - bottom
    x0, x1, y0, y1 = domain(chart.lines, chart.from_zero)
    scale = (x0, x1, y0, y1, left, top, width, height)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{chart.width}" height="{chart.height}" '
           f'viewBox="0 0 {chart.width} {chart.height}" role="img" aria-label="{esc(chart.title)}" style="{FONT}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="600">{esc(chart.title)}</text>',
           f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="#fafafa" stroke="#ccc"/>']
    for value in nice_ticks(y0, y1):
        py = top + height - (value - y0) / (y1 - y0) * height
        out.append(f'<line x1="{left}" x2="{left + width}" y1="{_num(py)}" y2="{_num(py)}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 4}" y="{_num(py + 4)}" font-size="10" text-anchor="end">'
                   f'{esc(_label(value, False))}</text>')
    x_ticks = time_ticks(x0, x1) if chart.time_axis else nice_ticks(x0, x1, 6)
    for value in [v for v in x_ticks if not chart.integer_x or v == int(v)]:
        px = left + (value - x0) / (x1 - x0) * width
        out.append(f'<text x="{_num(px)}" y="{top + height + 14}" font-size="10" text-anchor="middle">'
                   f'{esc(_label(value, chart.time_axis))}</text>')
    out.append(f'<text x="{left + width / 2}" y="{top + height + 34}" font-size="11" text-anchor="middle">'
               f'{esc(chart.x_label)}</text>')
    out.append(f'<text x="12" y="{top + height / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + height / 2})">{esc(chart.y_label)}</text>')
    out.append(f'<g class="plot" data-domain="{x0!r} {x1!r} {y0!r} {y1!r}" '
               f'data-box="{left} {top} {width} {height}">')
    for line in chart.lines:
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        for points in segments(line, scale):
            single = "," in points and " " not in points
            if single:  # one logged value: a dot (the polyline alone draws nothing), the polyline for readers
                cx, cy = points.split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="3" fill="{line.color}"/>'
                           f'<polyline data-line="{esc(line.label)}" points="{points}" fill="none" '
                           f'stroke="{line.color}"/>')
            else:
                out.append(f'<polyline data-line="{esc(line.label)}" points="{points}" fill="none" '
                           f'stroke="{line.color}" stroke-width="1.6"{dash}/>')
    out.append("</g>")
    out += (_legend(chart.lines, left + width + 126, top, height) if outside
            else _legend_row(chart.lines, left + width))
    out += [f'<text x="{left}" y="{top + height + 48 + 12 * i}" font-size="10" fill="#a00">{esc(n)}</text>'
            for i, n in enumerate(chart.notes)]
    out.append("</svg>")
    return "\n".join(out)


def _legend_row(lines: list[Line], right: float) -> list[str]:
    """One or two line labels on the title's line, right-aligned over the plot (never over the data)."""
    out, x = [], right
    for line in reversed(lines):
        label = line.label[:18]
        x -= 22 + 6 * len(label)
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        out.append(f'<line x1="{_num(x)}" x2="{_num(x + 14)}" y1="12" y2="12" stroke="{line.color}" stroke-width="2"'
                   f'{dash}/><text x="{_num(x + 18)}" y="16" font-size="10">{esc(label)}</text>')
    return out


def _legend(lines: list[Line], right: float, top: float, height: float) -> list[str]:
    """Line labels in the top right corner (of the plot, or of the margin right of it) on a white background;
    as many as fit the plot's height, then how many more."""
    if not lines:
        return []
    fit = max(int((height - 4) // 13), 1)
    if len(lines) > fit:
        more = len(lines) - fit + 1
        lines = [*lines[:fit - 1], Line(f"+{more} more", [], [], "#fff")]
    rows = len(lines)
    out = [f'<rect x="{right - 124}" y="{top + 2}" width="122" height="{13 * rows + 4}" fill="#fff" '
           'fill-opacity="0.85" stroke="#ddd"/>']
    for i, line in enumerate(lines):
        y = top + 13 + 13 * i
        dash = ' stroke-dasharray="5 3"' if line.dashed else ""
        out.append(f'<line x1="{right - 120}" x2="{right - 106}" y1="{y - 4}" y2="{y - 4}" stroke="{line.color}" '
                   f'stroke-width="2"{dash}/><text x="{right - 102}" y="{y}" font-size="10">'
                   f'{esc(line.label[:18])}</text>')
    return out


def stacked_bar(parts: list[tuple[str, int, str]], *, width: int = 160, height: int = 12) -> str:
    """One horizontal bar split into (label, count, colour) parts, each part titled with its count."""
    total = sum(n for _, n, _ in parts)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="bar" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">']
    x = 0.0
    for label, n, color in parts:
        if not n:
            continue
        w = width * n / total
        out.append(f'<rect x="{_num(x)}" y="0" width="{_num(w)}" height="{height}" fill="{color}" '
                   f'data-part="{esc(label)}" data-count="{n}"><title>{esc(label)}: {n}</title></rect>')
        x += w
    out.append("</svg>")
    return "".join(out)


def document(body: str) -> str:
    """An SVG element as a standalone file."""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
