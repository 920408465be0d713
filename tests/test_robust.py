"""Nothing lost, whatever is killed, interrupted or mistyped (issue 13, one test per finding)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Port
from tests.gitfixtures import (PatchMaker, commit, git, make_upstream, patchkit, patchkit_process, write_layer,
                               write_one_upstream_port)


def change_patch(port: Port) -> None:
    patch = port.root / "patches/shared/lib/0001-lib-use-the-NPU-device.patch"
    patch.write_bytes(patch.read_bytes().replace(b"DEVICE = 'npu'", b"DEVICE = 'npu:0'"))


def hook(repo_or_template: Path, name: str, body: str) -> None:
    hooks = repo_or_template / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / name).write_text("#!/bin/sh\n" + body)
    (hooks / name).chmod(0o755)


def use_template(tmp_path: Path) -> Path:
    """A git template (hooks of every repo patchkit clones from now on); returned for hook()."""
    template = tmp_path / "template"
    template.mkdir(exist_ok=True)
    config = Path(os.environ["GIT_CONFIG_GLOBAL"])
    config.write_text(config.read_text() + f"[init]\n\ttemplateDir = {template}\n")
    return template


def wait_for(path: Path, proc: object, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()  # type: ignore[attr-defined]
        time.sleep(0.02)


def states(port: Port, model: str = "demo") -> dict[str, str]:
    run = patchkit(port.root, "status", model, "--json")
    return {r["upstream"]: r["state"] for r in json.loads(run.out)["models"][0]["repos"]}


# -- 1. --force keeps staged, unstaged and untracked files and extra commits -------------------

def test_force_saves_staged_unstaged_untracked_and_commits(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    lib = port.repo("demo", "lib")
    mine = commit(lib, {"lib/mine.py": "MINE = 1\n"}, "my commit")
    (lib / "src").mkdir()
    (lib / "src/staged_new.py").write_bytes(b"staged = True\r\n")
    git(lib, "add", "src/staged_new.py")
    (lib / "lib/util.py").write_text("VALUE = 'edited'\n")
    (lib / "notes.txt").write_bytes(b"\x00untracked bytes\xff")
    change_patch(port)
    refused = patchkit(port.root, "apply", "demo")
    assert refused.code == 1 and "A src/staged_new.py" in refused.err

    run = patchkit(port.root, "apply", "demo", "--force")
    assert run.code == 0, run.text
    saved = [line for line in run.out.splitlines() if "kept on" in line]
    assert len(saved) == 1, run.out
    assert "1 commit beyond the applied head" in saved[0]
    assert "staged: src/staged_new.py" in saved[0] and "changed: lib/util.py" in saved[0]
    assert "untracked: notes.txt" in saved[0]
    ref = saved[0].split("kept on ")[1].split(" ")[0]
    assert git(lib, "show", f"{ref}:src/staged_new.py") == "staged = True"
    assert git(lib, "merge-base", "--is-ancestor", mine, ref) == ""
    # the repo is now exactly a clean apply
    assert git(lib, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (lib / "src/staged_new.py").exists() and not (lib / "notes.txt").exists()
    assert "DEVICE = 'npu:0'" in (lib / "lib/util.py").read_text()

    listed = patchkit(port.root, "backups", "demo", "--json")
    assert listed.code == 0, listed.text
    entries = json.loads(listed.out)["backups"]
    assert [e["ref"] for e in entries] == [ref]
    assert entries[0]["untracked"] == ["notes.txt"] and entries[0]["staged"] == ["src/staged_new.py"]

    restored = patchkit(port.root, "backups", "--restore", entries[0]["id"])
    assert restored.code == 0, restored.text
    assert (lib / "src/staged_new.py").read_bytes() == b"staged = True\r\n"
    assert (lib / "notes.txt").read_bytes() == b"\x00untracked bytes\xff"
    assert (lib / "lib/util.py").read_text() == "VALUE = 'edited'\n"
    assert (lib / "lib/mine.py").read_text() == "MINE = 1\n"
    assert "A  src/staged_new.py" in git(lib, "status", "--porcelain")  # staged again
    assert git(lib, "rev-parse", "HEAD") == mine


def test_force_with_nothing_to_save_says_nothing(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    change_patch(port)
    run = patchkit(port.root, "apply", "demo", "--force")
    assert run.code == 0, run.text
    assert "kept on" not in run.out
    assert git(port.repo("demo", "lib"), "for-each-ref", "refs/heads/patchkit-backup") == ""


def test_backups_clean_older_than(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    lib = port.repo("demo", "lib")
    (lib / "README").write_text("mine\n")
    git(lib, "update-ref", "refs/heads/patchkit-backup/demo/20000101T000000000000Z", "HEAD")
    change_patch(port)
    assert patchkit(port.root, "apply", "demo", "--force").code == 0
    assert len(json.loads(patchkit(port.root, "backups", "--json").out)["backups"]) == 2
    run = patchkit(port.root, "backups", "demo", "--clean", "--older-than", "30")
    assert run.code == 0, run.text
    assert "20000101T000000000000Z" in run.out
    left = json.loads(patchkit(port.root, "backups", "--json").out)["backups"]
    assert len(left) == 1 and "20000101" not in left[0]["id"]
    assert patchkit(port.root, "backups", "--clean").code == 2  # --older-than is required


# -- 2. an interrupted git am is recovered from any state on disk -------------------------------

@pytest.mark.parametrize("damage", ["empty-author-script", "garbage"])
def test_repair_from_a_damaged_git_am(port: Port, damage: str) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    clean = git(port.repo("demo", "lib"), "rev-parse", "HEAD")
    lib = port.repo("demo", "lib")
    # what a SIGKILL midway leaves: the state says building, git am is stopped halfway
    data = json.loads((port.root / "work/demo/.patchkit/state.json").read_text())
    data["repos"]["lib"]["status"] = "building"
    (port.root / "work/demo/.patchkit/state.json").write_text(json.dumps(data))
    git(lib, "reset", "-q", "--hard", port.lib_pin)
    patches = sorted((port.root / "patches/shared/lib").glob("*.patch"))
    git(lib, "am", "-q", str(patches[0]))  # one commit made ...
    ra = lib / ".git/rebase-apply"
    ra.mkdir()
    if damage == "empty-author-script":
        for name, text in (("next", "1\n"), ("last", "2\n"), ("author-script", ""), ("0001", "x\n"),
                           ("final-commit", ""), ("applying", ""), ("keepcr", "t\n")):
            (ra / name).write_text(text)
    else:  # so broken that git am --abort fails too
        for name, text in (("next", "1\n"), ("last", "2\n"), ("author-script", "GIT_AUTHOR_NAME=x\n\x00garbage\n")):
            (ra / name).write_text(text)
    assert states(port)["lib"] == "interrupted"
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert "does not apply" not in run.text and "kept on" not in run.out
    assert git(lib, "rev-parse", "HEAD") == clean
    assert not ra.exists() and git(lib, "status", "--porcelain") == ""
    assert states(port) == {"lib": "clean", "app": "clean"}
    if damage == "garbage":  # git am --abort could not read it: set aside, listed, never deleted
        assert "set aside" in run.out, run.out
        listed = json.loads(patchkit(port.root, "backups", "--json").out)["backups"]
        aside = [e for e in listed if e["kind"] == "git-operation"]
        assert len(aside) == 1 and (Path(aside[0]["path"]) / "rebase-apply/author-script").read_bytes() == b"GIT_AUTHOR_NAME=x\n\x00garbage\n"


def test_repair_keeps_and_clears_files_a_killed_git_am_wrote(port: Port) -> None:
    """Found by the fault-injection run: git am stopped mid-patch leaves that patch's new file untracked."""
    assert patchkit(port.root, "apply", "demo").code == 0
    lib = port.repo("demo", "lib")
    clean = git(lib, "rev-parse", "HEAD")
    data = json.loads((port.root / "work/demo/.patchkit/state.json").read_text())
    data["repos"]["lib"]["status"] = "building"
    (port.root / "work/demo/.patchkit/state.json").write_text(json.dumps(data))
    git(lib, "reset", "-q", "--hard", "HEAD~1")
    (lib / "lib/demo.py").write_text("DEMO = Tr")  # half written when git am was killed
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert git(lib, "rev-parse", "HEAD") == clean
    assert "untracked: lib/demo.py" in run.out
    ref = run.out.split("kept on ")[1].split(" ")[0]
    assert git(lib, "show", f"{ref}^3:lib/demo.py") == "DEMO = Tr"


