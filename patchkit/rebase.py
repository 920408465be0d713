"""`patchkit rebase MODEL`: move a model's series onto the newest upstream, for real.

Each upstream that moved is rebased in the model's workspace with `git rebase --onto`. Nothing
in the port repository changes until every repo is through: then the patches are refreshed
(export) and the pins in upstreams.yaml are rewritten in place, comments and layout kept. On a
conflict it stops in a state git and the user know (a rebase in progress) and records where it
is in `.patchkit/rebase.json`; `--continue` goes on, `--abort` puts every repo back where it was.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from patchkit import cache, export as export_mod, git, state, workspace
from patchkit.check import Progress, resolve_ref
from patchkit.errors import BadInput, PatchkitError
from patchkit.lock import FileLock
from patchkit.manifest import Manifest
from patchkit.paths import atomic_write, display
from patchkit.status import model_status, workspace_view

_EDITOR = {"GIT_EDITOR": "true", "GIT_SEQUENCE_EDITOR": "true"}


@dataclass
class Step:
    upstream: str
    old_pin: str
    target: str
    ref: str
    orig_head: str
    done: bool = False


@dataclass
class RebaseResult:
    model: str
    status: str  # done | conflict | aborted | nothing
    steps: list[Step] = field(default_factory=list)
    conflict: str | None = None  # the upstream stopped on
    conflicted_files: list[str] = field(default_factory=list)
    exports: list[export_mod.RepoExport] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # other models on the moved upstreams

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "conflict" else 0


def _journal(mdir: Path) -> Path:
    return state.meta_dir(mdir) / "rebase.json"


def start(manifest: Manifest, model_name: str, workspace_root: Path, *, onto: dict[str, str],
          fetch: bool = True, progress: Progress = lambda _m: None) -> RebaseResult:
    model = workspace_view(manifest, model_name, workspace_root)  # its own pins, its variant's layers
    mdir = workspace_root / model.name
    with FileLock(state.meta_dir(mdir) / "lock", inherit=True):
        if _journal(mdir).exists():
            raise BadInput(f"a rebase of {model.name} is already in progress; "
                           "use `patchkit rebase --continue` or `--abort`")
        status = model_status(manifest, model, workspace_root, locked=True)
        unclean = [r for r in status.repos if r.state != "clean"]
        if unclean:
            raise PatchkitError(f"{model.name}: the workspace must be applied and clean before a rebase",
                                details=[f"{r.upstream}: {r.state} {'; '.join(r.reasons)}".rstrip() for r in unclean]
                                + [f"run `patchkit apply {model.name}` (commit or export local work first)"])
        unknown = [up for up in onto if up not in model.layers]
        if unknown:
            raise BadInput(f"model {model.name!r} has no upstream {', '.join(unknown)}")
        steps = []
        for up in model.layers:
            if onto and up not in onto:
                continue
            upstream = model.upstreams[up]
            if fetch:
                progress(f"{up}: fetching {upstream.url}")
                cache.fetch(upstream)
            mirror, _ = cache.ensure_pin(upstream)
            ref = onto.get(up, upstream.track)
            target = resolve_ref(mirror, ref)
            if target is None:
                raise BadInput(f"upstream {up!r}: {ref!r} is not a branch, tag or commit of {upstream.url}")
            if target == upstream.pin:
                continue
            head = git.out(["rev-parse", "HEAD"], mdir / up)
            steps.append(Step(up, upstream.pin, target, ref, head))
        if not steps:
            return RebaseResult(model.name, "nothing")
        _save(mdir, model.name, steps)
        return _run(manifest, model.name, mdir, steps, progress)


def resume(manifest: Manifest, model_name: str | None, workspace_root: Path, *,
           progress: Progress = lambda _m: None) -> RebaseResult:
    mdir, name, steps = _load(manifest, model_name, workspace_root)
    with FileLock(state.meta_dir(mdir) / "lock", inherit=True):
        current = next((s for s in steps if not s.done), None)
        if current is not None and _in_progress(mdir / current.upstream):
            repo = mdir / current.upstream
            result = git.run(["rebase", "--continue"], repo, check=False, env={**git.COMMITTER, **_EDITOR})
            if not result.ok:
                return _stopped(manifest, name, mdir, steps, current, result)
            current.done = True
            _save(mdir, name, steps)
        return _run(manifest, name, mdir, steps, progress)


def abort(manifest: Manifest, model_name: str | None, workspace_root: Path) -> RebaseResult:
    mdir, name, steps = _load(manifest, model_name, workspace_root)
    with FileLock(state.meta_dir(mdir) / "lock", inherit=True):
        branch = workspace.branch_name(name)
        for step in steps:
            repo = mdir / step.upstream
            if _in_progress(repo):
                git.run(["rebase", "--abort"], repo)
            git.run(["checkout", "--quiet", "-B", branch, step.orig_head], repo)
        _journal(mdir).unlink()
    return RebaseResult(name, "aborted", steps)


def _run(manifest: Manifest, name: str, mdir: Path, steps: list[Step], progress: Progress) -> RebaseResult:
    for step in steps:
        if step.done:
            continue
        repo = mdir / step.upstream
        if not git.has_commit(repo, step.target):
            git.run(["fetch", "--quiet", "origin", "--tags", "+refs/heads/*:refs/remotes/origin/*"], repo)
        if not git.has_commit(repo, step.target):
            git.run(["fetch", "--quiet", "origin", step.target], repo)
        progress(f"{step.upstream}: rebasing onto {step.ref} ({step.target[:12]})")
        result = git.run(["rebase", "--committer-date-is-author-date", "--onto", step.target, step.old_pin,
                          workspace.branch_name(name)], repo, check=False, env={**git.COMMITTER, **_EDITOR})
        if not result.ok:
            return _stopped(manifest, name, mdir, steps, step, result)
        step.done = True
        _save(mdir, name, steps)
    return _finish(manifest, name, mdir, steps)


def _stopped(manifest: Manifest, name: str, mdir: Path, steps: list[Step], step: Step,
             result: git.Result) -> RebaseResult:
    repo = mdir / step.upstream
    if not _in_progress(repo):
        raise git.failure(result, repo)
    files = git.out(["diff", "--name-only", "--diff-filter=U"], repo).splitlines()
    _save(mdir, name, steps)
    return RebaseResult(name, "conflict", steps, step.upstream, files)


def _finish(manifest: Manifest, name: str, mdir: Path, steps: list[Step]) -> RebaseResult:
    text = manifest.path.read_text(encoding="utf-8")
    view = workspace_view(manifest, name, mdir.parent)
    lines = {step.upstream: view.upstreams[step.upstream].pin_line for step in steps}  # the model's own pin, if any
    for step in steps:
        text = set_pin(text, lines[step.upstream], step.old_pin, step.target)
    # the recorded state moves to the new pins, then export refreshes the series from the commits
    repos = state.load(mdir)
    for step in steps:
        rec = repos[step.upstream]
        repos[step.upstream] = state.RepoState(state.APPLIED, rec.url, step.target, rec.branch, rec.head, rec.patches)
    state.save(mdir, name, repos)
    atomic_write(manifest.path, text.encode())
    from patchkit.manifest import load

    moved = load(manifest.path)
    exports = [r for step in steps
               for r in export_mod.export(moved, name, mdir.parent, upstream=step.upstream)]
    _journal(mdir).unlink()
    others = sorted({v.name for v in moved.views() if v.name != name for step in steps  # who shares a moved pin
                     if step.upstream in v.upstreams and v.upstreams[step.upstream].pin_line == lines[step.upstream]})
    return RebaseResult(name, "done", steps, exports=exports, others=others)


def set_pin(text: str, line: int, old: str, new: str) -> str:
    """TEXT with the pin OLD on LINE (1-based) replaced by NEW; nothing else changes."""
    lines = text.splitlines(keepends=True)
    if not 0 < line <= len(lines) or old not in lines[line - 1]:
        raise PatchkitError(f"upstreams.yaml line {line} no longer holds the pin {old[:12]}; "
                            "was the file edited during the rebase?")
    lines[line - 1] = re.sub(re.escape(old), new, lines[line - 1], count=1)
    return "".join(lines)


def _in_progress(repo: Path) -> bool:
    return (repo / ".git" / "rebase-merge").exists() or (repo / ".git" / "rebase-apply").exists()


def _save(mdir: Path, name: str, steps: list[Step]) -> None:
    data = {"model": name, "steps": [asdict(s) for s in steps]}
    atomic_write(_journal(mdir), (json.dumps(data, indent=2) + "\n").encode())


def _load(manifest: Manifest, model_name: str | None, workspace_root: Path) -> tuple[Path, str, list[Step]]:
    names = [model_name] if model_name else list(manifest.models)
    found = [(workspace_root / n, n) for n in names if _journal(workspace_root / n).exists()]
    if not found:
        raise BadInput("no rebase in progress" + (f" for {model_name}" if model_name else ""))
    if len(found) > 1:
        raise BadInput(f"rebases in progress for {', '.join(n for _, n in found)}: name the model")
    mdir, name = found[0]
    data = json.loads(_journal(mdir).read_text(encoding="utf-8"))
    return mdir, name, [Step(**s) for s in data["steps"]]


def describe(result: RebaseResult, workspace_root: Path) -> list[str]:
    """What to tell the user, in lines."""
    if result.status == "nothing":
        return [f"{result.model}: every upstream is already at its target; nothing to rebase"]
    if result.status == "aborted":
        return [f"{result.model}: rebase aborted; every repo is back at its previous head"]
    if result.status == "conflict":
        repo = display(workspace_root / result.model / (result.conflict or ""))
        return [f"{result.model}: rebase of {result.conflict} stopped on a conflict in {repo}:",
                *[f"  {f}" for f in result.conflicted_files],
                f"resolve them there (edit, then `git -C {repo} add FILE`), then run `patchkit rebase --continue`;",
                "or `patchkit rebase --abort` to put every repo back as it was. Nothing in the port repository "
                "has changed yet."]
    lines = [f"{result.model}: rebased"]
    for step in result.steps:
        lines.append(f"  {step.upstream}: pin {step.old_pin[:12]} -> {step.target[:12]} ({step.ref})")
    for report in result.exports:
        counts: dict[str, int] = {}
        for change in report.changes:
            counts[change.action] = counts.get(change.action, 0) + 1
        lines.append(f"  {report.upstream} series: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        lines += [f"    {c.action}: {c.patch}" for c in report.changes if c.action != "unchanged"]
        lines += [f"    warning: {w}" for w in report.warnings]
    if result.others:
        lines.append(f"  also on these upstreams: {', '.join(result.others)}; "
                     f"run `patchkit rebase --check {' '.join(result.others)}`")
    return lines
