"""Fault injection: kill `apply --force` anywhere in a long series; nothing of the user's is lost.

Each case starts from one workspace: the series applied, then the user's work on top (a tracked
edit, a staged new file, an untracked file, a commit of their own), then a changed first patch, so
`apply --force` saves that work and rebuilds every patch. The apply is killed at a seeded point
(while git am is at patch K, or at a random moment from the start) with SIGKILL or SIGINT, sent to
patchkit alone, to its process group, or to everything it started (patchkit and each git child's
group: what an OOM kill or a closed cgroup does, leaving git's files half written). Then:
`status` says interrupted (when the kill came while git am ran), the next `apply` (or `apply
--force` when it refuses) reaches exactly the head of a clean apply, and every file and commit of
the user's is in a backup (or still in the work tree), byte for byte.

A few cases run in the normal suite; `PATCHKIT_FAULTS=N` runs N cases on a 200-patch series
(`PATCHKIT_FAULTS_SEED` to vary them).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gitfixtures import commit, git, make_upstream, patchkit, patchkit_process, write_layer, write_one_upstream_port

FAULTS = int(os.environ.get("PATCHKIT_FAULTS", "0") or 0)
SEED = int(os.environ.get("PATCHKIT_FAULTS_SEED", "13"))
USER_FILES = {"base.py": b"# the user's own edit\r\nv5 = 'mine'\n", "src/staged_new.py": b"staged = True\n",
              "notes/untracked.bin": bytes(range(256))}


def _patch(i: int, diff: str, subject: str) -> bytes:
    return (f"From {i:040x} Mon Sep 17 00:00:00 2001\nFrom: Port Er <porter@example.org>\n"
            f"Date: Thu, 1 Jan 2026 00:{i // 60 % 60:02d}:{i % 60:02d} +0000\nSubject: [PATCH] {subject}\n\n"
            f"Upstream-Status: Inappropriate [test]\n---\n{diff}-- \n2.39.5\n").encode()


def _series(n: int, first: str) -> dict[str, bytes]:
    """N patches: most add a file, every tenth changes its own line of base.py (contexts never overlap)."""
    patches = {}
    for i in range(1, n + 1):
        if i % 10 == 5:
            line = i  # base.py holds v1..vN, one a line
            ctx = [f"v{j} = 0" for j in range(line - 3, line + 4)]
            body = "".join(f" {c}\n" if j != 3 else f"-{c}\n+v{line} = {i}\n" for j, c in enumerate(ctx))
            diff = f"diff --git a/base.py b/base.py\n--- a/base.py\n+++ b/base.py\n@@ -{line - 3},7 +{line - 3},7 @@\n{body}"
        else:
            text = first if i == 1 else f"P{i} = {i}"
            diff = (f"diff --git a/gen/p{i:03d}.py b/gen/p{i:03d}.py\nnew file mode 100644\n--- /dev/null\n"
                    f"+++ b/gen/p{i:03d}.py\n@@ -0,0 +1 @@\n+{text}\n")
        patches[f"{i:04d}-p{i}.patch"] = _patch(i, diff, f"patch {i}")
    return patches


@dataclass
class Bench:
    root: Path  # the port
    template: Path  # a workspace: series v1 applied, the user's work on top
    clean_head: str  # what a clean apply of series v2 makes
    mine: str  # the user's commit
    n: int


def _bench(tmp_path: Path, n: int) -> Bench:
    up = tmp_path / "up"
    pin = make_upstream(up, {"base.py": "".join(f"v{j} = 0\n" for j in range(1, n + 4))})
    root = tmp_path / "port"
    write_one_upstream_port(root, up, pin)
    write_layer(root, "npu", "up", _series(n, "FIRST = 1"))
    template = tmp_path / "template"
    assert patchkit(root, "apply", "m", "--workspace", str(template)).code == 0
    repo = template / "m/up"
    mine = commit(repo, {"mine.py": "MINE = 1\n"}, "the user's own commit")
    for name, data in USER_FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    git(repo, "add", "src/staged_new.py")
    write_layer(root, "npu", "up", _series(n, "FIRST = 2"))  # patch 1 changed: all N are re-applied
    clean = tmp_path / "clean"
    assert patchkit(root, "apply", "m", "--workspace", str(clean)).code == 0
    return Bench(root, template, git(clean / "m/up", "rev-parse", "HEAD"), mine, n)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _kill(proc: subprocess.Popen[bytes], sig: int, target: str) -> None:
    if target == "alone":
        os.kill(proc.pid, sig)
        return
    groups = [proc.pid] + (_children(proc.pid) if target == "all" else [])
    for group in groups:
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            pass


def _trigger(ws: Path, proc: subprocess.Popen[bytes], point: int | float) -> bool:
    """Wait for the kill point: git am at patch POINT (int), or POINT seconds after start (float)."""
    if isinstance(point, float):
        time.sleep(point)
        return proc.poll() is None
    next_file = ws / "m/up/.git/rebase-apply/next"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if int(next_file.read_text() or 0) >= point:
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.002)
    return False


def _recoverable(repo: Path, mine: str) -> list[str]:
    """What of the user's is in no backup and not in the work tree: empty when nothing is lost."""
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/patchkit-backup").split()
    lost = [] if any(git_ok(repo, "merge-base", "--is-ancestor", mine, r) for r in refs) else [f"commit {mine}"]
    for name, data in USER_FILES.items():
        places = [f"{r}{suffix}:{name}" for r in refs for suffix in ("", "^2", "^3")]
        kept = any(_blob(repo, place) == data for place in places)
        if not kept and not ((repo / name).is_file() and (repo / name).read_bytes() == data):
            lost.append(name)
    return lost


