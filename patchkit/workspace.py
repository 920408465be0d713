"""Looking at a workspace repo: is it where patchkit left it, and keeping the user's work safe.

`inspect` is read-only. `local_edits` says, in words, what a rebuild would overwrite
(patchkit.backup keeps it before a forced rebuild).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from patchkit import git

_OPERATIONS = (("rebase-apply", "a git am or rebase"), ("rebase-merge", "a rebase"),
               ("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert"))


def branch_name(model: str) -> str:
    return f"patchkit/{model}"


@dataclass(frozen=True)
class RepoCheck:
    path: Path
    is_repo: bool
    head: str | None = None
    symbolic: str | None = None  # the branch HEAD is on, or None when detached
    branch_tip: str | None = None  # refs/heads/patchkit/<model>
    changed: tuple[str, ...] = ()  # `git status --porcelain` lines of tracked files
    operation: str | None = None  # an am/rebase/merge left in progress


def inspect(path: Path, model: str) -> RepoCheck:
    """Where HEAD and the model branch are, and which tracked files changed (one git call, usually)."""
    if not (path / ".git").is_dir():
        return RepoCheck(path, False)
    status = git.run(["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=no",
                      "--ignore-submodules=dirty"], path)
    head = symbolic = None
    changed = []
    items = iter(status.stdout.split("\0"))
    for item in items:
        if item.startswith("# branch.oid "):
            oid = item.split()[2]
            head = None if oid == "(initial)" else oid
        elif item.startswith("# branch.head "):
            name = item.split(" ", 2)[2]
            symbolic = None if name == "(detached)" else f"refs/heads/{name}"
        elif item[:2] in ("1 ", "2 ", "u "):
            fields = item.split(" ", 10 if item[0] == "u" else (9 if item[0] == "2" else 8))
            changed.append(f"{fields[1].replace('.', '').strip() or '?'} {fields[-1]}")
            if item[0] == "2":
                next(items, None)  # a rename carries its source path as the next field
    branch = f"refs/heads/{branch_name(model)}"
    tip = head if symbolic == branch else (
        git.run(["rev-parse", "--verify", "-q", branch], path, check=False).stdout.strip() or None)
    operation = next((what for name, what in _OPERATIONS if (path / ".git" / name).exists()), None)
    return RepoCheck(path, True, head, symbolic, tip, tuple(changed), operation)


def local_edits(check: RepoCheck, model: str, recorded_head: str) -> list[str]:
    """What of the user's a rebuild would overwrite: one line per finding, empty when none."""
    found: list[str] = []
    if check.operation:
        found.append(f"{check.operation} is in progress")
    found += [f"uncommitted: {entry}" for entry in check.changed]
    branch = branch_name(model)
    if check.branch_tip and check.branch_tip != recorded_head:
        found += _moved(check.path, branch, recorded_head, check.branch_tip)
    if check.head and check.head != recorded_head and check.head != check.branch_tip and check.symbolic is None:
        found += _moved(check.path, "detached HEAD", recorded_head, check.head)
    return found


def _moved(path: Path, where: str, recorded: str, now: str) -> list[str]:
    if git.is_ancestor(path, recorded, now):
        log = git.out(["log", "--format=%h %s", f"{recorded}..{now}"], path).splitlines()
        return [f"{where} has {len(log)} commit{'s' if len(log) != 1 else ''} beyond the applied head "
                f"{recorded[:12]}", *[f"  commit {line}" for line in log[:10]]]
    return [f"{where} was moved from the applied head {recorded[:12]} to {now[:12]}"]


def remove_stale_locks(path: Path) -> list[str]:
    """Delete the `*.lock` files a killed git left in PATH's .git (only while patchkit owns the repo)."""
    git_dir = path / ".git"
    removed = []
    for lock in [git_dir / "index.lock", git_dir / "HEAD.lock", git_dir / "ORIG_HEAD.lock",
                 *(git_dir / "refs").rglob("*.lock")]:
        if lock.is_file():
            lock.unlink()
            removed.append(str(lock.relative_to(path)))
    return removed
