"""`patchkit import --all MODEL_EXAMPLES_DIR`: every port folder into ONE port repository.

1. Pins first: every folder's upstreams are resolved, and an upstream's pin is the one most of its
   models need (the first of them in folder order owns its manifest entry); a model needing another
   base keeps it as its own pin (the long form of its upstreams entry; `<up>-<model>` with a
   version-1 patchkit).
2. Each folder imported as `patchkit import PORT_DIR` does (a folder that fails is reported, the rest
   go on).
3. Shared layers (shared.py): changes the same in two or more models of one upstream.
4. Variants (variants.py): A5 and torch-version files of a port, a variant of its model.
5. Everything written once (files only where their bytes change, upstreams.yaml last and loaded
   back), then imports/fleet.json: each folder added or not and why, the shared layers, the variants,
   what could not be converted grouped by reason. A second run changes nothing.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from patchkit import manifest as manifest_mod
from patchkit.errors import PatchkitError
from patchkit.importer import pins, provenance, readme as readme_mod, run as run_mod, shared, upstreams as upstreams_mod
from patchkit.importer import variants as variants_mod, writer
from patchkit.importer.model import Finding, ImportReport

REPORT = "imports/fleet.json"
SCHEMA = "patchkit/import-fleet/1"
Progress = Callable[[str], None]


@dataclass
class Folder:
    folder: str
    model: str
    status: str  # "added", "not added" (no upstream obtainable), "failed" (bad input or a bug)
    reason: str = ""
    upstreams: dict[str, str] = field(default_factory=dict)  # name -> pin (how)
    patches: int = 0  # of its own layers
    shared_layers: list[str] = field(default_factory=list)
    overlays: int = 0
    hooks: int = 0
    not_converted: int = 0
    variants: list[str] = field(default_factory=list)


@dataclass
class FleetReport:
    examples: str
    drivingsdk_commit: str | None
    folders: list[Folder] = field(default_factory=list)
    shared_layers: list[dict[str, object]] = field(default_factory=list)
    shared_findings: list[Finding] = field(default_factory=list)
    variants: list[dict[str, object]] = field(default_factory=list)
    not_converted: dict[str, list[str]] = field(default_factory=dict)  # reason -> "model: where: what"
    totals: dict[str, int] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Folder]:
        return [f for f in self.folders if f.status == "failed"]


@dataclass
class _Imported:
    port: Path
    report: ImportReport
    out: run_mod.Outputs


def import_all(examples: Path, root: Path, progress: Progress = lambda _m: None) -> FleetReport:
    start = time.monotonic()
    examples = examples.resolve()
    ports = sorted((p for p in examples.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    fleet = FleetReport(str(examples), provenance.head(examples))
    names = {p: run_mod.model_name(p) for p in ports}
    decided: dict[Path, run_mod.Decided] = {p: {} for p in ports}
    defaults = _default_pins(ports, names, decided, progress)
    base = run_mod.existing_upstreams(root, *names.values())
    imported: list[_Imported] = []
    added: dict[str, dict[str, object]] = {}
    for i, port in enumerate(ports, 1):
        began = time.monotonic()
        model = names[port]
        existing = {**base, **{n: d for n, (d, owner) in defaults.items() if owner != model and n not in base}, **added}
        try:
            report, out = run_mod.run(port, root, model, lambda _m: None, existing, decided.pop(port))
        except PatchkitError as exc:
            fleet.folders.append(Folder(port.name, model, "failed", " ".join([exc.message, *exc.lines()[1:]])[:400]))
            progress(f"[{i}/{len(ports)}] {port.name}: FAILED ({exc.message[:120]}) {time.monotonic() - began:.1f} s")
            continue
        report.added = bool(out.layers)
        for new in out.upstreams:
            added[new.upstream.name] = _entry(new.upstream)
        imported.append(_Imported(port, report, out))
        progress(f"[{i}/{len(ports)}] {port.name}: {'added' if report.added else 'not added'}, "
                 f"{len(report.patches)} patches, {time.monotonic() - began:.1f} s")
    layers = _share(imported, fleet, progress)
    for item in imported:
        fleet.variants += variants_mod.find(item.port, item.out, item.report)
    progress(f"{len(fleet.variants)} variants made; writing")
    fleet.changed = _write(root, imported, layers)
    _summarize(fleet, imported, layers)
    if writer.put_all(root, {REPORT: (json.dumps(report_data(fleet), indent=2) + "\n").encode()}):
        fleet.changed.append(REPORT)
    fleet.seconds = round(time.monotonic() - start, 1)
    return fleet


# -- 1. pins -------------------------------------------------------------------------------

def _default_pins(ports: list[Path], names: dict[Path, str], decided: dict[Path, run_mod.Decided],
                  progress: Progress) -> dict[str, tuple[dict[str, object], str]]:
    """Upstream name -> (its manifest entry at the pin most models need, the model that owns it).
    DECIDED: each port's pins.decide results, filled in for its import (decided once, not twice)."""
    wanted: dict[str, list[tuple[str, dict[str, object]]]] = {}
    began = time.monotonic()
    for i, port in enumerate(ports, 1):
        for base, entry in _pins_of(port, decided[port]):
            wanted.setdefault(base, []).append((names[port], entry))
        if i % 10 == 0:
            progress(f"pins: {i}/{len(ports)} folders read")
    progress(f"pins: the upstreams of {len(ports)} folders resolved in {time.monotonic() - began:.1f} s")
    out = {}
    for base, found in wanted.items():
        counts = Counter(_key(e) for _, e in found)
        best = counts.most_common(1)[0][0]  # a tie: the pin found first (Counter keeps first-seen order)
        owner, entry = next((m, e) for m, e in found if _key(e) == best)
        out[base] = (entry, owner)
    return out


