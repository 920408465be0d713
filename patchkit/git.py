"""The one place patchkit runs git.

Everything goes through `run`, so the environment is controlled in one spot: inherited
repository variables (a hook or an IDE may export GIT_DIR) are dropped, prompts are off so an
unreachable https upstream fails instead of hanging, and messages are in the C locale so they
can be parsed.

Every git runs in its own process group, so a Ctrl-C in the terminal reaches patchkit alone:
patchkit then stops its git children itself (`stop_all`) and every `run` raises `Interrupted`
instead of reporting git's death as a failed patch. The workspace lock is handed down to each
git (`inherit`): when patchkit alone is killed, its git child keeps the lock until it exits, so
the next apply waits for it instead of racing it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from patchkit.errors import GitError, Interrupted

# Variables that would point git at another repository than the one we name.
_SCRUBBED = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_PREFIX",
    "GIT_NAMESPACE",
)

# Committer of every commit patchkit makes: with the author date also used as committer date,
# the same pin and patches give the same commit SHAs on every machine.
COMMITTER = {"GIT_COMMITTER_NAME": "patchkit", "GIT_COMMITTER_EMAIL": "patchkit@localhost"}
# patchkit's own commits (a PyPI import, the whole-file overlays): the same author, date and hash everywhere
FIXED_IDENTITY = {**COMMITTER, "GIT_AUTHOR_NAME": "patchkit", "GIT_AUTHOR_EMAIL": "patchkit@localhost",
                  "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000"}


# The config a git needs when it holds the workspace lock: nothing it starts may outlive it
# (a detached gc or an fsmonitor daemon would keep the lock held).
_NO_DAEMONS = (("gc.autoDetach", "false"), ("maintenance.autoDetach", "false"), ("core.fsmonitor", "false"))
_OWN_GROUP: dict[str, object] = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}

_guard = threading.RLock()  # reentrant: the signal handler runs in the main thread, maybe inside it
_children: set[subprocess.Popen[bytes]] = set()
_inherited: set[int] = set()
_stopped: list[int] = []  # the signal that stopped patchkit, once one has


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Env(dict[str, str]):
    """A complete environment for git, built once (`environment`) and passed to every call as is."""


def environment(extra: Mapping[str, str] | None = None) -> Env:
    """The environment of many git calls with the same EXTRA variables (a scratch index's), built once."""
    return Env(base_env(extra))


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    if isinstance(extra, Env):
        return extra
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    env["LANGUAGE"] = "C"
    if extra:
        env.update(extra)
    return env


def run(
    args: Sequence[str],
    cwd: str | Path | None = None,
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    config: Sequence[tuple[str, str]] = (),
    input_bytes: bytes | None = None,
) -> Result:
    """Run `git ARGS` in CWD; raise GitError on failure unless check is false."""
    cmd = ["git"]
    for key, value in config:
        cmd += ["-c", f"{key}={value}"]
    cmd += list(args)
    code, stdout, stderr = _spawn(cmd, cwd, base_env(env), input_bytes if input_bytes is not None else b"")
    result = Result(tuple(cmd), code, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))
    if check and not result.ok:
        raise failure(result, cwd)
    return result


def _spawn(cmd: list[str], cwd: str | Path | None, env: dict[str, str], stdin: bytes) -> tuple[int, bytes, bytes]:
    """Run CMD in its own process group, known to `stop_all` while it runs; raise Interrupted when stopped."""
    with _guard:
        _check_stopped()
        fds = tuple(_inherited)
        if fds:
            cmd = [cmd[0], *(f for key, value in _NO_DAEMONS for f in ("-c", f"{key}={value}")), *cmd[1:]]
        try:
            proc = subprocess.Popen(cmd, executable=_executable(env), cwd=cwd, env=env,
                                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,  # no input: no pipe
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=fds, **_OWN_GROUP)  # type: ignore[call-overload]
        except FileNotFoundError as exc:  # pragma: no cover - git is a hard requirement
            raise GitError("git is not installed or not on PATH") from exc
        _children.add(proc)
    try:
        stdout, stderr = proc.communicate(stdin or None)
    finally:
        with _guard:
            _children.discard(proc)
        if proc.returncode is None:  # interrupted while waiting: stop_all sent SIGTERM; make sure it is gone
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
                proc.wait()
    if proc.returncode < 0:
        _check_stopped()
        raise Interrupted(-proc.returncode, f"{' '.join(cmd[:2])} was killed by {signal.Signals(-proc.returncode).name}")
    _check_stopped()
    return proc.returncode, stdout, stderr


