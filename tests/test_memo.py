"""The memos a warm run reads from the cache instead of working again: a read manifest (no YAML composed),
patch parses (no unidiff) and overlay modules' declarations (no AST). Each is used only for the same content, equals what the work gives, and a
corrupt or foreign entry is ignored and replaced, never trusted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from patchkit import manifest, manifest_read, memo, patchfile
from patchkit.errors import InvalidInput
from patchkit.overlay import static
from tests.gitfixtures import patchkit
from tests.test_manifest_v2 import GOOD, port
from tests.test_overlay_static import OVERLAY, OverlayPort, oport  # noqa: F401 (oport: the fixture)

ROOT = Path(__file__).resolve().parent.parent
RICH = GOOD + """\
toolchain:
  cpu:
    torch: "2.13.0"
    tools: ["numpy<2"]
"""
RICH = RICH.replace("    track: main\n", """\
    track: main
    exclude: [docs/]
    install:
      build: command
      command: pip install -e .
      env: {MAX_JOBS: "2"}
      after: [mmcv]
""", 1)


def _no_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the manifest was read from its YAML")
    monkeypatch.setattr(manifest_read, "Reader", refuse)


def _load(path: Path, cache: Path) -> manifest.Manifest:
    kept = manifest.manifests_memo(cache, path)
    loaded = manifest.load(path, kept)
    kept.save()
    return loaded


def test_values_come_back_exactly() -> None:
    ref = manifest.PatchRef("l", "u", "0001.patch", "/p/0001.patch", Path("/p/series"), 3)
    value = {"a": (1, "x", None, True, 2.5), "b": [ref, (ref,)], "c": {"d": [Path("rel/x")]}, "e": ()}
    decode = memo.decoder([manifest.PatchRef])
    back = decode(json.loads(json.dumps(memo.encode(value))))
    assert back == value
    assert type(back["a"]) is tuple and type(back["b"]) is list and isinstance(back["c"]["d"][0], Path)
    for foreign in (["@Manifest", 1], ["@PatchRef", "l"], ["x", 1], {"a": 1}, ["d", [1]], []):
        with pytest.raises(memo.Unreadable):
            decode(foreign)


def test_a_tuple_of_dataclasses_comes_back_exactly_by_column() -> None:
    """A tuple of dataclasses is kept by field (one value where all share it): equal values of other types (1 and
    True) stay apart, and a damaged column is refused."""
    refs = tuple(manifest.PatchRef("l", "u", f"{i:04d}.patch", f"/p/{i:04d}.patch", Path("/p/series"), i)
                 for i in range(300))
    hunks = (patchfile.Hunk(1, 2, 1, 2, "a"), patchfile.Hunk(1, True, 1, 2, "a"))
    decode = memo.decoder([manifest.PatchRef, patchfile.Hunk])
    data = json.loads(json.dumps(memo.encode({"refs": refs, "hunks": hunks})))
    assert data[1][1][:3] == ["T", "@PatchRef", 300] and data[1][1][3] == ["=", "l"]
    back = decode(data)
    assert back == {"refs": refs, "hunks": hunks} and type(back["hunks"][1].source_length) is bool
    assert back["refs"][0].series_path is back["refs"][1].series_path  # one Path for the whole column
    for foreign in (["T", "@PatchRef", 2, ["=", "l"]], ["T", "@PatchRef", 2, *[["l", 1]] * 6], ["T", "@Nope", 1]):
        with pytest.raises(memo.Unreadable):
            decode(foreign)


def test_entries_are_read_one_at_a_time_and_the_least_recently_used_go_first(tmp_path: Path) -> None:
    """memo.Entries (the parses): a JSON object an entry a line; what a run puts is read only once saved; a save
    keeps those read and put by the run last (a key put twice with its last value), the last LIMIT in all."""
    path = tmp_path / "cache" / "entries.json"
    kept = memo.Entries(path, 4)
    assert kept.get("a") == (False, None)
    for key in "abc":
        kept.put(key, ["v", key])
    kept.put("a", ["v", "a2"])
    assert kept.get("a") == (False, None)  # not before the save
    kept.save()
    assert path.read_text() == '{\n"b": ["v", "b"],\n"c": ["v", "c"],\n"a": ["v", "a2"]\n}\n'
    assert json.loads(path.read_text()) == {"a": ["v", "a2"], "b": ["v", "b"], "c": ["v", "c"]}
    kept = memo.Entries(path, 4)
    assert kept.get("b") == (True, ["v", "b"]) and kept.get("z") == (False, None)
    kept.save()  # nothing put: the file is not written
    assert list(json.loads(path.read_text())) == ["b", "c", "a"]
    kept = memo.Entries(path, 4)
    assert kept.get("b")[0]
    for key in "de":
        kept.put(key, key)
    kept.save()
    assert list(json.loads(path.read_text())) == ["a", "b", "d", "e"]  # c: the least recently used
    assert memo.Entries(path, 4).get("e") == (True, "e")
    path.write_bytes(b"\xff\xfe garbage\n")
    kept = memo.Entries(path, 4)
    assert kept.get("e") == (False, None)
    kept.put("f", 1)
    kept.save()
    assert json.loads(path.read_text()) == {"f": 1}


@pytest.mark.parametrize("which", ["rich", "this repository"])
def test_a_kept_manifest_equals_a_fresh_read(which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = port(tmp_path / "port", RICH) if which == "rich" else ROOT / "upstreams.yaml"
    fresh = manifest.load(path)
    assert _load(path, tmp_path / "cache") == fresh  # a miss: read from YAML, then kept
    _no_yaml(monkeypatch)
    again = _load(path, tmp_path / "cache")
    assert again == fresh and again.views() == fresh.views()
    if which == "rich":
        assert again.upstreams["model-repo"].install == {"build": "command", "after": ["mmcv"],
                                                         "env": {"MAX_JOBS": "2"}, "command": "pip install -e ."}
        assert again.toolchain["cpu"].tools == ("numpy<2",)


def test_two_versions_of_patchkit_keep_their_manifests_side_by_side(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An A/B of two checkouts on one port and cache: each finds its own kept manifest (no eviction race)."""
    path = port(tmp_path / "port", RICH)
    fresh = manifest.load(path)
    for code in ("A", "B"):
        monkeypatch.setattr(manifest, "_CODE", code)
        assert _load(path, tmp_path / "cache") == fresh
    _no_yaml(monkeypatch)
    for code in ("A", "B", "A"):
        monkeypatch.setattr(manifest, "_CODE", code)
        assert _load(path, tmp_path / "cache") == fresh
    files = list((tmp_path / "cache" / f"manifests-v{manifest.MANIFESTS_VERSION}").iterdir())
    assert len(files) == 2 and all(len(json.loads(f.read_text())) == 1 for f in files)  # a run reads its own only


