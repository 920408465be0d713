"""Which Python the training workers run with: --venv, else the venv `patchkit install` recorded for
the model (workspace state), else this interpreter when it has torch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from patchkit import state
from patchkit.errors import BadInput
from patchkit.paths import display


def venv_python(venv: str | Path) -> str:
    python = Path(venv) / "bin" / "python"
    if not python.exists():
        raise BadInput(f"--venv {venv}: no bin/python there (is it a virtual environment?)")
    return str(python.absolute())


def resolve(model: str, model_dir: Path, venv: str | None, *, plan_only: bool) -> tuple[str | None, list[str]]:
    """(the workers' Python or None for this one, notes). What cannot run is an error, or for a dry run
    (PLAN_ONLY) a note. A workspace never applied says nothing here: planning says that first."""
    if venv:
        return venv_python(venv), []
    recorded = state.load_all(model_dir)
    if recorded.env is not None:
        python = Path(recorded.env.venv) / "bin" / "python"
        if python.exists():
            return str(python), [f"workers run with {display(Path(recorded.env.venv))} (recorded by `patchkit install "
                                 f"{model}`: torch {recorded.env.torch}, {recorded.env.device})"]
        problem = f"the venv `patchkit install {model}` recorded, {recorded.env.venv}, is gone"
    elif importlib.util.find_spec("torch") is not None or not recorded.repos:
        return None, []
    else:
        problem = f"no torch in this Python ({sys.executable}) and no venv recorded for {model}"
    fix = f"run `patchkit install {model} --venv DIR` first (train then uses DIR), or pass --venv DIR"
    if plan_only:
        return None, [f"{problem}: {fix}"]
    raise BadInput(problem, details=[fix])
