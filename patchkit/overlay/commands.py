"""What `patchkit overlay list|fingerprint|check` do, as data (the CLI prints)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from patchkit import cache, patchfile, workspace
from patchkit import state as state_mod
from patchkit.apply import OVERLAY_ID, model_dir
from patchkit.errors import BadInput, PatchkitError
from patchkit.manifest import Effective, Manifest
from patchkit.overlay import drift, static
from patchkit.overlay.drift import OverlayResult, TreeReader
from patchkit.scratch import Scratch, replay
from patchkit.status import model_status, workspace_view


def _declared(manifest: Manifest, model: Effective) -> tuple[list[static.Target], list[static.FileOverlay]]:
    if not model.overlays:
        raise BadInput(f"model {model.name!r} has no overlays (overlays/{model.name}/ or an `overlays:` list)")
    targets, files = static.load_sets(manifest.root, model.overlays)
    unknown = sorted(({t.upstream for t in targets} | {f.upstream for f in files}) - set(model.layers))
    if unknown:
        where = [t.where for t in targets if t.upstream in unknown][:3]
        raise BadInput(f"overlays of {model.name!r} name upstreams the model does not have: {', '.join(unknown)}",
                       details=where)
    return targets, files


@contextlib.contextmanager
def pinned_sources(manifest: Manifest, model: Effective, workspace_root: Path) -> Iterator[dict[str, tuple[TreeReader, str]]]:
    """A reader per upstream of the code the overlays were written against: the model's pin with its
    series (MODEL: a model's effective view), read from the workspace when it is applied and clean,
    else replayed."""
    status = {r.upstream: r for r in model_status(manifest, model, workspace_root).repos}
    recorded = state_mod.load(model_dir(workspace_root, model.name))
    with contextlib.ExitStack() as stack:
        readers: dict[str, tuple[TreeReader, str]] = {}
        for up in model.layers:
            repo = workspace_root / model.name / up
            if status[up].state == "clean":
                applied = recorded[up].patches
                tip = f"refs/heads/{workspace.branch_name(model.name)}"
                if applied and applied[-1].id == OVERLAY_ID:  # apply's overlay commit holds our files, not theirs
                    tip = f"{applied[-1].commit}^"
                readers[up] = (stack.enter_context(TreeReader(repo, tip)), f"the workspace {repo}")
                continue
            upstream = model.upstreams[up]
            mirror, _ = cache.ensure_pin(upstream)
            scratch = stack.enter_context(Scratch(mirror))
            patches = [p.data for p in patchfile.load_series(model.patches[up])]
            tree = replay(scratch, upstream.pin, patches)
            if tree is None:
                raise PatchkitError(f"{model.name}/{up}: the series does not apply at the pin; "
                                    f"run `patchkit apply {model.name}` to see why")
            readers[up] = (stack.enter_context(TreeReader(mirror, tree, scratch.env)), f"the pin {upstream.pin[:12]} with the series")
        yield readers


def list_overlays(manifest: Manifest, model_name: str, workspace_root: Path) -> OverlayResult:
    return _pinned_report(manifest, workspace_view(manifest, model_name, workspace_root), workspace_root)[0]


def _pinned_report(manifest: Manifest, model: Effective, workspace_root: Path, *,
                   with_files: bool = True) -> tuple[OverlayResult, list[static.Target]]:
    """Every declaration of MODEL (WITH_FILES: whole-file overlays too) classified against the pinned
    code, and the runtime declarations."""
    targets, files = _declared(manifest, model)
    files = files if with_files else []
    with pinned_sources(manifest, model, workspace_root) as sources:
        report = OverlayResult(model.name, sources={up: desc for up, (_, desc) in sources.items()})
        report.targets = [drift.classify(t, sources[t.upstream][0]) for t in targets]
        report.files = [drift.check_file(f, sources[f.upstream][0], [sources[f.upstream][0]]) for f in files]
    return report, targets


def fingerprint(manifest: Manifest, model_name: str, workspace_root: Path) -> OverlayResult:
    """Compute every target's fingerprint from the pinned code and write it into the overlay files."""
    report, targets = _pinned_report(manifest, workspace_view(manifest, model_name, workspace_root), workspace_root,
                                     with_files=False)
    missing = [t for t in report.targets if t.state == "missing"]
    if missing:
        raise PatchkitError("cannot fingerprint targets that are not in the upstream",
                            details=[f"{t.where}: {t.target}: {'; '.join(t.detail)}" for t in missing])
    updates = []
    for target, state in zip(targets, report.targets):
        if state.current is not None and state.current != target.fingerprint:
            updates.append((target, state.current))
            state.state, state.declared = "updated", state.current
    static.write_fingerprints(updates)
    return report
