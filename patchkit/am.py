"""Applying a series with `git am -3`, and saying exactly why a patch did not apply.

Patches are handed to git as the bytes that were hashed (`--keep-cr`, no whitespace fixing), so
what is applied is what the state file records, and CRLF lines stay CRLF.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from patchkit import backup, git, patchfile
from patchkit.patchfile import Patch
from patchkit.paths import display

AM = ["am", "-3", "--keep-cr", "--whitespace=nowarn", "--committer-date-is-author-date",
      "--no-gpg-sign", "--no-message-id", "--no-scissors", "--quiet"]


@dataclass(frozen=True)
class HunkFailure:
    file: str
    hunk: str  # "hunk #2 @@ -10,7 +10,8 @@ def f" or a reason such as "file not found"
    detail: str = ""


@dataclass(frozen=True)
class PatchFailure:
    patch: str  # layer/name
    path: str  # the patch file, for display
    subject: str
    hunks: tuple[HunkFailure, ...]
    git_output: tuple[str, ...]



CONFLICT = "conflict in three-way merge"
FAILED = "git am failed"
GIT_SAYS_MORE = (CONFLICT, FAILED)  # hunks that say little by themselves: show git's own words with them


def apply_series(repo: Path, base: str, patches: list[Patch], scratch: Path) -> git.Result | None:
    """Apply PATCHES on BASE with git am, one commit each; on failure stop cleanly at the last good one.

    One `git am` call does the whole series. `git am -3` skips, with success, a patch whose
    change is already there ("No changes -- Patch already applied"); when the commit count
    shows that, the series is replayed one patch at a time to find it, and it is reported.
    """
    tmp = Path(tempfile.mkdtemp(prefix="tmp-am-", dir=scratch))
    try:
        files: list[str] = []
        for i, patch in enumerate(patches, 1):
            file = tmp / f"{i:04d}.patch"
            file.write_bytes(patch.data)  # the bytes that were hashed, not whatever is on disk now
            files.append(str(file))
        result = git.run([*AM, *files], repo, check=False, env=git.COMMITTER)
        made = len(git.out(["rev-list", f"{base}..HEAD"], repo).split())
        if result.ok and made == len(patches):
            return None
        if not result.ok:
            current = _am_current(repo)
            stop(repo)
            if current == made + 1:  # git am stopped at the patch after the last commit
                return result
        git.run(["reset", "--quiet", "--hard", base], repo)
        for one in files:
            before = git.out(["rev-parse", "HEAD"], repo)
            result = git.run([*AM, one], repo, check=False, env=git.COMMITTER)
            if not result.ok:
                stop(repo)
                return result
            if git.out(["rev-parse", "HEAD"], repo) == before:
                return result  # applied as "no changes": already in the upstream
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _am_current(repo: Path) -> int | None:
    try:
        return int((repo / ".git/rebase-apply/next").read_text().strip())
    except (OSError, ValueError):
        return None


def stop(repo: Path) -> None:
    """End a failed git am, staying on the last commit it made."""
    backup.end_am(repo, keep_head=True)
    git.run(["reset", "--quiet", "--hard", "HEAD"], repo)


_PATCH_FAILED = re.compile(r"^error: patch failed: (.+):(\d+)$")
_NO_FILE = re.compile(r"^error: (.+): (does not exist in index|No such file or directory|already exists in working directory|already exists in index)$")


def diagnose(repo: Path, patch: Patch, am: git.Result) -> PatchFailure:
    """Which files and hunks of PATCH fail on the repo's HEAD, from `git apply --check`."""
    parsed, _ = patchfile.parse(patch)
    check = git.run(["apply", "--check", "--verbose", "-"], repo, check=False, input_bytes=patch.data)
    hunks: list[HunkFailure] = []
    lines = check.stderr.splitlines()
    for i, line in enumerate(lines):
        m = _PATCH_FAILED.match(line)
        if m:
            file, start = m.group(1), int(m.group(2))
            change = parsed.file(file) if parsed else None
            found = patchfile.hunk_at(change, start) if change else None
            label = f"hunk #{found[0]} {found[1].header()}" if found else f"hunk at line {start}"
            hunks.append(HunkFailure(file, label, _line_endings(repo, patch, file) or "context does not match"))
            continue
        m = _NO_FILE.match(line)
        if m:
            hunks.append(HunkFailure(m.group(1), m.group(2)))
    if (hunks or am.ok) and git.run(["apply", "--check", "--reverse", "-"], repo, check=False,
                                    input_bytes=patch.data).ok:
        hunks = [HunkFailure(f.path, "already there: the patch reverse-applies, its change is in the upstream "
                             "(drop it from the series)") for f in (parsed.files if parsed else ())]
    if not hunks and am.ok:
        hunks = [HunkFailure(f.path, "already there: git am found no changes to make (drop it from the series)")
                 for f in (parsed.files if parsed else ())]
    if not hunks:
        hunks = _conflicted(am)
    output = [ln for ln in (am.stdout + am.stderr).splitlines() if ln.strip()]
    subject = parsed.subject if parsed else patch.name
    return PatchFailure(patch.ref.id, display(patch.ref.path), subject, tuple(hunks), tuple(output[-15:]))


def _conflicted(am: git.Result) -> list[HunkFailure]:
    found = []
    for line in (am.stdout + am.stderr).splitlines():
        m = re.match(r"^CONFLICT \([^)]*\): Merge conflict in (.+)$", line)
        if m:
            found.append(HunkFailure(m.group(1), CONFLICT))
    return found or [HunkFailure("(git am)", FAILED)]


def _line_endings(repo: Path, patch: Patch, file: str) -> str:
    """Why FILE's hunks may not match: the patch's line endings differ from the file's (converted)."""
    blob = git.run(["cat-file", "blob", f"HEAD:{file}"], repo, check=False)
    section = _section(patch.data, file)
    lines = [ln for ln in section.split(b"\n")[1:] if ln[:1] in (b" ", b"-", b"+") and not ln.startswith((b"---", b"+++"))]
    if not blob.ok or not lines:
        return ""
    file_crlf = "\r\n" in blob.stdout
    patch_crlf = sum(ln.endswith(b"\r") for ln in lines)
    if file_crlf and not patch_crlf:
        return ("line endings: the file has CRLF, the patch has none (its CRLF were converted to LF; "
                "keep `*.patch -text` in .gitattributes and restore the patch file)")
    if not file_crlf and patch_crlf == len(lines):
        return ("line endings: the patch has CRLF, the file LF (the patch file was converted, e.g. by "
                "core.autocrlf; keep `*.patch -text` in .gitattributes and restore it)")
    return ""


def _section(data: bytes, file: str) -> bytes:
    for part in data.split(b"\ndiff --git ")[1:]:
        if part.split(b"\n", 1)[0].endswith(b" b/" + file.encode()):
            return part
    return b""

