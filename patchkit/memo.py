"""Memos in the cache folder: results that depend only on content (a patch's bytes, an upstream blob, a
manifest and the files it reads), kept by that content's hash so a warm run does not compute them again.

One JSON file per kind of result and version of how it is computed, read once per run and written back
(atomically) only when something was added. A file or entry that cannot be read, or does not have the
shape the reader expects, is a miss: the result is computed again and the entry replaced. A memo only
saves work; deleting the cache folder loses nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from patchkit.paths import atomic_writer


class Memo:
    """Values by key, from the JSON file PATH (None: kept for this process only). LIMIT: the most entries
    the file keeps (the oldest go first); None keeps every entry."""

    def __init__(self, path: Path | None, limit: int | None = None) -> None:
        self.path, self.limit = path, limit
        self._lock, self._dirty = threading.Lock(), False
        self._values: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = json.loads(path.read_bytes())
                self._values = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self._values = {}

    def get(self, key: str) -> tuple[bool, Any]:
        with self._lock:
            value = self._values.get(key)
        return key in self._values, value() if callable(value) else value

    def put(self, key: str, value: Any) -> None:
        """VALUE (JSON data), or a function that makes it: called when the memo is saved (or read back), so
        a long run does not hold every new entry's encoding until then (a value read from JSON is never a
        function)."""
        with self._lock:
            self._values.pop(key, None)  # newest last: what LIMIT keeps
            self._values[key] = value
            self._dirty = True

    def lighten(self, key: str, make: Any) -> None:
        """Hold the entry KEY, read from the file and decoded, as MAKE (a function that gives its data again):
        what json read for it is let go (a long series' kept parses are megabytes). The entry keeps its place,
        and the memo is not changed by it."""
        with self._lock:
            if key in self._values:
                self._values[key] = make

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        with self._lock:
            kept = list(self._values.items()) if self.limit is None else list(self._values.items())[-self.limit:]
            self._dirty = False
        if self.limit is None:
            kept.sort()
        try:  # entry by entry: json.dumps(dict(KEPT), sort_keys=...) written without the whole text in memory
            with atomic_writer(self.path) as fh:
                for i, (key, value) in enumerate(kept):
                    data = json.dumps(value() if callable(value) else value, sort_keys=self.limit is None)
                    fh.write(f"{', ' if i else '{'}{json.dumps(key)}: {data}".encode())
                fh.write(b"}" if kept else b"{}")
        except OSError:  # a read-only cache only costs the next run the work
            pass


def code_key(*files: str) -> str:
    """A short digest of the size and modification time of FILES (in the patchkit package): part of a key
    whose result those files compute, so a result kept by other code is not used."""
    package = Path(__file__).parent
    marks = []
    for name in files:
        try:
            st = os.stat(package / name)
            marks.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            marks.append(f"{name}:?")
    return hashlib.sha256("\n".join(marks).encode()).hexdigest()[:16]


# -- an exact JSON form of frozen values: dataclasses, tuples, lists, dicts, paths -------------------
# A value comes back equal to what was kept (a tuple stays a tuple, a Path a Path), made only from the
# dataclasses the reader names; anything else in the data raises Unreadable.


class Unreadable(ValueError):
    """Memo data that is not an encoding of the expected kinds of value."""


def encode(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, tuple):
        return ["t", *map(encode, value)]
    if isinstance(value, list):
        return ["l", *map(encode, value)]
    if isinstance(value, dict):
        return ["d", *([encode(k), encode(v)] for k, v in value.items())]
    if isinstance(value, Path):
        return ["p", str(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ["@" + type(value).__name__, *(encode(getattr(value, f.name)) for f in dataclasses.fields(value))]
    raise TypeError(f"cannot keep a {type(value).__name__} in a memo")


def decoder(kinds: Iterable[type]) -> Any:
    """decode(data): the value ENCODE made DATA from, with only the dataclasses KINDS. Equal strings of one
    DATA come back as one string, and equal paths as one Path (a manifest's refs share their layer's and
    upstream's names and their series file's Path)."""
    known = {"@" + kind.__name__: (kind, len(dataclasses.fields(kind))) for kind in kinds}

    def decode(data: Any) -> Any:
        paths: dict[str, Path] = {}
        strings: dict[str, str] = {}

        def one(data: Any) -> Any:
            if isinstance(data, str):
                return strings.setdefault(data, data)
            if data is None or isinstance(data, (bool, int, float)):
                return data
            if not isinstance(data, list) or not data or not isinstance(data[0], str):
                raise Unreadable(f"not a memo value: {str(data)[:60]}")
            tag, rest = data[0], data[1:]
            if tag == "t":
                return tuple(map(one, rest))
            if tag == "l":
                return list(map(one, rest))
            if tag == "d":
                if not all(isinstance(kv, list) and len(kv) == 2 for kv in rest):
                    raise Unreadable("not a memo dict")
                return {one(k): one(v) for k, v in rest}
            if tag == "p" and len(rest) == 1 and isinstance(rest[0], str):
                if rest[0] not in paths:
                    paths[rest[0]] = Path(rest[0])
                return paths[rest[0]]
            kind = known.get(tag)
            if kind is None or len(rest) != kind[1]:
                raise Unreadable(f"not a memo value: {tag}")
            return kind[0](*map(one, rest))

        return one(data)

    return decode
