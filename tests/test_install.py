"""`patchkit install`: the toolchain first, dependency order, the wheel cache, a failing step named
with its log, torch held where the toolchain put it.

Offline: the venvs get their toolchain from a wheelhouse in tmp, never from an index: stand-in torch
and torchvision wheels written by hand, and `wheel` and `setuptools` repacked from this test process's
own environment (the `test` extra installs `wheel`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
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
    """No network and no machine pip configuration (find-links, constraints): a pip that would reach for
    an index (a build-isolation env, say) fails the test instead."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")


def _record(files: dict[str, bytes], info: str) -> bytes:
    import base64
    import hashlib

    lines = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
             f"{len(data)}" for path, data in files.items()]
    return ("\n".join([*lines, f"{info}/RECORD,,"]) + "\n").encode()


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


def wheel(folder: Path, name: str, version: str, source: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel written by hand (a zip with its dist-info): pip installs it without a build."""
    info = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}.py": source.encode(), f"{info}/METADATA": meta.encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: patchkit-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = _record(files, info)
    return _zip(folder / f"{name}-{version}-py3-none-any.whl", files)


def repack(folder: Path, name: str) -> None:
    """Wheels of distribution NAME and what it requires, as this test process has them installed (pure
    Python: their files under site-packages), so a test venv gets them offline."""
    from packaging.requirements import Requirement

    dist = metadata.distribution(name)
    if (folder / f"{dist.metadata['Name']}-{dist.version}-py3-none-any.whl").exists():
        return
    _repack(folder, dist)
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            repack(folder, req.name)


def _repack(folder: Path, dist: metadata.Distribution) -> Path:
    info = next(str(f.parent) for f in dist.files or [] if f.name == "METADATA")
    files = {str(f).replace(os.sep, "/"): Path(str(dist.locate_file(f))).read_bytes() for f in dist.files or []
             if not str(f).startswith("..") and "__pycache__" not in str(f) and f.suffix != ".pyc"
             and f.name not in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
             and Path(str(dist.locate_file(f))).is_file()}
    files[f"{info}/RECORD"] = _record(files, info)
    return _zip(folder / f"{dist.metadata['Name']}-{dist.version}-py3-none-any.whl", files)


STAND_IN = "__version__ = {version!r}  # a stand-in: patchkit's install tests never import it\n"


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toolchain's packages, offline: stand-in torch 2.13.0 and 2.14.0, torchvision 0.28.0 (for torch
    2.13.0), a requirement that wants torch 2.14; wheel and setuptools from this process."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    for version in ("2.13.0", "2.14.0"):
        wheel(folder, "torch", version, STAND_IN.format(version=version))
    wheel(folder, "torchvision", "0.28.0", STAND_IN.format(version="0.28.0"), requires=("torch==2.13.0",))
    wheel(folder, "newtorchlib", "1.0", "", requires=("torch>=2.14",))
    for name in ("wheel", "setuptools"):
        repack(folder, name)
    return folder


def toolchain(wheelhouse: Path) -> str:
    return ("toolchain:\n  cpu:\n    torch: '2.13.0'\n    torchvision: '0.28.0'\n    tools: [setuptools, wheel]\n"
            f"    pip_args: [--find-links, '{wheelhouse}']\n")


def venv_versions(venv: Path) -> dict[str, str | None]:
    from patchkit.toolchain import versions

    return versions(str(venv / "bin" / "python"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One virtual environment for the module, without torch: the first install puts the toolchain in."""
    path = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path


def stack(tmp_path: Path, marker: Path, wheelhouse: Path, *, broken: bool = False) -> Path:
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
        "models:\n  m:\n    upstreams:\n      pkgtop: [npu]\n      pkgbase: [npu]\n" + toolchain(wheelhouse))
    assert patchkit(port, "apply", "m").code == 0
    return port


@pytest.mark.processes
def test_order_and_cache(tmp_path: Path, venv: Path, wheelhouse: Path) -> None:
    marker = tmp_path / "builds.txt"
    port = stack(tmp_path, marker, wheelhouse)
    run = patchkit(port, "install", "m", "--venv", str(venv), "--json", "--device", "cpu")
    assert run.code == 0, run.text
    assert venv_versions(venv)["torch"] == "2.13.0" and venv_versions(venv)["torchvision"] == "0.28.0"
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
def test_failing_step_is_named(tmp_path: Path, venv: Path, wheelhouse: Path) -> None:
    port = stack(tmp_path, tmp_path / "builds.txt", wheelhouse, broken=True)
    run = patchkit(port, "install", "m", "--venv", str(venv), "--device", "cpu")
    assert run.code == 1
    assert "install step 'pkgtop' failed" in run.err and "cannot build pkgtop here" in run.err, run.err
    assert "[1/2] pkgbase: built" in run.err


