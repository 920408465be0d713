"""Keeping the user's work before patchkit rebuilds a repo, and finding it again.

Three kinds of backup, all found on disk (never from the state file):

- a **branch** `patchkit-backup/<model>/<time>` in the repo: a commit shaped as `git stash`
  makes it (its tree the work tree; parents the HEAD of the time, the index, and the untracked
  files), so commits beyond the applied head, staged, unstaged and untracked files are all kept,
  byte for byte, and `git stash apply --index` puts them back;
- a **git operation set aside**: the files of an am/rebase/merge in progress (`.git/rebase-apply`,
  ...) moved to `.git/patchkit-aside/<time>/`, when they could not be ended any other way;
- a **folder set aside**: a repo folder patchkit did not make, moved whole to
  `<upstream>.patchkit-backup[N]` beside it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from patchkit import git
from patchkit.errors import BadInput, LocalEdits
from patchkit.paths import display

PREFIX = "refs/heads/patchkit-backup"
ASIDE = "patchkit-aside"
FOLDER = ".patchkit-backup"
STAMP = "%Y%m%dT%H%M%S%fZ"
# what a git operation in progress keeps in .git: moved aside together, git sees no operation any more
OPERATION_FILES = ("rebase-apply", "rebase-merge", "sequencer", "MERGE_HEAD", "MERGE_MSG", "MERGE_MODE",
                   "MERGE_RR", "AUTO_MERGE", "CHERRY_PICK_HEAD", "REVERT_HEAD")


@dataclass(frozen=True)
class Saved:
    """What one save kept, and where."""

    id: str  # what `patchkit backups --restore` takes
    ref: str  # the branch (or the folder) it is kept on
    commits: int = 0  # commits beyond the applied head
    staged: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    untracked: tuple[str, ...] = ()
    moved: str | None = None  # HEAD or the branch was moved off the applied head, not ahead of it
    operation: str | None = None  # the folder a git operation's files were set aside in
    why: str = ""

    def summary(self) -> str:
        parts = [f"{self.commits} commit{'s' if self.commits != 1 else ''} beyond the applied head"] \
            if self.commits else []
        parts += [self.moved] if self.moved else []
        for label, paths in (("staged", self.staged), ("changed", self.changed), ("untracked", self.untracked)):
            if paths:
                shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
                parts.append(f"{label}: {shown}")
        if self.operation:
            parts.append(f"the files of a git operation in progress, set aside in {self.operation}")
        return "; ".join(parts) or "nothing"


@dataclass
class Backup:
    """One backup found in a workspace, for `patchkit backups`."""

    id: str
    kind: str  # branch | git-operation | folder
    model: str
    upstream: str
    date: str  # ISO 8601, UTC
    path: str  # the repo (branch) or the folder
    ref: str | None = None
    contents: str = ""
    staged: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    commits: int = 0


def stamp() -> str:
    return datetime.now(timezone.utc).strftime(STAMP)


# -- saving ------------------------------------------------------------------------------------

def save(path: Path, model: str, upstream: str, applied_head: str, *, untracked: bool, why: str) -> Saved | None:
    """Keep what a rebuild of PATH would drop on a backup branch; None (and nothing written) when there is none.

    Commits beyond APPLIED_HEAD, the index, changed tracked files and (with UNTRACKED) untracked
    files that are not ignored. The repo itself is not touched: the caller cleans it afterwards.
    """
    head = git.out(["rev-parse", "--verify", "-q", "HEAD"], path)
    branch = f"refs/heads/patchkit/{model}"
    tip = git.run(["rev-parse", "--verify", "-q", branch], path, check=False).stdout.strip() or None
    head_tree = git.out(["rev-parse", f"{head}^{{tree}}"], path)
    index_tree, work_tree = _index_and_work_trees(path, head)
    loose = _untracked(path) if untracked else []
    commits, moved = _beyond(path, applied_head, head, tip)
    op_files = [name for name in OPERATION_FILES if (path / ".git" / name).exists()]
    if (index_tree, work_tree) == (head_tree, head_tree) and not loose and not commits and not moved and not op_files:
        return None
    when = stamp()
    aside = set_aside(path, when) if op_files else None
    if (index_tree, work_tree) == (head_tree, head_tree) and not loose:
        saved_commit, parents = head, [head, head]  # only commits: the branch is those commits themselves
    else:
        message = (f"patchkit backup: {why}\n\nPatchkit-Model: {model}\nPatchkit-Upstream: {upstream}\n"
                   f"Patchkit-Applied-Head: {applied_head}\n"
                   f"Patchkit-Head: {'branch' if _on(path, branch) else 'detached'}\n")
        parents = [head, _commit(path, index_tree, [head], "index")]
        if loose:
            parents.append(_commit(path, _tree_of(path, loose), [], "untracked files"))
        saved_commit = _commit(path, work_tree, parents, message)
    ref = f"{PREFIX}/{model}/{when}"
    git.run(["update-ref", ref, saved_commit], path)
    if tip and tip != head and tip != applied_head:
        git.run(["update-ref", f"{ref}-branch", tip], path)
    return Saved(f"{model}/{upstream}@{when}", ref.removeprefix("refs/heads/"), commits,
                 _names(path, head, parents[1]), _names(path, parents[1], saved_commit), tuple(loose), moved,
                 display(aside) if aside else None, why)


def _index_and_work_trees(path: Path, head: str) -> tuple[str, str]:
    """The trees of the index and of the tracked files in the work tree, from a copy of the index."""
    index = path / ".git" / "patchkit-save.index"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        if (path / ".git/index").exists():
            shutil.copyfile(path / ".git/index", index)
        else:
            git.run(["read-tree", head], path, env=env)
        staged = git.run(["write-tree"], path, check=False, env=env)
        index_tree = staged.stdout.strip() if staged.ok else git.out(["rev-parse", f"{head}^{{tree}}"], path)
        git.run(["add", "-u", "--", "."], path, env=env)  # also resolves unmerged entries to the work tree's
        return index_tree, git.out(["write-tree"], path, env=env)
    finally:
        index.unlink(missing_ok=True)


def _untracked(path: Path) -> list[str]:
    out = git.run(["ls-files", "--others", "--exclude-standard", "-z"], path).stdout
    return [p for p in out.split("\0") if p and not p.endswith("/")]  # a nested repository stays where it is


def _tree_of(path: Path, files: list[str]) -> str:
    index = path / ".git" / "patchkit-untracked.index"
    env = {"GIT_INDEX_FILE": str(index)}
    index.unlink(missing_ok=True)  # one a killed save left would add its entries
    try:
        git.run(["update-index", "--add", "-z", "--stdin"], path, env=env,
                input_bytes="\0".join(files).encode("utf-8", "surrogateescape") + b"\0")
        return git.out(["write-tree"], path, env=env)
    finally:
        index.unlink(missing_ok=True)


def _commit(path: Path, tree: str, parents: list[str], message: str) -> str:
    args = ["commit-tree", tree, *[a for p in parents for a in ("-p", p)], "-m", message]
    return git.out(args, path, env=git.COMMITTER)


def _beyond(path: Path, applied: str, head: str, tip: str | None) -> tuple[int, str | None]:
    """How many commits HEAD (or the model branch) has beyond the applied head, or how it was moved."""
    ahead = head if head != applied else (tip or head)
    if ahead == applied:
        return 0, None
    if git.is_ancestor(path, applied, ahead):
        return int(git.out(["rev-list", "--count", f"{applied}..{ahead}"], path)), None
    return 0, f"moved from the applied head {applied[:12]} to {ahead[:12]}"


def _on(path: Path, branch: str) -> bool:
    return git.run(["symbolic-ref", "-q", "HEAD"], path, check=False).stdout.strip() == branch


def _names(path: Path, a: str, b: str) -> tuple[str, ...]:
    out = git.run(["diff-tree", "-r", "-z", "--name-only", "--no-renames", a, b], path).stdout
    return tuple(p for p in out.split("\0") if p)


# -- ending a git operation ----------------------------------------------------------------------

def set_aside(path: Path, when: str | None = None) -> Path | None:
    """Move the files of any git operation in progress into .git/patchkit-aside/<time>/ (kept, never deleted)."""
    present = [name for name in OPERATION_FILES if (path / ".git" / name).exists()]
    if not present:
        return None
    folder = path / ".git" / ASIDE / (when or stamp())
    folder.mkdir(parents=True, exist_ok=True)
    for name in present:
        os.replace(path / ".git" / name, folder / name)
    return folder


def end_am(path: Path, *, keep_head: bool) -> list[str]:
    """End a `git am` left in progress, from whatever state it left on disk; say what was done.

    `git am --quit` (KEEP_HEAD: stay on the last commit made) or `--abort` first; when git cannot
    read its own files (a kill can leave an empty author-script, which --quit trips on), they are
    set aside and the work tree is reset.
    """
    if not (path / ".git/rebase-apply").exists():
        return []
    first = "--quit" if keep_head else "--abort"
    ended = git.run(["am", first], path, check=False)
    if not ended.ok and keep_head:
        ended = git.run(["am", "--abort"], path, check=False)
    if ended.ok and not (path / ".git/rebase-apply").exists():
        return [f"ended the interrupted git am (git am {first})"] if not keep_head else []
    aside = set_aside(path)
    git.run(["reset", "--quiet", "--hard"], path)
    said = (ended.stderr or ended.stdout).strip().splitlines()
    return [f"git am could not end itself ({said[-1] if said else 'no message'}): its files are set aside "
            f"in {display(aside)} and the work tree reset"]


# -- listing, restoring, cleaning ---------------------------------------------------------------

def find(root: Path, model: str | None = None) -> list[Backup]:
    """Every backup under the workspace ROOT (of MODEL only when given), oldest first."""
    found: list[Backup] = []
    models = [root / model] if model else sorted(p for p in root.glob("*") if (p / ".patchkit").is_dir())
    for mdir in models:
        for child in sorted(mdir.glob("*")) if mdir.is_dir() else []:
            if FOLDER in child.name and child.is_dir():
                found.append(_folder(mdir.name, child))
            elif (child / ".git").is_dir():
                found += _branches(mdir.name, child) + _asides(mdir.name, child)
    return sorted(found, key=lambda b: (b.date, b.id))


def _branches(model: str, repo: Path) -> list[Backup]:
    out = git.run(["for-each-ref", "--format=%(refname)", f"{PREFIX}/{model}/"], repo).stdout.split()
    return [_branch(model, repo, ref) for ref in out]


def _branch(model: str, repo: Path, ref: str) -> Backup:
    when = ref.rsplit("/", 1)[1]
    backup = Backup(f"{model}/{repo.name}@{when}", "branch", model, repo.name, _date(when, repo), display(repo),
                    ref.removeprefix("refs/heads/"))
    parents = git.out(["rev-list", "--parents", "-n1", ref], repo).split()[1:]
    if when.endswith("-branch") or len(parents) < 2:
        subject = git.out(["log", "-1", "--format=%h %s", ref], repo)
        only = git.out(["rev-list", "--count", ref, "--not", f"refs/heads/patchkit/{model}"], repo)
        backup.contents = (f"{'the model branch as it was' if when.endswith('-branch') else 'commits'} up to "
                           f"{subject} ({only} not on patchkit/{model})")
        return backup
    applied = _trailer(repo, ref, "Patchkit-Applied-Head")
    backup.staged = list(_names(repo, parents[0], parents[1]))
    backup.changed = list(_names(repo, parents[1], ref))
    if len(parents) > 2:
        backup.untracked = git.run(["ls-tree", "-r", "-z", "--name-only", parents[2]], repo).stdout.split("\0")[:-1]
    if applied and git.has_commit(repo, applied):
        backup.commits, moved = _beyond(repo, applied, parents[0], None)
    else:
        moved = None
    backup.contents = Saved(backup.id, backup.ref or "", backup.commits, tuple(backup.staged), tuple(backup.changed),
                            tuple(backup.untracked), moved).summary()
    return backup


def _asides(model: str, repo: Path) -> list[Backup]:
    found = []
    for folder in sorted((repo / ".git" / ASIDE).glob("*")):
        names = ", ".join(sorted(p.name for p in folder.iterdir()))
        found.append(Backup(f"{model}/{repo.name}@{folder.name}-git", "git-operation", model, repo.name,
                            _date(folder.name, folder), str(folder), contents=f"git operation files: {names}"))
    return found


def _folder(model: str, folder: Path) -> Backup:
    upstream = folder.name.split(FOLDER)[0]
    return Backup(f"{model}/{folder.name}", "folder", model, upstream, _date("", folder), display(folder),
                  contents="a folder patchkit did not make, moved aside whole")


def _date(when: str, fallback: Path) -> str:
    try:
        moment = datetime.strptime(when.removesuffix("-branch"), STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        moment = datetime.fromtimestamp(fallback.stat().st_mtime, timezone.utc)
    return moment.isoformat(timespec="seconds")


def _trailer(repo: Path, ref: str, key: str) -> str | None:
    for line in git.out(["log", "-1", "--format=%B", ref], repo).splitlines():
        if line.startswith(f"{key}: "):
            return line.split(": ", 1)[1].strip()
    return None


def get(root: Path, backup_id: str) -> Backup:
    model = backup_id.split("/", 1)[0]
    for backup in find(root, model) if model and (root / model).is_dir() else []:
        if backup.id == backup_id:
            return backup
    raise BadInput(f"no backup {backup_id!r} in {display(root)} (`patchkit backups` lists them)")


def restore(root: Path, backup: Backup) -> str:
    """Put BACKUP back where it came from; say what was done. Refuses to overwrite anything."""
    repo = root / backup.model / backup.upstream
    if backup.kind == "folder":
        if repo.exists():
            raise LocalEdits(f"{display(repo)} exists: move it away first, then restore {backup.id}")
        Path(backup.path).rename(repo)
        return f"moved {backup.path} back to {display(repo)}"
    _require_clean(repo)
    if backup.kind == "git-operation":
        for item in Path(backup.path).iterdir():
            os.replace(item, repo / ".git" / item.name)
        Path(backup.path).rmdir()
        return f"{display(repo)}: the git operation's files are back in .git ({backup.contents})"
    assert backup.ref is not None
    return _restore_branch(repo, backup)


def _restore_branch(repo: Path, backup: Backup) -> str:
    ref = f"refs/heads/{backup.ref}"
    parents = git.out(["rev-list", "--parents", "-n1", ref], repo).split()[1:]
    branch = f"patchkit/{backup.model}"
    stash_shaped = len(parents) >= 2 and not ref.endswith("-branch")
    head = parents[0] if stash_shaped else ref
    if not stash_shaped or _trailer(repo, ref, "Patchkit-Head") != "detached":
        git.run(["checkout", "--quiet", "-B", branch, head], repo)
    else:
        git.run(["checkout", "--quiet", "--detach", head], repo)
    if stash_shaped:
        applied = git.run(["stash", "apply", "--index", ref], repo, check=False, env=git.COMMITTER)
        if not applied.ok:
            raise git.failure(applied, repo)
    return f"{display(repo)}: restored {backup.ref} ({backup.contents})"


def _require_clean(repo: Path) -> None:
    if not (repo / ".git").is_dir():
        raise LocalEdits(f"{display(repo)} is not a git repository: run `patchkit apply` first")
    dirty = git.out(["status", "--porcelain", "--untracked-files=all"], repo)
    if dirty or any((repo / ".git" / name).exists() for name in OPERATION_FILES):
        raise LocalEdits(f"{display(repo)} has uncommitted work or a git operation in progress; restoring would "
                         "mix it in", details=dirty.splitlines()[:10] + ["commit it, or save it with "
                                                                          "`patchkit apply --force` first"])


def clean(root: Path, model: str | None, older_than_days: float) -> list[Backup]:
    """Delete the backups older than the given age; return them."""
    limit = time.time() - older_than_days * 86400
    gone = []
    for backup in find(root, model):
        if datetime.fromisoformat(backup.date).timestamp() >= limit:
            continue
        if backup.kind == "branch":
            git.run(["update-ref", "-d", f"refs/heads/{backup.ref}"], root / backup.model / backup.upstream)
        else:
            shutil.rmtree(backup.path)
        gone.append(backup)
    return gone
