"""The overfit bar of `patchkit train MODEL --smoke --overfit`: does the model learn one fixed batch?

Standard library only: the smoke loop (in the training worker) uses it to stop as soon as the bar is
reached, and the launcher uses it again on the logged curve to write the verdict into results.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

WINDOW = 5  # steps averaged at the start and at the end of the curve
BAR = ("total <= 0.5 x start; no term's last-5 mean above its first-5 mean "
       "(a term logged with a floor: its excess over the floor)")
RATIO = 0.5
MAX_STEPS = 60
SCHEDULES = ("constant", "cosine")
MIN_LR_RATIO = 1e-3  # cosine: the last step's lr over the base lr (mmcv CosineAnnealing's min_lr_ratio, as the
# Sparse4D config sets it)


@dataclass
class Overfit:
    passed: bool
    bar: str
    start: float
    end: float
    ratio: float
    steps: int
    terms_rising: list[str] = field(default_factory=list)
    floored: list[str] = field(default_factory=list)  # the terms judged by their excess over their floor


def extend(columns: dict[str, list[float | None]], row: Mapping[str, float], length: int) -> None:
    """Add one step's values to COLUMNS, each LENGTH long after it: a name first seen now gets None for the steps
    before, a name missing now gets None for this one (the windows then leave those steps out)."""
    for name in [n for n in row if n not in columns]:
        columns[name] = [None] * (length - 1)
    for name, values in columns.items():
        values.append(row.get(name))


def excess(terms: Mapping[str, Sequence[float | None]],
           floors: Mapping[str, Sequence[float | None]] | None = None) -> dict[str, list[float | None]]:
    """Each term as the bar judges it: a term with a floor (the least value the loss can take for that step's
    targets, logged by the smoke script for a loss whose targets follow the model's own predictions, such as a
    cross-entropy against a soft target: its least value is the targets' entropy) by how far it is above that
    floor; every other term as it is. A step without both values is left out (None)."""
    floors = floors or {}
    return {name: [None if v is None or f is None else v - f
                   for v, f in zip(values, floors[name])] if name in floors else list(values)
            for name, values in terms.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def rising(terms: Mapping[str, Sequence[float | None]]) -> list[str]:
    """The terms whose mean over the last WINDOW steps is above their mean over the first WINDOW."""
    out = []
    for name, values in terms.items():
        known = [v for v in values if v is not None]
        if not known:
            continue
        width = min(WINDOW, len(known))
        first, last = _mean(known[:width]), _mean(known[-width:])
        if not math.isfinite(last) or last > first:
            out.append(name)
    return out


def verdict(totals: Sequence[float | None], terms: Mapping[str, Sequence[float | None]],
            floors: Mapping[str, Sequence[float | None]] | None = None) -> Overfit | None:
    """The bar applied to a curve (the total loss per step, each term's, and the floors of the terms that have
    one): None without two steps."""
    known = [v for v in totals if v is not None]
    if len(known) < 2:
        return None
    start, end = known[0], known[-1]
    ratio = end / start if start else math.inf
    up = rising(excess(terms, floors))
    passed = math.isfinite(end) and start > 0 and end <= RATIO * start and not up
    return Overfit(passed, BAR, start, end, round(ratio, 6), len(known), up,
                   sorted(name for name in terms if name in (floors or {})))


def lr_factor(step: int, steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.1,
              schedule: str = "constant") -> float:
    """The lr of STEP (1-based) of STEPS over the base lr, as mmcv's runner hooks compute it per iteration:
    a linear warmup from WARMUP_RATIO over the first WARMUP_STEPS, times the schedule (cosine: from 1 down to
    MIN_LR_RATIO at the last step).

    >>> [round(lr_factor(s, 5, warmup_steps=2, warmup_ratio=0.5), 3) for s in range(1, 6)]
    [0.5, 0.75, 1.0, 1.0, 1.0]
    >>> [round(lr_factor(s, 5, schedule="cosine"), 3) for s in (1, 3, 5)]
    [1.0, 0.5, 0.001]
    """
    i = step - 1
    factor = 1.0
    if schedule == "cosine":
        last = max(1, steps - 1)
        factor = MIN_LR_RATIO + (1 - MIN_LR_RATIO) * (1 + math.cos(math.pi * min(i, last) / last)) / 2
    if i < warmup_steps:
        factor *= 1 - (1 - i / warmup_steps) * (1 - warmup_ratio)
    return factor


def reached(totals: Sequence[float], terms: Mapping[str, Sequence[float]],
            floors: Mapping[str, Sequence[float]] | None = None) -> bool:
    """True once the curve passes the bar with two separate windows behind it (the loop may stop)."""
    found = verdict(totals, terms, floors) if len(totals) >= 2 * WINDOW else None
    return bool(found and found.passed)
