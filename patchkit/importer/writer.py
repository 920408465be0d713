"""The one writer of an import: everything it writes lies inside the port repository, each file is
written atomically and only when its bytes change, so importing the same folder again against the
same mirrors changes nothing.

A model's files: `patches/<model>/`, `overlays/<model>/`, `train/<model>.yaml`, `imports/<model>.json`
(the report), and two marked blocks of `upstreams.yaml` (the upstreams it added, the model). A
re-import replaces exactly those; a file of `patches/<model>/` or `overlays/<model>/` the new import
does not make is removed. `upstreams.yaml` is written last, so it never names a series not yet there.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import yaml

from patchkit import manifest as manifest_mod
from patchkit.errors import PatchkitError
from patchkit.importer.model import ImportReport
from patchkit.importer.run import NewUpstream, Outputs
from patchkit.paths import atomic_write

HEADER = ("# upstreams.yaml -- every upstream pinned, and what each model's workspace is made of.\n"
          "# Made by `patchkit import`; the blocks between `>>> patchkit import` and `<<<` lines are remade by a\n"
          "# re-import of that model (edit them by hand and import no more, or move them out of the markers).\n"
          "version: 1\n\nupstreams:\nmodels:\n")
GITATTRIBUTES = "*.patch -text -whitespace\n"


def begin(model: str, what: str) -> str:
    return f"# >>> patchkit import {model}: {what}"


def end(model: str, what: str) -> str:
    return f"# <<< patchkit import {model}: {what}"


def strip_blocks(text: str, model: str) -> str:
    """TEXT without MODEL's marked blocks."""
    for what in ("upstreams", "model"):
        text = _replace_block(text, model, what, None)[0]
    return text


def _replace_block(text: str, model: str, what: str, block: str | None) -> tuple[str, bool]:
    pattern = re.compile(rf"^[ \t]*{re.escape(begin(model, what))}\n.*?^[ \t]*{re.escape(end(model, what))}\n", re.M | re.S)
    if not pattern.search(text):
        return text, False
    return pattern.sub(lambda _m: block or "", text, count=1), True


def write(root: Path, outputs: Outputs, report: ImportReport, *, manifest: bool = True) -> list[str]:
    """Write OUTPUTS and REPORT into the port repository ROOT; the paths changed (relative to ROOT).
    MANIFEST false: upstreams.yaml is left to the caller (`import --all` writes it once, for all models)."""
    if not outputs.layers:  # no upstream could be obtained: the report says why, the manifest stays as it is
        report.added = False
        return put_all(root, {k: v for k, v in _files(outputs, report).items() if k.startswith("imports/")})
    files = _files(outputs, report)
    folders = [f"{kind}/{outputs.model}{'-' + v if v else ''}" for kind in ("patches", "overlays")
               for v in ("", *outputs.variants)]
    changed = remove_stale(root, folders, files) + put_all(root, files)
    if not (root / ".gitattributes").exists() and _put(root / ".gitattributes", GITATTRIBUTES.encode()):
        changed.append(".gitattributes")
    if manifest and write_manifest(root, [outputs]):
        changed.append(manifest_mod.MANIFEST_NAME)
    return changed


def remove_stale(root: Path, folders: list[str], files: dict[str, bytes]) -> list[str]:
    """The files under FOLDERS (relative to ROOT) that FILES does not make, removed; their paths."""
    changed = []
    for folder in (root / f for f in folders):
        for stale in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []:
            rel = stale.relative_to(root).as_posix()
            if rel not in files:
                stale.unlink()
                changed.append(rel)
    return changed


def put_all(root: Path, files: dict[str, bytes]) -> list[str]:
    """FILES (path relative to ROOT -> bytes) written where they differ; the paths changed."""
    return [rel for rel, data in sorted(files.items()) if _put(root / rel, data)]


def _put(path: Path, data: bytes) -> bool:
    if path.is_file() and path.read_bytes() == data:
        return False
    atomic_write(path, data)
    return True


def series_files(folder: str, header: str, series: list[tuple[str, bytes]]) -> dict[str, bytes]:
    """A layer's folder of SERIES (name, bytes): its `series` file, HEADER its comment, and each patch file."""
    files = {f"{folder}/series": ("".join([f"# {header}\n", *(f"{name}\n" for name, _ in series)])).encode()}
    files.update({f"{folder}/{name}": data for name, data in series})
    return files


