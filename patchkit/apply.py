"""`patchkit apply MODEL`: materialise a model's workspace, one git checkout per upstream.

Each repo is the pin checked out on branch `patchkit/<model>` with one commit per patch,
applied by `git am -3` in series order, layer by layer. What was applied is recorded in the
state file; a second run with nothing changed does no git work beyond looking. When a pin or
a patch changed, the repo is rebuilt from the last commit that still holds. Local edits are
never overwritten without --force, and --force keeps them on a backup branch first (patchkit.backup).
A repo an earlier apply was killed in is recovered first (its git am ended, its lock files
removed), then rebuilt.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from patchkit import am, backup, cache, git, patchfile, settings, state, workspace
from patchkit.am import PatchFailure
from patchkit.errors import Diagnostic, GitError, InvalidInput, LocalEdits, PatchkitError, UnsafePatch
from patchkit.lock import FileLock
from patchkit.manifest import Effective, Manifest, PatchRef, Upstream
from patchkit.patchfile import Patch
from patchkit.paths import display

Progress = Callable[[str], None]

@dataclass
class RepoResult:
    upstream: str
    path: str
    pin: str
    total: int
    action: str = "unchanged"  # unchanged | built | rebuilt | repaired | failed
    applied: int = 0
    reused: int = 0
    head: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)  # where saved work is: backup branches, folders
    saved: list[backup.Saved] = field(default_factory=list)  # what each backup holds
    failure: PatchFailure | None = None


@dataclass
class ApplyReport:
    model: str
    workspace: str
    repos: list[RepoResult]
    variant: str | None = None
    renamed: list[state.Renamed] = field(default_factory=list)  # repos an older import named <up>-<model>

    @property
    def failed(self) -> bool:
        return any(r.failure for r in self.repos)

    @property
    def noop(self) -> bool:
        return all(r.action == "unchanged" for r in self.repos)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass
class _Plan:
    upstream: Upstream
    patches: list[Patch]
    dir: Path
    action: str  # unchanged | build | rebuild | repair
    keep: int = 0  # leading patches whose commits are reused
    base: str = ""  # the commit to rebuild from
    reason: str = ""
    edits: list[str] = field(default_factory=list)
    check: workspace.RepoCheck | None = None
    applied_head: str = ""  # the head the state file records
    force: bool = False
    recovered: list[str] = field(default_factory=list)  # what recovering from an interrupted apply did


def model_dir(workspace_root: Path, model: str) -> Path:
    return workspace_root / model


OVERLAY_SUBJECT = "patchkit: whole-file overlays"
OVERLAY_ID = "overlays/files"  # the series entry (and applied record) of a repo's whole-file overlays


def overlay_ref(up: str, where: Path) -> PatchRef:
    layer, name = OVERLAY_ID.split("/")
    return PatchRef(layer, up, name, str(where), where, 0)


def model_series(manifest: Manifest, model: Effective) -> dict[str, list[Patch]]:
    """What each repo of MODEL (a model's effective view) is made of: its patch series, then its
    whole-file overlays as one entry."""
    from patchkit.overlay import static

    series = {up: patchfile.load_series(model.patches[up]) for up in model.layers}
    if not model.overlays:
        return series
    _, files = static.load_sets(manifest.root, model.overlays)
    for up in model.layers:
        mine = [f for f in files if f.upstream == up]
        if not mine:
            continue
        content = tuple((f.path, f.source.read_bytes()) for f in mine)
        digest = hashlib.sha256(b"".join(p.encode() + b"\0" + hashlib.sha256(c).digest() for p, c in content))
        series[up].append(Patch(overlay_ref(up, static.sets_root(manifest.root)), b"", digest.hexdigest(), content))
    return series


def apply(manifest: Manifest, model_name: str, workspace_root: Path, *, variant: str | None = None,
          force: bool = False, progress: Progress = lambda _msg: None,
          lock_timeout: float | None = None) -> ApplyReport:
    """Build MODEL's workspace as VARIANT (None: the model itself) describes it."""
    model = manifest.effective(model_name, variant)
    series = model_series(manifest, model)
    mdir = model_dir(workspace_root, model.name)
    _check_static(series, _plan_all(model, series, mdir, inspect=False))
    lock = FileLock(state.meta_dir(mdir) / "lock", timeout=lock_timeout, inherit=True,
                    on_wait=lambda who: progress(f"waiting for the workspace lock held by {who}"))
    with lock:
        _clean_tmp(mdir)
        renamed = _migrate(mdir, model, progress)
        _refuse_variant(mdir, model, force)
        recovered = _recover(mdir, model)
        plans = _plan_all(model, series, mdir, inspect=True)
        for plan in plans:
            plan.force, plan.recovered = force, recovered.get(plan.upstream.name, [])
        _check_static(series, plans)
        _refuse_edits(plans, force)
        work = [p for p in plans if p.action != "unchanged"]
        mirrors = _ensure_mirrors(work, progress)
        _check_symlinks(work, mirrors)
        if state.load_all(mdir).variant != model.variant:
            state.save_variant(mdir, model.name, model.variant)
        results = _build_all(model, mdir, plans, mirrors, progress)
    return ApplyReport(model.name, display(mdir), results, model.variant, renamed)


def _migrate(mdir: Path, model: Effective, progress: Progress) -> list[state.Renamed]:
    """Once: a repo an older import recorded as `<up>-<model>` (then an upstream of its own, at the
    model's pin) becomes `<up>`, now that the manifest gives the model `<up>` at that pin."""
    ups = {up: (u.url, u.pin) for up, u in model.upstreams.items() if u.pinned_by == model.name}
    renamed = state.migrate_names(mdir, model.name, ups) if ups else []
    for r in renamed:
        git.run(["remote", "set-url", "origin", str(cache.mirror_path(model.upstreams[r.new]))], mdir / r.new)
        progress(f"{r.new}: renamed {display(mdir / r.old)} to {display(mdir / r.new)} (recorded under the name "
                 f"an older import gave {model.name}'s own {r.new}; the manifest now pins it in {model.name}'s block)")
    return renamed


def _refuse_variant(mdir: Path, model: Effective, force: bool) -> None:
    """Building another variant than the one recorded rebuilds repos: like any rebuild over work, --force only."""
    recorded = state.load_all(mdir)
    if force or not recorded.repos or recorded.variant == model.variant:
        return
    def name(v: str | None) -> str:
        return f"variant {v!r}" if v else "the model itself (no variant)"
    again = f"patchkit apply {model.name}" + (f" --variant {recorded.variant}" if recorded.variant else "")
    known = recorded.variant is None or recorded.variant in model.model.variants
    raise LocalEdits(f"{display(mdir)} is built as {name(recorded.variant)}, not {name(model.variant)}",
                     details=[f"`{again}` updates it as it is;" if known else
                              f"upstreams.yaml no longer has variant {recorded.variant!r};",
                              "`--force` switches it, keeping any work of yours on backup branches first "
                              "(`patchkit backups`)"])


def _recover(mdir: Path, model: Effective) -> dict[str, list[str]]:
    """End what an apply killed midway left in its repos (we hold the lock: it is all ours); say what."""
    notes: dict[str, list[str]] = {}
    for up, rec in state.load(mdir).items():
        repo = mdir / up
        if up not in model.layers or rec.status != state.BUILDING or not (repo / ".git").is_dir():
            continue
        stale = workspace.remove_stale_locks(repo)
        notes[up] = [f"removed lock files the interrupted apply left: {', '.join(stale)}"] if stale else []
        notes[up] += backup.end_am(repo, keep_head=False)
    return notes


# -- planning ------------------------------------------------------------------------------

def _plan_all(model: Effective, series: dict[str, list[Patch]], mdir: Path, *,
              inspect: bool) -> list[_Plan]:
    """What each repo needs. Without INSPECT only the state file is read (no git at all)."""
    recorded = state.load(mdir)
    return [_plan(model.upstreams[up], series[up], mdir / up, model.name, recorded.get(up), inspect)
            for up in model.layers]


def _plan(upstream: Upstream, patches: list[Patch], repo: Path, model: str,
          rec: state.RepoState | None, inspect: bool) -> _Plan:
    plan = _Plan(upstream, patches, repo, "build", base=upstream.pin)
    if not repo.exists():
        plan.reason = "new" if rec is None else "repo missing, rebuilding"
        return plan
    check = workspace.inspect(repo, model) if inspect else None
    if (check is not None and not check.is_repo) or rec is None:
        plan.action, plan.reason = "rebuild", "not recorded in the workspace state"
        plan.edits = [f"{display(repo)} exists but patchkit did not make it"]
        return plan  # with --force it is moved aside whole
    plan.check, plan.applied_head = check, rec.head
    if rec.status == state.BUILDING:
        plan.action, plan.reason = "repair", "an earlier apply was interrupted here"
        return plan
    edits = workspace.local_edits(check, model, rec.head) if check else []
    keep = _common_prefix(rec, upstream, patches)
    if rec.status == state.APPLIED and rec.pin == upstream.pin and keep == len(patches) == len(rec.patches):
        plan.action = "unchanged"
        plan.keep, plan.base = keep, rec.head
        if edits:
            plan.reason = "local edits (left alone: nothing to rebuild)"
            plan.edits = edits
        return plan
    plan.action, plan.edits = "rebuild", edits
    plan.keep = keep
    plan.base = rec.patches[keep - 1].commit if keep else upstream.pin
    plan.reason = _why_rebuild(rec, upstream, patches, keep)
    return plan


def _common_prefix(rec: state.RepoState, upstream: Upstream, patches: list[Patch]) -> int:
    if rec.pin != upstream.pin:
        return 0
    n = 0
    for old, new in zip(rec.patches, patches):
        if old.id != new.ref.id or old.sha256 != new.sha256:
            break
        n += 1
    return n


def _why_rebuild(rec: state.RepoState, upstream: Upstream, patches: list[Patch], keep: int) -> str:
    if rec.pin != upstream.pin:
        return f"pin changed {rec.pin[:12]} -> {upstream.pin[:12]}"
    if rec.status == state.FAILED:
        return f"retrying from {rec.failed_patch}"
    if keep < len(patches) and keep < len(rec.patches):
        old, new = rec.patches[keep], patches[keep]
        return f"patch {new.ref.id} changed" if old.id == new.ref.id else f"series changed at {new.ref.id}"
    return "patches added" if len(patches) > len(rec.patches) else "patches removed"


def _refuse_edits(plans: list[_Plan], force: bool) -> None:
    blocked = [p for p in plans if p.edits and p.action != "unchanged"]
    if not blocked or force:
        return
    details = []
    for plan in blocked:
        details.append(f"{display(plan.dir)} ({plan.reason}):")
        details += [f"  {line}" for line in plan.edits]
    details.append("commit them elsewhere or run `patchkit apply --force`, which first keeps them on a "
                   "backup branch")
    raise LocalEdits("refusing to rebuild: local edits would be overwritten", details=details)


# -- checks before anything is written -----------------------------------------------------

def _check_static(series: dict[str, list[Patch]], plans: list[_Plan]) -> None:
    problems: list[Diagnostic] = []
    unsafe: list[str] = []
    for plan in plans:
        if plan.action == "unchanged":
            continue
        for patch in series[plan.upstream.name][plan.keep:]:
            if patch.files:
                continue  # whole-file overlays: their paths were checked when their set was read
            parsed, diags = patchfile.parse(patch)
            problems += diags
            if parsed:
                unsafe += [f"{display(patch.ref.path)}: {path!r} is {why}"
                           for path, why in patchfile.unsafe_paths(parsed)]
    if problems:
        raise InvalidInput(problems)
    if unsafe:
        raise UnsafePatch("refusing patches that write outside their repository; nothing was written",
                          details=unsafe)


def _check_symlinks(plans: list[_Plan], mirrors: dict[str, Path]) -> None:
    unsafe = []
    for plan in plans:
        created: set[str] = set()
        prefixes: dict[str, list[tuple[Patch, str]]] = {}
        for patch in plan.patches[plan.keep:]:
            for path, makes_link in _writes(patch):
                for prefix in patchfile.symlink_prefixes(path):
                    if prefix in created:
                        unsafe.append(f"{display(patch.ref.path)}: {path!r} goes through the symlink "
                                      f"{prefix!r} that an earlier patch creates")
                    prefixes.setdefault(prefix, []).append((patch, path))
                if makes_link:
                    created.add(path)
        # a reused prefix's commit lives in the workspace repo, the pin in the mirror
        where = mirrors[plan.upstream.name] if plan.base == plan.upstream.pin else plan.dir
        links = cache.symlinks(where, plan.base, sorted(prefixes)) if prefixes else set()
        for link in sorted(links):
            for patch, path in prefixes[link]:
                unsafe.append(f"{display(patch.ref.path)}: {path!r} goes through the symlink {link!r} "
                              f"of {plan.upstream.name}")
    if unsafe:
        raise UnsafePatch("refusing patches that write through a symlink; nothing was written", details=unsafe)


def _writes(patch: Patch) -> list[tuple[str, bool]]:
    """(path, whether it becomes a symlink) for every path PATCH writes."""
    if patch.files:
        return [(path, False) for path, _ in patch.files]
    parsed, _ = patchfile.parse(patch)
    assert parsed is not None  # checked by _check_static
    return [(path, c.creates_symlink and path == c.path) for c in parsed.files for path in c.paths]


# -- mirrors -------------------------------------------------------------------------------

def _ensure_mirrors(plans: list[_Plan], progress: Progress) -> dict[str, Path]:
    if not plans:
        return {}

    def one(plan: _Plan) -> tuple[str, Path]:
        if not cache.has_pin(plan.upstream):
            source = settings.mirror_template_url(plan.upstream.url)
            progress(f"{plan.upstream.name}: pin {plan.upstream.pin[:12]} not cached, fetching {source}")
        path, fetched = cache.ensure_pin(plan.upstream)
        if fetched:
            progress(f"{plan.upstream.name}: {fetched.action} mirror of {plan.upstream.url} "
                     f"({fetched.seconds:.1f} s)")
        return plan.upstream.name, path

    errors: list[PatchkitError] = []
    mirrors: dict[str, Path] = {}
    with ThreadPoolExecutor(max_workers=min(8, len(plans))) as pool:
        for future in [pool.submit(one, p) for p in plans]:
            try:
                name, path = future.result()
                mirrors[name] = path
            except PatchkitError as exc:
                errors.append(exc)
    if errors:
        first = errors[0]
        first.details += [line for exc in errors[1:] for line in exc.lines()]
        raise first
    return mirrors


# -- building ------------------------------------------------------------------------------

def _build_all(model: Effective, mdir: Path, plans: list[_Plan], mirrors: dict[str, Path],
               progress: Progress) -> list[RepoResult]:
    recorder = _Recorder(mdir, model.name)
    work = [p for p in plans if p.action != "unchanged"]
    results: dict[str, RepoResult] = {}
    for plan in plans:
        if plan.action == "unchanged":
            results[plan.upstream.name] = RepoResult(
                plan.upstream.name, display(plan.dir), plan.upstream.pin, len(plan.patches),
                applied=len(plan.patches), reused=len(plan.patches), head=plan.base,
                notes=[plan.reason, *plan.edits] if plan.edits else [])
    if work:
        with ThreadPoolExecutor(max_workers=min(4, len(work))) as pool:
            futures = {p.upstream.name: pool.submit(_build, model.name, p, mirrors[p.upstream.name],
                                                    recorder, progress) for p in work}
            for name, future in futures.items():
                results[name] = future.result()
    return [results[p.upstream.name] for p in plans]


class _Recorder:
    """Serialises state-file updates from the repo builders."""

    def __init__(self, mdir: Path, model: str) -> None:
        self.mdir, self.model = mdir, model
        self._lock = threading.Lock()

    def set(self, upstream: str, entry: state.RepoState) -> None:
        with self._lock:
            repos = state.load(self.mdir)
            repos[upstream] = entry
            state.save(self.mdir, self.model, repos)


def _build(model: str, plan: _Plan, mirror: Path, recorder: _Recorder, progress: Progress) -> RepoResult:
    up = plan.upstream
    branch = workspace.branch_name(model)
    result = RepoResult(up.name, display(plan.dir), up.pin, len(plan.patches))
    result.notes += plan.recovered
    saved = _save(plan, model) if plan.check and plan.check.is_repo else None  # before anything changes
    if saved:
        result.saved, result.backups = [saved], [saved.ref]
    recorder.set(up.name, state.RepoState(state.BUILDING, up.url, up.pin, branch, plan.base))
    if plan.check and plan.check.is_repo:
        _make_clean(plan, saved)
    elif plan.dir.exists():
        result.backups = [_move_aside(plan.dir)]
    if not (plan.dir / ".git").is_dir():
        _clone(mirror, plan.dir, up.exclude)
        plan.keep, plan.base = 0, up.pin
    elif not git.has_commit(plan.dir, plan.base):
        git.run(["fetch", "--quiet", "origin", "--tags", "+refs/heads/*:refs/remotes/origin/*",
                 f"+{cache.PIN_REFS}/*:{cache.PIN_REFS}/*"], plan.dir)
    git.run(["checkout", "--quiet", "-B", branch, plan.base], plan.dir)
    todo = plan.patches[plan.keep:]
    verb = {"build": "applying", "rebuild": "re-applying", "repair": "repairing, applying"}[plan.action]
    progress(f"{up.name}: {verb} {len(todo)} patch{'es' if len(todo) != 1 else ''} on {up.pin[:12]}"
             + (f" ({plan.reason})" if plan.reason and plan.action != "build" else "")
             + (f", reusing {plan.keep}" if plan.keep else ""))
    diffs = [p for p in todo if not p.files]
    failure = am.apply_series(plan.dir, plan.base, diffs, state.meta_dir(plan.dir.parent)) if diffs else None
    if failure is None:
        for entry in todo[len(diffs):]:
            _commit_files(plan.dir, entry)
    commits = git.out(["rev-list", "--reverse", f"{up.pin}..HEAD"], plan.dir).split() if plan.patches else []
    if len(commits) > len(plan.patches) or (failure is None and len(commits) != len(plan.patches)):
        raise GitError(f"{display(plan.dir)}: expected one commit per patch above the pin, found {len(commits)} "
                       f"for {len(plan.patches)} patches")
    applied = tuple(state.AppliedPatch(p.ref.id, p.sha256, c) for p, c in zip(plan.patches, commits))
    head = git.out(["rev-parse", "HEAD"], plan.dir)
    result.applied, result.reused, result.head = len(applied), plan.keep, head
    result.action = {"build": "built", "rebuild": "rebuilt", "repair": "repaired"}[plan.action]
    result.reason = plan.reason
    if failure is not None:
        failed = plan.patches[len(applied)]
        result.failure = am.diagnose(plan.dir, failed, failure)
        result.action = "failed"
        recorder.set(up.name, state.RepoState(state.FAILED, up.url, up.pin, branch, head, applied, failed.ref.id))
        progress(f"{up.name}: {failed.ref.id} does not apply")
    else:
        recorder.set(up.name, state.RepoState(state.APPLIED, up.url, up.pin, branch, head, applied))
        progress(f"{up.name}: {len(applied)} patch{'es' if len(applied) != 1 else ''} applied, head {head[:12]}")
    return result


def _commit_files(repo: Path, entry: Patch) -> None:
    """Write whole-file overlays into REPO as one commit (reproducible: fixed author and date)."""
    for path, content in entry.files:
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    paths = [path for path, _ in entry.files]
    git.run(["add", "--", *paths], repo)
    message = f"{OVERLAY_SUBJECT}\n\n" + "".join(f"{path}\n" for path in paths)
    git.run(["commit", "--quiet", "--allow-empty", "--no-verify", "--no-gpg-sign", "-m", message], repo,
            env=git.FIXED_IDENTITY)


def _save(plan: _Plan, model: str) -> backup.Saved | None:
    """Keep what rebuilding would drop: with --force, everything of the user's; in a repair, any
    uncommitted change or untracked file left (a git am killed mid-patch leaves the new files it
    wrote, which would block that patch next time; the commits above the base are its own)."""
    name = plan.upstream.name
    if plan.action == "repair":
        head = git.out(["rev-parse", "HEAD"], plan.dir)
        return backup.save(plan.dir, model, name, head, untracked=True,
                           why="uncommitted changes found after an interrupted apply")
    if plan.force:
        return backup.save(plan.dir, model, name, plan.applied_head, untracked=True, why="your work, before a forced rebuild")
    return None


def _make_clean(plan: _Plan, saved: backup.Saved | None) -> None:
    """Bring an existing repo to a clean state (what it held is saved already)."""
    assert plan.check is not None
    backup.set_aside(plan.dir)  # a git operation's files, when saving did not take them
    if saved or plan.check.changed or plan.check.operation or plan.action == "repair":
        git.run(["reset", "--quiet", "--hard"], plan.dir)
    if saved and saved.untracked:
        git.run(["clean", "--quiet", "-f", "-d"], plan.dir)


def _move_aside(path: Path) -> str:
    target = path.with_name(f"{path.name}.patchkit-backup")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.patchkit-backup{n}")
    path.rename(target)
    return display(target)


def _clone(mirror: Path, dest: Path, exclude: tuple[str, ...] = ()) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"tmp-{dest.name}-", dir=state.meta_dir(dest.parent)))
    try:
        repo = tmp / "repo"
        git.run(["clone", "--quiet", "--local", "--no-checkout", "-c", "core.autocrlf=false",
                 "-c", f"remote.origin.fetch=+{cache.PIN_REFS}/*:{cache.PIN_REFS}/*",
                 str(mirror), str(repo)])
        if exclude:
            leave_out(repo, exclude)
        repo.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def leave_out(repo: Path, exclude: tuple[str, ...]) -> None:
    """Check out everything but EXCLUDE (a sparse checkout), never needing those files' blobs.

    The repo is marked a partial clone of its origin: git then accepts index entries whose
    blobs it does not have for the paths outside the sparse checkout (mirrors and snapshots of
    model repos often lack their demo media), and commits still work.
    """
    for key, value in (("core.repositoryformatversion", "1"), ("extensions.partialClone", "origin"),
                       ("remote.origin.promisor", "true")):
        git.run(["config", key, value], repo)
    git.run(["sparse-checkout", "set", "--no-cone", "/*", *[f"!{p}" for p in exclude]], repo)


def _clean_tmp(mdir: Path) -> None:
    for stale in state.meta_dir(mdir).glob("tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
