"""Throwaway upstream repos, patches and port repositories for the tests."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from patchkit.cli import main


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env=full_env).stdout.strip()


def write_files(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)


def make_upstream(path: Path, files: dict[str, str | bytes], branch: str = "main") -> str:
    """A new repo at PATH with FILES in one commit; returns the commit SHA."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", branch)
    return commit(path, files, "initial import")


def commit(repo: Path, files: dict[str, str | bytes], message: str, *, remove: tuple[str, ...] = (),
           author: str = "Up Stream <up@example.org>") -> str:
    write_files(repo, files)
    for name in remove:
        git(repo, "rm", "-q", name)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--author", author, "-m", message)
    return git(repo, "rev-parse", "HEAD")


class PatchMaker:
    """Makes a stack of format-patch files against an upstream commit, each on the previous."""

    def __init__(self, upstream: Path, base: str, scratch: Path) -> None:
        self.repo = scratch
        git(upstream.parent, "clone", "-q", str(upstream), str(scratch))
        git(scratch, "checkout", "-q", base)

    @classmethod
    def resume(cls, scratch: Path) -> PatchMaker:
        """A maker over a scratch clone made earlier (a copy of one, say), going on from its HEAD."""
        maker = cls.__new__(cls)
        maker.repo = scratch
        return maker

    def patch(self, subject: str, files: dict[str, str | bytes], *, remove: tuple[str, ...] = (),
              author: str = "Port Er <porter@example.org>",
              body: str = "Upstream-Status: Inappropriate [NPU port]") -> bytes:
        message = subject + (f"\n\n{body}" if body else "")
        commit(self.repo, files, message, remove=remove, author=author)
        return subprocess.run(["git", "format-patch", "-1", "--stdout", "--no-signature", "HEAD"],
                              cwd=self.repo, check=True, capture_output=True).stdout


def write_layer(port: Path, layer: str, upstream: str, patches: dict[str, bytes],
                series_extra: str = "") -> Path:
    folder = port / "patches" / layer / upstream
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in patches.items():
        (folder / name).write_bytes(data)
    (folder / "series").write_text("# order matters\n" + "".join(f"{n}\n" for n in patches) + series_extra)
    return folder


def write_one_upstream_port(port: Path, upstream: str | Path, pin: str, *, name: str = "up", model: str = "m",
                            layers: str = "npu") -> None:
    """The manifest of a port with one upstream and one model on it."""
    port.mkdir(parents=True, exist_ok=True)
    (port / "upstreams.yaml").write_text(f"upstreams:\n  {name}:\n    url: {upstream}\n    pin: {pin}\n"
                                         f"    track: main\nmodels:\n  {model}:\n    upstreams:\n"
                                         f"      {name}: [{layers}]\n")


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def patchkit(cwd: Path, *args: str) -> Run:
    """Run the CLI in process, in CWD."""
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(old)
    return Run(code, out.getvalue(), err.getvalue())


# Ctrl-C as a terminal gives it: a shell without job control starts `cmd &` with SIGINT ignored, and
# patchkit (rightly) keeps an inherited SIG_IGN; so a suite run in the background (CI, nohup) would
# hand every test's patchkit an immune SIGINT. The child restores the default before patchkit starts.
_AS_FROM_A_TERMINAL = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "sys.argv[0] = 'patchkit'; from patchkit.__main__ import run; run()")


def patchkit_process(cwd: Path, *args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _AS_FROM_A_TERMINAL, *args], cwd=cwd,  # type: ignore[call-overload]
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def numbered(name: str, n: int = 30) -> str:
    """N numbered lines of a file called NAME: content whose hunks a test can move and edit."""
    return "".join(f"{name} line {i}\n" for i in range(1, n + 1))


def edit(text: str, old: str, new: str) -> str:
    """TEXT with the first OLD replaced by NEW (which must be there)."""
    assert old in text, old
    return text.replace(old, new, 1)
