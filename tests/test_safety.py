"""Patches that would write outside their repo are refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Port
from tests.gitfixtures import PatchMaker, git, make_upstream, patchkit, write_layer, write_one_upstream_port


def handmade(path_a: str, path_b: str, *, new: bool = True) -> bytes:
    header = "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n" \
             "From: Evil <evil@example.org>\nSubject: [PATCH] sneaky\n\n---\n"
    if new:
        body = f"diff --git a/{path_a} b/{path_b}\nnew file mode 100644\n--- /dev/null\n+++ b/{path_b}\n@@ -0,0 +1 @@\n+owned\n"
    else:
        body = f"diff --git a/{path_a} b/{path_b}\n--- a/{path_a}\n+++ b/{path_b}\n@@ -1 +1 @@\n-VALUE = 1\n+owned\n"
    return (header + body + "-- \n2.39.5\n").encode()


@pytest.mark.parametrize(("patch", "reason"), [
    (handmade("../../outside.txt", "../../outside.txt"), "'../../outside.txt' is a '..' path that leaves the repository"),
    (handmade("/tmp/abs.txt", "/tmp/abs.txt"), "'/tmp/abs.txt' is an absolute path"),
    (handmade(".git/hooks/post-checkout", ".git/hooks/post-checkout"), "is a path inside .git/"),
    (handmade("lib/.GIT/config", "lib/.GIT/config"), "is a path inside .git/"),
    (handmade("lib/util.py", "../escape.py", new=False), "'../escape.py' is a '..' path"),
])
def test_path_escape_refused_nothing_written(port: Port, patch: bytes, reason: str) -> None:
    write_layer(port.root, "demo", "app", {"0001-evil.patch": patch})
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 2, run.text
    assert "refusing patches that write outside their repository; nothing was written" in run.err
    assert "patches/demo/app/0001-evil.patch" in run.err and reason in run.err
    assert not (port.root / "work").exists()
    assert not (port.root / "outside.txt").exists()
    assert patchkit(port.root, "validate").code == 2


def test_refused_on_rebuild_leaves_workspace_untouched(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    app = port.repo("demo", "app")
    head = git(app, "rev-parse", "HEAD")
    write_layer(port.root, "demo", "app", {"0001-evil.patch": handmade("../x", "../x")})
    assert patchkit(port.root, "apply", "demo").code == 2
    assert git(app, "rev-parse", "HEAD") == head


def test_write_through_symlink_in_upstream_refused(tmp_path: Path) -> None:
    up = tmp_path / "up"
    pin = make_upstream(up, {"real/file.py": "A = 1\n"})
    (up / "linkdir").symlink_to("/tmp")
    git(up, "add", "linkdir")
    git(up, "commit", "-q", "-m", "add a symlink")
    pin = git(up, "rev-parse", "HEAD")
    port = tmp_path / "port"
    write_layer(port, "npu", "up", {"0001-through.patch": handmade("linkdir/evil.py", "linkdir/evil.py")})
    write_one_upstream_port(port, up, pin)
    run = patchkit(port, "apply", "m")
    assert run.code == 2, run.text
    assert "'linkdir/evil.py' goes through the symlink 'linkdir' of up" in run.err
    assert not (port / "work/m/up").exists()
    assert not Path("/tmp/evil.py").exists()


def test_write_through_symlink_made_by_earlier_patch_refused(tmp_path: Path) -> None:
    up = tmp_path / "up"
    pin = make_upstream(up, {"a.py": "A = 1\n"})
    maker = PatchMaker(up, pin, tmp_path / "scratch")
    (maker.repo / "escape").symlink_to("/etc")
    link_patch = maker.patch("add link", {})
    port = tmp_path / "port"
    write_layer(port, "npu", "up", {"0001-link.patch": link_patch,
                                    "0002-through.patch": handmade("escape/passwd", "escape/passwd")})
    write_one_upstream_port(port, up, pin)
    run = patchkit(port, "apply", "m")
    assert run.code == 2, run.text
    assert "'escape/passwd' goes through the symlink 'escape' that an earlier patch creates" in run.err
    assert not (port / "work/m/up").exists()


def test_patch_that_does_not_parse(port: Port) -> None:
    broken = handmade("app/new.py", "app/new.py").replace(b"@@ -0,0 +1 @@", b"@@ -0,0 +1,3 @@")
    write_layer(port.root, "demo", "app", {"0001-broken.patch": broken})
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 2
    assert "patches/demo/app/0001-broken.patch:10: does not parse as a diff" in run.err
    assert not (port.root / "work").exists()


def test_not_a_format_patch(port: Port) -> None:
    write_layer(port.root, "demo", "app", {"0001-plain.diff": b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
                                           "0002-two.patch": handmade("a", "a") + handmade("b", "b")})
    run = patchkit(port.root, "validate")
    assert run.code == 2
    assert "patches/demo/app/0001-plain.diff:1: not a git format-patch file: no 'From: Name <email>' header" in run.err
    assert "patches/demo/app/0002-two.patch: holds more than one patch" in run.err


def test_crlf_patch_file_paths_are_clean(port: Port) -> None:
    from patchkit import patchfile
    from patchkit.manifest import PatchRef

    data = handmade("app/new.py", "app/new.py").replace(b"\n", b"\r\n")
    path = port.root / "crlf.patch"
    path.write_bytes(data)
    parsed, problems = patchfile.parse(patchfile.read(PatchRef("l", "app", "crlf.patch", str(path), path, 1)))
    assert not problems and parsed is not None
    assert parsed.files[0].paths == ("app/new.py",)