_FOUND: dict[str, str | None] = {}  # PATH -> git on it


def _executable(env: Mapping[str, str]) -> str | None:
    """The git ENV's PATH finds, looked up once per PATH (subprocess searches PATH, an exec per folder,
    at every call); None: not found, subprocess then says so."""
    search = env.get("PATH", os.defpath)
    if search not in _FOUND:
        found = shutil.which("git", path=search)
        _FOUND[search] = found if found and os.path.isabs(found) else None  # a relative one: from the child's cwd
    return _FOUND[search]


def _check_stopped() -> None:
    if _stopped:
        raise Interrupted(_stopped[0])


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(signum: int, *, hard: bool = False) -> None:
    """Patchkit was told to stop: every git it runs, and each one's children, get SIGTERM (SIGKILL when HARD)."""
    with _guard:
        if not _stopped:
            _stopped.append(signum)
        for proc in list(_children):
            _kill_group(proc, signal.SIGKILL if hard else signal.SIGTERM)


def stopped() -> bool:
    return bool(_stopped)


def reset_stop() -> None:
    """Forget a stop (for a program, such as the tests, that calls the CLI more than once)."""
    with _guard:
        _stopped.clear()


def inherit(fd: int | None, on: bool = True) -> None:
    """Hand FD (the workspace lock) down to every git started from now on (until called with ON false)."""
    if fd is None:
        return
    with _guard:
        (_inherited.add if on else _inherited.discard)(fd)


def failure(result: Result, cwd: str | Path | None = None) -> GitError:
    where = f" (in {cwd})" if cwd else ""
    details = [f"exit code {result.returncode}"]
    for label, text in (("stderr", result.stderr), ("stdout", result.stdout)):
        if text.strip():
            details.append(f"{label}:")
            details += ["    " + line for line in text.rstrip().splitlines()[-20:]]
    return GitError(f"git {' '.join(result.args[1:])} failed{where}", details=details)


def output_bytes(args: Sequence[str], cwd: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                 input_bytes: bytes | None = None) -> bytes:
    """Stdout of a git command that must succeed, as bytes (patch text: CR bytes and all)."""
    cmd = ["git", *args]
    code, stdout, stderr = _spawn(cmd, cwd, base_env(env), input_bytes or b"")
    if code:
        raise failure(Result(tuple(cmd), code, "", stderr.decode("utf-8", "replace")), cwd)
    return stdout


def out(args: Sequence[str], cwd: str | Path | None = None, **kw: object) -> str:
    """Stdout of a git command that must succeed, stripped."""
    return run(args, cwd, **kw).stdout.strip()  # type: ignore[arg-type]


def has_commit(repo: str | Path, sha: str) -> bool:
    return run(["cat-file", "-e", f"{sha}^{{commit}}"], repo, check=False).ok


def is_ancestor(repo: str | Path, ancestor: str, descendant: str) -> bool:
    return run(["merge-base", "--is-ancestor", ancestor, descendant], repo, check=False).ok


