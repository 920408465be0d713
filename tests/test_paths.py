"""paths.display: a path relative to the current folder when it lies below it, else as given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from patchkit import paths


def _resolved(path: str, cwd: str) -> str:
    """display's meaning, written the slow way (Path.resolve of the path and of the folder)."""
    try:
        return str(Path(path).resolve().relative_to(Path(cwd).resolve()))
    except ValueError:
        return path


def test_display_resolves_like_path_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    (work / "patches" / "l").mkdir(parents=True)
    (work / "patches" / "l" / "0001.patch").write_text("x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o.patch").write_text("o")
    (work / "linked").symlink_to(tmp_path / "outside")  # a folder link leading out of the work folder
    (work / "patches" / "l" / "back.patch").symlink_to(tmp_path / "outside" / "o.patch")  # a file link out
    (tmp_path / "outside" / "in.patch").symlink_to(work / "patches" / "l" / "0001.patch")  # a file link in
    (tmp_path / "alias").symlink_to(work)  # the work folder through a link
    monkeypatch.chdir(work)
    cases = [work / "patches" / "l" / "0001.patch", work / "patches" / "l" / "back.patch", work / "linked" / "o.patch",
             tmp_path / "outside" / "in.patch", tmp_path / "alias" / "patches" / "l" / "0001.patch",
             work / "linked" / ".." / "work" / "patches", work, tmp_path / "outside" / "o.patch",
             work / "patches" / "l" / "missing.patch", "patches/l/0001.patch", "linked/o.patch", "0001.patch",
             tmp_path / "alias" / "linked" / "in.patch"]
    got = {str(c): paths.display(c) for c in cases}
    assert got == {str(c): _resolved(str(c), os.getcwd()) for c in cases}
    assert got[str(work / "patches" / "l" / "0001.patch")] == "patches/l/0001.patch"
    assert got[str(tmp_path / "outside" / "in.patch")] == "patches/l/0001.patch"
    assert got[str(work / "linked" / "o.patch")] == str(work / "linked" / "o.patch")  # outside: as given
    assert got[str(work)] == "."
