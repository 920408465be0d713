"""results.json of a training run: reading the log (step times, the batch the run really used, accuracy
metrics, the loss curve), writing the file, and `load` of any version.

Schema 2 (version 1 had no "schema" key) adds: "kind" (full | performance | smoke | overfit), "series"
(every logged step: step number, total loss, step time in seconds, each loss term; lists of one length),
"overfit" (the verdict of an overfit run, patchkit/train/overfit.py) and "published" (the recipe's published
figures). A version-1 file loads with an empty series and its kind from its smoke/performance flags.
Within schema 2, "series" may also hold "floors" (a smoke script's `floor(NAME)=value`: the least value a term
could take for that step's targets, patchkit/train/smoke.py SoftTargetFloor) and "overfit" "floored" (the terms
the bar judged by their excess over it); files without them load with both empty.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit.errors import BadInput
from patchkit.paths import atomic_write, display
from patchkit.train.overfit import Overfit, extend, verdict
from patchkit.train.recipe import Recipe

SCHEMA = 2
KINDS = ("full", "performance", "smoke", "overfit")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
# a loss term on a log line: mmcv's `loss_cls_0: 0.91`, the smoke loop's and Lightning's `depth_loss=0.3`
TERM = re.compile(rf"(?<![\w/])(?P<name>[A-Za-z_][\w.]*loss[\w.]*|loss[\w.]*)\s*[:=]\s*(?P<value>{NUMBER})")
# a term's floor on the smoke loop's line: `floor(loss_cns_0)=0.42` (TERM does not match it: ")" ends the name)
FLOOR = re.compile(rf"(?<![\w/])floor\((?P<name>[A-Za-z_][\w.]*)\)=(?P<value>{NUMBER})")


@dataclass
class Series:
    """Every logged step, in order; each list as long as `step` (None where the line had no such value)."""
    step: list[int] = field(default_factory=list)
    loss: list[float | None] = field(default_factory=list)
    step_s: list[float | None] = field(default_factory=list)
    terms: dict[str, list[float | None]] = field(default_factory=dict)
    floors: dict[str, list[float | None]] = field(default_factory=dict)  # by term name, where the log gives one


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
    schema: int = SCHEMA
    kind: str = "full"
    series: Series = field(default_factory=Series)
    overfit: Overfit | None = None
    published: dict[str, Any] | None = None


def kind_of(smoke: bool, performance: bool, overfit: bool = False) -> str:
    return "overfit" if overfit else "smoke" if smoke else "performance" if performance else "full"


def dump(results: Results) -> bytes:
    return (json.dumps(dataclasses.asdict(results), indent=2) + "\n").encode()


def write(results: Results, path: Path) -> None:
    atomic_write(path, dump(results))


def load(path: Path) -> Results:
    """A results.json of any version as schema 2 (version 1: empty series, kind from its flags)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{display(path)}: not a readable results.json ({exc})") from None
    if not isinstance(data, dict) or data.get("schema", 1) not in (1, SCHEMA):
        raise BadInput(f"{display(path)}: results.json schema {data.get('schema') if isinstance(data, dict) else '?'} "
                       f"is not one this patchkit reads (1 or {SCHEMA}); upgrade patchkit")
    if data.get("schema", 1) == 1:
        data = {**data, "schema": SCHEMA, "kind": kind_of(bool(data.get("smoke")), bool(data.get("performance"))),
                "series": {}, "overfit": None, "published": None}
    known = {f.name for f in dataclasses.fields(Results)}
    values = {k: v for k, v in data.items() if k in known}
    values["series"] = Series(**{k: v for k, v in (data.get("series") or {}).items()
                                 if k in ("step", "loss", "step_s", "terms", "floors")})
    values["overfit"] = Overfit(**data["overfit"]) if data.get("overfit") else None
    return Results(**values)


def step_seconds(recipe: Recipe, text: str) -> list[float]:
    """Every step time the log reports, in seconds."""
    if not recipe.step_time:
        return []
    values = (_seconds(recipe, float(m.group("value"))) for m in re.finditer(recipe.step_time, text))
    return [v for v in values if v is not None]


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


def _seconds(recipe: Recipe, value: float) -> float | None:
    if recipe.step_time_unit == "ms":
        return value / 1000
    if recipe.step_time_unit == "it/s":
        return 1 / value if value > 0 else None
    return value


def series(recipe: Recipe, text: str) -> Series:
    """Every logged step of the log: a line the step-time (or step) pattern matches is one step; its total
    loss is the recipe's `loss` metric (else a term called `loss`), its terms every other `*loss*: value`."""
    out = Series()
    marker = recipe.step_time or recipe.step
    for line in re.split(r"[\r\n]+", text) if marker else ():
        if re.search(marker, line):
            _append(out, recipe, line)
    return out


def _value(pattern: str | None, line: str) -> str | None:
    found = re.search(pattern, line) if pattern else None
    return found.group("value") if found else None


def _append(out: Series, recipe: Recipe, line: str) -> None:
    terms = {m.group("name"): float(m.group("value")) for m in TERM.finditer(line)}
    step, seconds, total = (_value(p, line) for p in (recipe.step, recipe.step_time, recipe.metrics.get("loss")))
    out.step.append(int(step) if step else len(out.step) + 1)
    out.step_s.append(_seconds(recipe, float(seconds)) if seconds else None)
    out.loss.append(float(total) if total else terms.get("loss"))
    terms.pop("loss", None)
    extend(out.terms, terms, len(out.step))
    extend(out.floors, {m.group("name"): float(m.group("value")) for m in FLOOR.finditer(line)}, len(out.step))


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
    results.series = series(recipe, text)
    if results.kind == "overfit":
        results.overfit = verdict(results.series.loss, results.series.terms, results.series.floors)
    return results


def overfit_line(results: Results) -> str:
    o = results.overfit
    if o is None:
        return f"{results.model}: overfit FAILED: the log has fewer than two steps with a loss"
    rising = f"; rising: {', '.join(o.terms_rising)}" if o.terms_rising else ""
    floored = f"; judged above their floor: {', '.join(o.floored)}" if o.floored else ""
    return (f"{results.model}: overfit {'passed' if o.passed else 'FAILED'}: loss {o.start:.4g} -> {o.end:.4g} "
            f"(x{o.ratio:.3f}) in {o.steps} steps (bar: {o.bar}){rising}{floored}")


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
