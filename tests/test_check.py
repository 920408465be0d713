"""`patchkit rebase --check` on synthetic upstream histories that produce every outcome."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from patchkit import scratch
from tests.gitfixtures import PatchMaker, commit, edit, git, make_upstream, numbered, patchkit, write_layer, write_one_upstream_port


@dataclass
class History:
    port: Path
    up: Path
    pin: str
    moved: str


SERIES = ["0001-clean.patch", "0002-offset.patch", "0003-merged.patch", "0004-fuzz.patch",
          "0005-conflict.patch", "0006-needs-conflict.patch", "0007-upstreamed.patch", "0008-renamed.patch",
          "0009-removed.patch", "0010-after.patch"]


@pytest.fixture
def history(tmp_path: Path) -> History:
    files = {f"{n}.py": numbered(n) for n in ("clean", "offset", "merged", "fuzz", "conflict", "up", "ren", "rm")}
    up = tmp_path / "up"
    pin = make_upstream(up, files)
    mk = PatchMaker(up, pin, tmp_path / "scratch")
    cur = dict(files)

    def change(subject: str, name: str, old: str, new: str) -> bytes:
        cur[name] = edit(cur[name], old, new)
        return mk.patch(subject, {name: cur[name]})

    patches = [
        change("clean", "clean.py", "clean line 10\n", "clean line 10 npu\n"),
        change("offset", "offset.py", "offset line 20\n", "offset line 20 npu\n"),
        change("merged", "merged.py", "merged line 15\n", "merged line 15 npu\n"),
        change("fuzz", "fuzz.py", "fuzz line 15\n", "fuzz line 15 npu\n"),
        change("conflict", "conflict.py", "conflict line 10\n", "conflict line 10 npu\nconflict npu helper\n"),
        change("needs conflict", "conflict.py", "conflict npu helper\n", "conflict npu helper v2\n"),
        change("upstreamed", "up.py", "up line 5\n", "up line 5 fixed\n"),
        change("renamed", "ren.py", "ren line 5\n", "ren line 5 npu\n"),
        change("removed", "rm.py", "rm line 5\n", "rm line 5 npu\n"),
        change("after", "clean.py", "clean line 25\n", "clean line 25 npu\n"),
    ]
    # the fuzz patch loses its blob ids, so no three-way merge can help it
    patches[3] = re.sub(rb"(?m)^index [0-9a-f]+\.\.[0-9a-f]+( \d+)?\n", b"", patches[3])
    port = tmp_path / "port"
    write_layer(port, "npu", "up", dict(zip(SERIES, patches)))
    write_one_upstream_port(port, up, pin)
    # upstream moves on
    text = {n: numbered(n.removesuffix(".py")) for n in files}
    commit(up, {"offset.py": "# header\n" * 4 + text["offset.py"]}, "offset: add a header")
    commit(up, {"merged.py": edit(text["merged.py"], "merged line 13\n", "merged line 13 upstream\n")}, "merged: tweak 13")
    commit(up, {"fuzz.py": edit(text["fuzz.py"], "fuzz line 12\n", "fuzz line 12 upstream\n")}, "fuzz: tweak 12")
    commit(up, {"conflict.py": edit(text["conflict.py"], "conflict line 10\n", "conflict line 10 upstream\n")},
           "conflict: upstream rewrites line 10")
    commit(up, {"up.py": edit(text["up.py"], "up line 5\n", "up line 5 fixed\n")}, "up: the same fix")
    git(up, "mv", "ren.py", "renamed.py")
    commit(up, {}, "ren: rename", remove=("rm.py",))
    moved = git(up, "rev-parse", "HEAD")
    return History(port, up, pin, moved)


def outcomes(run_out: str) -> dict[str, dict[str, object]]:
    data = json.loads(run_out)
    return {p["name"]: p for s in data["series"] for p in s["patches"]}


def test_every_outcome(history: History) -> None:
    run = patchkit(history.port, "rebase", "--check", "--json")
    assert run.code == 1, run.text
    got = outcomes(run.out)
    assert {n: p["outcome"] for n, p in got.items()} == {
        "0001-clean.patch": "clean", "0002-offset.patch": "offset", "0003-merged.patch": "merged",
        "0004-fuzz.patch": "fuzz", "0005-conflict.patch": "conflict", "0006-needs-conflict.patch": "blocked",
        "0007-upstreamed.patch": "upstreamed", "0008-renamed.patch": "target-missing",
        "0009-removed.patch": "target-missing", "0010-after.patch": "clean",
    }
    assert got["0002-offset.patch"]["offset"] == 4 and not got["0002-offset.patch"]["broken"]
    assert got["0002-offset.patch"]["range_diff"] == ["offset.py: hunk #1 @@ -17,7 +17,7 @@ offset line 16 moved +4 lines"]
    assert got["0003-merged.patch"]["broken"] is False
    assert got["0004-fuzz.patch"]["fuzz"] == 1 and got["0004-fuzz.patch"]["broken"] is True
    conflict = got["0005-conflict.patch"]
    assert conflict["files"][0]["path"] == "conflict.py"
    assert conflict["files"][0]["hunks"] == ["hunk #1 @@ -7,7 +7,8 @@ conflict line 6"]
    assert [c.split(" ", 1)[1] for c in conflict["files"][0]["commits"]] == ["conflict: upstream rewrites line 10"]
    assert got["0006-needs-conflict.patch"]["blocked_by"] == "npu/0005-conflict.patch"
    assert got["0008-renamed.patch"]["files"][0]["renamed_to"] == "renamed.py"
    assert got["0009-removed.patch"]["files"][0]["reason"] == "removed upstream"
    assert got["0007-upstreamed.patch"]["broken"] is False
    data = json.loads(run.out)
    assert data["schema"] == "patchkit/rebase-check/1" and data["ok"] is False
    assert data["upstreams"]["up"]["commit"] == history.moved and data["upstreams"]["up"]["commits_since_pin"] == 6
    assert data["summary"] == {"clean": 2, "offset": 1, "fuzz": 1, "merged": 1, "upstreamed": 1, "conflict": 1,
                               "target-missing": 2, "blocked": 1, "patches": 10, "broken": 5}


def test_table_and_junit(history: History, tmp_path: Path) -> None:
    junit = tmp_path / "check.xml"
    run = patchkit(history.port, "rebase", "--check", "--junit", str(junit))
    assert run.code == 1
    assert "  up: " in run.out and "-> main" in run.out
    assert "CONFLICT         npu/0005-conflict.patch" in run.out
    assert "upstream: " in run.out and "conflict: upstream rewrites line 10" in run.out
    assert "BLOCKED          npu/0006-needs-conflict.patch" in run.out
    assert "blocked-by npu/0005-conflict.patch" in run.out
    assert "ren.py: renamed upstream to renamed.py" in run.out
    assert "- merged line 13\n" in run.out and "+ merged line 13 upstream\n" in run.out  # the merged patch's range-diff
    assert run.out.rstrip().splitlines()[-1] == ("10 patches in 1 model: 2 clean, 1 offset, 1 fuzz, 1 merged, "
                                                 "1 upstreamed, 1 conflict, 2 target-missing, 1 blocked -- 5 broken")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "10" and suite.get("failures") == "5"


def test_allow_fuzz(history: History) -> None:
    run = patchkit(history.port, "rebase", "--check", "--allow-fuzz", "--json")
    assert outcomes(run.out)["0004-fuzz.patch"]["broken"] is False


def test_everything_holds_at_the_pin(history: History) -> None:
    run = patchkit(history.port, "rebase", "--check", "--onto", f"up={history.pin}")
    assert run.code == 0, run.text
    assert run.out.rstrip().endswith("10 patches in 1 model: 10 clean -- all hold")


def test_user_workspace_untouched(history: History) -> None:
    git(history.up, "tag", "old", history.pin)
    assert patchkit(history.port, "apply", "m").code == 0
    repo = history.port / "work/m/up"
    head = git(repo, "rev-parse", "HEAD")
    assert patchkit(history.port, "rebase", "--check").code == 1
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == ""


def test_bad_onto_and_unreachable(history: History) -> None:
    assert patchkit(history.port, "rebase", "--check", "--onto", "up").code == 2
    assert patchkit(history.port, "rebase", "--check", "--onto", "nope=main").code == 2
    run = patchkit(history.port, "rebase", "--check", "--onto", "up=no-such-branch")
    assert run.code == 2 and "'no-such-branch' is not a branch, tag or commit" in run.err
    history.up.rename(history.up.with_name("gone"))
    run = patchkit(history.port, "rebase", "--check")
    assert run.code == 3 and "cannot reach upstream 'up'" in run.err
    assert patchkit(history.port, "rebase", "--check", "--no-fetch").code == 1  # the cache still answers


def test_shared_layer_checked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    up = tmp_path / "up"
    pin = make_upstream(up, {"a.py": numbered("a"), "b.py": numbered("b")})
    mk = PatchMaker(up, pin, tmp_path / "scratch")
    shared = mk.patch("shared", {"a.py": edit(numbered("a"), "a line 3\n", "a line 3 npu\n")})
    one = mk.patch("model one", {"b.py": edit(numbered("b"), "b line 10\n", "b line 10 one\n")})
    port = tmp_path / "port"
    write_layer(port, "shared", "up", {"0001-shared.patch": shared})
    write_layer(port, "one", "up", {"0001-one.patch": one})
    mk2 = PatchMaker(up, pin, tmp_path / "scratch2")
    mk2.patch("shared", {"a.py": edit(numbered("a"), "a line 3\n", "a line 3 npu\n")})
    two = mk2.patch("model two", {"b.py": edit(numbered("b"), "b line 20\n", "b line 20 two\n")})
    write_layer(port, "two", "up", {"0001-two.patch": two})
    (port / "upstreams.yaml").write_text(
        f"upstreams:\n  up:\n    url: {up}\n    pin: {pin}\n    track: main\nmodels:\n"
        "  one:\n    upstreams:\n      up: [shared, one]\n  two:\n    upstreams:\n      up: [shared, two]\n")
    commit(up, {"b.py": "# moved\n" + numbered("b")}, "b moves")
    applied: list[bytes] = []
    real = scratch.Scratch.apply

    def spy(self: scratch.Scratch, data: bytes, *options: str):  # type: ignore[no-untyped-def]
        applied.append(data)
        return real(self, data, *options)

    monkeypatch.setattr(scratch.Scratch, "apply", spy)
    run = patchkit(port, "rebase", "--check", "--json")
    assert run.code == 0, run.text
    assert applied.count(shared) == 1
    series = {s["model"]: [(p["patch"], p["outcome"]) for p in s["patches"]] for s in json.loads(run.out)["series"]}
    assert series == {"one": [("shared/0001-shared.patch", "clean"), ("one/0001-one.patch", "offset")],
                      "two": [("shared/0001-shared.patch", "clean"), ("two/0001-two.patch", "offset")]}


def test_second_patch_on_a_file_merges(tmp_path: Path) -> None:
    """A three-way merge needs the blob a patch was made on: for the second patch on a file that
    blob exists only after replaying the first one on the pin."""
    up = tmp_path / "up"
    text = numbered("two")
    pin = make_upstream(up, {"two.py": text})
    mk = PatchMaker(up, pin, tmp_path / "scratch")
    first = edit(text, "two line 5\n", "two line 5 npu\n")
    a = mk.patch("first", {"two.py": first})
    b = mk.patch("second", {"two.py": edit(first, "two line 20\n", "two line 20 npu\n")})
    port = tmp_path / "port"
    write_layer(port, "npu", "up", {"0001-first.patch": a, "0002-second.patch": b})
    write_one_upstream_port(port, up, pin)
    commit(up, {"two.py": edit(text, "two line 18\n", "two line 18 upstream\n")}, "upstream tweaks 18")
    run = patchkit(port, "rebase", "--check", "--json")
    assert run.code == 0, run.text
    assert [p["outcome"] for p in json.loads(run.out)["series"][0]["patches"]] == ["clean", "merged"]


def _new_file_patch(i: int) -> bytes:
    """A format-patch that adds `long/NNNN.txt`: a long series that applies, without a git commit per patch."""
    return (f"From {i:040x} Mon Sep 17 00:00:00 2001\nFrom: Port Er <porter@example.org>\n"
            f"Date: Tue, 14 Nov 2023 22:13:20 +0000\nSubject: [PATCH] add {i}\n\n"
            f"Upstream-Status: Inappropriate [NPU port]\n---\n"
            f"diff --git a/long/{i:04d}.txt b/long/{i:04d}.txt\nnew file mode 100644\n"
            f"--- /dev/null\n+++ b/long/{i:04d}.txt\n@@ -0,0 +1 @@\n+patch {i}\n").encode()


def test_long_series_does_not_recurse(tmp_path: Path) -> None:
    """The replay walks its trie with a loop: a series longer than the interpreter's recursion limit
    (lowered here to keep the test short; the default, 1000, failed at about 980 patches) checks."""
    up = tmp_path / "up"
    pin = make_upstream(up, {"a.py": numbered("a")})
    port = tmp_path / "port"
    count = 240
    write_layer(port, "npu", "up", {f"{i:04d}-add.patch": _new_file_patch(i) for i in range(count)})
    write_layer(port, "x", "up", {"0001-x.patch": _new_file_patch(count)})
    write_layer(port, "y", "up", {"0001-y.patch": _new_file_patch(count + 1)})
    (port / "upstreams.yaml").write_text(
        f"upstreams:\n  up:\n    url: {up}\n    pin: {pin}\n    track: main\nmodels:\n"
        "  one:\n    upstreams:\n      up: [npu, x]\n  two:\n    upstreams:\n      up: [npu, y]\n")
    commit(up, {"a.py": "# moved\n" + numbered("a")}, "a moves")
    code = "import sys; sys.setrecursionlimit(150); from patchkit.cli import main; main(sys.argv[1:])"
    run = subprocess.run([sys.executable, "-c", code, "rebase", "--check", "--json", "--jobs", "1"],
                         cwd=port, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    series = {s["model"]: [p["outcome"] for p in s["patches"]] for s in json.loads(run.stdout)["series"]}
    assert series == {"one": ["clean"] * (count + 1), "two": ["clean"] * (count + 1)}


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """Three upstreams, three models: `big` alone carries most patches, so its upstream is split by model."""
    port = tmp_path / "port"
    lines, n = ["upstreams:"], 0
    for up in ("big", "mid", "small"):
        pin = make_upstream(tmp_path / up, {"a.py": numbered(up)})
        lines += [f"  {up}:", f"    url: {tmp_path / up}", f"    pin: {pin}", "    track: main"]
    sizes = {"m1": {"big": 9, "mid": 3, "small": 1}, "m2": {"big": 8, "mid": 2, "small": 0},
             "m3": {"big": 7, "mid": 0, "small": 2}}
    lines.append("models:")
    for model, per_up in sizes.items():
        lines += [f"  {model}:", "    upstreams:"]
        for up, count in per_up.items():
            write_layer(port, model, up, {f"{i:04d}.patch": _new_file_patch(n + i) for i in range(count)})
            n += count
            lines.append(f"      {up}: [{model}]")
    (port / "upstreams.yaml").write_text("\n".join(lines) + "\n")
    return port


def test_shards_split_deterministically_and_merge_back(fleet: Path, tmp_path: Path) -> None:
    whole = patchkit(fleet, "rebase", "--check", "--json", "--junit", str(tmp_path / "whole.xml"))
    assert whole.code == 0, whole.text
    files, pairs, sizes = [], [], []
    for k in (1, 2, 3):
        run = patchkit(fleet, "rebase", "--check", "--no-fetch", "--shard", f"{k}/3", "--json")
        assert run.code == 0, run.text
        again = patchkit(fleet, "rebase", "--check", "--no-fetch", "--shard", f"{k}/3", "--json").out
        doc = json.loads(run.out)
        assert {**json.loads(again), "checked_at": doc["checked_at"]} == doc
        assert doc["shard"] == {"index": k, "count": 3}
        pairs += [(s["model"], s["upstream"]) for s in doc["series"]]
        sizes.append(doc["summary"]["patches"])
        files.append(tmp_path / f"shard-{k}.json")
        files[-1].write_text(run.out)
    assert sorted(pairs) == sorted((s["model"], s["upstream"]) for s in json.loads(whole.out)["series"])
    assert len(set(pairs)) == len(pairs) == 9
    assert sum(sizes) == 32 and max(sizes) - min(sizes) <= 3, sizes  # 'big' (24 patches) split by model
    merged = patchkit(fleet, "rebase", "--merge", *map(str, reversed(files)), "--json",
                      "--junit", str(tmp_path / "merged.xml"))
    assert merged.code == 0, merged.text
    expected = json.loads(whole.out)
    assert json.loads(merged.out) == {**expected, "checked_at": min(json.loads(f.read_text())["checked_at"] for f in files)}
    assert (tmp_path / "merged.xml").read_bytes() == (tmp_path / "whole.xml").read_bytes()
    text = patchkit(fleet, "rebase", "--merge", *map(str, files))
    assert text.code == 0 and text.out.endswith("32 patches in 3 models: 32 clean -- all hold\n"), text.text


def test_merge_refuses_incomplete_or_foreign_input(fleet: Path, tmp_path: Path) -> None:
    docs = []
    for k in (1, 2):
        docs.append(tmp_path / f"s{k}.json")
        docs[-1].write_text(patchkit(fleet, "rebase", "--check", "--shard", f"{k}/2", "--json").out)
    run = patchkit(fleet, "rebase", "--merge", str(docs[0]))
    assert run.code == 2 and "shard 2 of 2 missing" in run.err, run.text
    run = patchkit(fleet, "rebase", "--merge", str(docs[0]), str(docs[0]), str(docs[1]))
    assert run.code == 2 and "shard 1/2 given twice" in run.err, run.text
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "patchkit/rebase-check/1",\n  oops')
    run = patchkit(fleet, "rebase", "--merge", str(bad), str(docs[1]))
    assert run.code == 2 and re.search(r"bad\.json:2: not JSON", run.err), run.text
    assert patchkit(fleet, "rebase", "--check", "--shard", "3/2").code == 2
    assert patchkit(fleet, "rebase", "--shard", "1/2", "m1").code == 2


def test_scratch_tree_follows_every_index_change(tmp_path: Path) -> None:
    """The scratch keeps its index's tree only while nothing changed the index: an apply, a reset or any
    other git command run in it (update-index, as the importer does) makes it write the tree again."""
    up = tmp_path / "up"
    pin = make_upstream(up, {"a.py": numbered("a")})
    with scratch.Scratch(up / ".git") as s:
        s.reset(pin)
        first = s.tree()
        assert s.tree() == first and s.apply(_new_file_patch(1), "--check").ok and s.tree() == first
        blob = git(up, "rev-parse", f"{pin}:a.py")
        s.run(["update-index", "--add", "--cacheinfo", f"100644,{blob},b.py"])
        second = s.tree()
        assert second != first
        assert s.apply(_new_file_patch(2)).ok and s.tree() not in (first, second)
        s.reset(pin)
        assert s.tree() == first


def _counted_applies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patches given to each `git apply` process of the replay (one-by-one applies count 1)."""
    calls: list[int] = []
    real_one, real_many = scratch.Scratch.apply, scratch.Scratch.apply_files

    def one(self: scratch.Scratch, data: bytes, *options: str):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_one(self, data, *options)

    def many(self: scratch.Scratch, paths: list[str]):  # type: ignore[no-untyped-def]
        calls.append(len(paths))
        return real_many(self, paths)

    monkeypatch.setattr(scratch.Scratch, "apply", one)
    monkeypatch.setattr(scratch.Scratch, "apply_files", many)
    return calls


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Twelve patches on three files, upstream moved on: clean, offset by different amounts (two hunks
    of one patch moving differently, a patch on two files, a renamed file), a conflict in the middle
    and patches after it that still apply, clean and offset."""
    files = {f"{n}.py": numbered(n, 60) for n in ("a", "b", "c")}
    up = tmp_path / "up"
    pin = make_upstream(up, files)
    mk = PatchMaker(up, pin, tmp_path / "scratch")
    cur = dict(files)

    def change(subject: str, edits: dict[str, tuple[str, str]]) -> bytes:
        for name, (old, new) in edits.items():
            cur[name] = edit(cur[name], old, new)
        return mk.patch(subject, {name: cur[name] for name in edits})

    patches = [
        change("a top", {"a.py": ("a line 2\n", "a line 2 npu\n")}),
        change("a bottom", {"a.py": ("a line 50\n", "a line 50 npu\n")}),
        change("b two hunks", {"b.py": ("b line 5\n", "b line 5 npu\n")}),
        change("a and b", {"a.py": ("a line 40\n", "a line 40 npu\n"), "b.py": ("b line 45\n", "b line 45 npu\n")}),
        change("c conflict", {"c.py": ("c line 30\n", "c line 30 npu\n")}),
        change("a after", {"a.py": ("a line 20\n", "a line 20 npu\n")}),
        change("b after", {"b.py": ("b line 55\n", "b line 55 npu\n")}),
        change("c clean", {"c.py": ("c line 3\n", "c line 3 npu\n")}),
        change("a again", {"a.py": ("a line 58\n", "a line 58 npu\n")}),
    ]
    cur["b.py"] = edit(edit(cur["b.py"], "b line 8\n", "b line 8 npu\n"), "b line 50\n", "b line 50 npu\n")
    patches.insert(3, mk.patch("b two moves", {"b.py": cur["b.py"]}))
    git(mk.repo, "mv", "c.py", "d.py")
    patches.append(mk.patch("rename c", {}))
    cur["d.py"] = edit(cur.pop("c.py"), "c line 40\n", "c line 40 npu\n")
    patches.append(mk.patch("d after rename", {"d.py": cur["d.py"]}))
    port = tmp_path / "port"
    write_layer(port, "npu", "up", {f"{i + 1:04d}-p.patch": data for i, data in enumerate(patches)})
    write_one_upstream_port(port, up, pin)
    a, b, c = (edit(numbered(n, 60), f"{n} line 25\n", f"{n} line 25\n" + f"{n} upstream\n" * k)
               for n, k in (("a", 3), ("b", 1), ("c", 0)))
    b = edit(b, "b line 30\n", "b line 30\n# up\n")
    c = edit(c, "c line 30\n", "c line 30 upstream\n")
    commit(up, {"a.py": a, "b.py": b, "c.py": c}, "upstream moves lines")
    return port


def test_runs_of_patches_classified_as_one_by_one(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of patches go through one `git apply` each, cut back per patch from git's report: every
    outcome, offset and moved-hunk line is what applying them one by one gives (a patch's report
    taken for its neighbour's would move an offset or a conflict)."""
    from patchkit import check

    calls = _counted_applies(monkeypatch)
    batched = patchkit(runs, "rebase", "--check", "--json", "--no-fetch")
    assert batched.code == 1, batched.text
    assert calls[:2] == [12, 5], calls  # a run of 12 fails at the sixth: the five before it again, at once
    monkeypatch.setattr(check, "_RUN", 1)
    calls.clear()
    alone = patchkit(runs, "rebase", "--check", "--json", "--no-fetch")
    assert max(calls) == 1 and len(calls) >= 12, calls
    doc, expected = json.loads(batched.out), json.loads(alone.out)
    assert {**doc, "checked_at": ""} == {**expected, "checked_at": ""}
    got = [(p["name"][:4], p["outcome"], p["offset"]) for p in doc["series"][0]["patches"]]
    assert got == [("0001", "clean", 0), ("0002", "offset", 3), ("0003", "clean", 0), ("0004", "offset", 2),
                   ("0005", "offset", 3), ("0006", "conflict", 0), ("0007", "clean", 0), ("0008", "offset", 2),
                   ("0009", "clean", 0), ("0010", "offset", 3), ("0011", "clean", 0), ("0012", "clean", 0)], got
    moved = {p["name"][:4]: p["range_diff"] for p in doc["series"][0]["patches"]}
    assert moved["0004"] == ["b.py: hunk #2 @@ -47,7 +47,7 @@ b line 46 moved +2 lines"]
    assert moved["0005"] == ["a.py: hunk #1 @@ -37,7 +37,7 @@ a line 36 moved +3 lines",
                             "b.py: hunk #1 @@ -42,7 +42,7 @@ b line 41 moved +2 lines"]
    assert doc["series"][0]["patches"][5]["files"][0]["path"] == "c.py"


