"""`patchkit install`: dependency order, the wheel cache, a failing step named with its log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.gitfixtures import commit, make_upstream, patchkit, write_layer

SETUP = """\
from pathlib import Path
from setuptools import setup
marker = Path({marker!r})
marker.write_text(marker.read_text() + "{name}\\n" if marker.exists() else "{name}\\n")
setup(name="{name}", version="1.0", py_modules=["{name}"])
"""


@pytest.fixture(autouse=True)
def _no_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: a pip that would reach for PyPI (a build-isolation env, say) fails the test instead."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")


def wheel(folder: Path, name: str, version: str, source: str) -> Path:
    """A pure-Python wheel written by hand (a zip with its dist-info): pip installs it without a build."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": source, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: patchkit-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One virtual environment for the module, seeing the machine's pip and setuptools (no network)."""
    path = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    return path


def stack(tmp_path: Path, marker: Path, *, broken: bool = False) -> Path:
    pins = {}
    for name in ("pkgbase", "pkgtop"):
        body = "raise SystemExit('cannot build pkgtop here')\n" if broken and name == "pkgtop" else \
            SETUP.format(marker=str(marker), name=name)
        pins[name] = make_upstream(tmp_path / name, {"setup.py": body, f"{name}.py": f"NAME = {name!r}\n"})
    port = tmp_path / "port"
    for name in pins:
        write_layer(port, "npu", name, {})
    recipe = "    install:\n      pip_args: [--no-build-isolation]\n      constraints: ['setuptools']\n"
    (port / "upstreams.yaml").write_text(
        "upstreams:\n"
        f"  pkgtop:\n    url: {tmp_path / 'pkgtop'}\n    pin: {pins['pkgtop']}\n    track: main\n"
        f"{recipe}      after: [pkgbase]\n"
        f"  pkgbase:\n    url: {tmp_path / 'pkgbase'}\n    pin: {pins['pkgbase']}\n    track: main\n{recipe}"
        "models:\n  m:\n    upstreams:\n      pkgtop: [npu]\n      pkgbase: [npu]\n")
    assert patchkit(port, "apply", "m").code == 0
    return port


@pytest.mark.processes
def test_order_and_cache(tmp_path: Path, venv: Path) -> None:
    marker = tmp_path / "builds.txt"
    port = stack(tmp_path, marker)
    run = patchkit(port, "install", "m", "--venv", str(venv), "--json")
    assert run.code == 0, run.text
    import json

    steps = json.loads(run.out)["steps"]
    assert [(s["upstream"], s["action"]) for s in steps] == [("pkgbase", "built"), ("pkgtop", "built")]
    assert marker.read_text().count("pkgtop") >= 1
    # builds run in an export of the commit: nothing of them lands in the workspace
    assert patchkit(port, "status", "m").out.count("clean") == 2
    assert not list((port / "work/m/pkgbase").glob("*.egg-info")) and not (port / "work/m/pkgbase/build").exists()
    builds = marker.read_text()
    run = patchkit(port, "install", "m", "--venv", str(venv), "--json")
    assert [s["action"] for s in json.loads(run.out)["steps"]] == ["cached", "cached"]
    assert marker.read_text() == builds  # no setup.py ran: the wheels came from the cache
    out = subprocess.run([str(venv / "bin/python"), "-c", "import pkgtop, pkgbase; print(pkgtop.NAME)"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "pkgtop"
    # a new upstream commit is a new key: that one is built again, the other stays cached
    new = commit(tmp_path / "pkgbase", {"pkgbase.py": "NAME = 'pkgbase 2'\n"}, "moves")
    text = (port / "upstreams.yaml").read_text()
    old = text.split("pkgbase:\n    url: ")[1].split("pin: ")[1].split("\n")[0]
    (port / "upstreams.yaml").write_text(text.replace(old, new))
    assert patchkit(port, "apply", "m").code == 0
    steps = json.loads(patchkit(port, "install", "m", "--venv", str(venv), "--json").out)["steps"]
    assert [s["action"] for s in steps] == ["built", "cached"]


@pytest.mark.processes
def test_failing_step_is_named(tmp_path: Path, venv: Path) -> None:
    port = stack(tmp_path, tmp_path / "builds.txt", broken=True)
    run = patchkit(port, "install", "m", "--venv", str(venv))
    assert run.code == 1
    assert "install step 'pkgtop' failed" in run.err and "cannot build pkgtop here" in run.err
    assert "[1/2] pkgbase: built" in run.err


def test_cycle(tmp_path: Path) -> None:
    port = stack(tmp_path, tmp_path / "builds.txt")
    text = (port / "upstreams.yaml").read_text()
    (port / "upstreams.yaml").write_text(text.rstrip("\n").replace(
        "constraints: ['setuptools']\nmodels:", "constraints: ['setuptools']\n      after: [pkgtop]\nmodels:") + "\n")
    run = patchkit(port, "install", "m")
    assert run.code == 2 and "has a cycle" in run.err


@pytest.mark.processes
def test_requires_brings_runtime_dependencies(tmp_path: Path, venv: Path) -> None:
    """A repo run from the workspace (`build: none`) gets only its run-time requirements; a wheel's
    requirements come after the wheel, which goes in --no-deps."""
    dep = wheel(tmp_path, "runtimedep", "2.0", "VERSION = 2\n")
    pin = make_upstream(tmp_path / "model", {"train.py": "import runtimedep\n"})
    port = tmp_path / "port"
    write_layer(port, "npu", "model", {})
    (port / "upstreams.yaml").write_text(
        "upstreams:\n"
        f"  model:\n    url: {tmp_path / 'model'}\n    pin: {pin}\n    track: main\n"
        f"    install:\n      build: none\n      requires: ['{dep}']\n      constraints: ['setuptools']\n"
        "models:\n  m:\n    upstreams:\n      model: [npu]\n")
    assert patchkit(port, "apply", "m").code == 0
    run = patchkit(port, "install", "m", "--venv", str(venv), "--json")
    assert run.code == 0, run.text
    import json

    assert [(s["upstream"], s["action"]) for s in json.loads(run.out)["steps"]] == [("model", "installed")]
    out = subprocess.run([str(venv / "bin/python"), "-c", "import runtimedep; print(runtimedep.VERSION)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "2", out.stderr
    (port / "upstreams.yaml").write_text((port / "upstreams.yaml").read_text().replace("build: none", "build: nothing"))
    bad = patchkit(port, "install", "m", "--venv", str(venv))
    assert bad.code == 2 and "upstreams.yaml:7: upstream 'model': install: build must be one of wheel, editable, command, none" \
        in bad.err, bad.err


def test_run_time_requirements_are_not_part_of_the_wheel_key() -> None:
    from patchkit.install import cache_key

    recipe: dict[str, object] = {"build": "wheel", "env": {"MMCV_WITH_OPS": "1"}, "pip_args": ["--no-build-isolation"]}
    key = cache_key("mmcv", "abc", recipe, {"torch": "2.13.0"}, "cpu")
    assert cache_key("mmcv", "abc", {**recipe, "requires": ["addict"]}, {"torch": "2.13.0"}, "cpu") == key
    assert cache_key("mmcv", "abc", {**recipe, "env": {"MMCV_WITH_OPS": "0"}}, {"torch": "2.13.0"}, "cpu") != key
