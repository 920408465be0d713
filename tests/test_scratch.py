"""Scratch indexes: saved and restored as files, and read without a git process (git.index_files)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from patchkit import git as pkgit
from patchkit.scratch import Scratch
from tests.gitfixtures import git, make_upstream

LONG = "/".join(["d" * 200] * 24) + "/long.py"  # 4,831 characters: past the 12 bits of an entry's name length


def _blob(repo: Path, text: str) -> str:
    return subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo, input=text.encode(),
                          capture_output=True, check=True).stdout.decode().strip()


def _index(repo: Path, tmp: Path, version: int, *, split: bool = False) -> tuple[Path, dict[str, str]]:
    """An index file of VERSION holding every kind of entry; (its path, the files index_files must find)."""
    index = tmp / f"index-{version}{'-split' if split else ''}"
    env = {"GIT_INDEX_FILE": str(index)}
    a, b, c = _blob(repo, "a\n"), _blob(repo, "b\n"), _blob(repo, "c\n")
    git(repo, "read-tree", "HEAD", env=env)
    head = {line.split("\t")[1]: line.split()[2] for line in git(repo, "ls-tree", "-r", "HEAD").splitlines()}
    entries = (f"100755 {a}\tpkg/run.sh\n120000 {b}\tpkg/link\n160000 {git(repo, 'rev-parse', 'HEAD')}\tsub\n"
               f"100644 {c}\t{LONG}\n100644 {a}\tzz/\u00e9t\u00e9.py\n"
               f"100644 {a} 1\tconflict.py\n100644 {b} 2\tconflict.py\n100644 {c} 3\tconflict.py\n")
    subprocess.run(["git", "update-index", "--index-info"], cwd=repo, input=entries.encode(), check=True,
                   env={**os.environ, **env})
    if version >= 3:
        git(repo, "update-index", "--skip-worktree", "pkg/run.sh", env=env)  # an extended flag (not in version 2)
    git(repo, "update-index", "--index-version", str(version), env=env)
    if split:
        git(repo, "update-index", "--split-index", env=env)
    expected = {**head, "pkg/run.sh": a, "pkg/link": b, LONG: c, "zz/\u00e9t\u00e9.py": a}
    return index, expected


@pytest.mark.parametrize("version", [2, 3, 4])
def test_index_files_read_from_the_file_as_git_lists_them(tmp_path: Path, version: int) -> None:
    repo = tmp_path / "repo"
    make_upstream(repo, {"a.py": "x = 1\n", "pkg/__init__.py": "", "pkg/mod.py": "def f():\n    pass\n"})
    index, expected = _index(repo, tmp_path, version)
    assert int.from_bytes(index.read_bytes()[4:8], "big") == version
    assert pkgit._read_index(index.read_bytes(), 20) == expected  # read by patchkit itself, not by git
    assert pkgit.index_files(index, repo, {}, 40) == expected


def test_a_split_index_is_listed_by_git(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_upstream(repo, {"a.py": "x = 1\n"})
    index, expected = _index(repo, tmp_path, 2, split=True)
    assert pkgit._read_index(index.read_bytes(), 20) is None  # its entries live partly in the shared file
    assert pkgit.index_files(index, repo, {}, 40) == expected
    assert pkgit._read_index(b"DIRC\0\0\0\x02\0\0\0\x02" + b"\0" * 30, 20) is None  # cut short


def test_save_and_restore_bring_back_the_index(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    pin = make_upstream(repo, {"a.py": "x = 1\n"})
    with Scratch(repo / ".git") as scratch:
        scratch.reset(pin)
        saved = scratch.save()
        patch = b"--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"
        assert scratch.apply(patch).ok
        changed = scratch.tree()
        scratch.restore(saved)
        assert scratch.tree() == git(repo, "rev-parse", f"{pin}^{{tree}}") != changed
        assert pkgit.index_files(saved.path, repo, scratch.env, 40) == {"a.py": _blob(repo, "x = 1\n")}
        saved.drop()
        assert not saved.path.exists()


def test_an_index_reader_reads_as_a_tree_reader_of_the_same_index(tmp_path: Path) -> None:
    """What rebase --check's overlay check sees at a series' end (its saved index) is what a reader of the
    index's written tree would: blobs, contents and where a name is defined (grep)."""
    from patchkit.overlay.drift import IndexReader, TreeReader

    repo = tmp_path / "repo"
    pin = make_upstream(repo, {"pkg/core.py": "def f():\n    return 1\n", "pkg/other.py": "X = 1\n"})
    with Scratch(repo / ".git") as scratch:
        scratch.reset(pin)
        patch = (b"--- a/pkg/core.py\n+++ b/pkg/core.py\n@@ -1,2 +1,2 @@\n-def f():\n-    return 1\n"
                 b"+def g():\n+    return 2\n--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1,2 @@\n+def f():\n+    pass\n")
        assert scratch.apply(patch).ok
        saved = scratch.save()
        with TreeReader(repo / ".git", scratch.tree(), scratch.env) as tree, \
                IndexReader(repo / ".git", saved.path, scratch.env, 40) as index:
            for path in ("pkg/core.py", "pkg/new.py", "pkg/other.py", "pkg/gone.py", "pkg"):
                assert index.blob(path) == tree.blob(path), path
                assert index.read(path) == tree.read(path), path
            assert index.read("pkg/new.py") == "def f():\n    pass\n"
            assert index.grep(r"^def f\b") == tree.grep(r"^def f\b") == ["pkg/new.py:1:def f():"]