def _key(entry: dict[str, object]) -> str:
    return f"{entry.get('url') or entry.get('pypi')}@{entry.get('pin')}"


def _pins_of(port: Path, decided: run_mod.Decided) -> list[tuple[str, dict[str, object]]]:
    """(name, manifest entry) of each upstream of PORT that can be obtained (cheap: no patch regenerated);
    DECIDED gets each upstream's pins.decide result (or its error) by URL."""
    try:
        readme = readme_mod.read(port, port / "README.md", port.name)
        plans = upstreams_mod.plans(readme)
        applied, _ = run_mod._patch_steps(readme.steps, plans, port, ImportReport("probe", str(port), None))
    except (PatchkitError, OSError):
        return []
    out = []
    for url, plan in plans.by_url.items():
        base = run_mod.base_name(plan)
        try:
            decided[url] = pins.decide(plan, base, applied.get(url, []))
        except PatchkitError as exc:
            decided[url] = exc
            continue
        out.append((base, _entry(decided[url][0].upstream)))
    return out


def _entry(up: manifest_mod.Upstream) -> dict[str, object]:
    return {"pypi": up.pypi, "pin": up.pin} if up.pypi else {"url": up.url, "pin": up.pin}


# -- 3. shared layers ----------------------------------------------------------------------

def _share(imported: list[_Imported], fleet: FleetReport, progress: Progress) -> list[tuple[shared.Layer, list[tuple[str, bytes]]]]:
    """The shared layers of every upstream two or more models patch; each model's outputs changed to use them."""
    by_upstream: dict[str, list[_Imported]] = {}
    for item in imported:
        for up, series in item.out.patches.items():
            if series:
                by_upstream.setdefault(up, []).append(item)
    made = []
    for up, items in sorted(by_upstream.items()):
        if len(items) < 2:
            continue
        began = time.monotonic()
        members = [shared.Member(i.out.model, *i.out.bases[up], i.out.patches[up]) for i in items]
        result = shared.share(up, members)
        fleet.shared_findings += result.findings
        sources = {k: v for i in items for k, v in shared.sources(i.out.model, i.out.patches[up]).items()}
        for layer in result.layers:
            made.append((layer, shared.layer_files(layer, sources)))
        for item in items:
            _use(item, up, result)
        progress(f"shared layers of {up}: {len(result.layers)} for {len(items)} models, {time.monotonic() - began:.1f} s")
    return made


def _use(item: _Imported, up: str, result: shared.Shared) -> None:
    out, report = item.out, item.report
    uses, own = result.uses[out.model], result.own[out.model]
    if not uses:
        return
    kept = {name for name, _ in own}
    out.shared_series[up] = [(p, d) for layer in result.layers if layer.name in uses for p, d in layer.series]
    out.patches[up] = own
    out.layers[up] = uses + ([out.model] if own else [])
    prefix = f"patches/{out.model}/{up}/"
    report.patches = [p for p in report.patches if not p.startswith(prefix) or p[len(prefix):] in kept]
    report.notes.append(Finding(f"patches/{out.model}/{up}", f"shared layers {', '.join(uses)}",
                                "changes the same in other models' ports: applied before the model's own layer, "
                                "whose patches keep only the model's own changes"))


# -- 5. writing ----------------------------------------------------------------------------

