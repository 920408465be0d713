"""The content of the port-health page, computed from its inputs; html.py and md.py only lay it out.

Inputs: the manifest (models, layers, patch files), the newest `rebase --check` document (store.py), the
check history (JSON lines) and training runs (results.json, read only through `patchkit.train.results.load`).
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from patchkit import lint, patchfile
from patchkit.manifest import Manifest, PatchRef
from patchkit.report.store import History, parse_time
from patchkit.shard import label

# outcome -> (colour, rank: lower is worse, what it means). Patch outcomes first, then overlay states.
OUTCOMES: dict[str, tuple[str, int, str]] = {
    "conflict": ("#d7301f", 0, "does not apply"),
    "target-missing": ("#88419d", 1, "a file it changes is gone upstream"),
    "blocked": ("#7f7f7f", 2, "an earlier patch it needs is broken"),
    "fuzz": ("#fc8d59", 3, "applies only with less context"),
    "missing": ("#b15928", 4, "overlay target gone upstream"),
    "signature-changed": ("#e7298a", 5, "overlay target's signature changed"),
    "drifted": ("#f781bf", 6, "overlay target's body changed upstream"),
    "unfingerprinted": ("#bdbdbd", 7, "overlay without a fingerprint"),
    "merged": ("#fee08b", 8, "applies through a three-way merge"),
    "offset": ("#d9ef8b", 9, "applies, hunks moved"),
    "upstreamed": ("#74add1", 10, "already upstream: drop it"),
    "holds": ("#a6d96a", 11, "overlay holds"),
    "clean": ("#1a9850", 12, "applies exactly"),
    "none": ("#f0f0f0", 13, "nothing to check"),
}
PATCH_OUTCOMES = ("clean", "offset", "merged", "fuzz", "conflict", "upstreamed", "target-missing", "blocked")
OVERLAY_STATES = ("holds", "drifted", "missing", "signature-changed", "unfingerprinted")
DEP3 = (*lint.DEP3_VALUES, "none")
FOLD_ABOVE = 12  # more upstreams than this: those of one model only share an "own upstreams" column
OWN = "own upstreams"


def colour(outcome: str) -> str:
    return OUTCOMES.get(outcome, ("#cccccc", 7, ""))[0]


def rank(outcome: str) -> int:
    return OUTCOMES.get(outcome, ("", 7, ""))[1]


# --- the matrix ------------------------------------------------------------------------------------------

@dataclass
class PatchRow:
    patch: str
    upstream: str
    outcome: str
    broken: bool
    detail: list[str]  # files, hunks, upstream commits, range-diff, as text lines
    commits: list[str]
    hint: str


@dataclass
class OverlayRow:
    name: str
    upstream: str
    state: str
    where: str
    detail: list[str]
    hint: str


@dataclass
class Cell:
    model: str
    column: str
    upstreams: list[str]
    patches: list[PatchRow] = field(default_factory=list)
    overlays: list[OverlayRow] = field(default_factory=list)
    checked: bool = True

    @property
    def broken(self) -> int:
        return sum(p.broken for p in self.patches) + sum(o.state not in ("holds", "merged") for o in self.overlays)

    @property
    def outcome(self) -> str:
        states = [p.outcome for p in self.patches] + [o.state for o in self.overlays]
        return min(states, key=rank) if states else "none"

    def counts(self) -> Counter[str]:
        return Counter([p.outcome for p in self.patches] + [o.state for o in self.overlays])


@dataclass
class Row:
    model: str
    cells: dict[str, Cell]
    checked: bool

    @property
    def broken(self) -> int:
        return sum(c.broken for c in self.cells.values())

    @property
    def outcome(self) -> str:
        return min((c.outcome for c in self.cells.values()), key=rank, default="none")


@dataclass
class Group:
    name: str
    rows: list[Row]


@dataclass
class Matrix:
    columns: list[str]
    groups: list[Group]
    targets: dict[str, dict[str, Any]]
    checked_at: str | None
    ok: bool | None
    totals: Counter[str]


def matrix(manifest: Manifest, models: list[str], check: dict[str, Any] | None) -> Matrix:
    """Model x upstream for the check; rows worst first, grouped into breaking / holding / not checked."""
    users = Counter(up for m in models for up in manifest.models[m].layers)
    columns = sorted(users, key=lambda u: (-users[u], u))
    fold = len(columns) > FOLD_ABOVE
    column_of = {u: (OWN if fold and users[u] == 1 else u) for u in columns}
    columns = list(dict.fromkeys(column_of[u] for u in columns))
    series = {(label(s), s["upstream"]): s for s in (check or {}).get("series", [])}
    overlays = {(label(o), o["upstream"]): o for o in (check or {}).get("overlays", [])}
    targets = (check or {}).get("upstreams", {})
    checked_models = {m for m, _ in series}
    rows = []
    variants = [row for row, _ in series if "[" in row and row.split("[")[0] in models]
    for name in [*models, *dict.fromkeys(variants)]:  # a variant: a row of the upstreams its series differs on
        cells: dict[str, Cell] = {}
        ups = manifest.models[name].layers if name in manifest.models else [u for m, u in series if m == name]
        for up in ups:
            cell = cells.setdefault(column_of[up], Cell(name, column_of[up], []))
            cell.upstreams.append(up)
            cell.checked = name in checked_models
            target = targets.get(series.get((name, up), {}).get("target") or up, {})
            for p in series.get((name, up), {}).get("patches", []):
                cell.patches.append(_patch_row(name, up, p, target))
            o = overlays.get((name, up))
            if o:
                cell.overlays += [_overlay_row(name, up, t["target"], t["state"], t.get("where", ""), t["detail"])
                                  for t in o.get("targets", [])]
                cell.overlays += [_overlay_row(name, up, f["path"], f["state"], f"whole file, set {f['set']}",
                                               f["detail"]) for f in o.get("files", [])]
        rows.append(Row(name, cells, name in checked_models))
    rows.sort(key=lambda r: (rank(r.outcome), -r.broken, r.model))
    groups = [Group("breaking", [r for r in rows if r.checked and r.broken]),
              Group("holding", [r for r in rows if r.checked and not r.broken]),
              Group("not in the check", [r for r in rows if not r.checked])]
    totals = Counter(o for r in rows for c in r.cells.values() for o in c.counts().elements())
    return Matrix(columns, [g for g in groups if g.rows], targets, (check or {}).get("checked_at"),
                  (check or {}).get("ok"), totals)


def number(value: float | None) -> str:
    """A measured number for a table: whole above 1000 (a step count, not 1.234e+04), else 4 digits; `-` if none."""
    if value is None:
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _patch_row(model: str, up: str, p: dict[str, Any], target: dict[str, Any]) -> PatchRow:
    detail, commits = [], []
    if p.get("outcome") == "offset":
        detail.append(f"hunks moved by up to {p.get('offset', 0):+d} lines")
    if p.get("outcome") == "fuzz":
        detail.append(f"{p.get('fuzz', 0)} context line(s) ignored")
    if p.get("blocked_by"):
        detail.append(f"blocked by {p['blocked_by']}")
    for f in p.get("files", []):
        detail.append(f"{f['path']}: {f['reason']}")
        detail += [f"  {h}" for h in f.get("hunks", [])]
        commits += f.get("commits", [])
    if p.get("outcome") != "offset":
        detail += p.get("range_diff", [])
    return PatchRow(p["patch"], up, p["outcome"], bool(p.get("broken")), detail, list(dict.fromkeys(commits)),
                    hint(model, up, p, target))


def hint(model: str, up: str, p: dict[str, Any], target: dict[str, Any]) -> str:
    """What to do about one patch's outcome, in one line."""
    ref = target.get("ref") or "its track"
    series = f"patches/{p.get('layer', '?')}/{up}/series"
    outcome = p.get("outcome")
    if outcome == "conflict":
        files = ", ".join(f["path"] for f in p.get("files", [])) or "the files it changes"
        return (f"`patchkit rebase {model} --onto {up}={ref}`, resolve {files} against the upstream commits "
                f"named, `git add`, then `patchkit rebase --continue`")
    if outcome == "target-missing":
        moved = [f"{f['path']} -> {f['renamed_to']}" for f in p.get("files", []) if f.get("renamed_to")]
        return (f"the file moved ({'; '.join(moved)}): re-cut the patch on the new path" if moved
                else f"the file is gone upstream: port the change to where the code went, or drop it from {series}")
    if outcome == "blocked":
        return f"fix {p.get('blocked_by')} first; this patch needs it"
    if outcome == "fuzz":
        return f"refresh its context: `patchkit rebase {model} --onto {up}={ref}` (then it applies exactly)"
    if outcome == "merged":
        return f"holds through a three-way merge; `patchkit rebase {model}` refreshes it"
    if outcome == "upstreamed":
        return f"already upstream: drop it from {series}"
    if outcome == "offset":
        return "holds; the next rebase refreshes the line numbers"
    return "holds"


