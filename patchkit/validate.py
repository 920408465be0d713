"""`patchkit validate`: every check that needs no workspace, reported all at once.

Offline: the manifest schema, the series files and every patch file (parses as a
format-patch, writes only inside its repo). With `remote`: every pin resolves in its upstream
and every `track` names a branch or tag there.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from patchkit import cache, patchfile
from patchkit.errors import Diagnostic, PatchkitError, UpstreamUnreachable
from patchkit.lint import lint
from patchkit.manifest import Manifest, PatchRef, Upstream
from patchkit.paths import display


@dataclass
class ValidateReport:
    manifest: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    patches: int = 0

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return 3
        return 2 if self.diagnostics else 0


def all_patch_refs(manifest: Manifest) -> list[PatchRef]:
    seen: dict[Path, PatchRef] = {}
    for view in manifest.views():
        for refs in view.patches.values():
            for ref in refs:
                seen.setdefault(ref.path, ref)
    return list(seen.values())


def validate(manifest: Manifest, *, remote: bool = False) -> ValidateReport:
    report = ValidateReport(display(manifest.path))
    refs = all_patch_refs(manifest)
    report.patches = len(refs)
    for ref in refs:
        patch = patchfile.read(ref)
        parsed, problems = patchfile.check(patch)
        report.diagnostics += problems
        if parsed:
            report.diagnostics += lint(patch, parsed)
    if remote:
        _remote(manifest, report)
    return report


def _remote(manifest: Manifest, report: ValidateReport) -> None:
    where = display(manifest.path)

    def one(up: Upstream) -> list[Diagnostic]:
        name = up.name
        try:
            path, _ = cache.ensure_pin(up)
        except UpstreamUnreachable as exc:
            if name not in report.unreachable:
                report.unreachable.append(name)
            return [Diagnostic(where, up.line, " ".join(exc.lines()))]
        except PatchkitError as exc:
            return [Diagnostic(where, up.pin_line or up.line, exc.message)]
        if cache.track_commit(path, up.track) is None:
            return [Diagnostic(where, up.line, f"upstream {name!r}: track {up.track!r} is neither a branch "
                               f"nor a tag of {up.url}")]
        return []

    bases = {(u.name, u.pin, u.track): u for u in manifest.upstreams.values()}
    for view in manifest.views():  # a model's own pin or track of an upstream is checked too
        for u in view.upstreams.values():
            bases.setdefault((u.name, u.pin, u.track), u)
    chosen = [bases[key] for key in sorted(bases)]
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(chosen)))) as pool:
        for found in pool.map(one, chosen):
            report.diagnostics += found