# -- 3. Ctrl-C, SIGTERM, and a kill of patchkit alone -------------------------------------------

def slow_first_patch(tmp_path: Path, seconds: int) -> Path:
    """Every clone's post-applypatch hook: on the first patch, touch a marker and sleep."""
    marker = tmp_path / "am-started"
    hook(use_template(tmp_path), "post-applypatch",
         f"[ -e '{marker}' ] && exit 0\ntouch '{marker}'\nsleep {seconds}\n")
    return marker


@pytest.mark.parametrize(("sig", "group", "code"), [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)])
def test_interrupt_stops_git_promptly_and_blames_no_patch(port: Port, tmp_path: Path, sig: int, group: bool,
                                                          code: int) -> None:
    marker = slow_first_patch(tmp_path, 60)
    proc = patchkit_process(port.root, "apply", "demo", start_new_session=True)
    wait_for(marker, proc)
    start = time.monotonic()
    if group:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does
    else:
        os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 10, "the interrupt waited for git"
    text = (out + err).decode()
    assert proc.returncode == code, text
    assert "interrupted" in text and "does not apply" not in text and "FAILED" not in text
    assert "interrupted" in states(port).values()
    assert "failed" not in states(port).values()
    assert not (tmp_path / "am-started-2").exists()
    config = Path(os.environ["GIT_CONFIG_GLOBAL"])
    config.write_text(config.read_text().split("[init]\n\ttemplateDir")[0])
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert states(port) == {"lib": "clean", "app": "clean"}


