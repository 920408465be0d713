"""Memos in the cache folder: results that depend only on content (a patch's bytes, an upstream blob, a
manifest and the files it reads), kept by that content's hash so a warm run does not compute them again.

One JSON file per kind of result and version of how it is computed, read once per run and written back
(atomically) only when something was added. A file or entry that cannot be read, or does not have the
shape the reader expects, is a miss: the result is computed again and the entry replaced. A memo only
saves work; deleting the cache folder loses nothing.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from array import array
from collections.abc import Iterable, Iterator
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
        return key in self._values, value

    def put(self, key: str, value: Any) -> None:
        """VALUE (JSON data) under KEY, the newest entry."""
        with self._lock:
            self._values.pop(key, None)  # newest last: what LIMIT keeps
            self._values[key] = value
            self._dirty = True

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
                    data = json.dumps(value, sort_keys=self.limit is None)
                    fh.write(f"{', ' if i else '{'}{json.dumps(key)}: {data}".encode())
                fh.write(b"}" if kept else b"{}")
        except OSError:  # a read-only cache only costs the next run the work
            pass


class Entries:
    """Values by key in the JSON file PATH, read one entry at a time: a memo with many entries (a parse per patch
    of every series) that a run does not decode, nor hold, whole. The file is a JSON object written one entry a
    line; what is held is a sorted index of the lines (a hash, an offset and a length each: 20 bytes an entry),
    and a value put is written at once to a spill file, so neither grows the process with the number of
    entries. LIMIT: the most entries the file keeps; those used or added by the last run that added one go
    last and the oldest first (least recently used)."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        """The file as it is now: its index, nothing read or put yet."""
        self._hashes, self._offsets, self._lengths = array("q"), array("q"), array("i")
        self._hits = array("i")  # indexes into the above of the entries read, in the order read
        self._put = array("q")  # the hashes of the keys put, in order
        self._spill: Any = None  # a temporary file of the lines put, in order
        self._fd: int | None = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
            self._index(os.fdopen(os.dup(self._fd), "rb"))
        except OSError:
            pass

    def _index(self, fh: Any) -> None:
        hashes, offsets, lengths = array("q"), array("q"), array("i")
        at = 0
        with fh:
            for line in fh:
                key = _key_hash(line)
                if key is not None and line.endswith((b",\n", b"\n")):
                    hashes.append(key)
                    offsets.append(at)
                    lengths.append(len(line))
                at += len(line)
        order = sorted(range(len(hashes)), key=hashes.__getitem__)  # the lines in the order of their hashes
        self._hashes = array("q", (hashes[i] for i in order))
        self._offsets = array("q", (offsets[i] for i in order))
        self._lengths = array("i", (lengths[i] for i in order))

    def _find(self, raw: bytes) -> tuple[int, bytes] | None:
        """The index and value text of the line whose key (JSON text) is RAW."""
        h = hash(raw)
        i = bisect.bisect_left(self._hashes, h)
        while i < len(self._hashes) and self._hashes[i] == h and self._fd is not None:
            line = os.pread(self._fd, self._lengths[i], self._offsets[i])
            if line.startswith(raw + b": "):
                return i, line[len(raw) + 2:].rstrip(b"\n").rstrip(b",")
            i += 1
        return None

    def get(self, key: str) -> tuple[bool, Any]:
        with self._lock:
            found = self._find(json.dumps(key).encode())
            if found is None:
                return False, None
            try:
                value = json.loads(found[1])
            except ValueError:
                return False, None
            self._hits.append(found[0])
        return True, value

    def put(self, key: str, value: Any) -> None:
        """VALUE (JSON data), written to the spill file at once; read back only after the memo is saved (a run puts
        what it did not find)."""
        raw = json.dumps(key).encode()
        line = raw + b": " + json.dumps(value).encode() + b"\n"
        with self._lock:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(dir=self.path.parent if self.path.parent.is_dir() else None)
            self._spill.write(line)
            self._put.append(hash(raw))

    def save(self) -> None:
        """The file again when something was put (else nothing is written): the entries not used by this run,
        then those used, then those put (a key put again keeps its last value), the last LIMIT of them."""
        with self._lock:
            spill, self._spill = self._spill, None
            if spill is None:
                return
            try:
                self._save(spill)
            except OSError:  # a read-only cache only costs the next run the work
                pass
            finally:
                spill.close()
            self.close()
            self._open()  # the new file's index

    def _save(self, spill: Any) -> None:
        put = array("q", sorted(self._put))
        again = {a for a, b in zip(put, put[1:]) if a == b}  # keys put twice (the same bytes in two files)
        last = {h: i for i, h in enumerate(self._put) if h in again}
        state = bytearray(len(self._hashes))  # 1: read by this run, 2: replaced by a line put
        for i in self._hits:
            state[i] = 1
        for i, h in enumerate(self._hashes):
            j = bisect.bisect_left(put, h)
            if j < len(put) and put[j] == h:
                state[i] = 2
        unused = state.count(0)
        used = state.count(1)
        skip = unused + used + len(self._put) - sum(self._put.count(h) - 1 for h in again) - self.limit
        first = True

        def write(fh: Any, line: bytes) -> None:
            nonlocal first, skip
            if skip > 0:
                skip -= 1
                return
            fh.write((b"{\n" if first else b",\n") + line.rstrip(b"\n").rstrip(b","))
            first = False

        with atomic_writer(self.path) as fh:
            if self._fd is not None and unused:
                for at, line in self._lines():
                    i = self._at(line, at)
                    if i is not None and not state[i]:
                        write(fh, line)
            seen = bytearray(len(self._hashes))
            for i in self._hits:
                if state[i] == 1 and not seen[i]:
                    seen[i] = 1
                    assert self._fd is not None
                    write(fh, os.pread(self._fd, self._lengths[i], self._offsets[i]))
            spill.seek(0)
            for n, line in enumerate(spill):
                if self._put[n] not in last or last[self._put[n]] == n:
                    write(fh, line)
            fh.write(b"{}\n" if first else b"\n}\n")

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """(offset, line) of the file read, in order."""
        assert self._fd is not None
        at = 0
        with os.fdopen(os.dup(self._fd), "rb") as fh:
            fh.seek(0)
            for line in fh:
                yield at, line
                at += len(line)

    def _at(self, line: bytes, at: int) -> int | None:
        """The index of LINE, read at offset AT (None: not an entry)."""
        h = _key_hash(line)
        if h is None:
            return None
        i = bisect.bisect_left(self._hashes, h)
        while i < len(self._hashes) and self._hashes[i] == h:
            if self._offsets[i] == at:
                return i
            i += 1
        return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _key_hash(line: bytes) -> int | None:
    """The hash of the key (its JSON text) of an entry's LINE in an Entries file, None for a line that is no entry."""
    end = line.find(b'": ')
    return hash(line[:end + 1]) if line.startswith(b'"') and end > 0 else None


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