def _overlay_row(model: str, up: str, name: str, state: str, where: str, detail: list[str]) -> OverlayRow:
    hints = {"drifted": f"read the upstream diff, update the replacement, then `patchkit overlay fingerprint {model}`",
             "signature-changed": f"match the new signature in the replacement, then `patchkit overlay fingerprint "
                                  f"{model}`",
             "missing": "the target moved or went away upstream: point the overlay at its new place or drop it",
             "unfingerprinted": f"`patchkit overlay fingerprint {model}`",
             "conflict": f"merge the upstream change into the whole-file overlay (`patchkit overlay check {model}`)"}
    return OverlayRow(name, up, state, where, list(detail), hints.get(state, "holds"))


# --- patch metrics ---------------------------------------------------------------------------------------

@dataclass
class PatchInfo:
    id: str  # layer/name
    layer: str
    upstream: str
    path: str
    status: str  # a DEP-3 value, "none", or the line as written
    date: datetime | None
    added: int
    removed: int
    files: int

    def age_days(self, now: datetime) -> int | None:
        return (now - self.date).days if self.date else None


@dataclass
class Layer:
    name: str
    upstreams: list[str]
    models: list[str]
    patches: list[PatchInfo]


@dataclass
class Metrics:
    now: datetime
    patches: list[PatchInfo]  # distinct, in layer order
    layers: list[Layer]  # shared ones (most models) first
    by_layer: dict[str, Counter[str]]  # layer -> Upstream-Status -> distinct patches
    by_model: dict[str, Counter[str]]  # model -> Upstream-Status -> patches it carries
    upstreamed: list[tuple[str, list[str]]]  # patch id -> models whose check says it is upstream already

    def age_summary(self, patches: list[PatchInfo]) -> tuple[int | None, int | None]:
        ages = [a for p in patches if (a := p.age_days(self.now)) is not None]
        return (int(statistics.median(ages)), max(ages)) if ages else (None, None)


