"""Small filesystem helpers: display paths, atomic writes."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def display(path: str | Path) -> str:
    """PATH relative to the current directory when it lies below it, else absolute."""
    try:
        return _display(str(path), os.getcwd())
    except OSError:
        return str(path)


@functools.lru_cache(maxsize=4096)
def _display(path: str, cwd: str) -> str:
    try:
        real, base = _real(path), _real_folder(cwd)
    except OSError:
        return path
    if real == base:
        return "."
    prefix = base.rstrip("/") + "/"
    return real[len(prefix):] if real.startswith(prefix) else path


def _real(path: str) -> str:
    """os.path.realpath(PATH) (Path.resolve's), its folder resolved once for all the files in it (a system
    call per part of a path: the patches of a series share all but the last)."""
    folder, name = os.path.split(path)
    if not os.path.isabs(folder) or name in ("", ".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(_real_folder(folder), name)


@functools.lru_cache(maxsize=1024)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would have given the file


def atomic_write(path: Path, data: bytes) -> None:
    """Write DATA to PATH so that a reader sees the old or the new file, never a mix."""
    with atomic_writer(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A file to write PATH's new content into, piece by piece: on leaving it replaces PATH whole (a reader
    sees the old or the new file, never a mix); an exception leaves PATH as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