def _write(root: Path, imported: list[_Imported], layers: list[tuple[shared.Layer, list[tuple[str, bytes]]]]) -> list[str]:
    """The layers' files, each model's files (stale ones of the layers a previous run made removed), then
    upstreams.yaml once."""
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for layer, series in layers:
        files.update(writer.series_files(f"patches/{layer.name}/{layer.upstream}",
                                         f"{layer.name}: the changes {', '.join(layer.models)} share on {layer.upstream} "
                                         f"(made by `patchkit import --all`; {REPORT} says from what)", series))
    changed = writer.remove_stale(root, [f"patches/{old['name']}" for old in previous_layers(root)], files)
    changed += writer.put_all(root, files)
    for item in imported:
        item.report.changed = writer.write(root, item.out, item.report, manifest=False)
        changed += item.report.changed
    if writer.write_manifest(root, [i.out for i in imported if i.out.layers]):
        changed.append(manifest_mod.MANIFEST_NAME)
    return changed


def previous_layers(root: Path) -> list[dict[str, Any]]:
    """The shared layers (name, models, ...) the last `import --all` into ROOT made, as its report says
    (none when there is no readable report)."""
    try:
        layers = json.loads((root / REPORT).read_text(encoding="utf-8"))["shared_layers"]
        return [layer for layer in layers if isinstance(layer, dict) and isinstance(layer.get("name"), str)]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _summarize(fleet: FleetReport, imported: list[_Imported], layers: list[tuple[shared.Layer, list[tuple[str, bytes]]]]) -> None:
    uses: dict[str, list[str]] = {}
    for layer, _ in layers:
        for model in layer.models:
            uses.setdefault(model, []).append(layer.name)
        fleet.shared_layers.append({"name": layer.name, "upstream": layer.upstream, "pin": layer.pin,
                                    "models": layer.models, "files": [p for p, _ in layer.series],
                                    "hunks": len(layer.changes), "hunks_absorbed": len(layer.changes) * len(layer.models)})
    for item in imported:
        r, out = item.report, item.out
        fleet.folders.append(Folder(item.port.name, r.model, "added" if r.added else "not added",
                                    "" if r.added else _why_not(r),
                                    {n: f"{d.pin[:12]} ({d.how})" for n, d in r.upstreams.items()}, len(r.patches),
                                    uses.get(r.model, []), len(r.overlays) + len(out.overlay_modules),
                                    len(r.external_hooks), len(r.not_converted), sorted(out.variants)))
        for f in r.not_converted:
            fleet.not_converted.setdefault(reason_group(f.reason), []).append(f"{r.model}: {f.where}: {f.what}")
    fleet.folders.sort(key=lambda f: f.folder)
    fleet.not_converted = dict(sorted(fleet.not_converted.items(), key=lambda kv: (-len(kv[1]), kv[0])))
    status = Counter(f.status for f in fleet.folders)
    fleet.totals = {"folders": len(fleet.folders), "added": status["added"], "not_added": status["not added"],
                    "failed": status["failed"], "patches": sum(f.patches for f in fleet.folders),
                    "shared_layers": len(layers), "shared_patches": sum(len(s) for _, s in layers),
                    "hunks_absorbed": sum(int(d["hunks_absorbed"]) for d in fleet.shared_layers),
                    "variants": sum(len(f.variants) for f in fleet.folders),
                    "not_converted": sum(len(v) for v in fleet.not_converted.values())}


def _why_not(report: ImportReport) -> str:
    """Why a model was not added: the upstreams that could not be obtained (not a failure of the import)."""
    missing = sorted({re.sub(r"\.git$", "", f.where.rstrip("/")).rsplit("/", 2)[-2:][-1] for f in report.not_converted
                      if f.what.startswith("upstream ") and "not available" in f.reason})
    return "no upstream of it obtainable here" + (f" (not mirrored, not reachable: {', '.join(missing)})" if missing else
                                                   " (the README clones none)")


def reason_group(reason: str) -> str:
    """A not-converted reason without its particulars (paths, pins, git's words)."""
    while re.match(r"^[^ ]+: ", reason):  # a URL or path first: the reason follows
        reason = reason.split(": ", 1)[1]
    text = re.split(r"[:;(,]", reason, maxsplit=1)[0].strip()
    return re.sub(r"\b[0-9a-f]{7,40}\b", "<pin>", text)[:90]


def report_data(fleet: FleetReport) -> dict[str, object]:
    data = asdict(fleet)
    for key in ("changed", "seconds"):
        data.pop(key)
    return {"schema": SCHEMA, **data}
