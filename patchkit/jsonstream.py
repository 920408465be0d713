"""JSON documents written piece by piece, byte for byte as `json.dumps(document, indent=N)` writes them.

A long check's document (a record per patch) is never held whole: its long lists are `Stream`s, made
again from compact records each time the document is written (the kept copy, stdout), and the writer
yields the document in pieces. Everything that is not a Stream (nor a dict holding one) is one piece,
written by json.dumps itself; a piece nested at depth L is json.dumps' text with every line break
indented L levels deeper, which is what json.dumps writes for it nested (a JSON string never holds a
raw line break, so every line break is the indentation's).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_BATCH = 1 << 16  # characters written at once


class Stream:
    """A list of a JSON document, made again from MAKE each time it is read (never held)."""

    def __init__(self, make: Callable[[], Iterable[Any]]) -> None:
        self._make = make

    def __iter__(self) -> Iterator[Any]:
        return iter(self._make())


def _streams(value: Any) -> bool:
    return isinstance(value, Stream) or (isinstance(value, dict) and any(_streams(v) for v in value.values()))


def pieces(value: Any, indent: int, default: Callable[[Any], Any] | None = None, level: int = 0) -> Iterator[str]:
    """VALUE as JSON with INDENT, in pieces that join to json.dumps(VALUE, indent=INDENT, default=DEFAULT)
    (Streams written as lists)."""
    # one encoder for every piece: what json.dumps(value, indent=INDENT, default=DEFAULT) makes for each call
    return _pieces(value, json.JSONEncoder(indent=indent, default=default), indent, level)


def _pieces(value: Any, encoder: json.JSONEncoder, indent: int, level: int) -> Iterator[str]:
    if not _streams(value):
        text = encoder.encode(value)
        yield text.replace("\n", "\n" + " " * (indent * level)) if level else text
        return
    items: Iterable[tuple[str | None, Any]] = (value.items() if isinstance(value, dict)
                                                else ((None, v) for v in value))
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    inner = "\n" + " " * (indent * (level + 1))
    first = True
    for key, item in items:
        if key is not None and not isinstance(key, str):
            raise TypeError(f"keys of a streamed object must be strings, not {type(key).__name__}")
        yield (opening if first else ",") + inner + (json.dumps(key) + ": " if key is not None else "")
        yield from _pieces(item, encoder, indent, level + 1)
        first = False
    yield opening + closing if first else "\n" + " " * (indent * level) + closing


def write(put: Callable[[str], Any], value: Any, indent: int, default: Callable[[Any], Any] | None = None,
          end: str = "\n") -> None:
    """VALUE as JSON (see pieces), then END, given to PUT in batches of about 64K characters."""
    batch: list[str] = []
    size = 0
    for piece in pieces(value, indent, default):
        batch.append(piece)
        size += len(piece)
        if size >= _BATCH:
            put("".join(batch))
            batch, size = [], 0
    put("".join(batch) + end)
