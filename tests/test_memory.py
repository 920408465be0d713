"""Working memory flat in the series' length: documents written piece by piece, compact per-patch records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from patchkit import jsonstream
from patchkit.paths import atomic_writer


def _lists_as_streams(value: Any) -> Any:
    """VALUE with every list (at any depth) a Stream made again on each read."""
    if isinstance(value, dict):
        return {k: _lists_as_streams(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_lists_as_streams(v) for v in value]
        return jsonstream.Stream(lambda: iter(items))
    return value


DOCUMENTS = [
    {},
    [],
    {"a": []},
    {"series": [], "ok": True, "n": None, "x": 1.5},
    {"series": [{"model": "m", "patches": [], "variant": None}, {"model": "n\u00e9", "patches": [
        {"patch": "npu/0001.patch", "range_diff": ["line\nwith a break", "\u2603 \"quoted\" \\ tab\t"],
         "files": [], "offset": -3}], "target": ""}], "summary": {"clean": 0}, "tail": [[], [[1, 2], {}]]},
    [[[]], [{"deep": [{"deeper": [1, {"x": []}]}]}], "s"],
]


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("indent", [1, 2])
def test_stream_pieces_join_to_json_dumps(document: Any, indent: int) -> None:
    """Streams nested at every depth, empty ones, strings with line breaks and non-ASCII: the pieces join
    to exactly what json.dumps writes for the same document as plain lists."""
    streamed = _lists_as_streams(document)
    expected = json.dumps(document, indent=indent)
    assert "".join(jsonstream.pieces(streamed, indent)) == expected
    assert "".join(jsonstream.pieces(streamed, indent)) == expected  # a Stream is made again each time
    got: list[str] = []
    jsonstream.write(got.append, streamed, indent)
    assert "".join(got) == expected + "\n"


def test_stream_writes_in_batches_and_refuses_other_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonstream, "_BATCH", 100)
    document = {"patches": jsonstream.Stream(lambda: ({"patch": f"npu/{i:04d}.patch"} for i in range(50)))}
    got: list[str] = []
    jsonstream.write(got.append, document, 2)
    assert len(got) > 10 and all(len(piece) < 200 for piece in got)
    assert json.loads("".join(got)) == {"patches": [{"patch": f"npu/{i:04d}.patch"} for i in range(50)]}
    with pytest.raises(TypeError, match="keys of a streamed object must be strings"):
        "".join(jsonstream.pieces({1: jsonstream.Stream(list)}, 2))


def test_atomic_writer_leaves_the_old_file_on_an_error(tmp_path: Path) -> None:
    path = tmp_path / "checks" / "latest.json"
    path.parent.mkdir()
    path.write_bytes(b"old\n")
    with pytest.raises(RuntimeError):
        with atomic_writer(path) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("the document could not be made")
    assert path.read_bytes() == b"old\n" and [p.name for p in path.parent.iterdir()] == ["latest.json"]
    with atomic_writer(path) as fh:
        fh.write(b"new ")
        fh.write(b"whole\n")
    assert path.read_bytes() == b"new whole\n"


# -- per-patch retention of a whole check -----------------------------------------------------------

FILES, LINES, GAP = 25, 420, 8  # patch i edits line 10 + GAP * (i // FILES) of file i % FILES


def _edit_patch(i: int) -> bytes:
    """A format-patch editing one line of one file, three lines of context each side (no blob ids)."""
    name, line = f"f{i % FILES:02d}.py", 10 + GAP * (i // FILES)
    context = [f"f{i % FILES:02d} line {n}" for n in range(line - 3, line + 4)]
    body = "".join(f" {c}\n" for c in context[:3]) + f"-{context[3]}\n+{context[3]} npu {i}\n" \
        + "".join(f" {c}\n" for c in context[4:])
    return (f"From {i:040x} Mon Sep 17 00:00:00 2001\nFrom: Port Er <porter@example.org>\n"
            f"Date: Tue, 14 Nov 2023 22:13:20 +0000\nSubject: [PATCH] npu: change {i}\n\n---\n"
            f"diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n"
            f"@@ -{line - 3},7 +{line - 3},7 @@ def f{i}():\n{body}").encode()


def _long_port(root: Path, count: int) -> Path:
    """One upstream, one model, COUNT patches; upstream then adds a header to every other file, so half
    the patches are `offset` (a record with lines), the rest `clean`."""
    from tests.gitfixtures import commit, make_upstream, numbered, write_layer, write_one_upstream_port

    files = {f"f{j:02d}.py": numbered(f"f{j:02d}", LINES) for j in range(FILES)}
    up = root / "up"
    pin = make_upstream(up, files)
    port = root / "port"
    write_layer(port, "npu", "up", {f"{i:04d}-change.patch": _edit_patch(i) for i in range(count)})
    write_one_upstream_port(port, up, pin)
    commit(up, {name: "# header\n# header\n" + text for name, text in list(files.items())[::2]}, "headers")
    return port


_PEAK = ("import sys, tracemalloc\n"
         "from patchkit.cli import main\n"
         "import patchkit.check, patchkit.report.store, patchkit.report.text, unidiff  # imported untraced\n"
         "tracemalloc.start()\n"
         "try:\n"
         "    main(sys.argv[1:])\n"
         "except SystemExit as exc:\n"
         "    sys.stderr.write(f'\\nPEAK {tracemalloc.get_traced_memory()[1]} EXIT {exc.code}\\n')\n")


def _check_peak(port: Path, out: Path) -> int:
    """Traced bytes at the peak of `rebase --check --json --jobs 1` in PORT, in a fresh interpreter (as
    patchkit runs; no memo of another test's patches), stdout into the file OUT."""
    import subprocess
    import sys

    with out.open("wb") as fh:
        run = subprocess.run([sys.executable, "-c", _PEAK, "--quiet", "rebase", "--check", "--json", "--jobs", "1"],
                             cwd=port, stdout=fh, stderr=subprocess.PIPE, text=True)
    found = [line.split() for line in run.stderr.splitlines() if line.startswith("PEAK ")]
    assert found and found[-1][3] == "0", run.stderr[-2000:]
    return int(found[-1][1])


def test_check_memory_is_flat_in_the_series_length(tmp_path: Path) -> None:
    """Peak memory of a whole check (manifest, parse, replay, report kept and printed as JSON) for 150 and
    for 600 patches, cold (an empty cache, as a fresh CI runner) and warm (the manifest and the parses kept
    in the cache): what the 450 more patches add, per patch, stays under a bound. Before it was 5.1 KB a
    patch without the cache's memos and 7.5 KB cold with them (the parse, a trie node and a PatchCheck per
    patch, a Path per manifest ref, the JSON document made three times, the kept parses held through the
    replay and written as one string); then about 1.0 KB a patch (a ref, a name and a hash string per patch);
    now about 0.8 KB: the series' names as one string, and per patch a trie node, what the replay holds (_Held:
    its index, the paths it touches, 8 bytes of its hash) and a moved patch's lines. Traced bytes also count
    the tuples and lists that the interpreter keeps for reuse, so this stays a coarse guard (the
    resident-memory numbers are bench/memory.py's). The bound leaves room for the allocator and other Python
    versions, not for a per-patch document, record or ref again."""
    small, large = _long_port(tmp_path / "small", 150), _long_port(tmp_path / "large", 600)
    per_patch = {}
    for run in ("cold", "warm"):
        peaks = {n: _check_peak(port, tmp_path / f"{n}.json") for n, port in ((150, small), (600, large))}
        per_patch[run] = (peaks[600] - peaks[150]) / 450
    document = json.loads((tmp_path / "600.json").read_text())
    outcomes = [p["outcome"] for p in document["series"][0]["patches"]]
    assert len(outcomes) == 600 and set(outcomes) == {"clean", "offset"}, set(outcomes)
    assert max(per_patch.values()) < 1600, f"bytes a patch: {per_patch}"


def test_checks_read_as_the_list_of_patch_checks(tmp_path: Path) -> None:
    """A check's series outcomes (_Checks, made when read from compact records) behave as the list of
    PatchChecks they stand for: length, order, indexes, slices, and the same record each time."""
    from patchkit.check import PatchCheck, _Checks, _moved
    from patchkit.manifest import PatchRef

    folder = tmp_path / "patches" / "npu" / "up"
    folder.mkdir(parents=True)
    refs = [PatchRef("npu", "up", f"{i:04d}.patch", str(folder / f"{i:04d}.patch"), folder / "series", i + 1)
            for i in range(4)]
    for ref in refs:
        ref.path.write_text("patch\n")
    conflict = PatchCheck("npu/0003.patch", "npu", "0003.patch", "elsewhere/0003.patch", "conflict", broken=True)
    checks = _Checks(refs, ["clean", _moved(3, ["a.py: hunk #1 moved +3 lines"]), "clean", conflict])
    expected = [(p.name, p.outcome, p.offset, p.range_diff, p.broken) for p in checks]
    assert len(checks) == 4 and expected == [
        ("0000.patch", "clean", 0, [], False), ("0001.patch", "offset", 3, ["a.py: hunk #1 moved +3 lines"], False),
        ("0002.patch", "clean", 0, [], False), ("0003.patch", "conflict", 0, [], True)]
    assert checks[-1] is conflict and checks[1] == list(checks)[1]
    assert [c.name for c in checks[1:3]] == ["0001.patch", "0002.patch"]
    assert checks[0].path.endswith("patches/npu/up/0000.patch") and checks[0].patch == "npu/0000.patch"
