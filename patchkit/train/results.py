"""Reading a training log: step times, the batch the run really used, accuracy metrics."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from patchkit.train.recipe import Recipe


@dataclass
class Results:
    model: str
    device: str
    backend: str
    cards: int
    nnodes: int
    performance: bool
    smoke: bool = False
    steps_seen: int = 0
    warmup_steps: int = 0
    mean_step_ms: float | None = None
    per_card_batch: int | None = None
    batch_source: str = ""
    global_batch: int | None = None
    published_global_batch: int | None = None
    fps: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    fingerprint: dict[str, object] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int = 0
    notes: list[str] = field(default_factory=list)


def step_seconds(recipe: Recipe, text: str) -> list[float]:
    """Every step time the log reports, in seconds."""
    if not recipe.step_time:
        return []
    values = [float(m.group("value")) for m in re.finditer(recipe.step_time, text)]
    if recipe.step_time_unit == "ms":
        return [v / 1000 for v in values]
    if recipe.step_time_unit == "it/s":
        return [1 / v for v in values if v > 0]
    return values


def steps(recipe: Recipe, text: str) -> list[int]:
    """The iteration numbers the log reports (with a `log: step` pattern)."""
    return [int(m.group("value")) for m in re.finditer(recipe.step, text)] if recipe.step else []


def metrics(recipe: Recipe, text: str) -> dict[str, float]:
    """The last value of every metric the log reports."""
    found = {}
    for name, pattern in recipe.metrics.items():
        matches = list(re.finditer(pattern, text))
        if matches:
            found[name] = float(matches[-1].group("value"))
    return found


def bootstrap_value(text: str, key: str) -> dict[str, object] | None:
    m = re.search(rf"^patchkit-{key}: (.*)$", text, re.M)
    return json.loads(m.group(1)) if m else None


def fill(results: Results, recipe: Recipe, log: Path) -> Results:
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    times = step_seconds(recipe, text)
    results.steps_seen = len(times)
    results.warmup_steps = min(recipe.warmup_steps, max(len(times) - 1, 0))
    measured = times[results.warmup_steps:]
    if measured:
        results.mean_step_ms = round(1000 * sum(measured) / len(measured), 3)
    elif recipe.step_time:
        results.notes.append(f"no step time matched {recipe.step_time!r} in {log.name}")
    batch = bootstrap_value(text, "batch") or {}
    results.per_card_batch = batch.get("per_card")  # type: ignore[assignment]
    results.batch_source = str(batch.get("source", "the bootstrap did not report it"))
    if results.per_card_batch:
        results.global_batch = results.per_card_batch * results.cards * results.nnodes
        if results.mean_step_ms:
            results.fps = round(results.global_batch / (results.mean_step_ms / 1000), 3)
    else:
        results.notes.append(f"per-card batch unknown ({results.batch_source}): no FPS")
    results.metrics = metrics(recipe, text)
    return results


def table(results: Results) -> list[str]:
    """The figures as the model READMEs show them."""
    def cell(value: object, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    head = ["cards", "global batch", "step time (ms)", "FPS", *results.metrics]
    row = [f"{results.cards * results.nnodes}", cell(results.global_batch), cell(results.mean_step_ms, "{:.1f}"),
           cell(results.fps, "{:.2f}"), *[f"{v:g}" for v in results.metrics.values()]]
    widths = [max(len(h), len(r)) for h, r in zip(head, row)]
    return [" | ".join(h.ljust(w) for h, w in zip(head, widths)),
            "-|-".join("-" * w for w in widths),
            " | ".join(r.ljust(w) for r, w in zip(row, widths))]
