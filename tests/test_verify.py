"""Verification records (verified/<model>.jsonl): appended by apply, install and smoke/overfit runs
themselves, read back by `patchkit list`, which shows the newest per device and "never" elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchkit import __version__, verify
from tests.gitfixtures import make_upstream, patchkit, write_layer, write_one_upstream_port


@pytest.fixture
def port(tmp_path: Path, recording: None) -> Path:
    up = tmp_path / "up"
    pin = make_upstream(up, {"a.py": "x = 1\n"})
    port = tmp_path / "port"
    write_layer(port, "npu", "up", {})
    write_one_upstream_port(port, up, pin, name="up", model="m")
    return port


def test_apply_appends_a_record_and_list_shows_it(port: Path) -> None:
    before = json.loads(patchkit(port, "list", "--json").out)["models"][0]["verified"]
    assert before == {"npu": {}, "cuda": {}, "cpu": {}, "any": {}}
    assert patchkit(port, "apply", "m").code == 0
    assert patchkit(port, "apply", "m").code == 0  # a no-op apply ran nothing: no second record
    records = verify.load(port, "m")
    assert len(records) == 1
    rec = records[0]
    assert (rec.model, rec.check, rec.device, rec.ok, rec.patchkit) == ("m", "apply", "any", True, __version__)
    assert rec.workspace["repos"]["up"]["pin"] and len(rec.fingerprint) == 16 and rec.date.endswith("Z")
    listing = patchkit(port, "list")
    assert "verified on npu: never" in listing.out and "verified on cuda: never" in listing.out
    assert "verified on cpu: never" in listing.out
    assert f"applied: apply ok {rec.date} (patchkit {__version__}, workspace {rec.fingerprint}); apply ok" in listing.out


def test_no_record_switch_keeps_runs_from_appending(port: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATCHKIT_NO_RECORD=1 (what the test suite sets): a run that would record appends nothing and says so;
    "0" records as usual."""
    monkeypatch.setenv("PATCHKIT_NO_RECORD", "1")
    run = patchkit(port, "apply", "m")
    assert run.code == 0 and "m: apply on any not recorded (PATCHKIT_NO_RECORD is set)" in run.err, run.text
    assert not verify.path(port, "m").exists() and verify.load(port, "m") == []
    assert "verified on cpu: never" in patchkit(port, "list").out and "applied:" not in patchkit(port, "list").out
    monkeypatch.setenv("PATCHKIT_NO_RECORD", "0")
    assert patchkit(port, "apply", "m", "--workspace", str(port / "ws2")).code == 0  # not a no-op: it records
    assert [r.check for r in verify.load(port, "m")] == ["apply"]


def test_the_newest_record_per_device_wins_and_bad_lines_name_file_and_line(port: Path) -> None:
    ws = {"model": "m", "repos": {}}
    verify.append(port, verify.make("m", "smoke", "cpu", True, ws, {"steps": 3}))
    verify.append(port, verify.make("m", "overfit", "cpu", False, ws))
    verify.append(port, verify.make("m", "overfit", "cpu", True, ws, {"ratio": 0.3}))
    verify.append(port, verify.make("m", "compile", "npu", True, {"model": "m", "repos": {"x": 1}}))
    newest = verify.newest(verify.load(port, "m"))
    assert newest["cpu"]["overfit"].ok and newest["cpu"]["overfit"].detail == {"ratio": 0.3}
    assert set(newest["cpu"]) == {"smoke", "overfit"} and set(newest["npu"]) == {"compile"} and newest["cuda"] == {}
    assert newest["npu"]["compile"].fingerprint != newest["cpu"]["smoke"].fingerprint
    line = verify.summary(newest["cpu"])
    assert line.startswith("overfit ok ") and line.endswith("; smoke ok, overfit ok")
    assert verify.summary({}) == "never"
    # one line per record, appended: the file stays valid JSON lines
    lines = verify.path(port, "m").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x)["model"] == "m" for x in lines)
    with verify.path(port, "m").open("a") as fh:
        fh.write("{not json\n")
    run = patchkit(port, "list")
    assert run.code == 2 and "verified/m.jsonl:5: not a verification record" in run.err
