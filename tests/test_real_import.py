"""Opt-in: the five seed models' DrivingSDK folders imported into empty port repositories, and the
whole of model_examples into one (`import --all`: shared layers, variants, every added model applies).

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
    checked = [p for e in json.loads(check.out)["series"] if e.get("variant") is None for p in e["patches"]]
    assert len(checked) == len(report["patches"])
    again = json.loads(patchkit(root, "import", str(Path(DRIVINGSDK) / "model_examples" / folder), "--json").out)
    assert again["changed"] == []


def test_the_whole_fleet_imports_into_one_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (DRIVINGSDK and REAL_MIRRORS):
        pytest.skip("set PATCHKIT_DRIVINGSDK (a DrivingSDK checkout) and PATCHKIT_REAL_MIRRORS")
    monkeypatch.setenv("PATCHKIT_MIRROR_TEMPLATE", f"{REAL_MIRRORS}/{{owner}}+{{name}}/repo")
    monkeypatch.setenv("PATCHKIT_URL_REWRITE", f"https://github.com/={tmp_path}/not-mirrored/")
    if REAL_CACHE:
        monkeypatch.setenv("PATCHKIT_CACHE", REAL_CACHE)
    root = tmp_path / "fleet"
    root.mkdir()
    examples = str(Path(DRIVINGSDK) / "model_examples")
    run = patchkit(root, "import", "--all", examples, "--json")
    report = json.loads(run.out)
    assert run.code == 0 and report["totals"]["failed"] == 0, run.err
    assert report["totals"]["added"] >= 28  # every folder one of whose upstreams is mirrored here
    layers = {d["name"]: d for d in report["shared_layers"]}
    ddp = [d for d in layers.values() if d["upstream"] == "mmcv" and "mmcv/parallel/distributed.py" in d["files"]]
    assert ddp and max(len(d["models"]) for d in ddp) >= 10  # the DDP module_to_run fix
    assert {(v["model"], v["name"]) for v in report["variants"]} >= {("bevformer", "a5"), ("sparse4d", "a5")}
    assert patchkit(root, "validate").code == 0
    for model in ("surroundocc", "bevformer", "sparse4d", "tpvformer"):
        applied = patchkit(root, "apply", model)
        assert applied.code == 0, applied.err
    again = json.loads(patchkit(root, "import", "--all", examples, "--json").out)
    assert again["changed"] == []