_DATE = re.compile(r"^Date:[ \t]*(.+?)\s*$", re.M)


def patch_info(ref: PatchRef, root: Path) -> PatchInfo:
    patch = patchfile.read(ref)
    text = patch.data.decode("utf-8", "surrogateescape")
    head, _, diff = text.partition("\ndiff --git ")
    found = _DATE.search(head)
    try:
        date = parsedate_to_datetime(found.group(1)) if found else None
    except (TypeError, ValueError):
        date = None
    body = [ln for ln in diff.split("\n") if not ln.startswith(("+++ ", "--- "))]
    return PatchInfo(ref.id, ref.layer, ref.upstream, _relative(ref.path, root),
                     lint.upstream_status(patch) or "none", date,
                     sum(ln.startswith("+") for ln in body), sum(ln.startswith("-") for ln in body),
                     diff.count("\ndiff --git ") + (1 if diff else 0))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def metrics(manifest: Manifest, models: list[str], check: dict[str, Any] | None, now: datetime) -> Metrics:
    infos: dict[str, PatchInfo] = {}
    layer_models: dict[str, list[str]] = {}
    layer_ups: dict[str, list[str]] = {}
    by_model: dict[str, Counter[str]] = {}
    for name in models:
        model = manifest.models[name]
        by_model[name] = Counter()
        for up, layers in model.layers.items():
            for layer in layers:
                layer_models.setdefault(layer, [])
                if name not in layer_models[layer]:
                    layer_models[layer].append(name)
                layer_ups.setdefault(layer, [])
                if up not in layer_ups[layer]:
                    layer_ups[layer].append(up)
            for ref in model.patches.get(up, ()):
                info = infos.get(f"{up}:{ref.id}") or infos.setdefault(f"{up}:{ref.id}", patch_info(ref, manifest.root))
                by_model[name][_status_key(info.status)] += 1
    patches = list(infos.values())
    layers = [Layer(n, layer_ups[n], layer_models[n], [p for p in patches if p.layer == n]) for n in layer_models]
    layers.sort(key=lambda layer: (-len(layer.models), layer.name))
    by_layer = {layer.name: Counter(_status_key(p.status) for p in layer.patches) for layer in layers}
    upstreamed: dict[str, list[str]] = {}
    for s in (check or {}).get("series", []):
        for p in s["patches"]:
            if p["outcome"] == "upstreamed" and s["model"] in models:
                upstreamed.setdefault(f"{s['upstream']}: {p['patch']}", []).append(s["model"])
    return Metrics(now, patches, layers, by_layer, by_model, sorted(upstreamed.items()))


