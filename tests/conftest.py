from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.gitfixtures import PatchMaker, make_upstream, write_layer

# Opt-in tests over the real upstreams (tests/test_real_*.py). Read at import: `hermetic` clears PATCHKIT_*.
REAL_MIRRORS = os.environ.get("PATCHKIT_REAL_MIRRORS")  # bare mirrors laid out as <owner>+<name>/repo
REAL_CACHE = os.environ.get("PATCHKIT_REAL_CACHE")  # reuse mirrors and wheels across runs when set
ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that start real processes first: spread over the workers early, they do not leave
    one core finishing a 10 s launch while the other idles (same order on every xdist worker)."""
    items.sort(key=lambda item: item.get_closest_marker("processes") is None)


def _hermetic(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user config, no real cache, fixed dates under ROOT: every test sees the same git."""
    home = root / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test User\n\temail = test@example.org\n"
        "[init]\n\tdefaultBranch = main\n[protocol \"file\"]\n\tallow = always\n"
        "[advice]\n\tdetachedHead = false\n"
    )
    for key in list(os.environ):
        if key.startswith(("PATCHKIT_", "GIT_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_AUTHOR_DATE", "1700000000 +0000")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "1700000000 +0000")
    monkeypatch.setenv("PATCHKIT_CACHE", str(root / "cache"))
    # no verification records from test runs: the opt-in tests use this repository as the port, and its
    # verified/ must only hold real runs (tests of recording itself take the `recording` fixture)
    monkeypatch.setenv("PATCHKIT_NO_RECORD", "1")


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs append verification records again (the hermetic fixture turns them off)."""
    monkeypatch.delenv("PATCHKIT_NO_RECORD")


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hermetic(tmp_path, monkeypatch)


MANIFEST = """\
upstreams:
  lib:
    url: {lib_url}
    pin: {lib_pin}
    track: main
  app:
    url: {app_url}
    pin: {app_pin}
    track: main
models:
  demo:
    description: two upstreams, two layers
    upstreams:
      lib: [shared, demo]
      app: [demo]
  other:
    upstreams:
      lib: [shared]
"""


@dataclass
class Port:
    """A port repository (manifest + patches) over two synthetic upstreams."""

    root: Path
    lib: Path
    app: Path
    lib_pin: str
    app_pin: str
    lib_patches: PatchMaker
    app_patches: PatchMaker

    @property
    def manifest(self) -> Path:
        return self.root / "upstreams.yaml"

    def write_manifest(self, **overrides: str) -> None:
        values = {"lib_url": str(self.lib), "app_url": str(self.app), "lib_pin": self.lib_pin,
                  "app_pin": self.app_pin, **overrides}
        self.manifest.write_text(MANIFEST.format(**values))

    def repo(self, model: str, upstream: str) -> Path:
        return self.root / "work" / model / upstream


_PORT_PARTS = ("upstreams", "port", "scratch-lib", "scratch-app")


def _build_port(tmp_path: Path) -> Port:
    ups = tmp_path / "upstreams"
    lib_pin = make_upstream(ups / "lib", {
        "lib/core.py": "".join(f"def f{i}():\n    return {i}\n\n" for i in range(12)),
        "lib/util.py": "VALUE = 1\n",
        "README": "lib\n",
    })
    app_pin = make_upstream(ups / "app", {"app/main.py": "import lib\n\nprint('hi')\n", "setup.py": "NAME = 'app'\n"})
    root = tmp_path / "port"
    root.mkdir()
    lib_patches = PatchMaker(ups / "lib", lib_pin, tmp_path / "scratch-lib")
    app_patches = PatchMaker(ups / "app", app_pin, tmp_path / "scratch-app")
    p = Port(root, ups / "lib", ups / "app", lib_pin, app_pin, lib_patches, app_patches)
    shared1 = lib_patches.patch("lib: use the NPU device", {"lib/util.py": "VALUE = 1\nDEVICE = 'npu'\n"},
                                body="Why: the port runs on Ascend.\n\nUpstream-Status: Inappropriate [NPU only]")
    shared2 = lib_patches.patch("lib: f3 returns 33", {"lib/core.py": (ups / "lib/lib/core.py").read_text()
                                                       .replace("return 3\n", "return 33\n")},
                                author="Second Porter <second@example.org>")
    demo1 = lib_patches.patch("lib: demo tweak", {"lib/demo.py": "DEMO = True\n"})
    app1 = app_patches.patch("app: say hello on npu", {"app/main.py": "import lib\n\nprint('hi npu')\n"})
    app2 = app_patches.patch("app: add config", {"app/config.py": "CARDS = 8\n"})
    write_layer(root, "shared", "lib", {"0001-lib-use-the-NPU-device.patch": shared1,
                                        "0002-lib-f3-returns-33.patch": shared2})
    write_layer(root, "demo", "lib", {"0001-lib-demo-tweak.patch": demo1})
    write_layer(root, "demo", "app", {"0001-app-say-hello.patch": app1, "0002-app-add-config.patch": app2})
    p.write_manifest()
    return p


@pytest.fixture(scope="session")
def port_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The two upstreams, their patch stacks and the port, built once per test process (about 25 git
    calls) under the same hermetic git as every test; `port` copies it. Returns (folder, lib pin, app pin)."""
    base = tmp_path_factory.mktemp("port-template")
    with pytest.MonkeyPatch.context() as mp:
        _hermetic(base, mp)
        built = _build_port(base)
    return base, built.lib_pin, built.app_pin


@pytest.fixture
def port(tmp_path: Path, port_template: tuple[Path, str, str]) -> Port:
    template, lib_pin, app_pin = port_template
    for part in _PORT_PARTS:
        shutil.copytree(template / part, tmp_path / part, symlinks=True)
    ups = tmp_path / "upstreams"
    p = Port(tmp_path / "port", ups / "lib", ups / "app", lib_pin, app_pin,
             PatchMaker.resume(tmp_path / "scratch-lib"), PatchMaker.resume(tmp_path / "scratch-app"))
    p.write_manifest()  # the upstream URLs are this test's copies
    return p


@pytest.fixture
def real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace (returned) over the real upstream mirrors, with this repository's upstreams.yaml."""
    monkeypatch.setenv("PATCHKIT_MIRROR_TEMPLATE", f"{REAL_MIRRORS}/{{owner}}+{{name}}/repo")
    monkeypatch.setenv("PATCHKIT_MANIFEST", str(ROOT / "upstreams.yaml"))
    if REAL_CACHE:
        monkeypatch.setenv("PATCHKIT_CACHE", REAL_CACHE)
    return tmp_path / "work"
