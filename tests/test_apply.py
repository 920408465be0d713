from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchkit import git as pkgit
from tests.conftest import Port
from tests.gitfixtures import commit, git, patchkit, write_layer, write_one_upstream_port


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


def test_changed_patch_rebuilds_that_repo_only(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    lib, app = port.repo("demo", "lib"), port.repo("demo", "app")
    app_head = git(app, "rev-parse", "HEAD")
    first_commit = git(lib, "rev-parse", "HEAD~2")
    demo_patch = port.root / "patches/demo/lib/0001-lib-demo-tweak.patch"
    demo_patch.write_bytes(demo_patch.read_bytes().replace(b"+DEMO = True", b"+DEMO = False"))
    status = patchkit(port.root, "status", "demo")
    assert "stale" in status.out and "patch demo/0001-lib-demo-tweak.patch changed" in status.out
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert "rebuilt (patch demo/0001-lib-demo-tweak.patch changed): 3 patches, 2 reused" in run.out
    assert (lib / "lib/demo.py").read_text() == "DEMO = False\n"
    assert git(lib, "rev-parse", "HEAD~2") == first_commit  # the unchanged prefix was kept
    assert git(app, "rev-parse", "HEAD") == app_head
    assert "clean" in patchkit(port.root, "status", "demo").out


def test_changed_pin_rebuilds(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    new_pin = commit(port.app, {"NEWS": "moved on\n"}, "upstream moves")
    port.write_manifest(app_pin=new_pin)
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert f"pin changed {port.app_pin[:12]} -> {new_pin[:12]}" in run.out
    app = port.repo("demo", "app")
    assert git(app, "rev-parse", "HEAD~2") == new_pin
    assert (app / "NEWS").read_text() == "moved on\n"


def test_uncommitted_edits_are_refused_then_forced_with_backup(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    lib = port.repo("demo", "lib")
    (lib / "lib/util.py").write_text("VALUE = 'mine'\n")
    patch = port.root / "patches/shared/lib/0001-lib-use-the-NPU-device.patch"
    patch.write_bytes(patch.read_bytes().replace(b"DEVICE = 'npu'", b"DEVICE = 'npu:0'"))
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 1
    assert "refusing to rebuild: local edits would be overwritten" in run.err
    assert "uncommitted: M lib/util.py" in run.err
    assert (lib / "lib/util.py").read_text() == "VALUE = 'mine'\n"  # nothing touched
    assert "edited" in patchkit(port.root, "status", "demo").out

    run = patchkit(port.root, "apply", "demo", "--force")
    assert run.code == 0, run.text
    backups = [line.split("kept on ")[1].split(" ")[0] for line in run.out.splitlines() if "kept on " in line]
    assert len(backups) == 1 and backups[0].startswith("patchkit-backup/demo/")
    assert git(lib, "show", f"{backups[0]}:lib/util.py") == "VALUE = 'mine'"
    assert "DEVICE = 'npu:0'" in (lib / "lib/util.py").read_text()
    assert git(lib, "status", "--porcelain") == ""


def test_commits_beyond_head_are_refused_and_kept_on_force(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    app = port.repo("demo", "app")
    mine = commit(app, {"app/extra.py": "X = 1\n"}, "my local fix")
    port.write_manifest(app_pin=commit(port.app, {"NEWS": "x\n"}, "upstream moves"))
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 1
    assert "patchkit/demo has 1 commit beyond the applied head" in run.err
    assert "my local fix" in run.err
    run = patchkit(port.root, "apply", "demo", "--force")
    assert run.code == 0, run.text
    backup = next(line.split("kept on ")[1].split(" ")[0] for line in run.out.splitlines() if "kept on " in line)
    assert git(app, "rev-parse", backup) == mine
    assert not (app / "app/extra.py").exists()


def test_edits_in_an_unchanged_repo_are_left_alone(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    lib = port.repo("demo", "lib")
    (lib / "README").write_text("my notes\n")
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0
    assert "nothing to do" in run.out and "uncommitted: M README" in run.out
    assert (lib / "README").read_text() == "my notes\n"


def test_failing_patch_names_patch_file_and_hunk(port: Port) -> None:
    core = (port.lib / "lib/core.py").read_text()
    bad = port.lib_patches.patch("lib: change f1 and f9", {"lib/core.py": (port.lib_patches.repo / "lib/core.py")
                                                          .read_text().replace("return 1\n", "return 11\n")
                                                          .replace("return 9\n", "return 99\n")})
    # the pin differs from what the patch was made on: f9 was rewritten upstream
    new_pin = commit(port.lib, {"lib/core.py": core.replace("def f9():\n    return 9", "def f9():\n    return -9")},
                     "upstream rewrites f9")
    write_layer(port.root, "demo", "lib", {"0001-lib-demo-tweak.patch": (port.root / "patches/demo/lib/0001-lib-demo-tweak.patch").read_bytes(),
                                           "0002-lib-change-f1-and-f9.patch": bad})
    port.write_manifest(lib_pin=new_pin)
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 1, run.text
    assert "FAILED: demo/0002-lib-change-f1-and-f9.patch does not apply" in run.out
    assert "patches/demo/lib/0002-lib-change-f1-and-f9.patch: lib: change f1 and f9" in run.out
    assert "lib/core.py: hunk #2 @@ -26,7 +26,7 @@ def f8(): -- context does not match" in run.out, run.out
    assert "app  built" in run.out  # the other repo is still done and reported
    lib = port.repo("demo", "lib")
    assert not (lib / ".git/rebase-apply").exists()
    assert git(lib, "status", "--porcelain") == ""
    assert git(lib, "log", "-1", "--format=%s") == "lib: demo tweak"
    status = patchkit(port.root, "status", "demo", "--json")
    repos = {r["upstream"]: r for r in json.loads(status.out)["models"][0]["repos"]}
    assert repos["lib"]["state"] == "failed" and repos["app"]["state"] == "clean"
    as_json = json.loads(patchkit(port.root, "apply", "demo", "--json").out)
    failure = next(r for r in as_json["repos"] if r["upstream"] == "lib")["failure"]
    assert failure["patch"] == "demo/0002-lib-change-f1-and-f9.patch"
    assert failure["hunks"][0]["file"] == "lib/core.py"


def test_crlf_file_stays_crlf(tmp_path: Path) -> None:
    from tests.gitfixtures import PatchMaker, make_upstream

    up = tmp_path / "crlf"
    pin = make_upstream(up, {"win.py": b"a = 1\r\nb = 2\r\nc = 3\r\n", "unix.py": "x = 1\n"})
    maker = PatchMaker(up, pin, tmp_path / "scratch")
    patch = maker.patch("change b", {"win.py": b"a = 1\r\nb = 22\r\nc = 3\r\n"})
    assert b"+b = 22\r\n" in patch
    port = tmp_path / "port"
    write_layer(port, "npu", "crlf", {"0001-change-b.patch": patch})
    write_one_upstream_port(port, up, pin, name="crlf")
    run = patchkit(port, "apply", "m")
    assert run.code == 0, run.text
    assert (port / "work/m/crlf/win.py").read_bytes() == b"a = 1\r\nb = 22\r\nc = 3\r\n"


def test_offline_second_apply(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    port.lib.rename(port.lib.with_name("lib-gone"))
    port.app.rename(port.app.with_name("app-gone"))
    import shutil
    shutil.rmtree(port.root / "work")
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert "cloned mirror" not in run.err and "fetched" not in run.err
    assert (port.repo("demo", "lib") / "lib/demo.py").exists()
    # a model sharing the cached upstream is offline too
    assert patchkit(port.root, "apply", "other").code == 0


def test_unresolvable_pin(port: Port) -> None:
    port.write_manifest(lib_pin="0123456789abcdef0123456789abcdef01234567")
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 2
    assert "upstream 'lib': pin 0123456789abcdef0123456789abcdef01234567 is not in" in run.err
    assert "upstreams.yaml line 4" in run.err
    assert not port.repo("demo", "lib").exists()
    run = patchkit(port.root, "validate", "--remote")
    assert run.code == 2
    assert "upstreams.yaml:4: upstream 'lib': pin 0123456789abcdef0123456789abcdef01234567 is not in" in run.err
    assert patchkit(port.root, "validate").code == 0  # offline checks pass


def test_unknown_model(port: Port) -> None:
    run = patchkit(port.root, "apply", "nope")
    assert run.code == 2
    assert "unknown model 'nope'" in run.err and "demo, other" in run.err
    assert "Traceback" not in run.text


def test_unreachable_upstream(port: Port) -> None:
    port.write_manifest(lib_url=str(port.root / "does-not-exist"))
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 3
    assert "cannot reach upstream 'lib'" in run.err
    assert "Traceback" not in run.text


@pytest.mark.parametrize(("files", "patch", "path"), [
    ({"app/config.py": "CARDS = 8\n"}, "0002-app-add-config.patch", "app/config.py"),  # the last patch
    ({"app/main.py": "import lib\n\nprint('hi npu')\n"}, "0001-app-say-hello.patch", "app/main.py"),  # mid-series
])
def test_patch_already_upstream_is_named(port: Port, files: dict[str, str], patch: str, path: str) -> None:
    before = (port.root / "patches/demo/app" / patch).read_bytes()
    new_pin = commit(port.app, files, "upstream takes our change")
    port.write_manifest(app_pin=new_pin)
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 1, run.text
    assert f"FAILED: demo/{patch} does not apply" in run.out
    assert f"{path}: already there: the patch reverse-applies" in run.out
    assert before == (port.root / "patches/demo/app" / patch).read_bytes()
    app = port.repo("demo", "app")
    assert git(app, "status", "--porcelain") == "" and not (app / ".git/rebase-apply").exists()


def test_unrecorded_folder_is_refused_then_moved_aside(port: Port) -> None:
    mine = port.repo("demo", "lib")
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine\n")
    run = patchkit(port.root, "apply", "demo", "--json")
    assert run.code == 1
    assert "work/demo/lib exists but patchkit did not make it" in run.err
    assert json.loads(run.out)["ok"] is False
    run = patchkit(port.root, "apply", "demo", "--force")
    assert run.code == 0, run.text
    assert (mine.with_name("lib.patchkit-backup") / "notes.txt").read_text() == "mine\n"
    assert "kept on work/demo/lib.patchkit-backup" in run.out
    assert (mine / "lib/demo.py").exists()


def test_changed_pin_rebuilds_a_repo_without_patches(port: Port) -> None:
    """With no patches the prefix test alone would call a moved pin unchanged."""
    assert patchkit(port.root, "apply", "other").code == 0
    (port.root / "patches/shared/lib/series").write_text("# nothing yet\n")
    assert patchkit(port.root, "apply", "other").code == 0
    new_pin = commit(port.lib, {"NEWS": "moved\n"}, "upstream moves")
    port.write_manifest(lib_pin=new_pin)
    run = patchkit(port.root, "apply", "other")
    assert run.code == 0 and "pin changed" in run.out, run.text
    assert git(port.repo("other", "lib"), "rev-parse", "HEAD") == new_pin