_SAME = (str, int, float, bool, type(None))  # with paths: kinds whose equal values are interchangeable


def encode(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, tuple):
        kind = type(value[0]) if len(value) > 1 else None
        if kind is not None and dataclasses.is_dataclass(kind) and all(type(v) is kind for v in value):
            return _columns(value, kind)
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


def _columns(rows: tuple[Any, ...], kind: type) -> list[Any]:
    """A tuple of dataclasses of one KIND by field (a column each, one value where all rows share it): a file
    change's hunks, a parse's file changes and a series' files are kept with no list per row. It was made for
    a manifest's tuple of refs, which a series no longer is (manifest.Series holds two strings a file)."""
    columns: list[Any] = []
    for f in dataclasses.fields(kind):
        values = [getattr(row, f.name) for row in rows]
        first = values[0]
        same = type(first) in _SAME or isinstance(first, Path)
        if same and all(type(v) is type(first) and v == first for v in values):
            columns.append(["=", encode(first)])
        else:
            columns.append(["l", *map(encode, values)])
    return ["T", "@" + kind.__name__, len(rows), *columns]


def decoder(kinds: Iterable[type]) -> Any:
    """decode(data): the value ENCODE made DATA from, with only the dataclasses KINDS. Equal strings of one
    DATA come back as one string, and equal paths as one Path (the series files of a shared layer, however
    many models use it, share their names' string)."""
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
            if tag == "T":  # a tuple of dataclasses by column (see _columns)
                kind = known.get(rest[0]) if rest and isinstance(rest[0], str) else None
                if kind is None or len(rest) != 2 + kind[1] or type(rest[1]) is not int or not all(
                        isinstance(c, list) and c and (c[0] == "=" and len(c) == 2
                                                       or c[0] == "l" and len(c) == rest[1] + 1) for c in rest[2:]):
                    raise Unreadable("not a memo tuple of columns")
                count = rest[1]
                columns = [[one(c[1])] * count if c[0] == "=" else list(map(one, c[1:])) for c in rest[2:]]
                return tuple(kind[0](*row) for row in zip(*columns))
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

        try:
            return one(data)
        finally:
            one = None  # type: ignore[assignment]  # `one` refers to itself: a cycle that held each value decoded

    return decode
