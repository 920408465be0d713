"""The patch reader: a DrivingSDK `.patch` (plain `git diff` output, no header) cut into one diff a
file, with the damage git would accept silently repaired where the intent is unambiguous.

Repairs, each reported: hunk counts that do not match the hunk's body (recounted), blank lines that
lost their leading space (context), a missing final newline, empty files with junk names (a shell
redirect's leftovers), submodule entries (patchkit workspaces have none). Anything else that does
not parse is refused with the patch file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from patchkit.errors import BadInput
from patchkit.importer.model import Finding

_HUNK = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$", re.S)
_INDEX = re.compile(rb"^index ([0-9a-f]+)\.\.([0-9a-f]+)")
_DIFF = re.compile(rb"^diff --git (\S+) (\S+)")
_JUNK_NAME = re.compile(r"^[0-9]*$|^[^.]*~$")


@dataclass
class Hunk:
    line: int  # of its @@ header in the port's patch file
    old_start: int
    new_start: int
    section: bytes
    body: list[bytes]  # lines with their ends

    def header(self) -> bytes:
        old = sum(1 for b in self.body if b[:1] in (b" ", b"-"))
        new = sum(1 for b in self.body if b[:1] in (b" ", b"+"))
        return b"@@ -%s +%s @@%s" % (_range(self.old_start, old), _range(self.new_start, new), self.section)


def _range(start: int, count: int) -> bytes:
    return b"%d,%d" % (start, count) if count != 1 else b"%d" % start


@dataclass
class FileDiff:
    """One file's part of a port patch."""

    source: str  # the port patch file
    line: int  # of its `diff --git` line
    old_path: str | None
    new_path: str | None
    header: list[bytes]  # `diff --git`, mode, index, ---/+++ lines (ends kept)
    hunks: list[Hunk] = field(default_factory=list)
    binary: list[bytes] = field(default_factory=list)  # a GIT binary patch body, kept as is

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for p in (self.old_path, self.new_path) if p))

    @property
    def blobs(self) -> tuple[str, str] | None:
        """The `index OLD..NEW` abbreviated blob names, when the patch has them."""
        for h in self.header:
            m = _INDEX.match(h)
            if m:
                return m.group(1).decode(), m.group(2).decode()
        return None

    def has(self, text: bytes) -> bool:
        return any(h.startswith(text) for h in self.header)

    def data(self, hunks: list[Hunk] | None = None) -> bytes:
        out = list(self.header)
        for hunk in self.hunks if hunks is None else hunks:
            out.append(hunk.header() + b"\n")
            out += hunk.body
        out += self.binary
        return b"".join(out)


def _shown(line: bytes) -> str:
    return repr(line.rstrip(b"\r\n")[:60])


def _path(raw: bytes) -> str | None:
    text = raw.decode("utf-8", "surrogateescape").rstrip("\r")
    if text == "/dev/null":
        return None
    return text.split("/", 1)[1] if "/" in text else text


def parse(data: bytes, source: str) -> tuple[list[FileDiff], list[Finding]]:
    """The per-file diffs of the port patch DATA (named SOURCE) and the repairs made; raise BadInput
    (SOURCE:LINE and the fix) when a part cannot be read without guessing."""
    repairs: list[Finding] = []
    if data and not data.endswith(b"\n"):
        data += b"\n"
        repairs.append(Finding(source, "no final newline", "added (git apply calls the last hunk corrupt)"))
    lines = data.splitlines(keepends=True)
    files: list[FileDiff] = []
    i = 0
    while i < len(lines):
        m = _DIFF.match(lines[i])
        if not m:
            if lines[i].strip() and not files:
                pass  # text before the first diff: git ignores it too
            elif lines[i].strip():
                raise BadInput(f"{source}:{i + 1}: unexpected line outside a hunk: {_shown(lines[i])}",
                               details=["fix the patch by hand (it does not say which file or hunk it belongs to)"])
            i += 1
            continue
        i = _file(lines, i, source, files, repairs)
    kept = []
    for f in files:
        reason = _dropped(f)
        if reason:
            repairs.append(Finding(f"{source}:{f.line}", f"{f.path}: dropped", reason))
        else:
            kept.append(f)
    return kept, repairs


def _dropped(f: FileDiff) -> str | None:
    if f.has(b"deleted file mode 160000") or f.has(b"new file mode 160000") or \
            any(b"Subproject commit" in b for h in f.hunks for b in h.body):
        return "a submodule entry (patchkit workspaces check out no submodules)"
    name = f.path.rsplit("/", 1)[-1]
    if f.has(b"new file mode") and not f.hunks and not f.binary and _JUNK_NAME.match(name):
        return "an empty new file with a junk name (left by a shell redirect)"
    return None


