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
from patchkit.errors import BadInput
from patchkit.manifest import Effective, Manifest, Model
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
    variant: str | None = None  # what the workspace is built as (the state's variant)
    problem: str | None = None  # a workspace state the manifest no longer describes (a person is needed)

    @property
    def clean(self) -> bool:
        return all(r.state == "clean" for r in self.repos) and not self.problem

    @property
    def exit_code(self) -> int:
        found = {r.state for r in self.repos}
        if found & NEEDS_A_PERSON or self.problem:
            return 1
        return 4 if found - {"clean"} else 0


NEEDS_A_PERSON = {"failed", "edited", "busy"}  # exit 1; any other state but clean: exit 4


def workspace_view(manifest: Manifest, model: str | Model | Effective, workspace_root: Path) -> Effective:
    """MODEL as its workspace was built: with the variant its state records. A variant the manifest
    no longer has is an error saying how to rebuild."""
    view, problem = recorded_view(manifest, model, workspace_root)
    if problem:
        raise BadInput(problem)
    return view


def recorded_view(manifest: Manifest, model: str | Model | Effective,
                  workspace_root: Path) -> tuple[Effective, str | None]:
    """MODEL with the variant its workspace state records, and the problem when the manifest lacks it
    (then the model itself)."""
    base = manifest.effective(model)
    variant = state.load_all(model_dir(workspace_root, base.name)).variant
    if variant is None:
        return base, None
    if variant not in base.model.variants:
        return base, (f"{display(model_dir(workspace_root, base.name))} is built as variant {variant!r}, which "
                      f"{display(manifest.path)} no longer has; `patchkit apply {base.name} --force` rebuilds it "
                      "as the model (your work kept on backup branches)")
    return manifest.effective(base.model, variant), None


def model_status(manifest: Manifest, model: str | Model | Effective, workspace_root: Path, *,
                 locked: bool = False) -> ModelStatus:
    """MODEL's workspace against the manifest, as the variant its state records. LOCKED: the caller
    holds the workspace lock itself (so it is not "busy")."""
    view, problem = recorded_view(manifest, model, workspace_root)
    mdir = model_dir(workspace_root, view.name)
    busy = None if locked else lock.holder(state.meta_dir(mdir) / "lock")
    recorded = state.load(mdir)
    repos = []
    series = model_series(manifest, view)
    for up in view.layers:
        repos.append(_repo(view, up, series[up], mdir / up, recorded, busy))
    return ModelStatus(view.name, display(mdir), repos, view.variant, problem)


def _repo(model: Effective, up: str, patches: list[patchfile.Patch], path: Path,
          recorded: dict[str, state.RepoState], busy: str | None) -> RepoStatus:
    rec = recorded.get(up)
    pin = model.upstreams[up].pin
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
        old = f"{up}-{model.name}"
        if old in recorded and rec is None:
            status.reasons.append(f"recorded as {old} by an older import; `patchkit apply {model.name}` renames it")
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
