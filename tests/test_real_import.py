"""Opt-in: the five seed models' DrivingSDK folders imported into empty port repositories.

Set PATCHKIT_DRIVINGSDK to a DrivingSDK checkout (the folder holding model_examples/) and
PATCHKIT_REAL_MIRRORS to the upstream mirrors (`<owner>+<name>/repo`), as for the other real tests.
mmdet and pytorch-lightning come from PyPI: the index must be reachable, or PATCHKIT_REAL_CACHE a
cache that already holds their releases. Each model must apply at its pins (TPVFormer at its inferred
pin), `rebase --check` must run on it, and a second import must change nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import REAL_CACHE, REAL_MIRRORS
from tests.gitfixtures import patchkit

DRIVINGSDK = os.environ.get("PATCHKIT_DRIVINGSDK")
SEEDS = {"SurroundOcc": "surroundocc", "FBOCC": "fbocc", "BEVDepth": "bevdepth", "TPVFormer": "tpvformer",
         "Sparse4D": "sparse4d"}


@pytest.mark.parametrize("folder", sorted(SEEDS))
def test_a_seed_model_imports_applies_and_checks(folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (DRIVINGSDK and REAL_MIRRORS):
        pytest.skip("set PATCHKIT_DRIVINGSDK (a DrivingSDK checkout) and PATCHKIT_REAL_MIRRORS")
    monkeypatch.setenv("PATCHKIT_MIRROR_TEMPLATE", f"{REAL_MIRRORS}/{{owner}}+{{name}}/repo")
    if REAL_CACHE:
        monkeypatch.setenv("PATCHKIT_CACHE", REAL_CACHE)
    model = SEEDS[folder]
    root = tmp_path / "ports"
    root.mkdir()
    run = patchkit(root, "import", str(Path(DRIVINGSDK) / "model_examples" / folder), "--json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    assert report["patches"] and not any("does not apply" in f["reason"] for f in report["not_converted"])
    if model == "tpvformer":
        assert report["upstreams"]["tpvformer"]["how"] == "inferred"
        assert report["upstreams"]["tpvformer"]["pin"] == "4c607ce84d3f64fa091794e11f9780f451055bdd"
    applied = patchkit(root, "apply", model)
    assert applied.code == 0, applied.err
    check = patchkit(root, "rebase", "--check", model, "--json")
    assert check.code in (0, 1), check.err
    assert json.loads(check.out)["summary"]["patches"] == len(report["patches"])
    again = json.loads(patchkit(root, "import", str(Path(DRIVINGSDK) / "model_examples" / folder), "--json").out)
    assert again["changed"] == []