def _file(lines: list[bytes], i: int, source: str, files: list[FileDiff], repairs: list[Finding]) -> int:
    m = _DIFF.match(lines[i])
    assert m
    f = FileDiff(source, i + 1, _path(m.group(1)), _path(m.group(2)), [lines[i]])
    i += 1
    while i < len(lines) and not _HUNK.match(lines[i]) and not _DIFF.match(lines[i]):
        line = lines[i]
        if line.startswith(b"--- "):
            f.old_path = _path(line[4:].rstrip(b"\r\n").split(b"\t")[0])
        elif line.startswith(b"+++ "):
            f.new_path = _path(line[4:].rstrip(b"\r\n").split(b"\t")[0])
        elif line.startswith(b"deleted file mode"):
            f.new_path = None
        elif line.startswith(b"new file mode"):
            f.old_path = None
        if line.startswith(b"GIT binary patch"):
            while i < len(lines) and not _DIFF.match(lines[i]):
                f.binary.append(lines[i])
                i += 1
            break
        if line.strip():
            f.header.append(line)
        i += 1
    while i < len(lines) and _HUNK.match(lines[i]):
        i = _hunk(lines, i, f, repairs)
    files.append(f)
    return i


def _by_header(body: list[bytes], old_n: int, new_n: int) -> int | None:
    """How many lines of BODY the hunk header's counts take, when they fit exactly (the rest blank)."""
    old = new = taken = 0
    while taken < len(body) and (old < old_n or new < new_n):
        line = body[taken]
        tag = line[:1]
        if tag == b" " or not line.strip(b"\r\n"):
            old, new = old + 1, new + 1
        elif tag == b"-":
            old += 1
        elif tag == b"+":
            new += 1
        elif tag != b"\\":
            return None
        taken += 1
    while taken < len(body) and body[taken].startswith(b"\\"):
        taken += 1
    if (old, new) != (old_n, new_n) or any(line.strip() for line in body[taken:]):
        return None
    return taken


def _hunk(lines: list[bytes], i: int, f: FileDiff, repairs: list[Finding]) -> int:
    m = _HUNK.match(lines[i].rstrip(b"\n"))
    assert m
    old_n = int(m.group(2) if m.group(2) is not None else 1)
    new_n = int(m.group(4) if m.group(4) is not None else 1)
    hunk = Hunk(i + 1, int(m.group(1)), int(m.group(3)), m.group(5).rstrip(b"\r") + (b"\r" if m.group(5).endswith(b"\r") else b""), [])
    hunk.section = m.group(5)
    start = i
    i += 1
    end = i
    while end < len(lines) and not _HUNK.match(lines[end]) and not _DIFF.match(lines[end]):
        end += 1
    body = lines[i:end]
    taken = _by_header(body, old_n, new_n)
    if taken is None:  # the header's counts do not fit the body: the body is what the author wrote
        taken = len(body)
        while taken and not body[taken - 1].strip():
            taken -= 1
    fixed = []
    for n, line in enumerate(body[:taken]):
        tag = line[:1]
        if tag in (b" ", b"-", b"+", b"\\"):
            fixed.append(line)
        elif not line.strip(b"\r\n"):
            fixed.append(b" " + line)  # a blank context line that lost its space
        else:
            raise BadInput(f"{f.source}:{i + n + 1}: line {_shown(line)} in the hunk at line {start + 1} is neither "
                           "context, removal nor addition", details=["fix the patch by hand: its intent is ambiguous"])
    body = body[:taken]
    hunk.body = fixed
    old = sum(1 for b in fixed if b[:1] in (b" ", b"-"))
    new = sum(1 for b in fixed if b[:1] in (b" ", b"+"))
    blanks = sum(1 for b, o in zip(fixed, body) if b is not o)
    if blanks:
        repairs.append(Finding(f"{f.source}:{start + 1}", f"{f.path}: {blanks} blank context line(s)",
                               "restored their leading space"))
    if (old, new) != (old_n, new_n):
        repairs.append(Finding(f"{f.source}:{start + 1}", f"{f.path}: hunk header says -{old_n} +{new_n}",
                               f"its body has -{old} +{new}: header recounted"))
    f.hunks.append(hunk)
    return end


def prefixed(fd: FileDiff, prefix: str) -> FileDiff:
    """FD with its paths below PREFIX (a patch applied inside a folder of the upstream)."""
    def fix(line: bytes) -> bytes:
        for tag in (b"--- a/", b"+++ b/"):
            if line.startswith(tag):
                return tag + prefix.encode() + line[len(tag):]
        if line.startswith(b"diff --git a/"):
            a, _, b = line[len(b"diff --git a/"):].partition(b" b/")
            return b"diff --git a/" + prefix.encode() + a + b" b/" + prefix.encode() + b
        for tag in (b"rename from ", b"rename to ", b"copy from ", b"copy to "):
            if line.startswith(tag):
                return tag + prefix.encode() + line[len(tag):]
        return line

    return FileDiff(fd.source, fd.line, prefix + fd.old_path if fd.old_path else None,
                    prefix + fd.new_path if fd.new_path else None, [fix(h) for h in fd.header], fd.hunks, fd.binary)
