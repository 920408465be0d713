"""`patchkit export`: turn a workspace's commits back into the patch series.

Each commit above the pin is matched to the patch it came from: first by the commit recorded
at apply time (unchanged), then by author and subject (edited: the file is refreshed). Commits
that match nothing are new patches, appended to the model's own layer; patches whose commit is
gone are dropped from their series. A patch whose content did not change keeps its bytes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from patchkit import git, patchfile, state, workspace
from patchkit.errors import BadInput, PatchkitError
from patchkit.apply import OVERLAY_ID, OVERLAY_SUBJECT, overlay_ref
from patchkit.manifest import Effective, Manifest, PatchRef, series_dir
from patchkit.patchfile import Patch
from patchkit.status import workspace_view
from patchkit.paths import atomic_write, display

FORMAT = ["format-patch", "-1", "--stdout", "--zero-commit", "--no-signature", "--full-index", "--no-stat"]


@dataclass
class Change:
    action: str  # unchanged | refreshed | added | dropped
    patch: str  # layer/name
    path: str
    commit: str | None = None


@dataclass
class RepoExport:
    upstream: str
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def stale(self) -> list[Change]:
        return [c for c in self.changes if c.action != "unchanged"]


@dataclass
class _Planned:
    ref: PatchRef
    data: bytes
    commit: str | None
    action: str


def own_layer(model: Effective, upstream: str) -> str:
    """Where new commits go: the variant's last layer on UPSTREAM (a variant's workspace is worked on for
    that variant), else the model's layer of its own name, else its last."""
    layers = model.layers[upstream]
    if not layers:
        raise BadInput(f"model {model.name!r} has no layer for upstream {upstream!r} to put new patches in; "
                       f"add one (e.g. [{model.name}]) to upstreams.yaml")
    added = model.model.variants[model.variant].layers.get(upstream, ()) if model.variant else ()
    if added:
        return added[-1]
    return model.name if model.name in layers else layers[-1]


def export(manifest: Manifest, model_name: str, workspace_root: Path, *, upstream: str | None = None,
           check: bool = False) -> list[RepoExport]:
    model = workspace_view(manifest, model_name, workspace_root)  # as built: with its variant's layers
    ups = [upstream] if upstream else list(model.layers)
    for up in ups:
        if up not in model.layers:
            raise BadInput(f"model {model.name!r} has no upstream {up!r}")
    mdir = workspace_root / model.name
    recorded = state.load(mdir)
    reports = []
    for up in ups:
        plan, report = _plan(manifest, model, up, mdir / up, recorded.get(up))
        if not check:
            _write(manifest, model, up, plan, report)
            _record(mdir, model.name, up, plan, recorded[up])
        reports.append(report)
    return reports


def _commits(repo: Path, pin: str, branch: str) -> list[tuple[str, str, str]]:
    """(sha, "Name <email>", subject) of each commit above the pin on BRANCH, oldest first."""
    merges = git.out(["rev-list", "--merges", f"{pin}..{branch}"], repo)
    if merges:
        raise PatchkitError(f"{display(repo)}: {branch} has merge commits above the pin; export needs a linear series")
    out = git.out(["log", "--reverse", "--format=%H%x00%an <%ae>%x00%s", f"{pin}..{branch}"], repo)
    return [tuple(line.split("\0", 2)) for line in out.splitlines() if line]  # type: ignore[misc]


def _plan(manifest: Manifest, model: Effective, up: str, repo: Path,
          rec: state.RepoState | None) -> tuple[list[_Planned], RepoExport]:
    if rec is None or not (repo / ".git").is_dir():
        raise BadInput(f"{display(repo)} is not applied; run `patchkit apply {model.name}` first")
    branch = workspace.branch_name(model.name)
    pin = model.upstreams[up].pin
    if rec.status != state.APPLIED:
        raise BadInput(f"{display(repo)} is not fully applied ({rec.status}{': ' + rec.failed_patch if rec.failed_patch else ''}); "
                       "fix the series and apply first, so that no patch is taken for dropped")
    if rec.pin != pin:
        raise BadInput(f"{display(repo)} was applied at {rec.pin[:12]} but upstreams.yaml pins {pin[:12]}; "
                       f"run `patchkit apply {model.name}` first")
    report = RepoExport(up)
    check = workspace.inspect(repo, model.name)
    if check.changed:
        report.warnings.append(f"{display(repo)} has uncommitted changes; export takes commits only "
                               f"({', '.join(check.changed[:5])})")
    patches = {p.ref.id: p for p in patchfile.load_series(model.patches[up])}
    by_commit = {a.commit: a.id for a in rec.patches}
    identity = {pid: _identity(p) for pid, p in patches.items()}
    matched: set[str] = set()
    plan: list[_Planned] = []
    for sha, author, subject in _commits(repo, pin, branch):
        if subject == OVERLAY_SUBJECT:  # apply's commit of the whole-file overlays: not a patch
            entry = next((a for a in rec.patches if a.id == OVERLAY_ID), None)
            if entry is not None:
                plan.append(_Planned(overlay_ref(up, repo), b"", sha, "overlays"))
            continue
        pid = by_commit.get(sha) if by_commit.get(sha) in patches else None
        if pid is None:
            pid = next((i for i, ident in identity.items() if i not in matched and ident == (author, subject)), None)
        data = git.output_bytes([*FORMAT, sha], repo)
        if pid is None:
            plan.append(_Planned(_new_ref(manifest, model, up, own_layer(model, up), subject, plan), data, sha, "added"))
            continue
        matched.add(pid)
        old = patches[pid]
        same = _normalise(old.data) == _normalise(data)
        plan.append(_Planned(old.ref, old.data if same else data, sha, "unchanged" if same else "refreshed"))
    for pid, patch in patches.items():
        if pid not in matched:
            plan.append(_Planned(patch.ref, patch.data, None, "dropped"))
    _check_order(plan, model.layers[up], report)
    layer = own_layer(model, up) if model.layers[up] else ""
    report.changes = [Change(p.action, p.ref.id, display(p.ref.path), p.commit) for p in plan
                      if p.action != "overlays"]
    for p in plan:
        if p.action not in ("unchanged", "overlays") and p.ref.layer != layer:
            users = list(dict.fromkeys(v.label for v in manifest.views() if v.name != model.name
                                       and p.ref.layer in v.layers.get(up, ())))
            if users:
                report.warnings.append(f"{p.ref.id} is in the shared layer {p.ref.layer!r}, also used by "
                                       f"{', '.join(users)}: {p.action} there too")
    return plan, report