def _files(outputs: Outputs, report: ImportReport) -> dict[str, bytes]:
    m = outputs.model
    files: dict[str, bytes] = {}
    for upstream, series in outputs.patches.items():
        if not series:
            continue
        files.update(series_files(f"patches/{m}/{upstream}", f"{m} on {upstream}: imported by `patchkit import` from "
                                  f"{report.port.rsplit('/', 1)[-1]} (imports/{m}.json says from what), one patch a file",
                                  series))
    for module in outputs.overlay_modules:
        files[f"overlays/{m}/{module.name}.py"] = module.text.encode()
    for variant, by_upstream in outputs.variant_patches.items():
        for upstream, series in by_upstream.items():
            files.update(series_files(f"patches/{m}-{variant}/{upstream}", f"the {variant} variant of {m} on {upstream}: "
                                      f"imported by `patchkit import` (imports/{m}.json says from what), one patch a file",
                                      series))
    for variant, modules in outputs.variant_overlays.items():
        files.update({f"overlays/{m}-{variant}/{module.name}.py": module.text.encode() for module in modules})
    if outputs.file_overlays:
        entries = []
        for fo in outputs.file_overlays:
            files[f"overlays/{m}/files/{fo.upstream}/{fo.path}"] = fo.data
            entries.append({"upstream": fo.upstream, "path": fo.path, "base": fo.base})
        files[f"overlays/{m}/files.yaml"] = ("# whole-file overlays made by `patchkit import` from copy-over steps\n" +
                                             yaml.safe_dump({"files": entries}, sort_keys=False)).encode()
    if outputs.recipe is not None:
        files[f"train/{m}.yaml"] = outputs.recipe.encode()
    data = dataclasses.asdict(report)
    data.pop("changed", None)
    files[f"imports/{m}.json"] = (json.dumps(data, indent=2, sort_keys=False) + "\n").encode()
    return files


def write_manifest(root: Path, models: list[Outputs]) -> bool:
    """The marked blocks of MODELS placed in ROOT's upstreams.yaml, written once and loaded back
    (restored when it would not load); whether it changed."""
    path = root / manifest_mod.MANIFEST_NAME
    old = path.read_bytes() if path.is_file() else None
    text = old.decode("utf-8") if old is not None else HEADER
    for outputs in models:
        text = _place(text, outputs.model, "upstreams", _upstream_block(outputs), before_models=True)
        text = _place(text, outputs.model, "model", _model_block(outputs), before_models=False)
    if any(o.pins or o.variants for o in models):
        text = re.sub(r"^version:[ \t]*1[ \t]*$", "version: 2", text, count=1, flags=re.M)
    if old is not None and text.encode() == old:
        return False
    what = ", ".join(o.model for o in models)
    atomic_write(path, text.encode())
    try:
        manifest_mod.load(path)
    except PatchkitError as exc:
        if old is None:
            path.unlink()
        else:
            atomic_write(path, old)
        raise PatchkitError(f"internal: the manifest made for {what} does not load; left as it was",
                            details=exc.lines()) from None
    return True


def _place(text: str, model: str, what: str, block: str, *, before_models: bool) -> str:
    text, done = _replace_block(text, model, what, block)
    if done:
        return text
    if not before_models:
        return text + ("" if text.endswith("\n") else "\n") + block
    m = re.search(r"^models:[ \t]*(#.*)?$", text, re.M)
    if m is None:
        return text + ("" if text.endswith("\n") else "\n") + "models:\n" + block
    return text[:m.start()] + block + text[m.start():]


def _upstream_block(outputs: Outputs) -> str:
    lines = [f"  {begin(outputs.model, 'upstreams')}"]
    for new in outputs.upstreams:
        lines += _one_upstream(new)
    lines.append(f"  {end(outputs.model, 'upstreams')}")
    return "\n".join(lines) + "\n"


def _one_upstream(new: NewUpstream) -> list[str]:
    up = new.upstream
    out = [f"  # {c}" for c in new.comment]
    out.append(f"  {up.name}:")
    if up.pypi:
        out += [f"    pypi: {up.pypi}", f"    sha256: {up.sha256}"]
    else:
        out.append(f"    url: {up.url}")
    out += [f"    pin: {up.pin}", f"    track: {_scalar(up.track)}"]
    if new.exclude:
        out.append(f"    exclude: {_flow(new.exclude)}")
    if new.install:
        out.append("    install:")
        for key, value in new.install.items():
            out.append(f"      {key}: {_flow(value)}")
    return out


def _model_block(outputs: Outputs) -> str:
    lines = [f"  {begin(outputs.model, 'model')}", f"  {outputs.model}:",
             f"    description: {_scalar(outputs.description)}", "    upstreams:"]
    for upstream, layers in outputs.layers.items():
        if upstream not in outputs.pins:
            lines.append(f"      {upstream}: {_flow(layers)}")
            continue
        pin, track = outputs.pins[upstream]
        lines += [f"      {upstream}:", f"        pin: {pin}", f"        track: {_scalar(track)}",
                  f"        layers: {_flow(layers)}"]
    if outputs.overlay_modules or outputs.file_overlays:
        lines.append(f"    overlays: [{outputs.model}]")
    if outputs.variants:
        lines.append("    variants:")
        for name, entry in outputs.variants.items():
            lines.append(f"      {name}:")
            lines += [f"        {key}: {_flow(value)}" for key, value in entry.items()]
    lines.append(f"  {end(outputs.model, 'model')}")
    return "\n".join(lines) + "\n"


def _scalar(value: object) -> str:
    """VALUE as a YAML scalar that reads back as the same string (quoted when YAML would read it otherwise)."""
    if isinstance(value, str) and value == value.strip() and value and ": " not in value and " #" not in value \
            and value[0] not in "[]{}*&!%@`\"'>|-?:,#" and "," not in value:
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def _flow(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return _scalar(value)
