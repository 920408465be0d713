"""A scratch index over a bare mirror: patches are replayed on it without a work tree.

`rebase --check` never touches a user's workspace. It reads the target tree into a temporary
index file, applies patches to that index with `git apply --cached`, and writes any new objects
into a temporary object directory (the mirror's objects are an alternate), so the mirror is not
given new objects (git may still refresh the mtime of a pack it reads). One git process per
patch that applies; more only for patches that do not.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from patchkit import git

# commands that leave the index as it is (any other command run in a scratch forgets its tree)
_READ_ONLY = {"write-tree", "ls-files", "ls-tree", "cat-file", "diff-tree", "diff", "rev-parse", "log", "grep"}
_OFFSET = re.compile(r"^Hunk #(\d+) succeeded at (\d+) \(offset (-?\d+) lines?\)\.$", re.M)


class Scratch:
    def __init__(self, mirror: Path, objects: Path | None = None) -> None:
        """A new scratch index; OBJECTS shares another scratch's object directory (its blobs)."""
        self.mirror = mirror
        self.dir = Path(tempfile.mkdtemp(prefix="patchkit-scratch-"))
        if objects is None:
            objects = self.dir / "objects"
            objects.mkdir()
        self.objects = objects
        self.env = git.environment({
            "GIT_INDEX_FILE": str(self.dir / "index"),
            "GIT_OBJECT_DIRECTORY": str(objects),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(mirror / "objects"),
        })
        self._tree: str | None = None  # the index's tree while no patch changed it

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, args: list[str], *, check: bool = True, input_bytes: bytes | None = None) -> git.Result:
        if args[0] not in _READ_ONLY and "--check" not in args:
            self._tree = None  # the index may change: its tree is written again when asked for
        return git.run(args, self.mirror, check=check, env=self.env, input_bytes=input_bytes)

    def reset(self, treeish: str) -> None:
        self.run(["read-tree", treeish])

    def tree(self) -> str:
        if self._tree is None:
            # --missing-ok: a snapshot may lack blobs of files no patch touches (demo media)
            self._tree = self.run(["write-tree", "--missing-ok"]).stdout.strip()
        return self._tree

    def apply(self, data: bytes, *options: str) -> git.Result:
        """`git apply --cached -v OPTIONS` of DATA; the index is unchanged when it fails (atomic)."""
        return self.run(["apply", "--cached", "--verbose", *options, "-"], check=False, input_bytes=data)



def offsets(result: git.Result) -> list[int]:
    """The line offsets `git apply -v` reported for hunks that moved."""
    return [int(m.group(3)) for m in _OFFSET.finditer(result.stderr)]


def replay(scratch: Scratch, base: str, patches: list[bytes]) -> str | None:
    """The tree of BASE with PATCHES applied strictly, or None when one does not apply."""
    scratch.reset(base)
    for data in patches:
        if not scratch.apply(data).ok:
            return None
    return scratch.tree()