def test_cycle(tmp_path: Path, wheelhouse: Path) -> None:
    port = stack(tmp_path, tmp_path / "builds.txt", wheelhouse)
    text = (port / "upstreams.yaml").read_text()
    (port / "upstreams.yaml").write_text(text.rstrip("\n").replace(
        "constraints: ['setuptools']\nmodels:", "constraints: ['setuptools']\n      after: [pkgtop]\nmodels:") + "\n")
    run = patchkit(port, "install", "m")
    assert run.code == 2 and "has a cycle" in run.err


@pytest.mark.processes
def test_requires_brings_runtime_dependencies(tmp_path: Path, venv: Path, wheelhouse: Path) -> None:
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
        "models:\n  m:\n    upstreams:\n      model: [npu]\n" + toolchain(wheelhouse))
    assert patchkit(port, "apply", "m").code == 0
    run = patchkit(port, "install", "m", "--venv", str(venv), "--json", "--device", "cpu")
    assert run.code == 0, run.text

    assert [(s["upstream"], s["action"]) for s in json.loads(run.out)["steps"]] == [("model", "installed")]
    out = subprocess.run([str(venv / "bin/python"), "-c", "import runtimedep; print(runtimedep.VERSION)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "2", out.stderr
    (port / "upstreams.yaml").write_text((port / "upstreams.yaml").read_text().replace("build: none", "build: nothing"))
    bad = patchkit(port, "install", "m", "--venv", str(venv), "--device", "cpu")
    assert bad.code == 2 and "upstreams.yaml:7: upstream 'model': install: build must be one of wheel, editable, command, none" \
        in bad.err, bad.err


@pytest.mark.processes
def test_a_variants_requires_go_in_last(tmp_path: Path, venv: Path, wheelhouse: Path) -> None:
    """`install` of a workspace built as a variant adds the variant's `requires`, held to the venv's torch."""
    dep = wheel(tmp_path, "a5runtime", "1.0", "CHIP = 'a5'\n")
    pin = make_upstream(tmp_path / "model", {"train.py": "print('train')\n"})
    port = tmp_path / "port"
    write_layer(port, "npu", "model", {})
    (port / "upstreams.yaml").write_text(
        f"version: 2\nupstreams:\n  model:\n    url: {tmp_path / 'model'}\n    pin: {pin}\n    track: main\n"
        "    install:\n      build: none\n"
        "models:\n  m:\n    upstreams:\n      model: [npu]\n"
        f"    variants:\n      a5:\n        requires: ['{dep}']\n" + toolchain(wheelhouse))
    assert patchkit(port, "apply", "m", "--variant", "a5").code == 0
    run = patchkit(port, "install", "m", "--venv", str(venv), "--json", "--device", "cpu", "--variant", "a5")
    assert run.code == 0, run.text
    assert [(s["upstream"], s["action"]) for s in json.loads(run.out)["steps"]] == [
        ("model", "nothing to build"), ("variant a5", "installed")]
    out = subprocess.run([str(venv / "bin/python"), "-c", "import a5runtime; print(a5runtime.CHIP)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "a5", out.stderr


def test_run_time_requirements_are_not_part_of_the_wheel_key() -> None:
    from patchkit.install import cache_key

    recipe: dict[str, object] = {"build": "wheel", "env": {"MMCV_WITH_OPS": "1"}, "pip_args": ["--no-build-isolation"]}
    key = cache_key("mmcv", "abc", recipe, {"torch": "2.13.0"}, "cpu")
    assert cache_key("mmcv", "abc", {**recipe, "requires": ["addict"]}, {"torch": "2.13.0"}, "cpu") == key
    assert cache_key("mmcv", "abc", {**recipe, "env": {"MMCV_WITH_OPS": "0"}}, {"torch": "2.13.0"}, "cpu") != key


@pytest.mark.processes
def test_torch_stays_where_the_toolchain_put_it(tmp_path: Path, wheelhouse: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A new venv gets the toolchain; a requirement that wants another torch is refused and named; a step
    that changes torch anyway is named; a venv holding another torch is refused, and kept with --force."""
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))  # where `requires` come from, as a site's pip config
    pin = make_upstream(tmp_path / "model", {"train.py": "import newtorchlib\n"})
    port = tmp_path / "port"
    write_layer(port, "npu", "model", {})
    write_layer(port, "npu", "changer", {})
    changer = f"python -m pip install -q --no-deps --find-links {wheelhouse} torch==2.14.0"
    (port / "upstreams.yaml").write_text(
        "upstreams:\n"
        f"  model:\n    url: {tmp_path / 'model'}\n    pin: {pin}\n    track: main\n"
        "    install:\n      build: none\n      requires: [newtorchlib]\n"
        f"  changer:\n    url: {tmp_path / 'model'}\n    pin: {pin}\n    track: main\n"
        f"    install:\n      build: command\n      command: {changer}\n"
        "models:\n  m:\n    upstreams:\n      model: [npu]\n  c:\n    upstreams:\n      changer: [npu]\n"
        + toolchain(wheelhouse))
    assert patchkit(port, "apply", "m").code == 0 and patchkit(port, "apply", "c").code == 0
    venv = tmp_path / "new" / "env"  # does not exist: created, the toolchain first
    run = patchkit(port, "install", "m", "--venv", str(venv), "--device", "cpu")
    assert run.code == 1, run.text
    assert "install step 'model' needs another torch than this venv's (torch==2.13.0, torchvision==0.28.0): " \
           "newtorchlib 1.0 asks for torch>=2.14" in run.err, run.err
    assert "installing the cpu toolchain" in run.err
    assert venv_versions(venv)["torch"] == "2.13.0"
    changed = patchkit(port, "install", "c", "--venv", str(venv), "--device", "cpu")
    assert changed.code == 1 and "install step 'changer' changed torch 2.13.0 -> 2.14.0" in changed.err, changed.err
    refused = patchkit(port, "install", "m", "--venv", str(venv), "--device", "cpu")
    assert refused.code == 2 and "holds torch 2.14.0 (declared 2.13.0)" in refused.err, refused.err
    text = (port / "upstreams.yaml").read_text()
    assert f"upstreams.yaml:{text.count(chr(10), 0, text.index('  cpu:')) + 1}" in refused.err  # the toolchain's line
    forced = patchkit(port, "install", "m", "--venv", str(venv), "--device", "cpu", "--force")
    assert forced.code == 0, forced.text
    assert venv_versions(venv)["torch"] == "2.14.0"  # --force builds against the venv's torch, never replaces it
    recorded = json.loads((port / "work/m/.patchkit/state.json").read_text())
    assert recorded["version"] == 2 and recorded["env"]["venv"] == str(venv.absolute())
    assert recorded["env"]["torch"] == "2.14.0" and recorded["env"]["device"] == "cpu"


def test_no_torch_and_no_toolchain_says_what_to_do(tmp_path: Path, wheelhouse: Path) -> None:
    port = stack(tmp_path, tmp_path / "builds.txt", wheelhouse)
    text = (port / "upstreams.yaml").read_text()
    (port / "upstreams.yaml").write_text(text[:text.index("toolchain:")])
    empty = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(empty)], check=True)
    run = patchkit(port, "install", "m", "--venv", str(empty), "--device", "cpu")
    assert run.code == 2 and "has no torch and upstreams.yaml declares no toolchain for cpu" in run.err, run.err


def test_toolchain_is_checked_with_lines(tmp_path: Path, wheelhouse: Path) -> None:
    port = stack(tmp_path, tmp_path / "builds.txt", wheelhouse)
    text = (port / "upstreams.yaml").read_text()
    bad = text.replace("torch: '2.13.0'", "torch: '>=2.13'") + "  tpu:\n    torch: '2.13.0'\n  npu:\n    tools: [wheel]\n"
    (port / "upstreams.yaml").write_text(bad)
    run = patchkit(port, "validate")
    start = bad.count("\n", 0, bad.index("toolchain:")) + 1
    assert run.code == 2
    assert f"upstreams.yaml:{start + 2}: toolchain: cpu: torch: '>=2.13' is not an exact version" in run.err, run.err
    assert f"upstreams.yaml:{start + 6}: toolchain: unknown key 'tpu'" in run.err
    assert f"upstreams.yaml:{start + 8}: toolchain: npu: missing required key 'torch'" in run.err


def test_auto_device_reads_the_drivers_without_torch(tmp_path: Path) -> None:
    from patchkit.train.device import machine_kind

    assert machine_kind(str(tmp_path))[0] == "cpu"
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text("NVRM version: 550\n")
    assert machine_kind(str(tmp_path)) == ("cuda", "/proc/driver/nvidia/version exists")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/davinci0").write_text("")
    assert machine_kind(str(tmp_path))[0] == "npu"
