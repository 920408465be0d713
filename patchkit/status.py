"""`patchkit status`: for each repo of a model's workspace, is it what the manifest says?

States, most urgent first: busy (an apply holds the lock), interrupted (an apply was killed
here; its git may still be finishing), failed (a patch did not apply), edited (local changes or
commits), stale (the pin or the series changed since apply), clean. `not-applied` when there is
no repo yet. Read-only.

Exit codes (`ModelStatus.exit_code`, the worst over the models asked for): 0 every repo clean;
4 out of date, and `patchkit apply` alone brings it up to date (stale, not-applied, interrupted);
1 a person is needed (failed, edited) or status cannot tell (busy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from patchkit import lock, patchfile, state, workspace
from patchkit.apply import model_dir, model_series
from patchkit.manifest import Manifest, Model
from patchkit.paths import display


@dataclass
class RepoStatus:
    upstream: str
    path: str
    pin: str
    state: str
    applied: int
    total: int
    head: str | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class ModelStatus:
    model: str
    workspace: str
    repos: list[RepoStatus]

    @property
    def clean(self) -> bool:
        return all(r.state == "clean" for r in self.repos)

    @property
    def exit_code(self) -> int:
        found = {r.state for r in self.repos}
        if found & NEEDS_A_PERSON:
            return 1
        return 4 if found - {"clean"} else 0


NEEDS_A_PERSON = {"failed", "edited", "busy"}  # exit 1; any other state but clean: exit 4


def model_status(manifest: Manifest, model: Model, workspace_root: Path, *, locked: bool = False) -> ModelStatus:
    """LOCKED: the caller holds the workspace lock itself (so it is not "busy")."""
    mdir = model_dir(workspace_root, model.name)
    busy = None if locked else lock.holder(state.meta_dir(mdir) / "lock")
    recorded = state.load(mdir)
    repos = []
    series = model_series(manifest, model)
    for up in model.layers:
        patches = series[up]
        repos.append(_repo(manifest, model, up, patches, mdir / up, recorded.get(up), busy))
    return ModelStatus(model.name, display(mdir), repos)


def _repo(manifest: Manifest, model: Model, up: str, patches: list[patchfile.Patch], path: Path,
          rec: state.RepoState | None, busy: str | None) -> RepoStatus:
    pin = manifest.upstreams[up].pin
    status = RepoStatus(up, display(path), pin, "not-applied", 0, len(patches))
    if busy and busy.startswith("git left running"):  # the apply was killed; state and repo say the rest
        status.state, status.reasons = "interrupted", [f"{busy}; the next apply waits for it, then repairs"]
        return status
    if busy:
        status.state, status.reasons = "busy", [f"an apply is running ({busy})"]
        return status
    if rec is None or not path.exists():
        if path.exists():
            status.reasons = ["the folder exists but patchkit did not make it"]
        return status
    status.applied, status.head = len(rec.patches), rec.head
    check = workspace.inspect(path, model.name)
    if not check.is_repo:
        status.state, status.reasons = "not-applied", ["the folder is not a git repository"]
        return status
    states: list[str] = []
    if rec.status == state.BUILDING:
        states.append("interrupted")
        status.reasons.append("an apply was interrupted here; `patchkit apply` repairs it")
    else:
        if rec.status == state.FAILED:
            states.append("failed")
            status.reasons.append(f"{rec.failed_patch} did not apply")
        edits = workspace.local_edits(check, model.name, rec.head)
        if edits:
            states.append("edited")
            status.reasons += edits
    stale = _stale(rec, pin, patches)
    if stale:
        states.append("stale")
        status.reasons += stale
    status.state = states[0] if states else "clean"
    return status


def _stale(rec: state.RepoState, pin: str, patches: list[patchfile.Patch]) -> list[str]:
    reasons = []
    if rec.pin != pin:
        reasons.append(f"pin changed {rec.pin[:12]} -> {pin[:12]}")
    old = {p.id: p.sha256 for p in rec.patches}
    new = {p.ref.id: p.sha256 for p in patches}
    reasons += [f"patch {pid} changed" for pid in new if pid in old and old[pid] != new[pid]]
    if rec.status == state.APPLIED:
        reasons += [f"patch {pid} added" for pid in new if pid not in old]
        reasons += [f"patch {pid} removed" for pid in old if pid not in new]
        if not reasons and list(old) != list(new):
            reasons.append("series order changed")
    return reasons
