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
from patchkit.manifest import Manifest, PatchRef
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
    for model in manifest.models.values():
        for refs in model.patches.values():
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

    def one(name: str) -> list[Diagnostic]:
        up = manifest.upstreams[name]
        try:
            path, _ = cache.ensure_pin(up)
        except UpstreamUnreachable as exc:
            report.unreachable.append(name)
            return [Diagnostic(where, up.line, " ".join(exc.lines()))]
        except PatchkitError as exc:
            return [Diagnostic(where, up.pin_line or up.line, exc.message)]
        if cache.track_commit(path, up.track) is None:
            return [Diagnostic(where, up.line, f"upstream {name!r}: track {up.track!r} is neither a branch "
                               f"nor a tag of {up.url}")]
        return []

    names = sorted(manifest.upstreams)
    with ThreadPoolExecutor(max_workers=max(1, min(4, len(names)))) as pool:
        for found in pool.map(one, names):
            report.diagnostics += found
