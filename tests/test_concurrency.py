"""Two applies never interleave; an apply killed midway is detected and repaired."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from patchkit.lock import FileLock
from tests.conftest import Port
from tests.gitfixtures import git, patchkit, patchkit_process


def test_second_apply_waits_for_the_lock(port: Port) -> None:
    lock = port.root / "work/demo/.patchkit/lock"
    with FileLock(lock):
        proc = patchkit_process(port.root, "apply", "demo")
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        assert "waiting for the workspace lock held by pid" in line
        time.sleep(0.2)
        assert proc.poll() is None  # still waiting, nothing done
        assert not port.repo("demo", "lib").exists()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert (port.repo("demo", "lib") / "lib/demo.py").exists()


def test_lock_timeout(port: Port) -> None:
    with FileLock(port.root / "work/demo/.patchkit/lock"):
        run = patchkit(port.root, "apply", "demo", "--lock-timeout", "0.2")
    assert run.code == 1
    assert "is locked by pid" in run.err and "gave up after 0.2 s" in run.err


def test_two_concurrent_applies(port: Port) -> None:
    procs = [patchkit_process(port.root, "apply", "demo") for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    outs = [out.decode() for out, _ in results]
    assert sum("nothing to do" in out for out in outs) == 1, outs  # the second saw the first's work
    status = json.loads(patchkit(port.root, "status", "demo", "--json").out)
    assert [r["state"] for r in status["models"][0]["repos"]] == ["clean", "clean"]
    assert git(port.repo("demo", "lib"), "rev-list", "--count", f"{port.lib_pin}..HEAD") == "3"


@pytest.fixture
def slow_am(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git template whose post-applypatch hook signals (writing the pid of its git am) and then hangs."""
    marker = tmp_path / "am-started"
    hooks = tmp_path / "template/hooks"
    hooks.mkdir(parents=True)
    hook = hooks / "post-applypatch"
    hook.write_text(f"#!/bin/sh\necho $PPID >> '{marker}'\nsleep 60\n")
    hook.chmod(0o755)
    config = Path(os.environ["GIT_CONFIG_GLOBAL"])
    config.write_text(config.read_text() + f"[init]\n\ttemplateDir = {tmp_path / 'template'}\n")
    return marker


def test_killed_apply_is_detected_and_repaired(port: Port, slow_am: Path) -> None:
    proc = patchkit_process(port.root, "apply", "demo", start_new_session=True)
    deadline = time.monotonic() + 60
    while not slow_am.exists() or len(slow_am.read_text().split()) < 2:  # both repos' git am in the hook
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # patchkit, then each git am and its hook (in their own process groups)
    for pid in slow_am.read_text().split():
        os.killpg(int(pid), signal.SIGKILL)
    proc.wait()
    # the hook must not hang the repair: the user's git has no such template
    config = Path(os.environ["GIT_CONFIG_GLOBAL"])
    config.write_text(config.read_text().split("[init]\n\ttemplateDir")[0])
    killed = [r for r in ("lib", "app") if (port.repo("demo", r) / ".git/rebase-apply").exists()]
    assert killed, "the kill should have left a git am in progress"
    for name in ("lib", "app"):
        (port.repo("demo", name) / ".git/hooks/post-applypatch").unlink(missing_ok=True)
    # a git killed mid-update leaves its lock files; make sure one is there whatever the timing
    (port.repo("demo", killed[0]) / ".git/index.lock").touch()

    status = patchkit(port.root, "status", "demo", "--json")
    states = {r["upstream"]: r["state"] for r in json.loads(status.out)["models"][0]["repos"]}
    assert all(states[name] == "interrupted" for name in killed), states

    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert "repaired (an earlier apply was interrupted here)" in run.out
    assert "removed lock files the interrupted apply left: .git/index.lock" in run.out
    assert "ended the interrupted git am" in run.out
    assert "kept on" not in run.out and "previous work" not in run.out  # there was none: nothing was saved
    for name, count in (("lib", "3"), ("app", "2")):
        repo = port.repo("demo", name)
        assert not (repo / ".git/rebase-apply").exists()
        assert git(repo, "rev-list", "--count", f"{getattr(port, name + '_pin')}..HEAD") == count
        assert git(repo, "status", "--porcelain") == ""
    status = json.loads(patchkit(port.root, "status", "demo", "--json").out)
    assert [r["state"] for r in status["models"][0]["repos"]] == ["clean", "clean"]
    assert patchkit(port.root, "apply", "demo").out.startswith("demo: up to date")


def test_busy_status_while_apply_runs(port: Port) -> None:
    with FileLock(port.root / "work/demo/.patchkit/lock"):
        run = patchkit(port.root, "status", "demo")
    assert "busy" in run.out and "an apply is running (pid" in run.out


def test_interrupted_clone_leaves_nothing_behind(port: Port) -> None:
    tmp = port.root / "work/demo/.patchkit/tmp-lib-abc/repo"
    tmp.mkdir(parents=True)
    (tmp / "junk").write_text("half a clone")
    assert patchkit(port.root, "apply", "demo").code == 0
    assert not list((port.root / "work/demo/.patchkit").glob("tmp-*"))
