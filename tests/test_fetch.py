"""The mirror cache: parallel fetch with progress, URL redirection, unreachable upstreams."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from patchkit import cache
from patchkit.manifest import load
from tests.conftest import Port
from tests.gitfixtures import commit, git, patchkit


def test_fetch_all_reports_progress_and_track_moves(port: Port) -> None:
    run = patchkit(port.root, "fetch")
    assert run.code == 0, run.text
    assert "fetching 2 upstreams into" in run.err
    assert "lib: cloned in" in run.err and "app: cloned in" in run.err and "[2/2]" in run.err
    new = commit(port.lib, {"NEWS": "1\n"}, "move")
    run = patchkit(port.root, "fetch", "lib", "--json")
    assert run.code == 0, run.text
    data = json.loads(run.out)
    assert list(data) == ["lib"]
    assert data["lib"]["action"] == "fetched" and data["lib"]["track_after"] == new
    assert f"main moved {port.lib_pin[:12]} -> {new[:12]}" in run.err
    mirror = cache.mirror_path(load(port.manifest).upstreams["lib"])
    assert git(mirror, "rev-parse", "refs/heads/main") == new
    assert mirror.parent == Path(os.environ["PATCHKIT_CACHE"]) / "git"


def test_fetch_unknown_and_unreachable(port: Port) -> None:
    run = patchkit(port.root, "fetch", "nope")
    assert run.code == 2 and "unknown upstream 'nope'" in run.err
    port.write_manifest(app_url=str(port.root / "gone"))
    run = patchkit(port.root, "fetch")
    assert run.code == 3
    assert "cannot reach upstream 'app'" in run.err
    assert "lib: cloned" in run.err  # the reachable one is still fetched


def test_git_insteadof_redirects_to_a_local_mirror(port: Port) -> None:
    fake = "https://example.invalid/org/"
    mirrors = port.lib.parent
    port.write_manifest(lib_url=fake + "lib.git", app_url=fake + "app.git")
    (mirrors / "lib.git").symlink_to(port.lib)
    (mirrors / "app.git").symlink_to(port.app)
    assert patchkit(port.root, "apply", "demo").code == 3  # no redirect: unreachable
    git(port.root, "config", "--global", f"url.{mirrors}/.insteadOf", fake)
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    mirror = cache.mirror_path(load(port.manifest).upstreams["lib"])
    assert git(mirror, "config", "remote.origin.url") == fake + "lib.git"  # the declared URL is kept


def test_patchkit_url_rewrite_setting(port: Port, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fake = "https://example.invalid/org/"
    mirrors = port.lib.parent
    port.write_manifest(lib_url=fake + "lib", app_url=fake + "app")
    monkeypatch.setenv("PATCHKIT_URL_REWRITE", f"{fake}={mirrors}/")
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    monkeypatch.setenv("PATCHKIT_URL_REWRITE", "no-equals-sign")
    shutil.rmtree(Path(os.environ["PATCHKIT_CACHE"]))
    run = patchkit(port.root, "fetch")
    assert run.code == 2 and "PATCHKIT_URL_REWRITE: 'no-equals-sign' is not FROM=TO" in run.err


def test_pin_on_no_branch_is_fetched_by_sha(port: Port) -> None:
    side = commit(port.lib, {"SIDE": "x\n"}, "side work")
    git(port.lib, "reset", "-q", "--hard", port.lib_pin)  # no ref points at `side` any more
    git(port.lib, "config", "uploadpack.allowAnySHA1InWant", "true")
    port.write_manifest(lib_pin=side)
    run = patchkit(port.root, "apply", "other")
    assert run.code == 0, run.text
    assert (port.repo("other", "lib") / "SIDE").exists()


def test_validate_remote_checks_track(port: Port) -> None:
    text = port.manifest.read_text().replace("track: main", "track: release-9", 1)
    port.manifest.write_text(text)
    run = patchkit(port.root, "validate", "--remote")
    assert run.code == 2
    assert "upstreams.yaml:2: upstream 'lib': track 'release-9' is neither a branch nor a tag of" in run.err


def test_mirror_path_template(port: Port, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A site's local mirrors, found by a path template, without editing upstreams.yaml."""
    mirrors = port.lib.parent.parent / "site-mirrors"
    (mirrors / "example.invalid" / "org").mkdir(parents=True)
    shutil.copytree(port.lib, mirrors / "example.invalid/org/lib.git")
    shutil.copytree(port.app, mirrors / "example.invalid/org/app.git")
    port.write_manifest(lib_url="https://example.invalid/org/lib.git", app_url="https://example.invalid/org/app")
    monkeypatch.setenv("PATCHKIT_MIRROR_TEMPLATE", str(mirrors / "{host}/{owner}/{name}.git"))
    run = patchkit(port.root, "apply", "demo")
    assert run.code == 0, run.text
    assert patchkit(port.root, "fetch").code == 0
    monkeypatch.delenv("PATCHKIT_MIRROR_TEMPLATE")
    assert patchkit(port.root, "fetch").code == 3  # without it the URL really is unreachable
