"""Upstreams whose mirrors lack the blobs of files no port needs (demo media): `exclude`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from patchkit import cache
from patchkit.manifest import load
from tests.gitfixtures import PatchMaker, git, make_upstream, patchkit, write_layer


def test_excluded_files_need_no_blobs(tmp_path: Path) -> None:
    up = tmp_path / "up"
    pin = make_upstream(up, {"code.py": "A = 1\n", "media/demo.gif": b"GIF89a" + bytes(range(256)) * 4})
    patch = PatchMaker(up, pin, tmp_path / "scratch").patch("npu", {"code.py": "A = 2\n"})
    port = tmp_path / "port"
    write_layer(port, "npu", "up", {"0001-npu.patch": patch})
    (port / "upstreams.yaml").write_text(
        f"upstreams:\n  up:\n    url: {up}\n    pin: {pin}\n    track: main\n    exclude: [media/]\n"
        "models:\n  m:\n    upstreams:\n      up: [npu]\n")
    assert patchkit(port, "fetch").code == 0
    # the mirror lacks the media blob, as the snapshots of SurroundOcc and TPVFormer do
    mirror = cache.mirror_path(load(port / "upstreams.yaml").upstreams["up"])
    blob = git(up, "rev-parse", f"{pin}:media/demo.gif")
    (mirror / "objects" / blob[:2] / blob[2:]).unlink()
    assert subprocess.run(["git", "cat-file", "-e", blob], cwd=mirror).returncode != 0
    run = patchkit(port, "apply", "m")
    assert run.code == 0, run.text
    repo = port / "work/m/up"
    assert (repo / "code.py").read_text() == "A = 2\n"
    assert not (repo / "media").exists()
    assert git(repo, "status", "--porcelain") == ""
    assert "clean" in patchkit(port, "status", "m").out
    assert patchkit(port, "rebase", "--check", "--no-fetch").code == 0
