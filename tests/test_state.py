"""The workspace state file: version 2 (env, variant) and reading version 1."""

from __future__ import annotations

import json
from pathlib import Path

from patchkit import state

V1 = {"version": 1, "model": "m", "repos": {"lib": {
    "status": "applied", "url": "/x/lib", "pin": "a" * 40, "branch": "patchkit/m", "head": "b" * 40,
    "patches": [{"id": "shared/0001.patch", "sha256": "c" * 64, "commit": "d" * 40}],
    "failed_patch": None, "updated": "2026-01-01T00:00:00+00:00"}}}


def test_version_1_reads_with_no_env_and_the_next_save_writes_2(tmp_path: Path) -> None:
    path = state.state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(V1))
    loaded = state.load_all(tmp_path)
    assert loaded.env is None and loaded.variant is None and loaded.repos["lib"].head == "b" * 40
    state.save(tmp_path, "m", loaded.repos)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["env"] is None and data["variant"] is None
    assert data["repos"] == V1["repos"]


def test_saving_repos_keeps_the_env_and_saving_the_env_keeps_the_repos(tmp_path: Path) -> None:
    path = state.state_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(V1))
    env = state.EnvState("/venvs/occ", "cpu", "3.11.7", "2.13.0+cpu", "0.28.0", None)
    state.save_env(tmp_path, "m", env)
    state.save(tmp_path, "m", state.load(tmp_path))
    again = state.load_all(tmp_path)
    assert again.env == env and list(again.repos) == ["lib"]
    assert json.loads(path.read_text())["env"]["torch"] == "2.13.0+cpu"
