"""Opt-in: patchkit apply on a real upstream snapshot (skipped unless mirrors are provided).

Set PATCHKIT_REAL_MIRRORS to a folder holding bare mirrors laid out as `<owner>+<name>/repo`
(or `<owner>/<name>.git`). The test writes its own patch against the real tree at run time;
nothing of the upstream is stored in this repository.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.gitfixtures import PatchMaker, patchkit, write_layer, write_one_upstream_port

# read at import: the hermetic fixture clears PATCHKIT_* variables for each test
MIRRORS = os.environ.get("PATCHKIT_REAL_MIRRORS")
CASES = [
    # owner, name, pin, a file the generated patch edits (SurroundOcc's is CRLF upstream)
    ("weiyithu", "SurroundOcc", "05263c6a8fe464a7f9d28358ff7196ba58dc0de6",
     "projects/mmdet3d_plugin/surroundocc/__init__.py"),
    ("HorizonRobotics", "Sparse4D", "c41df4bbf7bc82490f11ff55173abfcb3fb91425", "projects/mmdet3d_plugin/__init__.py"),
]


def _mirror(owner: str, name: str, pin: str) -> Path:
    root = MIRRORS
    if not root:
        pytest.skip("set PATCHKIT_REAL_MIRRORS to a folder of upstream mirrors")
    for candidate in (Path(root) / f"{owner}+{name}" / "repo", Path(root) / owner / f"{name}.git"):
        if candidate.is_dir():
            missing = subprocess.run(["git", "rev-list", "--objects", "--missing=print", pin], cwd=candidate,
                                     capture_output=True, text=True).stdout.count("\n?")
            if missing:
                pytest.skip(f"the mirror of {owner}/{name} lacks {missing} objects at {pin[:12]}: it cannot be checked out")
            return candidate
    pytest.skip(f"no mirror of {owner}/{name} under {root}")


@pytest.mark.parametrize(("owner", "name", "pin", "target"), CASES, ids=[c[1] for c in CASES])
def test_apply_at_the_real_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: str, name: str, pin: str,
                               target: str) -> None:
    mirror = _mirror(owner, name, pin)
    maker = PatchMaker(mirror, pin, tmp_path / "scratch")
    data = (maker.repo / target).read_bytes()
    eol = b"\r\n" if b"\r\n" in data else b"\n"
    patch = maker.patch(f"{name}: mark the NPU port", {target: data + b"# NPU port" + eol})
    port = tmp_path / "port"
    model = name.lower()
    write_layer(port, model, model, {"0001-mark.patch": patch})
    url = f"https://github.com/{owner}/{name}.git"
    write_one_upstream_port(port, url, pin, name=model, model=model, layers=model)
    monkeypatch.setenv("PATCHKIT_URL_REWRITE", f"{url}={mirror}")
    run = patchkit(port, "apply", model)
    assert run.code == 0, run.text
    assert (port / "work" / model / model / target).read_bytes() == data + b"# NPU port" + eol
    assert patchkit(port, "apply", model).out.startswith(f"{model}: up to date")