def _status_key(status: str) -> str:
    return status if status in DEP3 else "none"


# --- history ---------------------------------------------------------------------------------------------

@dataclass
class UpstreamHistory:
    upstream: str
    times: list[float]  # POSIX seconds
    holding: list[int | None]
    breaking: list[int | None]
    last_broken: list[str]


def history(hist: History | None) -> list[UpstreamHistory]:
    """Per upstream, holding and breaking distinct patches at each check; most breaking now first."""
    if hist is None:
        return []
    entries = hist.entries
    times = [parse_time(e["checked_at"]).timestamp() for e in entries]
    names = sorted({up for e in entries for up in e.get("upstreams", {})})
    out = []
    for up in names:
        rows = [e["upstreams"].get(up) or {} for e in entries]
        out.append(UpstreamHistory(up, times, [r.get("holding") for r in rows], [r.get("breaking") for r in rows],
                                   next((r.get("broken", []) for r in reversed(rows) if r), [])))
    out.sort(key=lambda h: (-(next((b for b in reversed(h.breaking) if b is not None), 0) or 0), h.upstream))
    total = UpstreamHistory(ALL, times, [_sum(h.holding[i] for h in out) for i in range(len(times))],
                            [_sum(h.breaking[i] for h in out) for i in range(len(times))],
                            [p for h in out for p in h.last_broken])
    return [total, *out] if len(out) > 1 else out


ALL = "all upstreams"


def _sum(values: Any) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


# --- training runs ---------------------------------------------------------------------------------------

@dataclass
class Run:
    path: Path
    results: Any  # patchkit.train.results.Results
    fingerprint: str  # short hash of the workspace fingerprint

    @property
    def marked(self) -> str:
        """'smoke' or 'overfit' for runs whose figures are no training result, else ''."""
        return self.results.kind if self.results.kind in ("smoke", "overfit") else ""


def runs(paths: list[Path]) -> list[Run]:
    from patchkit.train.results import load

    out = []
    for path in paths:
        res = load(path)
        digest = hashlib.sha256(json.dumps(res.fingerprint, sort_keys=True).encode()).hexdigest()[:12]
        out.append(Run(path, res, digest if res.fingerprint else "-"))
    out.sort(key=lambda r: (r.results.model, str(r.path)))
    return out


def find_runs(folders: list[Path]) -> list[Path]:
    """Every results.json under FOLDERS (a results.json file itself counts too)."""
    found: list[Path] = []
    for folder in folders:
        found += [folder] if folder.is_file() else sorted(folder.rglob("results.json"))
    return list({p.resolve(): p for p in found}.values())


# --- the whole page --------------------------------------------------------------------------------------

@dataclass
class Page:
    title: str
    generated: datetime
    models: list[str]
    matrix: Matrix
    metrics: Metrics
    history: list[UpstreamHistory]
    runs: list[Run]
    sources: list[str]  # what the page was built from, as text


def page(manifest: Manifest, models: list[str], check: dict[str, Any] | None, hist: History | None,
         run_paths: list[Path], sources: list[str], now: datetime | None = None) -> Page:
    now = now or datetime.now(timezone.utc)
    chosen = models or list(manifest.models)
    for name in chosen:
        manifest.model(name)
    return Page(f"patchkit port health: {manifest.root.name}", now, chosen, matrix(manifest, chosen, check),
                metrics(manifest, chosen, check, now), history(hist),
                [r for r in runs(run_paths) if not models or r.results.model in models], sources)
