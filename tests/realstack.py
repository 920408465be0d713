"""What the opt-in tests that run programs in the installed stack share (test_real_npu_wiring.py,
test_real_kernel_routes.py): the opt-in switch, the start of every program (overlays on, torchvision usable
on a CPU torch), and applying a model then running one program in its repo with its overlay sets active."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from patchkit import manifest
from tests.gitfixtures import patchkit

ROOT = Path(__file__).resolve().parent.parent
MIRRORS = os.environ.get("PATCHKIT_REAL_MIRRORS")  # read at import: the hermetic fixture clears PATCHKIT_*
VENV = os.environ.get("PATCHKIT_STACK_VENV")

MARKS = [pytest.mark.skipif(not (MIRRORS and VENV),
                            reason="set PATCHKIT_REAL_MIRRORS and PATCHKIT_STACK_VENV (the installed mmcv stack)"),
         pytest.mark.xdist_group("real-stack")]

PRELUDE = r'''
import json
from patchkit.overlay.runtime import activate_from_env
activate_from_env()
from patchkit.train.bootstrap import torchvision_compat
torchvision_compat()
import torch
'''


def run_program(workspace: Path, model: str, repo: str, program: str, tag: str, timeout: int) -> dict[str, dict]:
    """Apply MODEL, run PRELUDE + PROGRAM in its REPO with the stack venv's Python and the model's overlay
    sets active; {check: report} from the program's `TAG {json}` lines."""
    run = patchkit(ROOT, "apply", model, "--workspace", str(workspace))
    assert run.code == 0, run.text
    sets = manifest.load(ROOT / "upstreams.yaml").model(model).overlays
    env = {**os.environ, "PATCHKIT_OVERLAYS": os.pathsep.join(str(ROOT / "overlays" / s) for s in sets),
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(VENV or "") / "bin" / "python"), "-c", PRELUDE + program],
                          cwd=workspace / model / repo, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    reports = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith(tag + " ")]
    return {r["check"]: r for r in reports}
