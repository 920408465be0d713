"""`patchkit import PORT_DIR`: the readers in order, their findings gathered, the writer's input made.

README (steps, pins) -> upstreams and pins (mirrors) -> patches regenerated at the pins -> copy-overs
-> runtime patcher -> install recipes -> training recipe. Nothing in the port folder is executed: its
files are read as text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from patchkit import manifest as manifest_mod
from patchkit.errors import BadInput, PatchkitError, PinNotFound
from patchkit.importer import copyover, install, patcher, patches as patches_mod, pins, provenance
from patchkit.importer import readme as readme_mod, scripts, upstreams as upstreams_mod
from patchkit.importer.model import (FileOverlayOut, Finding, ImportReport, OverlayModuleOut, PinDecision, Step,
                                     UpstreamPlan)
from patchkit.importer.patches import FileDiff
from patchkit.importer.regen import Tree
from patchkit.manifest import Upstream
from patchkit.paths import display
from patchkit.scratch import Scratch, replay
from patchkit.yamlcheck import name_problem, short

Progress = Callable[[str], None]
Decided = dict[str, tuple[pins.Resolved, list[Finding]] | PatchkitError]  # URL -> pins.decide's result or error


@dataclass
class NewUpstream:
    upstream: Upstream
    decision: PinDecision
    install: dict[str, object]
    exclude: list[str]
    comment: list[str]


@dataclass
class Outputs:
    """Everything the writer writes for one model."""

    model: str
    description: str
    upstreams: list[NewUpstream] = field(default_factory=list)  # the ones this model adds to the manifest
    layers: dict[str, list[str]] = field(default_factory=dict)  # manifest upstream -> the model's layers
    patches: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # upstream -> series
    file_overlays: list[FileOverlayOut] = field(default_factory=list)
    overlay_modules: list[OverlayModuleOut] = field(default_factory=list)
    recipe: str | None = None
    pins: dict[str, tuple[str, str]] = field(default_factory=dict)  # upstream -> the model's own (pin, track)
    bases: dict[str, tuple[Path, str]] = field(default_factory=dict)  # upstream -> (mirror, the model's pin)
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # port patch -> (upstream, folder prefix)
    variants: dict[str, dict[str, object]] = field(default_factory=dict)  # the manifest's `variants:` entries
    variant_patches: dict[str, dict[str, list[tuple[str, bytes]]]] = field(default_factory=dict)  # variant -> up -> series
    variant_overlays: dict[str, list[OverlayModuleOut]] = field(default_factory=dict)  # variant -> overlay modules
    shared_series: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # up -> its shared layers' patches


def model_name(port: Path) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", port.name.lower()).strip("-") or "model"


def run(port: Path, root: Path, name: str | None = None, progress: Progress = lambda _m: None,
        existing: dict[str, dict[str, object]] | None = None, decided: Decided | None = None) -> tuple[ImportReport, Outputs]:
    """Read the port folder PORT for the port repository ROOT; EXISTING: the upstreams to reuse
    (default: those of ROOT's manifest, less this model's own blocks); DECIDED: pins already decided
    by URL (`import --all` decides them before importing: not fetched and inferred twice)."""
    port = port.resolve()
    readme_path = port / "README.md"
    if not readme_path.is_file():
        raise BadInput(f"{port}: no README.md (a DrivingSDK-style port folder has one with its steps)")
    model = name or model_name(port)
    problem = name_problem(model)
    if problem:
        raise BadInput(f"--name {short(model)} {problem}")
    report = ImportReport(model, str(port), provenance.head(port))
    out = Outputs(model, f"{port.name}, imported from DrivingSDK model_examples/{port.name} by patchkit import")
    readme = readme_mod.read(port, readme_path, port.name)
    report.not_converted += [Finding(str(w), t, "a shell line the reader cannot follow") for w, t in readme.unread]
    plans = upstreams_mod.plans(readme)
    report.notes += plans.findings
    applied, prefixes = _patch_steps(readme.steps, plans, port, report)
    existing = existing_upstreams(root, model) if existing is None else existing
    trees: dict[str, Tree] = {}
    names: dict[str, str] = {}
    try:
        for url, plan in plans.by_url.items():
            progress(f"{model}: upstream {plan.pypi or url}")
            resolved = _resolve(plan, applied.get(url, []), model, existing, out, report, (decided or {}).pop(url, None))
            if resolved is None:
                continue
            names[url] = resolved.upstream.name
            trees[url] = Tree(resolved.mirror, resolved.upstream.pin)
            out.bases[names[url]] = (resolved.mirror, resolved.upstream.pin)
        for url, diffs in applied.items():
            if url in trees:
                progress(f"{model}: patches on {names[url]}")
                _regenerate(port, diffs, names[url], trees[url], out, report)
        _copies(readme.steps, plans, trees, names, port, out, report)
        _verify(trees, names, out)
        found = patcher.read(port, {names[u]: t for u, t in trees.items()}, model)
        out.overlay_modules, report.external_hooks = found.modules, found.hooks
        if found.modules:
            report.notes.append(Finding(", ".join(sorted({m.source for m in found.modules})), "runtime patcher",
                                        f"{len(found.modules)} of its patch functions are overlays now (fingerprinted: "
                                        "`patchkit overlay check` sees upstream drift); where the port copies the patcher "
                                        "into a checkout and its entry runs it, that copy stays and applies the same "
                                        "functions on NPU"))
        report.not_converted += found.findings
        recipes, findings = install.recipes(readme.steps, plans, names)
        report.notes += findings
        for new in out.upstreams:
            url = next(u for u, n in names.items() if n == new.upstream.name)
            new.install = recipes.get(url, {})
        recipe = scripts.read(port, readme, model, names, plans, trees)
        out.recipe, report.todos = recipe.text, recipe.todos
        report.not_converted += recipe.findings
    finally:
        for tree in trees.values():
            tree.close()
    for url, up in names.items():
        out.layers[up] = [model] if out.patches.get(up) else []
    out.sources = {rel: (names[url], prefix) for rel, (url, prefix) in prefixes.items() if url in names}
    _steps_not_converted(readme.steps, report, plans)
    return report, out


def _patch_steps(steps: list[Step], plans: upstreams_mod.Plans, port: Path,
                 report: ImportReport) -> tuple[dict[str, list[FileDiff]], dict[str, tuple[str, str]]]:
    """url -> the per-file diffs of the port patches the steps apply to it, in order (each file once);
    and each port patch -> (url, the folder of the upstream it is applied in)."""
    out: dict[str, list[FileDiff]] = {}
    where: dict[str, tuple[str, str]] = {}
    seen: set[tuple[str, str]] = set()
    for step in steps:
        if step.kind != "apply":
            continue
        args = [w for w in step.words[2:] if not w.startswith("-")] if step.words[0] == "git" else \
            [w for w in step.words[1:] if not w.startswith("-") and not w.startswith("<")]
        found = plans.at(step.cwd)
        source = _patch_file(port, step.cwd, args[-1]) if args else None
        if found is None or source is None:
            report.not_converted.append(Finding(str(step.where), step.text, "applies a patch to no upstream checkout "
                                                "the README made" if source else "the patch file is not in the port folder"))
            continue
        plan, sub = found
        rel = source.relative_to(port).as_posix()
        if (plan.url, rel) in seen:
            continue
        seen.add((plan.url, rel))
        try:
            diffs, repairs = patches_mod.parse(source.read_bytes(), rel)
        except BadInput as exc:  # named as the user can open it
            raise BadInput(f"{display(port)}/{exc.message}", details=exc.details) from None
        report.repairs += _grouped(repairs)
        prefix = plan.site_prefix + (sub + "/" if sub else "")
        where[rel] = (plan.url, prefix)
        out.setdefault(plan.url, []).extend(patches_mod.prefixed(d, prefix) if prefix else d for d in diffs)
    return out, where


def _grouped(repairs: list[Finding]) -> list[Finding]:
    """Blank context lines that lost their space, one finding a patch file (there are hundreds)."""
    blanks = [r for r in repairs if "blank context line" in r.what]
    if not blanks:
        return repairs
    count = sum(int(r.what.split(": ")[-1].split()[0]) for r in blanks)
    where = blanks[0].where.split(":")[0]
    return [r for r in repairs if r not in blanks] + [Finding(where, f"{count} blank context lines in {len(blanks)} hunks "
                                                              f"(first at {blanks[0].where})", "restored their leading space")]


def _patch_file(port: Path, cwd: str, arg: str) -> Path | None:
    direct = port / readme_mod.join(cwd, arg)
    if direct.is_file() and port in direct.resolve().parents:
        return direct
    name = arg.rsplit("/", 1)[-1]
    candidates = [port / name] + sorted(p for p in port.rglob(name) if p.is_file())
    found = next((p for p in candidates if p.is_file() and not p.is_symlink()), None)
    if found is None:  # a README naming `Yolov8.patch` for the folder's `yolov8.patch`
        found = next((p for p in sorted(port.rglob("*")) if p.name.lower() == name.lower() and p.is_file()
                      and not p.is_symlink()), None)
    return found


def existing_upstreams(root: Path, *models: str) -> dict[str, dict[str, object]]:
    """The manifest's upstreams, less those MODELS' earlier imports wrote (a re-import remakes them)."""
    from patchkit.importer import writer

    path = root / manifest_mod.MANIFEST_NAME
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    for model in models:
        text = writer.strip_blocks(text, model)
    return upstreams_of(text, path)


def upstreams_of(text: str, path: Path) -> dict[str, dict[str, object]]:
    """The `upstreams:` of the manifest TEXT (read from PATH) as plain data."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"{path}: invalid YAML: {exc}") from None
    return dict(data.get("upstreams") or {})


