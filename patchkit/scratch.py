"""A scratch index over a bare mirror: patches are replayed on it without a work tree.

`rebase --check` never touches a user's workspace. It reads the target tree into a temporary
index file, applies patches to that index with `git apply --cached`, and writes any new objects
into a temporary object directory (the mirror's objects are an alternate), so the mirror is not
given new objects (git may still refresh the mtime of a pack it reads). A run of patches is
applied by one `git apply` (`apply_files`, cut back per patch by `split_verbose`); a patch that
does not apply is looked at on its own.
"""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
import weakref
from pathlib import Path

from patchkit import git, patchfile

# commands that leave the index as it is (any other command run in a scratch forgets its tree)
_READ_ONLY = {"write-tree", "ls-files", "ls-tree", "cat-file", "diff-tree", "diff", "rev-parse", "log", "grep"}
_OFFSET = re.compile(r"^Hunk #(\d+) succeeded at (\d+) \(offset (-?\d+) lines?\)\.$", re.M)
_CHECKING = re.compile(r"^Checking patch (.+)\.\.\.$")
_APPLIED = re.compile(r"^Applied patch (.+) cleanly\.$")


class Folder:
    """One temporary folder for the scratches of a whole run (a check's): their index files and one object
    directory, so the objects of every upstream share git's fan-out folders and all is removed at once
    (`close`, or when the folder is let go: a run that raised removes it too)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="patchkit-scratch-"))
        self.objects = self.path / "objects"
        self.objects.mkdir()
        self._names = itertools.count()
        self._remove = weakref.finalize(self, shutil.rmtree, self.path, True)

    def index(self) -> Path:
        """A new index file's name."""
        return self.path / f"index-{next(self._names)}"

    def close(self) -> None:
        self._remove()


_SAVES = itertools.count()


class Saved:
    """A copy of a scratch's index (`Scratch.save`), with its tree where that was written; dropped when its
    `with` block ends."""

    __slots__ = ("path", "tree")

    def __init__(self, path: Path, tree: str | None) -> None:
        self.path, self.tree = path, tree

    def drop(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Saved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()


class Scratch:
    def __init__(self, mirror: Path, objects: Path | None = None, *, within: Folder | None = None) -> None:
        """A new scratch index; OBJECTS shares another scratch's object directory (its blobs). WITHIN: in that
        folder (its index there, its objects in the folder's), else in a folder of its own."""
        self.mirror = mirror
        self.dir = Path(tempfile.mkdtemp(prefix="patchkit-scratch-")) if within is None else None
        if within is not None:
            objects, self.index = within.objects, within.index()
        else:
            assert self.dir is not None
            self.index = self.dir / "index"
            if objects is None:
                objects = self.dir / "objects"
                objects.mkdir()
        self.objects = objects
        self.env = git.environment({
            "GIT_INDEX_FILE": str(self.index),
            "GIT_OBJECT_DIRECTORY": str(objects),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(mirror / "objects"),
        })
        self._tree: str | None = None  # the index's tree while no patch changed it

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:  # in a Folder: the rest goes with it
            self.index.unlink(missing_ok=True)

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

    def save(self) -> Saved:
        """The index as it is now, copied aside (no git process, no tree written): to `restore` later, or to
        read its files (`git.index_files`). It goes with the scratch's folder, or at `Saved.drop`."""
        saved = Saved(self.index.with_name(f"{self.index.name}-saved-{next(_SAVES)}"), self._tree)
        shutil.copyfile(self.index, saved.path)
        return saved

    def restore(self, saved: Saved) -> None:
        """The index as it was when SAVED was made."""
        shutil.copyfile(saved.path, self.index)
        self._tree = saved.tree

    def tree(self) -> str:
        if self._tree is None:
            # --missing-ok: a snapshot may lack blobs of files no patch touches (demo media)
            self._tree = self.run(["write-tree", "--missing-ok"]).stdout.strip()
        return self._tree

    def apply(self, data: bytes, *options: str) -> git.Result:
        """`git apply --cached -v OPTIONS` of DATA; the index is unchanged when it fails (atomic)."""
        return self.run(["apply", "--cached", "--verbose", *options, "-"], check=False, input_bytes=data)

    def apply_files(self, paths: list[str]) -> git.Result:
        """`git apply --cached -v` of the patch files PATHS in one process, each on the ones before it;
        the index is unchanged when one of them does not apply (the whole call is atomic)."""
        return self.run(["apply", "--cached", "--verbose", "--", *paths], check=False)



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


def split_verbose(stderr: str, names: list[list[tuple[str, ...]]]) -> list[str]:
    """The stderr of `git apply -v` of several patches, cut into each patch's part, for the leading
    patches that applied (every file checked and applied, no error), in order. NAMES: per patch,
    per file in its order, the paths git may name that file by. It stops at the first patch whose
    part is not certain, so a caller looks at the patches after that one by themselves."""
    parts: list[str] = []
    lines: list[str] = []
    patch, checked, applied, failed = 0, 0, 0, False
    for line in stderr.splitlines(keepends=True):
        text = line.rstrip("\n")
        found = _CHECKING.match(text)
        if found and patch < len(names) and checked == len(names[patch]):  # the next patch begins
            if failed or applied != checked:
                return parts
            parts.append("".join(lines))
            lines, patch, checked, applied = [], patch + 1, 0, 0
        if found:
            if patch >= len(names) or checked >= len(names[patch]) or \
                    not _named(found.group(1), names[patch][checked]):
                return parts
            checked += 1
        elif _APPLIED.match(text):
            if patch >= len(names) or checked != len(names[patch]):  # applied before all its files were checked
                return parts
            applied += 1
        elif text.startswith(("error:", "fatal:")):
            failed = True
        lines.append(line)
    if patch < len(names) and not failed and checked == applied == len(names[patch]):
        parts.append("".join(lines))
    return parts


def _named(said: str, paths: tuple[str, ...]) -> bool:
    """Whether git's name of a file in a patch (`a => b` for a rename, C-quoted when unusual) is one of PATHS."""
    parts = [patchfile.unquote(p[1:-1]) if len(p) > 1 and p[0] == p[-1] == '"' else p for p in said.split(" => ")]
    return all(part in paths for part in parts)
