"""Port patches re-derived at the pin: what the port's `git apply` really does there, written back
as diffs git makes itself, so they apply strictly (no `--whitespace=fix`) and keep CRLF files CRLF.

An upstream's state during an import is a scratch index over its mirror (patchkit.scratch): nothing is
checked out and nothing is written into the mirror. Each file's diff is applied strictly, else with
whitespace ignored in its context lines (the stored patch lost CRs or trailing blanks), else hunk by
hunk as the port's `git apply --reject` would (the rejected hunks are reported: the port loses them
too). The patch written is `git diff-tree` of the index before and after.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from patchkit import git
from patchkit.importer.patches import FileDiff, Hunk
from patchkit.scratch import Scratch


@dataclass
class Applied:
    diff: FileDiff
    data: bytes  # the regenerated diff (empty: nothing applied)
    how: str  # "strict", "whitespace" or "partial"
    rejected: list[Hunk] = field(default_factory=list)
    crlf: bool = False  # added lines were made CRLF like the file
    before: str = ""  # the index tree before it (Tree.undo goes back there)


# how the port's own `git apply` may have applied it: whitespace ignored in context lines, then the
# README's `--whitespace=fix` (which also matches removed lines that lost trailing blanks or CRs)
_TOLERANT = (("whitespace", ("--ignore-whitespace",)), ("whitespace-fix", ("--whitespace=fix",)))


class Tree:
    """An upstream at its pin in a scratch index, changed step by step."""

    def __init__(self, mirror: Path, pin: str) -> None:
        self.mirror = mirror
        self.pin = pin
        self.scratch = Scratch(mirror)
        self.scratch.reset(pin)

    def close(self) -> None:
        self.scratch.close()

    def tree(self) -> str:
        return self.scratch.tree()

    def entry(self, path: str, treeish: str | None = None) -> tuple[str, str] | None:
        """(mode, blob) of PATH in the index, or in TREEISH."""
        args = ["ls-tree", treeish, "--", path] if treeish else ["ls-files", "-s", "--", path]
        for line in self.scratch.run(args).stdout.splitlines():
            meta, _, name = line.partition("\t")
            fields = meta.split()
            if name == path and (not treeish or fields[1] == "blob"):
                return (fields[0], fields[2]) if treeish else (fields[0], fields[1])
        return None

    def blob(self, sha: str) -> bytes:
        return git.output_bytes(["cat-file", "blob", sha], self.mirror, env=self.scratch.env)

    def read(self, path: str, treeish: str | None = None) -> bytes | None:
        found = self.entry(path, treeish)
        return self.blob(found[1]) if found else None

    def put(self, path: str, data: bytes, mode: str = "100644") -> None:
        sha = git.output_bytes(["hash-object", "-w", "--stdin"], self.mirror, env=self.scratch.env,
                               input_bytes=data).decode().strip()
        self.scratch.run(["update-index", "--add", "--cacheinfo", f"{mode},{sha},{path}"])

    def remove_folder(self, folder: str) -> None:
        listed = self.scratch.run(["ls-files", "-z", "--", f"{folder}/"]).stdout.split("\0")
        paths = [p for p in listed if p]
        if paths:
            zero = "0 " + "0" * 40 + "\t"  # --index-info: mode 0 removes the entry (no work tree needed)
            self.scratch.run(["update-index", "-z", "--index-info"],
                             input_bytes=b"".join((zero + p).encode() + b"\0" for p in paths))

    def diff(self, before: str, after: str, *paths: str) -> bytes:
        return diff(self.scratch, before, after, *paths)

    def apply(self, fd: FileDiff) -> Applied:
        before = self.tree()
        data = fd.data()
        how = "strict"
        rejected: list[Hunk] = []
        if not self.scratch.apply(data).ok:
            how = next((h for h, opts in _TOLERANT if self.scratch.apply(data, *opts).ok), "partial")
            if how == "partial":
                rejected = [h for h in fd.hunks if not any(self.scratch.apply(fd.data([h]), *opts).ok
                                                           for _, opts in _TOLERANT)]
        crlf = how != "strict" and self._keep_crlf(fd)
        after = self.tree()
        out = self.diff(before, after) if after != before else b""
        return Applied(fd, out, how, rejected if out or fd.hunks else [], crlf, before)

    def undo(self, tree: str) -> None:
        """The index back at TREE (a change left out)."""
        self.scratch.reset(tree)

    def _keep_crlf(self, fd: FileDiff) -> bool:
        """Added lines of a CRLF file made CRLF (a stored patch that lost its CRs adds LF lines)."""
        if not fd.old_path or not fd.new_path:
            return False
        base = self.read(fd.old_path, self.pin)
        now = self.entry(fd.new_path)
        if base is None or now is None or not is_crlf(base):
            return False
        data = self.blob(now[1])
        fixed = re.sub(rb"(?<!\r)\n", b"\r\n", data)
        if fixed == data:
            return False
        self.put(fd.new_path, fixed, now[0])
        return True


def diff(scratch: Scratch, before: str, after: str, *paths: str) -> bytes:
    """git's own patch from tree BEFORE to AFTER (of PATHS only, when given), as the import writes it."""
    args = ["diff-tree", "-p", "--full-index", "--binary", "--no-renames", before, after]
    return git.output_bytes([*args, "--", *paths] if paths else args, scratch.mirror, env=scratch.env)


def set_paths(scratch: Scratch, treeish: str, paths: list[str]) -> None:
    """PATHS in SCRATCH's index made as they are in TREEISH (absent there: removed), one ls-tree for all."""
    listing = scratch.run(["ls-tree", "-z", treeish, "--", *paths]).stdout.split("\0")
    have = {}
    for item in filter(None, listing):
        meta, _, path = item.partition("\t")
        if meta.split()[1] != "tree":  # a folder of that name is not a file of it
            have[path] = meta.split()
    lines = []
    for path in paths:
        mode, _, sha = have.get(path, ["0", "blob", "0" * 40])
        lines.append(f"{mode} {sha}\t{path}".encode() + b"\0")
    scratch.run(["update-index", "-z", "--index-info"], input_bytes=b"".join(lines))


def is_crlf(data: bytes) -> bool:
    lines = data.count(b"\n")
    return lines > 0 and data.count(b"\r\n") * 2 > lines


def applies_strictly(scratch: Scratch, commit: str, data: bytes) -> bool:
    scratch.reset(commit)
    return scratch.apply(data).ok


def infer_pin(mirror: Path, diffs: list[FileDiff], *, limit: int = 400) -> tuple[list[str], int]:
    """Commits (newest first) where DIFFS apply strictly, among the LIMIT newest of every ref; only
    commits whose files match the patches' `index` pre-image blobs are tried. Also how many were looked at."""
    commits = git.out(["rev-list", "--all", "--date-order", f"--max-count={limit}"], mirror).split()
    wanted = {fd.old_path: fd.blobs[0] for fd in diffs
              if fd.old_path and fd.blobs and fd.blobs[0].strip("0")}
    data = b"".join(fd.data() for fd in diffs)
    found = []
    with Scratch(mirror) as scratch:
        for commit in commits:
            if wanted and not _blobs_match(mirror, commit, wanted):
                continue
            if applies_strictly(scratch, commit, data):
                found.append(commit)
    return found, len(commits)


def _blobs_match(mirror: Path, commit: str, wanted: dict[str, str]) -> bool:
    out = git.run(["ls-tree", commit, "--", *wanted], mirror).stdout
    have = {line.split("\t", 1)[1]: line.split()[2] for line in out.splitlines() if "\t" in line}
    return all(have.get(path, "").startswith(blob) for path, blob in wanted.items())
