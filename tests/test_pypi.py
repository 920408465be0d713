"""PyPI releases as upstreams, served from a local JSON index (file://): no network."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.gitfixtures import git, patchkit, write_layer


def sdist(folder: Path, name: str, version: str, files: dict[str, str]) -> tuple[Path, str]:
    path = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{rel}")
            info.size, info.mtime, info.mode = len(data), 1600000000, 0o644
            tf.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A JSON API like PyPI's with releases 1.0 and 1.1 of `toy` (and 2.0, outside the track)."""
    dist = tmp_path / "dist"
    dist.mkdir()
    api = tmp_path / "api"
    shas, releases = {}, {}
    for version, value in (("1.0", "1"), ("1.1", "11"), ("2.0", "2")):
        path, sha = sdist(dist, "toy", version, {"toy/__init__.py": f"VALUE = {value}\n\n\ndef f():\n    return VALUE\n",
                                                 "setup.py": "from setuptools import setup\nsetup(name='toy')\n"})
        entry = {"filename": path.name, "url": path.as_uri(), "digests": {"sha256": sha}, "packagetype": "sdist"}
        releases[version] = [entry]
        shas[version] = sha
    (api / "toy").mkdir(parents=True)
    (api / "toy" / "json").write_text(json.dumps({"releases": releases}))
    monkeypatch.setenv("PATCHKIT_PYPI_URL", api.as_uri())
    return shas


def port_for(tmp_path: Path, sha: str, pin: str = "") -> Path:
    port = tmp_path / "port"
    port.mkdir(exist_ok=True)
    pin_line = f"    pin: {pin}\n" if pin else ""
    (port / "upstreams.yaml").write_text(
        f"upstreams:\n  toy:\n    pypi: toy==1.0\n    sha256: {sha}\n{pin_line}    track: '>=1.0,<2'\n"
        "models:\n  m:\n    upstreams:\n      toy: [npu]\n")
    return port


def test_pin_is_computed_written_and_deterministic(tmp_path: Path, index: dict[str, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    port = port_for(tmp_path, index["1.0"])
    write_layer(port, "npu", "toy", {})
    assert "has no pin yet: run `patchkit pin toy`" in patchkit(port, "apply", "m").err
    run = patchkit(port, "pin", "toy")
    assert run.code == 0, run.text
    pin = json.loads(patchkit(port, "list", "--json").out)["upstreams"][0]["pin"]
    assert f"toy: pin {pin} written" in run.out
    assert f"    sha256: {index['1.0']}\n    pin: {pin}\n    track: '>=1.0,<2'\n" in (port / "upstreams.yaml").read_text()
    monkeypatch.setenv("PATCHKIT_CACHE", str(tmp_path / "other-cache"))  # a fresh machine
    assert patchkit(port, "pin", "toy", "--check").code == 0


def test_patched_applied_and_checked_like_git(tmp_path: Path, index: dict[str, str]) -> None:
    port = port_for(tmp_path, index["1.0"])
    write_layer(port, "npu", "toy", {})
    assert patchkit(port, "pin", "toy").code == 0
    assert patchkit(port, "apply", "m").code == 0
    repo = port / "work/m/toy"
    assert (repo / "toy/__init__.py").read_text().startswith("VALUE = 1\n")
    # make a patch on the release, as a porter would, and add it to the series
    (repo / "toy/__init__.py").write_text("VALUE = 1\nDEVICE = 'npu'\n\n\ndef f():\n    return VALUE\n")
    git(repo, "commit", "-q", "-am", "toy: npu device\n\nUpstream-Status: Inappropriate [NPU]")
    assert patchkit(port, "export", "m").code == 0
    assert (port / "patches/npu/toy/series").read_text().strip().endswith("0001-toy-npu-device.patch")
    run = patchkit(port, "rebase", "--check", "--json")
    assert run.code == 1, run.text  # 1.1 changed the line the patch needs
    data = json.loads(run.out)
    assert data["upstreams"]["toy"]["ref"] == "patchkit-track"
    assert [p["outcome"] for p in data["series"][0]["patches"]] == ["conflict"]
    run = patchkit(port, "rebase", "--check", "--onto", "toy=1.0", "--json")
    assert run.code == 0 and json.loads(run.out)["summary"]["clean"] == 1


def test_wrong_sha256(tmp_path: Path, index: dict[str, str]) -> None:
    port = port_for(tmp_path, "0" * 64)
    write_layer(port, "npu", "toy", {})
    run = patchkit(port, "pin", "toy")
    assert run.code == 2 and f"no file of toy==1.0 has sha256 {'0' * 64}" in run.err


def test_wrong_pin(tmp_path: Path, index: dict[str, str]) -> None:
    port = port_for(tmp_path, index["1.0"], pin="a" * 40)
    write_layer(port, "npu", "toy", {})
    run = patchkit(port, "apply", "m")
    assert run.code == 2 and "imports as" in run.err and "run `patchkit pin toy`" in run.err