def test_kill_of_patchkit_alone_does_not_race_its_git(port: Port, tmp_path: Path) -> None:
    clean_ws = tmp_path / "clean"
    assert patchkit(port.root, "apply", "demo", "--workspace", str(clean_ws)).code == 0
    marker = tmp_path / "am-started"
    hook(use_template(tmp_path), "post-applypatch",
         f"[ -e '{marker}' ] && exit 0\ntouch '{marker}'\nsleep 3\ntouch '{marker}-done'\n")
    proc = patchkit_process(port.root, "apply", "demo")
    wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)  # patchkit only: its git am goes on for a while
    proc.wait()
    assert "interrupted" in states(port).values()
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert "does not apply" not in run.text
    assert "waiting for the workspace lock held by git left running by a killed patchkit" in run.err, run.err
    assert marker.with_name("am-started-done").exists()  # it waited for the orphan instead of racing it
    for name in ("lib", "app"):
        assert git(port.repo("demo", name), "rev-parse", "HEAD") == git(clean_ws / "demo" / name, "rev-parse", "HEAD")
    assert states(port) == {"lib": "clean", "app": "clean"}



def test_stop_ends_a_batch_reader_too(tmp_path: Path) -> None:
    """A Ctrl-C while rebase --check holds a `git cat-file --batch-command` open stops that process
    with the others (stop_all knows it), and the reader then says interrupted, not a git failure."""
    from patchkit import git as gitmod
    from patchkit.errors import GitError, Interrupted

    up = tmp_path / "up"
    head = make_upstream(up, {"a.py": "A = 1\n"})
    reader = gitmod.Batch(up)
    try:
        assert reader.info("HEAD") == (head, "commit")
        proc = reader._proc
        assert proc is not None and proc.poll() is None
        gitmod.stop_all(signal.SIGINT)
        assert proc.wait(timeout=10) == -signal.SIGTERM
        with pytest.raises(Interrupted):
            reader.info("HEAD")
        with pytest.raises(Interrupted):
            gitmod.Batch(up).info("HEAD")  # none starts after the stop
    finally:
        gitmod.reset_stop()
        reader.close()
    assert proc not in gitmod._children
    with gitmod.Batch(up) as again:
        assert again.info("HEAD") == (head, "commit")
    (tmp_path / "not-a-repo").mkdir()
    with pytest.raises(GitError), gitmod.Batch(tmp_path / "not-a-repo") as broken:
        broken.info("HEAD")  # git itself failing stays a git failure


# -- 4. and 6. paths given on the command line ---------------------------------------------------

def test_workspace_that_is_a_file(port: Port) -> None:
    (port.root / "afile").write_text("x\n")
    for args in (("apply", "demo"), ("status", "demo"), ("backups",)):
        run = patchkit(port.root, *args, "--workspace", "afile")
        assert run.code == 2, (args, run.text)
        assert "--workspace afile: not a folder" in run.err and "internal error" not in run.err


def test_junit_path_problems(port: Port, tmp_path: Path) -> None:
    for bad, why in ((tmp_path / "no/such/dir/x.xml", "no such folder"), (port.root / "upstreams.yaml/x.xml", "not a folder")):
        run = patchkit(port.root, "rebase", "--check", "--no-fetch", "--junit", str(bad))
        assert run.code == 2, run.text
        assert why in run.err and "internal error" not in run.err
    assert not (tmp_path / "no").exists()


