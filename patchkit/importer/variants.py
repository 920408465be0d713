"""Variants of one model (the manifest's `variants:`), from a port's parallel files that no README step
uses: `*_a5.patch`, `patch_a5.py` and `requirements*_a5.txt` (Atlas A5), `requirements_pytorch<V>.txt`
(another torch).

- A variant patch replaces the port patch it overlaps most (`bevformer_a5.patch` the
  `bev_former_config.patch` it is a longer copy of): the variant's layer `<model>-<variant>` holds, one
  patch a file, the difference between the model's tree (its whole series) and that tree with the
  replaced patch's files as the variant patch makes them (re-derived at the pin like any port patch).
- A variant patcher: its functions that differ from (or are not in) the model's patcher become the
  overlay set `<model>-<variant>`, fingerprinted at the variant's tree.
- A requirements file: `requires` holds its lines the port's requirements.txt does not have (lines it
  drops cannot be said as requirements and are reported).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from patchkit.errors import BadInput
from patchkit.importer import patcher, patches as patches_mod, provenance, regen
from patchkit.importer.model import Finding, ImportReport, OverlayModuleOut
from patchkit.importer.patches import FileDiff
from patchkit.importer.regen import Tree

if TYPE_CHECKING:  # run imports the modules this one does: the annotation alone needs it
    from patchkit.importer.run import Outputs

_A5 = re.compile(r"(^|_)a5$", re.I)
_TORCH = re.compile(r"^requirements_pytorch(\d+(?:\.\d+)+)$")


def names(port: Path) -> dict[str, list[Path]]:
    """Variant name -> the port's files of it (top-level files of the port folder)."""
    out: dict[str, list[Path]] = {}
    for path in sorted(p for p in port.iterdir() if p.is_file() and not p.is_symlink()):
        stem = path.stem
        if _A5.search(stem) and path.suffix in (".patch", ".py", ".txt"):
            out.setdefault("a5", []).append(path)
        elif _TORCH.match(stem) and path.suffix == ".txt":
            out.setdefault("torch" + _TORCH.match(stem).group(1), []).append(path)
    return out


def find(port: Path, out: Outputs, report: ImportReport) -> list[dict[str, object]]:
    """Make the variants of the imported model OUT (run.Outputs) from PORT's files; their report entries."""
    if not out.layers:
        return []
    made = []
    for variant, files in names(port).items():
        entry, summary = _variant(port, variant, files, out, report)
        if entry:
            out.variants[variant] = entry
            made.append({"model": out.model, "name": variant, "files": [f.name for f in files],
                         "summary": summary, **entry})
    return made


def _variant(port: Path, variant: str, files: list[Path], out: Outputs, report: ImportReport) -> tuple[dict[str, object], str]:
    layer = f"{out.model}-{variant}"
    entry: dict[str, object] = {"description": _description(variant, files)}
    said = []
    patch_files = [f for f in files if f.suffix == ".patch"]
    trees = _trees(out)
    try:
        series: dict[str, list[tuple[str, bytes]]] = {}
        for path in patch_files:
            _patch(port, path, variant, trees, out, report, series)
        if series:
            out.variant_patches[variant] = series
            entry["upstreams"] = {up: [layer] for up in series}
            said.append(f"{sum(len(s) for s in series.values())} patches in layer {layer} "
                        f"({', '.join(f'{up}: {len(s)}' for up, s in series.items())})")
        for path in (f for f in files if f.suffix == ".py"):
            modules = _overlays(port, path, trees, out, report)
            if modules:
                out.variant_overlays[variant] = modules
                entry["overlays"] = [layer]
                said.append(f"{len(modules)} patcher functions that differ or are added, overlay set {layer}")
    finally:
        for tree in trees.values():
            tree.close()
    for path in (f for f in files if f.suffix == ".txt"):
        extra = _requires(port, path, report)
        if extra:
            entry["requires"] = extra
            said.append(f"{len(extra)} requirements from {path.name}")
    if len(entry) > 1:
        made = {f.relative_to(port).as_posix() for f in files}
        report.not_converted = [f for f in report.not_converted if f.where not in made]
    return (entry if len(entry) > 1 else {}), "; ".join(said)


def _description(variant: str, files: list[Path]) -> str:
    what = "Atlas A5" if variant == "a5" else f"PyTorch {variant.removeprefix('torch')}"
    return f"{what}: DrivingSDK's {', '.join(f.name for f in files)} (imported by patchkit import)"


def _trees(out: Outputs) -> dict[str, Tree]:
    """Each upstream of the model at its pin with the model's whole series applied (strictly)."""
    trees = {}
    for up, (mirror, pin) in out.bases.items():
        tree = Tree(mirror, pin)
        for _, data in _series_of(out, up):
            if not tree.scratch.apply(data).ok:
                tree.close()
                raise BadInput(f"internal: {out.model}'s series of {up} does not apply at its pin")
        trees[up] = tree
    return trees