def git_ok(repo: Path, *args: str) -> bool:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True).returncode == 0


def _blob(repo: Path, spec: str) -> bytes | None:
    proc = subprocess.run(["git", "cat-file", "blob", spec], cwd=repo, capture_output=True)
    return proc.stdout if proc.returncode == 0 else None


def _state(root: Path, ws: Path) -> str:
    run = patchkit(root, "status", "m", "--workspace", str(ws), "--json")
    return json.loads(run.out)["models"][0]["repos"][0]["state"]


def run_case(bench: Bench, ws: Path, point: int | float, sig: int, target: str) -> str:
    """One kill and its recovery; returns a line for the summary, asserts everything on the way."""
    shutil.copytree(bench.template, ws, symlinks=True)
    proc = patchkit_process(bench.root, "apply", "m", "--force", "--workspace", str(ws), start_new_session=True)
    hit = _trigger(ws, proc, point)
    if hit:
        _kill(proc, sig, target)
    proc.communicate(timeout=120)
    after = _state(bench.root, ws)
    if hit and isinstance(point, int) and proc.returncode != 0:
        assert after == "interrupted", (point, sig, target, after)
    repair = patchkit(bench.root, "apply", "m", "--workspace", str(ws))
    how = "apply"
    if repair.code == 1 and "refusing to rebuild" in repair.err:  # killed before it changed anything
        repair, how = patchkit(bench.root, "apply", "m", "--force", "--workspace", str(ws)), "apply --force"
    assert repair.code == 0, repair.text
    assert "does not apply" not in repair.text
    repo = ws / "m/up"
    assert git(repo, "rev-parse", "HEAD") == bench.clean_head
    assert _state(bench.root, ws) == "clean"
    assert not (repo / ".git/rebase-apply").exists()
    lost = _recoverable(repo, bench.mine)
    assert not lost, f"lost {lost} (point {point}, {signal.Signals(sig).name} to {target})"
    where = f"am@{point}" if isinstance(point, int) else f"t+{point:.2f}s"
    return (f"{where:>9} {signal.Signals(sig).name:<7} {target:<5} killed-apply-exit={proc.returncode:<4} "
            f"status={after:<11} recovered-by={how}")


CASES_FAST = [(5, signal.SIGKILL, "all"), (12, signal.SIGINT, "group"), (18, signal.SIGKILL, "alone")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find git children")
def test_kills_in_a_long_series_lose_nothing(tmp_path: Path) -> None:
    bench = _bench(tmp_path, 24)
    for i, (point, sig, target) in enumerate(CASES_FAST):
        run_case(bench, tmp_path / f"ws{i}", point, sig, target)


@pytest.mark.skipif(not FAULTS, reason="opt-in: PATCHKIT_FAULTS=N runs N kill points on a 200-patch series")
def test_many_kills_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    bench = _bench(tmp_path, 200)
    lines, failed = [], []
    for i in range(FAULTS):
        point: int | float = rng.randint(1, 200) if rng.random() < 0.8 else round(rng.uniform(0.0, 1.5), 2)
        sig = rng.choice([signal.SIGKILL, signal.SIGINT])
        target = rng.choice(["alone", "group", "all"])
        try:
            lines.append(run_case(bench, tmp_path / f"ws{i}", point, sig, target))
            shutil.rmtree(tmp_path / f"ws{i}")
        except AssertionError as exc:  # keep going: the summary names every failing case (its folder is kept)
            failed.append(f"case {i}: point {point}, {signal.Signals(sig).name} to {target}: {exc}")
            lines.append(f"FAILED {failed[-1]}")
        print(f"[{i + 1}/{FAULTS}] {lines[-1]}", flush=True)
    report = os.environ.get("PATCHKIT_FAULTS_REPORT")
    if report:
        Path(report).write_text("\n".join(lines) + "\n")
    assert not failed, "\n".join(failed)