def test_unwritable_output_is_exit_1_not_70(port: Port, tmp_path: Path) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        if os.access(target, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        run = patchkit(port.root, "rebase", "--check", "--no-fetch", "--junit", str(target / "x.xml"))
        assert run.code in (1, 2) and "internal error" not in run.err and "ro" in run.err, run.text
    finally:
        target.chmod(0o700)


# -- 5. names that cannot be folder or branch names ----------------------------------------------

@pytest.mark.parametrize("name", ["m" * 300, "a..b", "x.lock"])
def test_validate_refuses_names_that_cannot_be_folders(port: Port, name: str) -> None:
    text = port.manifest.read_text().replace("  other:\n", f"  {name}:\n")
    port.manifest.write_text(text)
    lineno = text.splitlines().index(f"  {name}:") + 1
    run = patchkit(port.root, "validate")
    assert run.code == 2, run.text
    assert f"upstreams.yaml:{lineno}: model name" in run.err
    assert "Traceback" not in run.text
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 2 and "internal error" not in run.err


def test_long_layer_and_upstream_names_refused(port: Port) -> None:
    long = "l" * 101
    port.manifest.write_text(port.manifest.read_text().replace("lib: [shared]", f"lib: [{long}]"))
    run = patchkit(port.root, "validate")
    assert run.code == 2 and "upstreams.yaml:18: model 'other': layers of 'lib': layer name" in run.err, run.err
    assert "(at most 100: it becomes a folder and a branch name)" in run.err


# -- 8. messages and exit codes -------------------------------------------------------------------

def test_yaml_error_gives_both_marks(tmp_path: Path) -> None:
    (tmp_path / "upstreams.yaml").write_text(
        "upstreams:\n  a:\n    url: x\n    pin: 0123456789abcdef0123456789abcdef01234567\n    track: [main\n"
        "models: {}\n")
    run = patchkit(tmp_path, "validate")
    assert run.code == 2
    assert "upstreams.yaml:6: invalid YAML" in run.err and "line 5" in run.err, run.err


def test_bad_pin_has_no_follow_on_error(port: Port) -> None:
    port.write_manifest(lib_pin="main")
    run = patchkit(port.root, "validate")
    assert run.code == 2
    assert "pin 'main' is not a full 40-hex commit SHA" in run.err
    assert "unknown upstream" not in run.err, run.err


def test_plain_text_failure_shows_git_output(port: Port, tmp_path: Path) -> None:
    hook(use_template(tmp_path), "applypatch-msg", "echo 'hook says: message rejected' >&2\nexit 1\n")
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 1
    assert "hook says: message rejected" in run.out, run.out
    assert "(see git output)" not in run.out


def test_converted_line_endings_are_named(tmp_path: Path) -> None:
    up = tmp_path / "crlf"
    pin = make_upstream(up, {"win.py": b"a = 1\r\nb = 2\r\nc = 3\r\n"})
    patch = PatchMaker(up, pin, tmp_path / "scratch").patch("change b", {"win.py": b"a = 1\r\nb = 22\r\nc = 3\r\n"})
    port = tmp_path / "port"
    write_layer(port, "npu", "crlf", {"0001-change-b.patch": patch.replace(b"\r\n", b"\n")})
    write_one_upstream_port(port, up, pin, name="crlf")
    run = patchkit(port, "apply", "m")
    assert run.code == 1
    assert "line endings" in run.out and "CRLF" in run.out, run.out


def test_status_exit_codes(port: Port) -> None:
    run = patchkit(port.root, "status", "demo")
    assert run.code == 4, run.text  # not applied: `patchkit apply` brings it up to date
    assert patchkit(port.root, "apply", "demo").code == 0
    assert patchkit(port.root, "status", "demo").code == 0
    change_patch(port)
    assert patchkit(port.root, "status", "demo").code == 4  # stale
    assert patchkit(port.root, "apply", "demo").code == 0
    (port.repo("demo", "lib") / "README").write_text("mine\n")
    run = patchkit(port.root, "status", "demo", "--json")
    assert run.code == 1 and json.loads(run.out)["models"][0]["repos"][0]["state"] == "edited"


def test_git_is_found_on_path_once_per_path_and_the_first_one_is_run(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No PATH search per git call, but the git a PATH finds first (a wrapper, as the benches' counter) is the
    one run, a Batch's too; another PATH is looked up again."""
    import shutil

    from patchkit import git as gitmod

    real, which = shutil.which("git"), shutil.which
    assert real
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "calls"
    (shim / "git").write_text(f'#!/bin/sh\necho "$1" >> "{log}"\nexec {real} "$@"\n')
    (shim / "git").chmod(0o755)
    plain = os.environ["PATH"]
    looked: list[str | None] = []

    def counted(cmd: str, mode: int = os.F_OK | os.X_OK, path: str | None = None) -> str | None:
        looked.append(path)
        return which(cmd, mode, path)

    monkeypatch.setattr(shutil, "which", counted)
    monkeypatch.setattr(gitmod, "_FOUND", {})  # as a new process starts
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{plain}")
    repo = tmp_path / "repo"
    make_upstream(repo, {"a.txt": "a\n"})
    log.unlink()
    for _ in range(3):
        assert gitmod.run(["rev-parse", "HEAD"], repo).ok
    batch = gitmod.Batch(repo)
    assert batch.info("HEAD")
    batch.close()
    assert log.read_text().split() == ["rev-parse"] * 3 + ["cat-file"]
    assert looked == [f"{shim}{os.pathsep}{plain}"]
    assert gitmod.run(["rev-parse", "HEAD"], repo, env={"PATH": plain}).ok
    assert looked[1:] == [plain] and log.read_text().split()[-1] == "cat-file"  # the real git: not logged