def _series_of(out: Outputs, up: str) -> list[tuple[str, bytes]]:
    """The model's patches of UP in order: its shared layers' then its own (what `apply` replays)."""
    return [*out.shared_series.get(up, []), *out.patches.get(up, [])]


def _patch(port: Path, path: Path, variant: str, trees: dict[str, Tree], out: Outputs, report: ImportReport,
           series: dict[str, list[tuple[str, bytes]]]) -> None:
    rel = path.relative_to(port).as_posix()
    try:
        fds, repairs = patches_mod.parse(path.read_bytes(), rel)
    except BadInput as exc:
        report.not_converted.append(Finding(rel, "variant patch", exc.message))
        return
    report.repairs += repairs
    replaced = _replaced(port, fds, out)
    if replaced is None:
        report.not_converted.append(Finding(rel, f"{variant} variant patch", "overlaps no patch the README applies: "
                                            "which upstream it is for is not known"))
        return
    base_rel, up, prefix = replaced
    tree = trees[up]
    base_fds = [patches_mod.prefixed(d, prefix) if prefix else d for d in patches_mod.parse((port / base_rel).read_bytes(), base_rel)[0]]
    fds = [patches_mod.prefixed(d, prefix) if prefix else d for d in fds]
    before = tree.tree()
    paths = list(dict.fromkeys(p for fd in [*base_fds, *fds] for p in fd.paths))
    regen.set_paths(tree.scratch, tree.pin, paths)
    for fd in fds:
        applied = tree.apply(fd)
        for hunk in applied.rejected:
            report.not_converted.append(Finding(f"{rel}:{hunk.line}", f"{fd.path}: hunk", f"does not apply at the pin "
                                                f"{tree.pin[:12]} (the {variant} variant loses it there too)"))
    after = tree.tree()
    origin = provenance.origin(port, rel)
    for p in paths:
        diff = tree.diff(before, after, p)
        if not diff or provenance.cosmetic(diff):
            continue
        got = series.setdefault(up, [])
        body = (f"The {variant} variant's difference from the model for {p}: DrivingSDK's {rel} replaces "
                f"{base_rel} there (no README step names it); re-derived by `patchkit import` on top of the "
                f"model's series at {tree.pin[:12]}.")
        got.append((f"{len(got) + 1:04d}-{provenance.slug(p)}.patch",
                    provenance.format_patch(diff, f"{p}: {variant} variant, from {path.name}", body, origin)))


def _replaced(port: Path, fds: list[FileDiff], out: Outputs) -> tuple[str, str, str] | None:
    """(port patch, upstream, folder) of the applied port patch sharing the most files with FDS."""
    paths = {fd.path for fd in fds}
    best = None
    for rel, (up, prefix) in sorted(out.sources.items()):
        try:
            theirs = {fd.path for fd in patches_mod.parse((port / rel).read_bytes(), rel)[0]}
        except (BadInput, OSError):
            continue
        overlap = len(paths & theirs)
        if overlap and (best is None or overlap > best[0]):
            best = (overlap, rel, up, prefix)
    return best[1:] if best else None


def _overlays(port: Path, path: Path, trees: dict[str, Tree], out: Outputs, report: ImportReport) -> list[OverlayModuleOut]:
    """The variant patcher's functions whose overlay differs from the model's (or that it lacks)."""
    rel = path.relative_to(port).as_posix()
    result = patcher.PatcherResult()
    patcher._file(path, rel, trees, result)
    report.external_hooks += [Finding(f.where, f.what, f"{f.reason} (variant patcher)") for f in result.hooks]
    mine = {m.name: _body(m.text) for m in out.overlay_modules}
    return [m for m in result.modules if mine.get(m.name) != _body(m.text)]


def _body(text: str) -> str:
    """An overlay module's text less its first line (which names the patcher file and line)."""
    return text.split("\n", 1)[1] if "\n" in text else text


def _requires(port: Path, path: Path, report: ImportReport) -> list[str]:
    base = port / "requirements.txt"
    mine = _lines(path)
    theirs = _lines(base) if base.is_file() else []
    extra = [line for line in mine if line not in theirs]
    dropped = [line for line in theirs if line not in mine]
    if dropped:
        report.notes.append(Finding(path.name, f"drops {', '.join(dropped)} of requirements.txt",
                                    "a variant only adds requirements: install them without the dropped ones by hand"))
    return extra


def _lines(path: Path) -> list[str]:
    out = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            out.append(line)
    return out