def test_a_report_that_cannot_be_cut_falls_back(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When git's report of a run cannot be told apart per patch, the run is undone and its patches
    applied one by one: the same document."""
    from patchkit import check

    expected = patchkit(runs, "rebase", "--check", "--json", "--no-fetch")
    monkeypatch.setattr(check, "split_verbose", lambda stderr, names: scratch.split_verbose(stderr, names)[:1])
    calls = _counted_applies(monkeypatch)
    again = patchkit(runs, "rebase", "--check", "--json", "--no-fetch")
    assert {**json.loads(again.out), "checked_at": ""} == {**json.loads(expected.out), "checked_at": ""}
    assert max(calls) > 1 and calls.count(1) >= 10, calls


def test_split_verbose_attributes_each_patch(tmp_path: Path) -> None:
    """`git apply -v A B C` reports per patch; a failed patch ends what can be attributed."""
    up = tmp_path / "up"
    pin = make_upstream(up, {"a.py": numbered("a"), "b c.py": numbered("b")})
    mk = PatchMaker(up, pin, tmp_path / "scratch")
    one = mk.patch("one", {"a.py": edit(numbered("a"), "a line 3\n", "a line 3 npu\n")})
    git(mk.repo, "mv", "b c.py", "b\u00e9.py")
    two = mk.patch("two", {"a.py": edit(edit(numbered("a"), "a line 3\n", "a line 3 npu\n"), "a line 20\n", "x\n")})
    paths = []
    for i, data in enumerate((one, two, one)):
        paths.append(tmp_path / f"{i}.patch")
        paths[-1].write_bytes(data)
    names = [[("a.py",)], [("a.py",), ("b c.py", "b\u00e9.py")], [("a.py",)]]
    with scratch.Scratch(up / ".git") as s:
        s.reset(pin)
        ok = s.apply_files([str(p) for p in paths[:2]])
        assert ok.ok, ok.stderr
        parts = scratch.split_verbose(ok.stderr, names[:2])
        assert len(parts) == 2 and "b\\303\\251.py" in parts[1] and "a.py" in parts[0], parts
        assert scratch.split_verbose(ok.stderr, [[("a.py",)], [("a.py",), ("other.py",)]]) == parts[:1]
        s.reset(pin)
        failed = s.apply_files([str(p) for p in paths])  # the third repeats the first: it does not apply
        assert not failed.ok and scratch.split_verbose(failed.stderr, names) == parts
        assert s.tree() == git(up, "rev-parse", f"{pin}^{{tree}}")  # nothing applied


def test_a_patch_made_unusable_after_the_first_look_is_refused(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every patch is checked before the replay, and read again (with its upstream's) when it is replayed: one that
    became unusable in between is refused then, with its diagnostic, not replayed."""
    from patchkit import check, manifest
    from patchkit.errors import InvalidInput
    from tests.test_safety import handmade

    port = manifest.load(runs / "upstreams.yaml")
    ref = port.models["m"].patches["up"][1]
    real = check._check_patches

    def then_spoiled(units: list, kept: object) -> None:  # type: ignore[type-arg]
        real(units, kept)  # type: ignore[arg-type]
        ref.path.write_bytes(handmade("../x", "../x"))

    monkeypatch.setattr(check, "_check_patches", then_spoiled)
    monkeypatch.chdir(runs)
    with pytest.raises(InvalidInput) as raised:
        check.check(port, [], fetch=False, jobs=1)
    assert any("'../x' is a '..' path" in str(d) for d in raised.value.diagnostics)


def test_replay_keeps_no_patch_bytes(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay holds each patch's hash, not its bytes (memory flat in the series' size): a patch is
    read again where it is looked at alone, and refused when its file changed since the check read it."""
    from patchkit import check, manifest
    from patchkit.errors import BadInput

    port = manifest.load(runs / "upstreams.yaml")
    seen: list[object] = []
    real = check._Replayer.run

    def spy(self: object, target: str, sequences: list, *rest: object):  # type: ignore[no-untyped-def]
        seen.extend(p for _, patches in sequences for p in patches)
        return real(self, target, sequences, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(check._Replayer, "run", spy)
    monkeypatch.chdir(runs)
    report = check.check(port, [], fetch=False, jobs=1)
    assert len(seen) == 12 and all(type(p) is check._Held and not hasattr(p, "__dict__") for p in seen)
    assert {len(p.digest) for p in seen} == {check._DIGEST}  # a digest, no bytes, name or path string held
    assert [p.outcome for p in report.series[0].patches].count("conflict") == 1  # read again to classify it
    light = check._load(port.models["m"].patches["up"], {}, None, {})[5]
    assert check._bytes(light) == light.ref.path.read_bytes()
    light.ref.path.write_bytes(light.ref.path.read_bytes() + b"\n")
    with pytest.raises(BadInput, match="changed while rebase --check ran"):
        check._bytes(light)


def test_a_warm_check_reads_no_yaml_parses_no_patch_and_prints_the_same_document(
        history: History, monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest and the patch parses come from the cache's memos on the second run; the check's work
    is done again and its JSON document (but the time stamp) is the same, every outcome included."""
    from patchkit import manifest_read, patchfile

    def document(run_out: str) -> dict[str, object]:
        return {k: v for k, v in json.loads(run_out).items() if k != "checked_at"}

    cold = patchkit(history.port, "rebase", "--check", "--json")
    assert cold.code == 1, cold.text
    patchfile._PARSED.clear()  # as a new process would start

    def refuse(*_a: object) -> None:
        raise AssertionError("a warm check did the memo's work again")

    monkeypatch.setattr(manifest_read, "Reader", refuse)
    monkeypatch.setattr(patchfile, "_parse", refuse)
    applies = _counted_applies(monkeypatch)
    warm = patchkit(history.port, "rebase", "--check", "--json")
    assert warm.code == 1, warm.text
    assert document(warm.out) == document(cold.out)
    assert len(applies) > 0  # the replay ran again: no check result is kept


def test_the_scratches_of_a_check_live_in_one_folder_removed_at_the_end(history: History, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every upstream's scratch indexes and new objects in one temporary folder (the objects share git's fan-out
    folders), removed once the check is done, also when it stopped on an error."""
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    seen: list[tuple[str, str]] = []
    real = scratch.Scratch.__init__

    def spy(self: scratch.Scratch, *a: object, **k: object) -> None:
        real(self, *a, **k)  # type: ignore[arg-type]
        seen.append((self.env["GIT_INDEX_FILE"], self.env["GIT_OBJECT_DIRECTORY"]))

    monkeypatch.setattr(scratch.Scratch, "__init__", spy)
    assert patchkit(history.port, "rebase", "--check", "--json").code == 1  # merged, fuzz, conflict: both scratches used
    (folder,) = {Path(index).parent for index, _ in seen}
    assert folder.parent == temp and len(seen) == 2 and len({index for index, _ in seen}) == 2
    assert {objects for _, objects in seen} == {str(folder / "objects")}
    assert list(temp.iterdir()) == []
    assert patchkit(history.port, "rebase", "--check", "--onto", "up=no-such-branch").code == 2
    assert list(temp.iterdir()) == []
