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
