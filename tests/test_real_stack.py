"""Opt-in: the real stack at its real pins (skipped unless local mirrors are provided).

PATCHKIT_REAL_MIRRORS names a folder of bare mirrors laid out as `<owner>+<name>/repo` (what the
search tool's fetch gives). mmdet and mmsegmentation are PyPI releases: they come from PyPI (or
PATCHKIT_PYPI_URL). PATCHKIT_STACK_VENV, when also set, names a virtual environment holding torch
2.13.0, setuptools<81, wheel, ninja and numpy<2: then the install test builds and imports the
stack (the first time about 20 minutes: the mmcv-full ops build; later from the wheel cache).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from tests.gitfixtures import patchkit
from tests.htmltree import Tree

ROOT = Path(__file__).resolve().parent.parent
MIRRORS = os.environ.get("PATCHKIT_REAL_MIRRORS")  # read at import: the hermetic fixture clears PATCHKIT_*
VENV = os.environ.get("PATCHKIT_STACK_VENV")
MODELS = ["surroundocc", "fbocc", "bevdepth", "tpvformer", "sparse4d"]
# files that do not compile even with the model layers applied (fb-bev's occupancy_cbgs.py syntax error is fixed
# by the fbocc layer, so this is empty: every repo of every model compiles)
KNOWN_BAD: dict[str, list[str]] = {}

pytestmark = [pytest.mark.skipif(not MIRRORS, reason="set PATCHKIT_REAL_MIRRORS to a folder of upstream mirrors"),
              pytest.mark.xdist_group("real-stack")]  # one venv: never two pip installs into it at once


@pytest.mark.parametrize("model", MODELS)
def test_model_applies_at_its_pins_and_compiles(real: Path, model: str) -> None:
    run = patchkit(ROOT, "apply", model, "--workspace", str(real))
    assert run.code == 0, run.text
    status = patchkit(ROOT, "status", model, "--workspace", str(real))
    assert "not-applied" not in status.out and "edited" not in status.out, status.out
    for repo in sorted((real / model).iterdir()):
        if repo.name.startswith("."):
            continue
        skip = "|".join(KNOWN_BAD.get(repo.name, [])) or "^$"
        proc = subprocess.run(["python", "-m", "compileall", "-q", "-x", skip, str(repo)], capture_output=True,
                              text=True)
        assert proc.returncode == 0, f"{model}/{repo.name} does not compile:\n{proc.stdout[-2000:]}"


def test_rebase_check_of_everything_holds(real: Path) -> None:
    run = patchkit(ROOT, "rebase", "--check", "--no-fetch", "--workspace", str(real))
    assert run.code in (0, 1), run.text  # 1 is a real finding about upstream, not a failure of the tool
    assert "Traceback" not in run.text
    # the report of that check: a row per shipped model, each cell the check's outcomes for that pair
    page = real.parent / "port.html"
    assert patchkit(ROOT, "report", "--workspace", str(real), "--html", str(page), "--runs", str(real)).code == 0
    doc = json.loads((real / ".patchkit/checks/latest.json").read_text())
    cells = {(td.attrs["data-model"], td.attrs["data-column"]): td for td in Tree(page.read_text()).root.all("td")
             if "data-outcome" in td.attrs}
    assert {m for m, _ in cells} == set(MODELS)
    for series in doc["series"]:
        td = cells[(series["model"], series["upstream"])]
        assert sorted((tr.attrs["data-patch"], tr.attrs["data-outcome"]) for tr in td.all("tr") if tr.has_class("patch")) \
            == sorted((p["patch"], p["outcome"]) for p in series["patches"])


@pytest.mark.skipif(not VENV, reason="set PATCHKIT_STACK_VENV to a venv with torch 2.13.0 and the build tools")
def test_install_and_import_an_mmdet3d_model(real: Path) -> None:
    assert patchkit(ROOT, "apply", "surroundocc", "--workspace", str(real)).code == 0
    run = patchkit(ROOT, "install", "surroundocc", "--workspace", str(real), "--venv", str(VENV))
    assert run.code == 0, run.text
    # as a training worker imports it: after the bootstrap's torchvision compatibility step (PyPI's
    # torchvision for torch 2.13 is a CUDA build; on a CPU torch it needs the op schemas first)
    code = ("from patchkit.train.bootstrap import torchvision_compat; torchvision_compat(); "
            "import mmcv.ops, mmdet.models, mmdet3d.models; print('ok')")
    proc = subprocess.run([_venv_python(), "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def _venv_python() -> str:
    python = str(Path(VENV or "") / "bin" / "python")
    if subprocess.run([python, "-c", "import patchkit"], capture_output=True).returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True)
    return python


@pytest.mark.skipif(not VENV, reason="set PATCHKIT_STACK_VENV to a venv with torch 2.13.0 and the build tools")
@pytest.mark.parametrize("model", MODELS)
def test_smoke_trains_the_real_model_on_cpu(real: Path, tmp_path: Path, model: str) -> None:
    """The issue's check: `patchkit train MODEL --smoke --device cpu --cards 2` with the installed,
    patched stack: two gloo processes, finite losses, a parsed step time."""
    assert patchkit(ROOT, "apply", model, "--workspace", str(real)).code == 0
    run = patchkit(ROOT, "install", model, "--workspace", str(real), "--venv", str(VENV))
    assert run.code == 0, run.text
    work = tmp_path / "smoke"
    proc = subprocess.run([_venv_python(), "-m", "patchkit", "train", model, "--smoke", "--device", "cpu",
                           "--cards", "2", "--workspace", str(real), "--work-dir", str(work)],
                          capture_output=True, text=True, env={**os.environ, "PATCHKIT_MANIFEST": str(ROOT / "upstreams.yaml")})
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted(work.glob("rank*.log")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    results = json.loads((work / "results.json").read_text())
    assert results["smoke"] and results["cards"] == 2 and results["backend"] == "gloo"
    assert results["steps_seen"] >= 2 and results["mean_step_ms"] > 0
    assert math.isfinite(results["metrics"]["loss"])
    rank0 = (work / "rank0.log").read_text(errors="replace")
    assert "losses finite" in rank0 and "patchkit-bootstrap: rank=0" in rank0