def _identity(patch: Patch) -> tuple[str, str]:
    parsed, _ = patchfile.parse(patch)
    if parsed is None:
        return ("", "")
    return (re.sub(r"\s+", " ", parsed.author).strip(), re.sub(r"\s+", " ", parsed.subject).strip())


def _normalise(data: bytes) -> list[bytes]:
    """A patch without what changes on every export: the From-sha line, index lines, stat, signature."""
    lines = data.split(b"\n")
    start = next((i for i, ln in enumerate(lines) if ln.startswith(b"diff --git ")), len(lines))
    header = []
    for line in lines[:start]:
        if line == b"---":  # the diffstat that format-patch may or may not have written
            break
        if re.match(rb"^From [0-9a-f]{40} ", line):
            continue
        header.append(re.sub(rb"^Subject: \[PATCH[^\]]*\] ?", b"Subject: ", line))
    body = []
    for line in lines[start:]:
        if line == b"-- ":  # the signature
            break
        if not line.startswith(b"index "):
            body.append(line)
    while header and not header[-1].strip():
        header.pop()
    while body and not body[-1].strip():
        body.pop()
    return header + body


def _slug(subject: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", subject).strip("-.")
    return slug[:52].rstrip("-.") or "patch"


def _new_ref(manifest: Manifest, model: Effective, up: str, layer: str, subject: str, plan: list[_Planned]) -> PatchRef:
    folder = series_dir(manifest.root, layer, up)
    names = {p.name for p in model.patches[up] if p.layer == layer} | {p.ref.name for p in plan if p.ref.layer == layer}
    numbers = [int(m.group(1)) for n in names if (m := re.match(r"^(\d+)-", n))]
    number = max(numbers, default=0) + 1
    name = f"{number:04d}-{_slug(subject)}.patch"
    return PatchRef(layer, up, name, str(folder / name), folder / "series", 0)


def _check_order(plan: list[_Planned], layers: tuple[str, ...], report: RepoExport) -> None:
    seen = -1
    for p in plan:
        if p.action in ("dropped", "overlays"):
            continue
        index = layers.index(p.ref.layer)
        if index < seen:
            report.warnings.append(f"{p.ref.id} comes after patches of a later layer in the workspace; "
                                   "re-applying puts it back in its layer's place")
        seen = max(seen, index)


def _write(manifest: Manifest, model: Effective, up: str, plan: list[_Planned], report: RepoExport) -> None:
    for p in plan:
        if p.action in ("refreshed", "added"):
            atomic_write(p.ref.path, p.data)
    for layer in model.layers[up]:
        keep = [p.ref.name for p in plan if p.ref.layer == layer and p.action not in ("dropped", "overlays")]
        dropped = {p.ref.name for p in plan if p.ref.layer == layer and p.action == "dropped"}
        series_path = series_dir(manifest.root, layer, up) / "series"
        text = series_path.read_text(encoding="utf-8")
        new_text = _edit_series(text, keep, dropped)
        if new_text != text:
            atomic_write(series_path, new_text.encode())
        for name in dropped:
            (series_dir(manifest.root, layer, up) / name).unlink(missing_ok=True)


def _edit_series(text: str, keep: list[str], dropped: set[str]) -> str:
    """TEXT with DROPPED entries removed and the entries of KEEP that are missing added, comments kept."""
    lines = text.splitlines(keepends=True)
    out = []
    present: list[str] = []
    for line in lines:
        words = line.split("#", 1)[0].strip().split()
        if words and words[0] in dropped:
            continue
        if words:
            present.append(words[0])
        out.append(line)
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    for name in keep:
        if name not in present:
            index = keep.index(name)
            after = next((keep[i] for i in range(index - 1, -1, -1) if keep[i] in present), None)
            position = len(out)
            if after is not None:
                position = next(i for i, ln in enumerate(out)
                                if ln.split("#", 1)[0].strip().split()[:1] == [after]) + 1
            out.insert(position, f"{name}\n")
            present.append(name)
    return "".join(out)


def _record(mdir: Path, model: str, up: str, plan: list[_Planned], rec: state.RepoState) -> None:
    overlay_hash = {a.id: a.sha256 for a in rec.patches}.get(OVERLAY_ID, "")
    applied = tuple(state.AppliedPatch(p.ref.id, overlay_hash if p.action == "overlays"
                                       else hashlib.sha256(p.data).hexdigest(), p.commit or "")
                    for p in plan if p.action != "dropped")
    head = applied[-1].commit if applied else rec.pin
    repos = state.load(mdir)
    repos[up] = state.RepoState(state.APPLIED, rec.url, rec.pin, rec.branch, head, applied)
    state.save(mdir, model, repos)
