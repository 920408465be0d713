"""Per-model pins of one upstream and hardware variants through every verb (issue 16, schema half):
two models on one upstream at different pins, a model with an a5 variant, and the one-time rename of
a repo an older import recorded as `<upstream>-<model>`."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from patchkit import manifest as manifest_mod, state
from tests.gitfixtures import PatchMaker, commit, edit, git, make_upstream, numbered, patchkit, write_layer


@dataclass
class Fleet:
    port: Path
    lib: Path
    c1: str  # what `old` is pinned at (its own pin, the long form)
    c2: str  # the upstream's pin: `new` and `acc` use it
    head: str  # the track's head

    def manifest(self, old: str | None = None, acc_variants: str | None = None) -> None:
        old = old or f"      lib:\n        pin: {self.c1}\n        layers: [old-a, old-b]\n"
        variants = acc_variants if acc_variants is not None else (
            "    variants:\n      a5:\n        description: Atlas A5\n        upstreams: {lib: [acc-a5]}\n"
            "        overlays: [acc-a5]\n        requires: [a5-runtime]\n")
        (self.port / "upstreams.yaml").write_text(
            f"version: 2\nupstreams:\n  lib:\n    url: {self.lib}\n    pin: {self.c2}\n    track: main\n"
            f"models:\n  old:\n    upstreams:\n{old}"
            "  new:\n    upstreams:\n      lib: [new]\n"
            f"  acc:\n    description: the accelerated one\n    upstreams:\n      lib: [acc]\n{variants}")


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    lib = tmp_path / "lib"
    a, b = numbered("a"), numbered("b")
    c1 = make_upstream(lib, {"a.py": a, "b.py": b})
    c2 = commit(lib, {"a.py": edit(a, "a line 10\n", "a line 10 changed\n")}, "a: line 10 changed")
    port = tmp_path / "port"
    mk = PatchMaker(lib, c1, tmp_path / "s1")  # old's patches, made at c1: the first one needs c1
    write_layer(port, "old-a", "lib", {"0001-a10.patch": mk.patch("old a10", {"a.py": edit(a, "a line 10\n", "a line 10 old\n")})})
    write_layer(port, "old-b", "lib", {"0001-b20.patch": mk.patch("old b20", {"b.py": edit(b, "b line 20\n", "b line 20 old\n")})})
    mk = PatchMaker(lib, c2, tmp_path / "s2")
    write_layer(port, "new", "lib", {"0001-b12.patch": mk.patch("new b12", {"b.py": edit(b, "b line 12\n", "b line 12 new\n")})})
    mk = PatchMaker(lib, c2, tmp_path / "s3")
    acc = edit(b, "b line 5\n", "b line 5 acc\n")
    write_layer(port, "acc", "lib", {"0001-b5.patch": mk.patch("acc b5", {"b.py": acc})})
    write_layer(port, "acc-a5", "lib", {"0001-b25.patch": mk.patch("acc a5 b25", {"b.py": edit(acc, "b line 25\n", "b line 25 a5\n")})})
    (port / "overlays" / "acc-a5").mkdir(parents=True)
    (port / "overlays" / "acc-a5" / "a5.py").write_text("# the a5 runtime overlays (none declared yet)\n")
    head = commit(lib, {"b.py": "# moved\n" + b}, "b: a header line")
    f = Fleet(port, lib, c1, c2, head)
    f.manifest()
    return f


def test_two_models_on_one_upstream_at_their_own_pins(fleet: Fleet) -> None:
    for model, pin, patches in (("old", fleet.c1, 2), ("new", fleet.c2, 1)):
        run = patchkit(fleet.port, "apply", model, "--json")
        assert run.code == 0, run.text
        rec = state.load(fleet.port / "work" / model)["lib"]
        assert rec.pin == pin and len(rec.patches) == patches
        repo = fleet.port / "work" / model / "lib"
        assert git(repo, "rev-parse", f"HEAD~{patches}") == pin
        assert json.loads(run.out)["repos"][0]["pin"] == pin
    status = patchkit(fleet.port, "status", "--json")
    assert status.code == 4, status.text  # acc is not applied; old and new are clean at their own pins
    models = {m["model"]: m for m in json.loads(status.out)["models"]}
    assert models["old"]["repos"][0]["state"] == "clean" and models["old"]["repos"][0]["pin"] == fleet.c1
    assert models["new"]["repos"][0]["state"] == "clean" and models["new"]["repos"][0]["pin"] == fleet.c2
    listed = json.loads(patchkit(fleet.port, "list", "--json").out)
    old = next(m for m in listed["models"] if m["name"] == "old")
    assert old["upstreams"]["lib"] == {"layers": ["old-a", "old-b"], "patches": 2, "pin": fleet.c1, "track": "main"}
    # the model's pin moves: its workspace is stale until apply, which rebuilds it at the new pin
    fleet.manifest(old=f"      lib:\n        pin: {fleet.c2}\n        layers: [old-b]\n")
    stale = json.loads(patchkit(fleet.port, "status", "old", "--json").out)["models"][0]["repos"][0]
    assert stale["state"] == "stale" and f"pin changed {fleet.c1[:12]} -> {fleet.c2[:12]}" in stale["reasons"]


def test_check_replays_each_model_from_its_own_pin(fleet: Fleet, tmp_path: Path) -> None:
    run = patchkit(fleet.port, "rebase", "--check", "--json", "--junit", str(tmp_path / "check.xml"))
    assert run.code == 1, run.text
    doc = json.loads(run.out)
    own = f"lib@{fleet.c1[:12]}"
    assert set(doc["upstreams"]) == {"lib", own}
    assert doc["upstreams"][own]["pin"] == fleet.c1 and doc["upstreams"][own]["commits_since_pin"] == 2
    assert doc["upstreams"]["lib"]["pin"] == fleet.c2 and doc["upstreams"]["lib"]["commits_since_pin"] == 1
    assert doc["upstreams"][own]["commit"] == doc["upstreams"]["lib"]["commit"] == fleet.head
    series = {(s["model"], s["variant"], s["target"]): [(p["patch"], p["outcome"]) for p in s["patches"]]
              for s in doc["series"]}
    assert series == {
        ("old", None, own): [("old-a/0001-a10.patch", "conflict"), ("old-b/0001-b20.patch", "offset")],
        ("new", None, "lib"): [("new/0001-b12.patch", "offset")],
        ("acc", None, "lib"): [("acc/0001-b5.patch", "offset")],
        ("acc", "a5", "lib"): [("acc/0001-b5.patch", "offset"), ("acc-a5/0001-b25.patch", "offset")],
    }
    conflict = doc["series"][0]["patches"][0]["files"][0]
    assert any("a: line 10 changed" in c for c in conflict["commits"])  # a commit since old's own pin
    suites = [s.get("name") for s in ET.parse(tmp_path / "check.xml").getroot()]
    assert suites == ["old/lib", "new/lib", "acc/lib", "acc[a5]/lib"]
    text = patchkit(fleet.port, "rebase", "--check", "--no-fetch")
    assert f"  lib: {fleet.c1[:12]} -> main {fleet.head[:12]} (2 commits ahead)" in text.out
    assert "acc (variant a5)\n" in text.out
    assert text.out.rstrip().endswith("6 patches in 3 models and 1 variant: 5 offset, 1 conflict -- 1 broken")


def test_check_of_the_fleet_in_shards_merges_back(fleet: Fleet, tmp_path: Path) -> None:
    whole = json.loads(patchkit(fleet.port, "rebase", "--check", "--json").out)
    files = []
    for k in (1, 2):
        run = patchkit(fleet.port, "rebase", "--check", "--no-fetch", "--shard", f"{k}/2", "--json")
        assert run.code in (0, 1), run.text
        files.append(tmp_path / f"{k}.json")
        files[-1].write_text(run.out)
    merged = patchkit(fleet.port, "rebase", "--merge", *map(str, files), "--json")
    assert merged.code == 1, merged.text
    doc = json.loads(merged.out)
    assert doc["series"] == whole["series"] and doc["upstreams"] == whole["upstreams"]


def test_a_variant_is_applied_recorded_shown_and_not_switched_silently(fleet: Fleet) -> None:
    run = patchkit(fleet.port, "apply", "acc", "--variant", "a5", "--json")
    assert run.code == 0, run.text
    assert json.loads(run.out)["variant"] == "a5"
    mdir = fleet.port / "work" / "acc"
    st = state.load_all(mdir)
    assert st.variant == "a5" and [p.id for p in st.repos["lib"].patches] == ["acc/0001-b5.patch", "acc-a5/0001-b25.patch"]
    assert "b line 25 a5" in (mdir / "lib" / "b.py").read_text()
    status = patchkit(fleet.port, "status", "acc")
    assert status.code == 0 and status.out.startswith(f"acc ({mdir.relative_to(fleet.port)}, variant a5)"), status.text
    assert json.loads(patchkit(fleet.port, "status", "acc", "--json").out)["models"][0]["variant"] == "a5"
    again = patchkit(fleet.port, "apply", "acc", "--variant", "a5")
    assert again.code == 0 and "up to date, nothing to do" in again.out and "variant a5" in again.out
    (mdir / "lib" / "b.py").write_text("my work\n")
    refused = patchkit(fleet.port, "apply", "acc")
    assert refused.code == 1, refused.text
    assert "is built as variant 'a5', not the model itself (no variant)" in refused.err
    assert "`patchkit apply acc --variant a5` updates it" in refused.err
    assert (mdir / "lib" / "b.py").read_text() == "my work\n" and state.load_all(mdir).variant == "a5"
    forced = patchkit(fleet.port, "apply", "acc", "--force")
    assert forced.code == 0, forced.text
    assert state.load_all(mdir).variant is None and "b line 25 a5" not in (mdir / "lib" / "b.py").read_text()
    backups = patchkit(fleet.port, "backups", "acc")
    assert "patchkit-backup/acc/" in backups.out and "1 backup(s)" in backups.out, backups.text
    unknown = patchkit(fleet.port, "apply", "acc", "--variant", "a9")
    assert unknown.code == 2 and "upstreams.yaml:" in unknown.err and "has no variant 'a9' (variants: a5)" in unknown.err


def test_list_shows_variants(fleet: Fleet) -> None:
    run = patchkit(fleet.port, "list")
    assert "    variant a5  Atlas A5: lib + acc-a5 [1 patches]; overlays + acc-a5; requires a5-runtime" in run.out
    data = json.loads(patchkit(fleet.port, "list", "--json").out)
    acc = next(m for m in data["models"] if m["name"] == "acc")
    assert acc["variants"] == {"a5": {"description": "Atlas A5", "upstreams": {"lib": {"layers": ["acc-a5"], "patches": 1}},
                                      "overlays": ["acc-a5"], "requires": ["a5-runtime"]}}


def test_the_training_fingerprint_and_plan_carry_the_variant(fleet: Fleet) -> None:
    from patchkit.train.launch import workspace_fingerprint

    m = manifest_mod.load(fleet.port / "upstreams.yaml")
    root = fleet.port / "work"
    assert patchkit(fleet.port, "apply", "acc").code == 0
    plain = workspace_fingerprint(m, "acc", root)
    assert "variant" not in plain  # a model's own fingerprint is what it always was
    assert patchkit(fleet.port, "apply", "acc", "--variant", "a5", "--force").code == 0
    a5 = workspace_fingerprint(m, "acc", root)
    assert a5["variant"] == "a5" and a5["repos"] != plain["repos"] and a5["overlays"]
    (fleet.port / "train").mkdir()
    (fleet.port / "train" / "acc.yaml").write_text("workdir: lib\nentry: b.py\ncards: 1\n")
    run = patchkit(fleet.port, "train", "acc", "--device", "cpu", "--dry-run", "--json")
    assert run.code == 0, run.text
    env = json.loads(run.out)["env"]
    assert env["PATCHKIT_TRAIN_VARIANT"] == "a5" and json.loads(env["PATCHKIT_TRAIN_FINGERPRINT"])["variant"] == "a5"
    assert env["PATCHKIT_OVERLAYS"].endswith("overlays/acc-a5")


def test_install_variant_must_be_the_workspaces(fleet: Fleet) -> None:
    assert patchkit(fleet.port, "apply", "acc").code == 0
    run = patchkit(fleet.port, "install", "acc", "--variant", "a5", "--device", "cpu")
    assert run.code == 2, run.text
    assert "is built as the model itself (no variant), not variant 'a5'" in run.err
    assert "patchkit apply acc --variant a5" in run.err


def test_export_of_a_variant_workspace_puts_new_commits_in_the_variants_layer(fleet: Fleet) -> None:
    assert patchkit(fleet.port, "apply", "acc", "--variant", "a5").code == 0
    repo = fleet.port / "work" / "acc" / "lib"
    (repo / "a.py").write_text(numbered("a") + "a5 tail\n")
    git(repo, "commit", "-qam", "a5 tail")
    run = patchkit(fleet.port, "export", "acc")
    assert run.code == 0, run.text
    series = (fleet.port / "patches" / "acc-a5" / "lib" / "series").read_text().split()
    assert series[-1] == "0002-a5-tail.patch"
    assert patchkit(fleet.port, "status", "acc").code == 0


def test_rebase_of_a_model_with_its_own_pin_moves_that_pin(fleet: Fleet) -> None:
    fleet.manifest(old=f"      lib:\n        pin: {fleet.c1}\n        layers: [old-b]\n")
    assert patchkit(fleet.port, "apply", "old").code == 0
    run = patchkit(fleet.port, "rebase", "old")
    assert run.code == 0, run.text
    m = manifest_mod.load(fleet.port / "upstreams.yaml")
    assert m.model("old").pins["lib"] == fleet.head and m.upstreams["lib"].pin == fleet.c2
    assert "also on these upstreams" not in run.out  # nobody else shares old's own pin
    assert patchkit(fleet.port, "status", "old").code == 0


def test_an_older_imports_repo_is_renamed_once(fleet: Fleet) -> None:
    old_style = fleet.port / "upstreams.yaml"
    old_style.write_text(
        f"upstreams:\n  lib:\n    url: {fleet.lib}\n    pin: {fleet.c2}\n    track: main\n"
        f"  lib-old:\n    url: {fleet.lib}\n    pin: {fleet.c1}\n    track: main\n"
        "models:\n  old:\n    upstreams:\n      lib-old: [old-b]\n")
    (fleet.port / "patches" / "old-b" / "lib").rename(fleet.port / "patches" / "old-b" / "lib-old")
    assert patchkit(fleet.port, "apply", "old").code == 0
    mdir = fleet.port / "work" / "old"
    head = git(mdir / "lib-old", "rev-parse", "HEAD")
    (fleet.port / "patches" / "old-b" / "lib-old").rename(fleet.port / "patches" / "old-b" / "lib")
    fleet.manifest(old=f"      lib:\n        pin: {fleet.c1}\n        layers: [old-b]\n")
    status = json.loads(patchkit(fleet.port, "status", "old", "--json").out)["models"][0]["repos"][0]
    assert status["state"] == "not-applied" and "recorded as lib-old by an older import" in status["reasons"][0]
    run = patchkit(fleet.port, "apply", "old")
    assert run.code == 0, run.text
    assert "lib: renamed work/old/lib-old to work/old/lib" in run.err and "up to date, nothing to do" in run.out
    assert not (mdir / "lib-old").exists() and git(mdir / "lib", "rev-parse", "HEAD") == head
    assert set(state.load(mdir)) == {"lib"}
    assert git(mdir / "lib", "remote", "get-url", "origin").endswith(".git") and "lib-old" not in \
        git(mdir / "lib", "remote", "get-url", "origin")
    again = patchkit(fleet.port, "apply", "old")
    assert again.code == 0 and "renamed" not in again.err


def test_a_rename_cut_short_after_the_folder_is_finished(fleet: Fleet) -> None:
    mdir = fleet.port / "work" / "old"
    fleet.manifest(old=f"      lib:\n        pin: {fleet.c1}\n        layers: [old-b]\n")
    assert patchkit(fleet.port, "apply", "old").code == 0
    st = state.load_all(mdir)
    rec = st.repos["lib"]
    state._write(mdir, "old", state.State({"lib-old": rec}, st.env, st.variant))  # the folder moved, the key not yet
    renamed = state.migrate_names(mdir, "old", {"lib": (rec.url, rec.pin)})
    assert renamed == [state.Renamed("lib-old", "lib")] and set(state.load(mdir)) == {"lib"}
    assert patchkit(fleet.port, "status", "old").code == 0


def test_report_gives_a_variant_its_own_row_and_history_its_own_target(fleet: Fleet, tmp_path: Path) -> None:
    assert patchkit(fleet.port, "rebase", "--check", "--history", str(tmp_path / "h")).code == 1
    run = patchkit(fleet.port, "report", "--html", str(tmp_path / "r.html"))
    assert run.code == 0, run.text
    page = (tmp_path / "r.html").read_text()
    assert 'data-model="acc[a5]"' in page and 'data-model="acc"' in page and "acc-a5/0001-b25.patch" in page
    entry = json.loads((tmp_path / "h" / "history.jsonl").read_text().splitlines()[-1])
    assert set(entry["upstreams"]) == {"lib", f"lib@{fleet.c1[:12]}"} and "acc[a5]" in entry["models"]
    assert len(entry["upstreams"][f"lib@{fleet.c1[:12]}"]["broken"]) == 1


def test_validate_remote_checks_a_models_own_pin_at_its_line(fleet: Fleet) -> None:
    assert patchkit(fleet.port, "validate", "--remote").code == 0
    fleet.manifest(old=f"      lib:\n        pin: {'d' * 40}\n        layers: [old-b]\n")
    run = patchkit(fleet.port, "validate", "--remote")
    assert run.code == 2 and f"upstreams.yaml:11: upstream 'lib': pin {'d' * 40} is not in" in run.err, run.text


def test_a_variant_gone_from_the_manifest_needs_a_person(fleet: Fleet) -> None:
    assert patchkit(fleet.port, "apply", "acc", "--variant", "a5").code == 0
    fleet.manifest(acc_variants="")
    status = patchkit(fleet.port, "status", "acc")
    assert status.code == 1 and "PROBLEM: " in status.out and "no longer has" in status.out, status.text
    refused = patchkit(fleet.port, "apply", "acc")
    assert refused.code == 1 and "upstreams.yaml no longer has variant 'a5'" in refused.err, refused.text
    assert patchkit(fleet.port, "apply", "acc", "--force").code == 0
    assert patchkit(fleet.port, "status", "acc").code == 0
