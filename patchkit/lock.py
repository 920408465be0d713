"""An exclusive lock on a workspace or a mirror, held with flock(2).

The kernel drops the lock when its holder dies, even by SIGKILL, so a crashed run never
leaves a stale lock behind. The holder writes who it is into the file for the waiter's message.
A workspace lock (`inherit=True`) is also held by every git the holder starts: killed alone,
patchkit leaves its git child holding the lock until that git exits, and the next run waits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from patchkit import git
from patchkit.errors import LockTimeout


class FileLock:
    def __init__(self, path: Path, *, on_wait: Callable[[str], None] | None = None, timeout: float | None = None,
                 inherit: bool = False) -> None:
        self.path = path
        self.on_wait = on_wait
        self.timeout = timeout
        self.inherit = inherit
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _try_lock(fd):
                holder = describe(_read(fd))
                if self.on_wait:
                    self.on_wait(holder)
                self._wait(fd, holder)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {' '.join(['patchkit', *sys.argv[1:]])}".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if self.inherit:
            git.inherit(fd)
        return self

    def _wait(self, fd: int, holder: str) -> None:
        if self.timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + self.timeout
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{self.path} is locked by {holder}; gave up after {self.timeout:g} s")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            git.inherit(self._fd, on=False)
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()


def holder(path: Path) -> str | None:
    """Who holds the lock at PATH right now, or None when nobody does (never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return describe(_read(fd))
    finally:
        os.close(fd)


def describe(text: str) -> str:
    """Who holds a lock, from what its holder wrote: the patchkit, or the git a killed patchkit left running."""
    if not text:
        return "another patchkit process"
    pid = text.split(":", 1)[0].removeprefix("pid ").strip()
    if pid.isdigit() and not _alive(int(pid)):
        return f"git left running by a killed patchkit (pid {pid}: {text.split(':', 1)[-1].strip()})"
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
