from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchkit import git as pkgit
from tests.conftest import Port
from tests.gitfixtures import commit, git, patchkit, write_layer


def subjects_since(repo: Path, base: str) -> list[str]:
    return git(repo, "log", "--reverse", "--format=%s", f"{base}..HEAD").splitlines()


def test_apply_two_upstreams_two_layers(port: Port) -> None:
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    lib, app = port.repo("demo", "lib"), port.repo("demo", "app")
    assert subjects_since(lib, port.lib_pin) == ["lib: use the NPU device", "lib: f3 returns 33", "lib: demo tweak"]
    assert subjects_since(app, port.app_pin) == ["app: say hello on npu", "app: add config"]
    assert git(lib, "rev-parse", "--abbrev-ref", "HEAD") == "patchkit/demo"
    # author, date and message come from the patch
    authors = git(lib, "log", "--reverse", "--format=%an <%ae>", f"{port.lib_pin}..HEAD").splitlines()
    assert authors == ["Port Er <porter@example.org>", "Second Porter <second@example.org>", "Port Er <porter@example.org>"]
    assert git(lib, "log", "-1", "--format=%ad", "--date=raw", "HEAD~2") == "1700000000 +0000"
    assert "Upstream-Status: Inappropriate [NPU only]" in git(lib, "log", "-1", "--format=%B", "HEAD~2")
    assert (lib / "lib/demo.py").read_text() == "DEMO = True\n"
    assert "return 33" in (lib / "lib/core.py").read_text()
    assert (app / "app/config.py").read_text() == "CARDS = 8\n"
    assert git(lib, "status", "--porcelain") == ""
    state = json.loads((port.root / "work/demo/.patchkit/state.json").read_text())
    entry = state["repos"]["lib"]
    assert entry["status"] == "applied" and entry["pin"] == port.lib_pin
    assert [p["id"] for p in entry["patches"]] == ["shared/0001-lib-use-the-NPU-device.patch",
                                                  "shared/0002-lib-f3-returns-33.patch",
                                                  "demo/0001-lib-demo-tweak.patch"]
    assert entry["patches"][-1]["commit"] == entry["head"] == git(lib, "rev-parse", "HEAD")
    assert all(len(p["sha256"]) == 64 for p in entry["patches"])


def test_commits_are_reproducible(port: Port, tmp_path: Path) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    assert patchkit(port.root, "apply", "demo", "--workspace", str(tmp_path / "ws2")).code == 0
    assert git(port.repo("demo", "lib"), "rev-parse", "HEAD") == git(tmp_path / "ws2/demo/lib", "rev-parse", "HEAD")


def test_second_apply_is_a_noop(port: Port, monkeypatch: pytest.MonkeyPatch) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    head = git(port.repo("demo", "lib"), "rev-parse", "HEAD")
    calls: list[tuple[str, ...]] = []
    real = pkgit.run

    def spy(args, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(tuple(args))
        return real(args, *a, **kw)

    monkeypatch.setattr(pkgit, "run", spy)
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert "up to date, nothing to do" in run.out
    assert {c[0] for c in calls} <= {"status", "rev-parse"}, calls  # looks, never writes
    assert git(port.repo("demo", "lib"), "rev-parse", "HEAD") == head