def _change_text(root: Path) -> None:
    (root / "upstreams.yaml").write_text(RICH.replace("a" * 40, "d" * 40))


def _change_series(root: Path) -> None:
    folder = root / "patches" / "fbocc" / "mmcv"
    (folder / "0002-more.patch").write_text(patchfile_text())
    (folder / "series").write_text("0001-fbocc.patch\n0002-more.patch\n")


def _new_overlay_folder(root: Path) -> None:
    (root / "overlays" / "fbocc").mkdir()  # fbocc declares no sets: its own folder is used when it exists


def patchfile_text() -> str:
    return "From: A <a@b>\nSubject: y\n\n"


@pytest.mark.parametrize("change", [_change_text, _change_series, _new_overlay_folder])
def test_a_kept_manifest_is_not_used_once_a_file_it_read_changed(change, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = port(tmp_path / "port", RICH)
    before = _load(path, tmp_path / "cache")
    change(tmp_path / "port")
    after = _load(path, tmp_path / "cache")
    assert after == manifest.load(path) and after != before


def test_a_removed_patch_file_is_reported_at_its_series_line(tmp_path: Path) -> None:
    path = port(tmp_path / "port", RICH)
    _load(path, tmp_path / "cache")
    (tmp_path / "port" / "patches" / "fbocc" / "mmcv" / "0001-fbocc.patch").unlink()
    with pytest.raises(InvalidInput) as info:
        _load(path, tmp_path / "cache")
    assert any(str(d).startswith(f"{tmp_path}/port/patches/fbocc/mmcv/series:1: patch file 0001-fbocc.patch not found")
               for d in info.value.diagnostics), info.value.diagnostics


def _entry_file(cache: Path) -> Path:
    (found,) = (cache / f"manifests-v{manifest.MANIFESTS_VERSION}").iterdir()
    return found


@pytest.mark.parametrize("damage", ["garbage", "not an object", "foreign manifest", "bad reads"])
def test_a_corrupt_or_foreign_manifest_entry_is_read_again(damage: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = port(tmp_path / "port", RICH)
    fresh = _load(path, tmp_path / "cache")
    entry = _entry_file(tmp_path / "cache")
    data = json.loads(entry.read_text())
    (key, value), = data.items()
    if damage == "garbage":
        entry.write_bytes(b"\x00{not json")
    elif damage == "not an object":
        entry.write_text("[1, 2]")
    elif damage == "foreign manifest":  # the right key, but what it holds is not a Manifest of this file
        other = manifest.load(port(tmp_path / "other", GOOD))
        entry.write_text(json.dumps({key: {**value, "manifest": memo.encode(other)}}))
    else:
        entry.write_text(json.dumps({key: {**value, "reads": [["file", 7]]}}))
    assert _load(path, tmp_path / "cache") == fresh
    assert json.loads(entry.read_text()) == data  # rewritten whole
    _no_yaml(monkeypatch)
    assert _load(path, tmp_path / "cache") == fresh


# -- patch parses --------------------------------------------------------------------------------

PATCH = b"""From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001
From: A U Thor <a@example.org>
Subject: [PATCH 1/2] npu: use the fused op

---
diff --git a/pkg/ops.py b/pkg/ops.py
index 1111111..2222222 100644
--- a/pkg/ops.py
+++ b/pkg/ops.py
@@ -1,3 +1,3 @@ def op():
 a
-b
+b_npu
 c
@@ -10,2 +10,3 @@ class X:
 x
+y
 z
diff --git a/old.py b/new.py
similarity index 90%
rename from old.py
rename to new.py
--
2.40.0
"""


def _patch(tmp_path: Path, data: bytes, name: str = "0001-npu.patch") -> patchfile.Patch:
    path = tmp_path / name
    path.write_bytes(data)
    return patchfile.read(manifest.PatchRef("npu", "up", name, str(path), tmp_path / "series", 1))


def _parse(patch: patchfile.Patch, cache: Path) -> tuple[patchfile.ParsedPatch | None, list[object]]:
    patchfile._PARSED.clear()  # the process-wide memo: each call here is a new run
    kept = patchfile.parses_memo(cache)
    parsed, problems = patchfile.parse(patch, kept)
    kept.save()
    return parsed, list(problems)


def _no_unidiff(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_patch: object) -> None:
        raise AssertionError("the patch was parsed again")
    monkeypatch.setattr(patchfile, "_parse", refuse)


def test_a_kept_parse_equals_a_fresh_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patch = _patch(tmp_path, PATCH)
    fresh = patchfile._parse(patch)[0]
    assert fresh is not None and fresh.files[1].paths == ("old.py", "new.py")
    assert _parse(patch, tmp_path / "cache") == (fresh, [])
    with monkeypatch.context() as m:
        _no_unidiff(m)
        assert _parse(patch, tmp_path / "cache") == (fresh, [])
        other = _patch(tmp_path / "cache", PATCH, "0009-same-bytes.patch")  # content-addressed: another file
        parsed, _ = _parse(other, tmp_path / "cache")
        assert parsed is not None and parsed.ref == other.ref and parsed.files == fresh.files
    changed = _patch(tmp_path, PATCH.replace(b"+b_npu\n", b"+b_npu\n+b_more\n").replace(b"@@ -1,3 +1,3 @@", b"@@ -1,3 +1,4 @@"))
    parsed, _ = _parse(changed, tmp_path / "cache")  # new bytes: parsed, not taken from the memo
    assert parsed is not None and parsed.files[0].hunks[0].target_length == 4


def test_a_broken_patch_is_never_kept_and_still_named_at_its_line(tmp_path: Path) -> None:
    broken = _patch(tmp_path, PATCH.replace(b" c\n@@ -10,2", b"@@ -10,2"))  # the first hunk one line short
    for _ in range(2):
        parsed, problems = _parse(broken, tmp_path / "cache")
        assert parsed is None and [str(p).split(": ")[0] for p in problems] == [f"{broken.ref.path}:10"]
    assert not (tmp_path / "cache" / f"parses-v{patchfile.PARSES_VERSION}.json").exists()


@pytest.mark.parametrize("damage", ["garbage", "wrong shape", "wrong types"])
def test_a_corrupt_or_foreign_parse_is_made_again(damage: str, tmp_path: Path) -> None:
    patch = _patch(tmp_path, PATCH)
    fresh, _ = _parse(patch, tmp_path / "cache")
    kept = tmp_path / "cache" / f"parses-v{patchfile.PARSES_VERSION}.json"
    good = json.loads(kept.read_text())
    (key,) = good
    assert key.endswith(f":{patch.sha256}")  # by content (and the parser's code)
    assert kept.read_text() == f"{{\n{json.dumps(key)}: {json.dumps(good[key])}\n}}\n"  # an entry a line
    if damage == "garbage":
        kept.write_bytes(b"\xff\xfe garbage")
    elif damage == "wrong shape":
        kept.write_text(f"{{\n{json.dumps(key)}: {json.dumps(['t', 'subject only'])}\n}}\n")
    else:  # decodes, but a hunk's start is a string (the first file's two hunks are kept by column)
        text = kept.read_text().replace('["T", "@Hunk", 2, ["l", 1, 10]', '["T", "@Hunk", 2, ["l", "1", 10]')
        assert text != kept.read_text()
        kept.write_text(text)
    assert _parse(patch, tmp_path / "cache") == (fresh, [])
    assert json.loads(kept.read_text()) == good  # replaced by the real parse


# -- overlay modules' declarations -----------------------------------------------------------------

def _declared(folder: Path, cache: Path) -> tuple[list[static.Target], list[str]]:
    kept = static.declarations_memo(cache)
    found, problems = static.targets(folder, kept)
    kept.save()
    return found, [str(p) for p in problems]


def _no_ast(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object) -> None:
        raise AssertionError("the overlay module was parsed again")
    monkeypatch.setattr(static, "_declarations", refuse)


def test_kept_declarations_equal_a_fresh_read(oport: OverlayPort, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = oport.root / "overlays" / "m"
    fresh = static.targets(folder)
    assert len(fresh[0]) == 4 and fresh[1] == []
    assert _declared(folder, tmp_path / "cache") == (fresh[0], [])
    with monkeypatch.context() as m:
        _no_ast(m)
        assert _declared(folder, tmp_path / "cache") == (fresh[0], [])
    (folder / "npu.py").write_text(OVERLAY + 'replace_value("upkg.core:J", 5, upstream="up")\n')
    found, _ = _declared(folder, tmp_path / "cache")  # changed: read again
    assert [t.target for t in found][-1] == "upkg.core:J" and len(found) == 5


def test_a_module_with_a_problem_is_never_kept_and_still_named_at_its_line(oport: OverlayPort, tmp_path: Path) -> None:
    folder = oport.root / "overlays" / "m"
    (folder / "npu.py").write_text(OVERLAY + 'NAME = "x"\nreplace_value(NAME, 5, upstream="up")\n')
    for _ in range(2):
        found, problems = _declared(folder, tmp_path / "cache")
        assert len(found) == 4 and len(problems) == 1 and problems[0].startswith(f"{folder / 'npu.py'}:24: replace_value")
    assert not (tmp_path / "cache" / f"overlay-declarations-v{static.DECLARATIONS_VERSION}.json").exists()


@pytest.mark.parametrize("damage", ["garbage", "wrong shape", "wrong types"])
def test_corrupt_or_foreign_declarations_are_read_again(damage: str, oport: OverlayPort, tmp_path: Path) -> None:
    folder = oport.root / "overlays" / "m"
    fresh = _declared(folder, tmp_path / "cache")
    kept = tmp_path / "cache" / f"overlay-declarations-v{static.DECLARATIONS_VERSION}.json"
    good = json.loads(kept.read_text())
    (key,) = good
    if damage == "garbage":
        kept.write_text("{{{")
    elif damage == "wrong shape":
        kept.write_text(json.dumps({key: ["t", ["t", "upkg.core:f", "up"]]}))
    else:  # decodes, but a line number is a string
        kept.write_text(json.dumps({key: json.loads(json.dumps(good[key]).replace('"up", null, 4,', '"up", null, "4",'))}))
        assert json.loads(kept.read_text()) != good
    assert _declared(folder, tmp_path / "cache") == fresh
    assert json.loads(kept.read_text()) == good


def test_overlay_fingerprint_replaces_a_stale_value_in_place(oport: OverlayPort) -> None:
    """Where a fingerprint is written comes from the declarations (no AST kept): a stale value is replaced where
    it stands, columns counted in UTF-8 bytes as the AST gives them; a missing one is added after the last argument."""
    path = oport.root / "overlays" / "m" / "npu.py"
    path.write_text(OVERLAY.replace('@replace("upkg.core:f", upstream="up")',
                                    '@replace("upkg.core:f", upstream="up", fingerprint="0000000000000000-00000000")  # é')
                    .replace('replace_value("upkg.core:K", 4, upstream="up")', 'replace_value("upkg.core:K", "é", upstream="up")'))
    run = patchkit(oport.root, "overlay", "fingerprint", "m")
    assert run.code == 0, run.text
    text = path.read_text()
    assert re.search(r'@replace\("upkg.core:f", upstream="up", fingerprint="[0-9a-f]{16}-[0-9a-f]{8}"\)  # é\n', text)
    assert re.search(r'replace_value\("upkg.core:K", "é", upstream="up", fingerprint="[0-9a-f]{16}-[0-9a-f]{8}"\)\n', text)
    assert "0000000000000000" not in text