class Batch:
    """One `git cat-file --batch-command` process per repository: object and path look-ups
    (`info`, `contents` of `REV`, `TREE:PATH`, `REF^{commit}` ...) without a process each.
    Started on first use; objects written by other git processes later are found too."""

    def __init__(self, repo: str | Path, env: Mapping[str, str] | None = None) -> None:
        self.repo, self.env = repo, env
        self._proc: subprocess.Popen[bytes] | None = None

    def _ask(self, command: str, spec: str) -> tuple[str, str, int] | None:
        if "\n" in spec or not spec:
            return None
        if self._proc is None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(f"{command} {spec}\n".encode())
            self._proc.stdin.flush()
            header = self._proc.stdout.readline().decode("utf-8", "replace").split()
        except (BrokenPipeError, OSError) as exc:
            _check_stopped()
            raise GitError(f"git cat-file --batch-command stopped (in {self.repo})") from exc
        if len(header) != 3 or header[2] == "missing" or not header[2].isdigit():
            if not header:
                _check_stopped()  # stop_all ended it: an interruption, not a git failure
                raise GitError(f"git cat-file --batch-command stopped (in {self.repo})")
            return None
        return header[0], header[1], int(header[2])

    def _start(self) -> None:
        """The process, in its own process group and known to `stop_all` (a Ctrl-C stops it with the rest)."""
        with _guard:
            _check_stopped()
            env = base_env(self.env)
            self._proc = subprocess.Popen(["git", "cat-file", "--batch-command"], executable=_executable(env),
                                          cwd=self.repo, env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          **_OWN_GROUP)  # type: ignore[call-overload]
            _children.add(self._proc)

    def info(self, spec: str) -> tuple[str, str] | None:
        """(object id, type) of SPEC, or None when it names nothing."""
        found = self._ask("info", spec)
        return (found[0], found[1]) if found else None

    def contents(self, spec: str) -> tuple[str, bytes] | None:
        """(type, bytes) of the object SPEC names, or None."""
        found = self._ask("contents", spec)
        if found is None:
            return None
        assert self._proc is not None and self._proc.stdout is not None
        data = self._proc.stdout.read(found[2] + 1)[:-1]
        return found[1], data

    def close(self) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            with contextlib.suppress(OSError):  # BrokenPipeError: it was stopped
                self._proc.stdin.close()
            self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            with _guard:
                _children.discard(self._proc)
            self._proc = None

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def index_files(index: Path, repo: str | Path, env: Mapping[str, str], hexsz: int) -> dict[str, str]:
    """Path -> object id of the files (stage 0; regular files and symbolic links, not submodules) of the
    index file INDEX of REPO, whose object ids are HEXSZ hex digits long: read from the file itself (what
    `git ls-files -s` prints, without a process), or by `git ls-files -s` where the file is one this does
    not read (a split or sparse index, another version)."""
    found = _read_index(index.read_bytes(), hexsz // 2)
    if found is not None:
        return found
    listing = run(["ls-files", "-s", "-z"], repo, env={**env, "GIT_INDEX_FILE": str(index)}).stdout
    files = {}
    for entry in filter(None, listing.split("\0")):
        info, path = entry.split("\t", 1)
        mode, oid, stage = info.split()
        if stage == "0" and mode in ("100644", "100755", "120000"):
            files[path] = oid
    return files


def _read_index(data: bytes, rawsz: int) -> dict[str, str] | None:
    """The stage-0 files of an index file's DATA (versions 2-4, see git's gitformat-index), None when
    it holds what a listing of its own entries would get wrong (a split index's link, a sparse index)."""
    if data[:4] != b"DIRC" or len(data) < 12:
        return None
    version, count = int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big")
    if version not in (2, 3, 4):
        return None
    files: dict[str, str] = {}
    pos, fixed, name = 12, 40 + rawsz + 2, b""  # ten 32-bit stat fields, the object id, 16 bits of flags
    try:
        for _ in range(count):
            mode = int.from_bytes(data[pos + 24:pos + 28], "big")
            flags = int.from_bytes(data[pos + fixed - 2:pos + fixed], "big")
            start = pos + fixed + (2 if flags & 0x4000 else 0)  # extended flags (version 3 and later)
            if version == 4:  # the name: how much of the previous one to drop, then the rest of it
                drop, start = _varint(data, start)
                end = data.index(b"\0", start)
                name = name[:len(name) - drop] + data[start:end]
                next_pos = end + 1
            else:
                end = data.index(b"\0", start)
                name = data[start:end]
                next_pos = pos + ((end - pos + 8) & ~7)  # padded with 1-8 NULs to a multiple of 8
            kind = mode >> 12  # 0b1000 a file, 0b1010 a link, 0b1110 a submodule, 0b0100 a sparse folder
            if kind == 0b0100:
                return None
            if kind in (0b1000, 0b1010) and not flags & 0x3000:  # stage 0
                files[name.decode("utf-8", "surrogateescape")] = data[pos + 40:pos + 40 + rawsz].hex()
            pos = next_pos
        while pos + 8 <= len(data) - rawsz:  # the extensions, before the checksum
            if data[pos:pos + 4] in (b"link", b"sdir"):
                return None
            pos += 8 + int.from_bytes(data[pos + 4:pos + 8], "big")
    except (ValueError, IndexError):  # cut short: not a file this reads
        return None
    return files


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """git's offset varint at POS (varint.c): (value, the position after it)."""
    byte = data[pos]
    value = byte & 127
    while byte & 128:
        pos += 1
        byte = data[pos]
        value = ((value + 1) << 7) | (byte & 127)
    return value, pos + 1