def base_name(plan: UpstreamPlan) -> str:
    """The manifest name an upstream gets when nothing else has it: its repository's or release's name."""
    return (plan.pypi.split("==")[0] if plan.pypi else plan.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")).lower()


def _resolve(plan: UpstreamPlan, diffs: list[FileDiff], model: str, existing: dict[str, dict[str, object]],
             out: Outputs, report: ImportReport, known: tuple[pins.Resolved, list[Finding]] | PatchkitError | None) -> pins.Resolved | None:
    base = base_name(plan)
    try:
        if isinstance(known, PatchkitError):
            raise known
        resolved, findings = known or pins.decide(plan, base, diffs)
    except PatchkitError as exc:
        what = "pin not found upstream" if isinstance(exc, PinNotFound) else "upstream not available"
        report.not_converted.append(Finding(plan.url, f"upstream {plan.pypi or plan.url}", f"{what}: {exc.message}"))
        return None
    report.contradictions += [f for f in findings if "contradicts" in f.reason]
    report.notes += [f for f in findings if "contradicts" not in f.reason]
    up = resolved.upstream
    same = [n for n, d in existing.items() if _same_source(d, up)]
    at_pin = [n for n in same if existing[n].get("pin") == up.pin]
    decision = resolved.decision
    if at_pin:
        name = at_pin[0]
        decision.how = f"reused ({decision.how})"
    elif same and manifest_mod.SCHEMA_VERSION >= 2 and not up.pypi:
        name = min(same, key=lambda n: (n != base, n))  # the upstream itself, not an older `<up>-<model>`
        report.notes.append(Finding(plan.url, f"{name} is pinned at {str(existing[name].get('pin'))[:12]} in the "
                                    f"manifest; this port needs {up.pin[:12]}", "the model's own pin (the long form "
                                    "of its upstreams entry)"))
        decision.how = f"{decision.how}, the model's own pin"
        out.pins[name] = (up.pin, up.track)
    else:
        name = base if base not in existing else f"{base}-{model}"
        if same:
            report.notes.append(Finding(plan.url, f"{same[0]} is pinned at {str(existing[same[0]].get('pin'))[:12]} "
                                        f"in the manifest; this port needs {up.pin[:12]}",
                                        f"added as {name!r}, the model's own (per-model pins of one upstream: issue 16)"))
    decision.upstream = name
    resolved.upstream = Upstream(name, up.url, up.pin, up.track, 0, pypi=up.pypi, sha256=up.sha256)
    report.upstreams[name] = decision
    if not at_pin and name not in out.pins:
        touched = {p for fd in diffs for p in fd.paths}
        exclude = [] if up.pypi else [e for e in pins.missing_blob_dirs(resolved.mirror, up.pin)
                                      if not any(p == e or p.startswith(e) for p in touched)]
        out.upstreams.append(NewUpstream(resolved.upstream, decision, {}, exclude, _comment(plan, decision, exclude)))
    return resolved


def _same_source(data: dict[str, object], up: Upstream) -> bool:
    if up.pypi:
        return str(data.get("pypi", "")).split("==")[0].lower() == up.pypi.split("==")[0].lower() and \
            data.get("pypi") == up.pypi
    return upstreams_mod.normalize(str(data.get("url", ""))) == up.url


def _comment(plan: UpstreamPlan, decision: PinDecision, exclude: list[str]) -> list[str]:
    said = "; ".join(f"{e.form} {e.ref[:12]} ({e.where})" for e in plan.evidence) or (
        f"{plan.pypi} from PyPI (patched in {plan.folder})" if plan.site_prefix else
        f"{plan.pypi} from PyPI (too big to mirror)" if plan.pypi else "no pin named: the default branch")
    lines = [f"imported: {said}; {decision.how} -> {decision.pin[:12]}"]
    if decision.note:
        lines.append(decision.note)
    if exclude:
        lines.append("exclude: the mirror lacks blobs under these paths (no patch touches them)")
    return lines


def _regenerate(port: Path, diffs: list[FileDiff], upstream: str, tree: Tree, out: Outputs, report: ImportReport) -> None:
    series = out.patches.setdefault(upstream, [])
    for fd in diffs:
        applied = tree.apply(fd)
        for hunk in applied.rejected:
            report.not_converted.append(Finding(f"{fd.source}:{hunk.line}", f"{fd.path}: hunk",
                                                f"does not apply at the pin {tree.pin[:12]}, even ignoring whitespace "
                                                "(the port's `git apply --reject` drops it there too)"))
        if not applied.data:
            if not applied.rejected:
                report.notes.append(Finding(f"{fd.source}:{fd.line}", fd.path, "changes nothing at the pin"))
            continue
        body = [f"The part of the port's {fd.source} for {fd.path}, re-derived at the pin {tree.pin[:12]} by "
                "`patchkit import` (one patch a file: a conflict names the file)."]
        if applied.how != "strict":
            how = "with --whitespace=fix, as the README does" if applied.how == "whitespace-fix" else \
                "only ignoring whitespace"
            body.append(f"The stored patch applies there {how} (it lost CRs or trailing blanks); "
                        "this one is git's own diff of the result and applies strictly.")
            report.repairs.append(Finding(f"{fd.source}:{fd.line}", fd.path, f"applied {how}, regenerated "
                                          "to apply strictly" + ("; added lines made CRLF like the file" if applied.crlf else "")))
        if applied.rejected:
            body.append(f"Hunks at lines {', '.join(str(h.line) for h in applied.rejected)} of the port patch do not "
                        "apply at the pin and are left out.")
        if provenance.cosmetic(applied.data):
            tree.undo(applied.before)
            report.not_converted.append(Finding(f"{fd.source}:{fd.line}", fd.path, "only whitespace or comments change "
                                                "(style churn, license headers): left out; the code is the same without "
                                                "it, and `patchkit validate` refuses cosmetic patches"))
            continue
        origin = provenance.origin(port, fd.source)
        _add(series, upstream, f"{fd.path}: from {fd.source.rsplit('/', 1)[-1]}", fd.path, " ".join(body),
             applied.data, origin, out, report)


def _add(series: list[tuple[str, bytes]], upstream: str, subject: str, path: str, body: str, diff: bytes,
         origin: provenance.Origin, out: Outputs, report: ImportReport) -> None:
    name = f"{len(series) + 1:04d}-{provenance.slug(path)}.patch"
    series.append((name, provenance.format_patch(diff, subject, body, origin)))
    report.patches.append(f"patches/{out.model}/{upstream}/{name}")


def _copies(steps: list[Step], plans: upstreams_mod.Plans, trees: dict[str, Tree], names: dict[str, str],
            port: Path, out: Outputs, report: ImportReport) -> None:
    found = copyover.read(steps, plans, trees, port)
    report.not_converted += found.findings
    report.notes += found.notes
    swaps: dict[tuple[str, str], list[copyover.Copied]] = {}
    for copy in found.copies:
        if copy.replaces:
            swaps.setdefault((copy.url, copy.replaces), []).append(copy)
            continue
        upstream, tree = names[copy.url], trees[copy.url]
        base = tree.read(copy.path)
        if base is not None and copyover.line_ends_like(base, copy.data) != copy.data:
            copy.data = copyover.line_ends_like(base, copy.data)
            report.repairs.append(Finding(str(copy.step.where), f"{copy.source} -> {copy.path}",
                                          "the copy's line ends differ from the upstream file's: the file's kept "
                                          "(otherwise every line changes)"))
        overlay = copyover.overlay_of(copy, upstream, tree)
        origin = provenance.origin(port, copy.source) if (port / copy.source).is_file() else \
            provenance.origin(port, str(copy.step.where.path))
        if overlay is not None:
            out.file_overlays.append(overlay)
            report.overlays.append(f"overlays/{out.model}/files/{upstream}/{copy.path}")
            continue
        before = tree.tree()
        entry = tree.entry(copy.path)
        tree.put(copy.path, copy.data, entry[0] if entry else "100644")
        after = tree.tree()
        if after == before:
            report.notes.append(Finding(str(copy.step.where), copy.step.text, f"{copy.path}: already so at this point"))
            continue
        body = (f"The README step at {copy.step.where} copies {copy.source} over {copy.path} ({copy.step.text}); "
                "`patchkit import` made it a patch on the upstream.")
        _add(out.patches.setdefault(upstream, []), upstream, f"{copy.path}: copied over from {copy.source}",
             "copy-" + copy.path, body,
             tree.diff(before, after), origin, out, report)


    for (url, folder), group in swaps.items():
        upstream, tree = names[url], trees[url]
        before = tree.tree()
        tree.remove_folder(folder)
        for copy in group:
            tree.put(copy.path, copy.data)
        step = group[0].step
        src = group[0].source.rsplit("/", 1)[0] if len(group) == 1 else os.path.commonpath([c.source for c in group])
        body = (f"The README replaces {folder}/ by {src}/ ({step.where}: {step.text}, after removing it); "
                "`patchkit import` made the swap one patch: it is one change, and a conflict in it names its files.")
        _add(out.patches.setdefault(upstream, []), upstream, f"{folder}/: replaced by {src}/", "replace-" + folder,
             body, tree.diff(before, tree.tree()), provenance.origin(port, "README.md"), out, report)


def _verify(trees: dict[str, Tree], names: dict[str, str], out: Outputs) -> None:
    """Every series applies strictly at its pin (a bug of this module otherwise)."""
    for url, tree in trees.items():
        series = out.patches.get(names[url], [])
        with Scratch(tree.mirror) as scratch:
            if series and replay(scratch, tree.pin, [data for _, data in series]) is None:
                raise PatchkitError(f"internal: the regenerated series of {names[url]} does not apply strictly at its pin")


_NOT_CONVERTED = {"sed": "an in-place `sed` edit: say the change as a patch", "move": "a `mv` step",
                  "remove": "an `rm` step"}


def _steps_not_converted(steps: list[Step], report: ImportReport, plans: upstreams_mod.Plans) -> None:
    consumed = copyover.consumed_removals(steps, plans)
    for step in steps:
        if step in consumed or step.kind == "move":
            continue  # a package swap (read by copyover), or a `mv` it reported
        reason = _NOT_CONVERTED.get(step.kind)
        if reason:
            report.not_converted.append(Finding(str(step.where), step.text, reason))
