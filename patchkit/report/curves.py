"""The curves of one training run: loss (total and per term) and step time over every logged step.

`patchkit train` writes `curve.svg` beside results.json with `write_curve`; the report page draws the
same charts inline. The input is a `patchkit.train.results.Results` (read with `results.load`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from patchkit.paths import atomic_write
from patchkit.report import svg

TOTAL = "#1f3b73"
TERMS = ("#e6550d", "#31a354", "#756bb1", "#d6616b", "#3182bd", "#8c6d31", "#636363", "#e7ba52", "#17becf",
         "#bcbd22")
STEP = "#6a3d9a"
MAX_TERMS = 10  # more terms than this: the first ten by name are drawn, the chart says how many are left out


def title(results: Any, verdict: bool = False) -> str:
    found = getattr(results, "overfit", None) if verdict else None
    bar = f", overfit {'passed' if found.passed else 'FAILED'} x{found.ratio:.2f}" if found else ""
    return f"{results.model} {results.kind} on {results.cards * results.nnodes} {results.device}{bar}"


def loss_chart(results: Any, width: int = 460, height: int = 220) -> svg.Chart:
    s = results.series
    steps = [float(x) for x in s.step]
    lines = [svg.Line("loss (total)", steps, list(s.loss), TOTAL)] if any(v is not None for v in s.loss) else []
    names = sorted(s.terms)
    for name, color in zip(names[:MAX_TERMS], TERMS):
        lines.append(svg.Line(name, steps, list(s.terms[name]), color, dashed=True))
    notes = [f"{len(names) - MAX_TERMS} more loss terms not drawn"] if len(names) > MAX_TERMS else []
    if not lines:
        notes.append("no loss logged")
    return svg.Chart(f"loss: {title(results, verdict=True)}", lines, "step", "loss", width=width, height=height, notes=notes,
                     integer_x=True)


def step_chart(results: Any, width: int = 460, height: int = 220) -> svg.Chart:
    s = results.series
    ms = [None if v is None else 1000 * v for v in s.step_s]
    lines = [svg.Line("step time", [float(x) for x in s.step], ms, STEP)] if any(v is not None for v in ms) else []
    return svg.Chart(f"step time: {title(results)}", lines, "step", "ms", width=width, height=height,
                     notes=[] if lines else ["no step time logged"], integer_x=True)


def curve_svg(results: Any) -> str:
    """Both charts side by side, as one standalone SVG file."""
    left, right = svg.line_chart(loss_chart(results)), svg.line_chart(step_chart(results))
    right = right.replace("<svg ", '<svg x="470" ', 1)
    return svg.document(f'<svg xmlns="http://www.w3.org/2000/svg" width="930" height="220" '
                        f'viewBox="0 0 930 220">\n{left}\n{right}\n</svg>')


def write_curve(results: Any, path: Path) -> None:
    atomic_write(path, curve_svg(results).encode())
