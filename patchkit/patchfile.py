"""A patch file of a series: read byte-exact, parsed for what it touches, checked for safety.

Patches are `git format-patch` files. They are hashed and handed to `git am` as bytes, never
re-encoded, so CRLF lines in them stay CRLF.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from patchkit import memo
from patchkit.errors import Diagnostic
from patchkit.manifest import PatchRef
from patchkit.paths import display

if TYPE_CHECKING:
    import unidiff

_MBOX_FROM = re.compile(rb"^From [0-9a-f]{40} ", re.M)
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_EXTENDED = ("rename from ", "rename to ", "copy from ", "copy to ")
SYMLINK_MODE = "120000"


@dataclass(frozen=True, slots=True)
class Hunk:
    source_start: int
    source_length: int
    target_start: int
    target_length: int
    section: str

    def header(self) -> str:
        text = f"@@ -{self.source_start},{self.source_length} +{self.target_start},{self.target_length} @@"
        return f"{text} {self.section}".rstrip()


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str  # the path after the patch (or before, for a deletion)
    paths: tuple[str, ...]  # every repo path this change reads or writes
    hunks: tuple[Hunk, ...]
    creates_symlink: bool


@dataclass(frozen=True, slots=True)
class Patch:
    ref: PatchRef
    data: bytes
    sha256: str
    files: tuple[tuple[str, bytes], ...] = ()  # whole-file overlays: (path, content), not a diff

    @property
    def name(self) -> str:
        return self.ref.name


@dataclass(frozen=True, slots=True)
class ParsedPatch:
    """What a patch touches: small, and without the patch's bytes (parses are kept for the whole run)."""

    ref: PatchRef
    subject: str
    author: str
    files: tuple[FileChange, ...]

    def file(self, path: str) -> FileChange | None:
        return next((f for f in self.files if path in f.paths), None)


def read(ref: PatchRef) -> Patch:
    with open(ref.file, "rb") as fh:
        data = fh.read()
    return Patch(ref, data, hashlib.sha256(data).hexdigest())


def _strip_prefix(path: str) -> str | None:
    """The repo path `git am -p1` would use, or None for /dev/null."""
    path = path.rstrip("\r")  # a patch file saved with CRLF line ends
    if path == "/dev/null":
        return None
    if len(path) > 1 and path.startswith('"') and path.endswith('"'):
        path = unquote(path[1:-1])
    return path.split("/", 1)[1] if "/" in path else ""


_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def unquote(text: str) -> str:
    """Undo git's C-style path quoting (core.quotePath): octal bytes and backslash escapes."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "01234567" and i + 3 < len(text) + 1 and all(c in "01234567" for c in text[i + 1:i + 4]):
                out.append(int(text[i + 1:i + 4], 8))
                i += 4
                continue
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
        out += ch.encode("utf-8", "surrogateescape")
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _headers(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if not line.strip():
            break
        if line[:1] in " \t" and last:
            headers[last] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if sep and " " not in key:
            last = key.lower()
            headers.setdefault(last, value.strip())
    return headers


def _bad_hunk_line(text: str) -> int:
    """Line of the first hunk whose body does not match its header's counts (0 if not found)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _HUNK.match(lines[i])
        if not m:
            i += 1
            continue
        start = i + 1
        old = int(m.group(2) if m.group(2) is not None else 1)
        new = int(m.group(4) if m.group(4) is not None else 1)
        i += 1
        while (old > 0 or new > 0) and i < len(lines):
            tag = lines[i][:1]
            if tag in (" ", ""):
                old, new = old - 1, new - 1
            elif tag == "-":
                old -= 1
            elif tag == "+":
                new -= 1
            elif tag != "\\":
                break
            i += 1
        if old != 0 or new != 0:
            return start
    return 0


_PARSED: dict[tuple[str, str], tuple[ParsedPatch | None, list[Diagnostic]]] = {}
PARSES_VERSION = 2  # of what a kept parse holds and how _parse reads a patch: a change starts a new file
PARSES_KEPT = 1 << 15  # parses the cache's file keeps (those least recently used go first)
_PARSER = memo.code_key("patchfile.py")  # a parse kept by other code of this file is not used


def parses_memo(cache_root: Path) -> memo.Entries:
    """The parses kept in the cache folder, by the sha256 of the patch's bytes (see `parse`), read one entry
    at a time (a run holds an index of them, not the parses)."""
    return memo.Entries(cache_root / f"parses-v{PARSES_VERSION}.json", PARSES_KEPT)


def parse(patch: Patch, kept: memo.Entries | None = None, hold: bool = True,
          ) -> tuple[ParsedPatch | None, list[Diagnostic]]:
    """What PATCH touches, or the diagnostics that say why it cannot be used (memoised in the process unless
    HOLD is false: a long check holds what each patch touches, not its parse). KEPT: parses kept by the sha256
    of the bytes (`parses_memo`), used and added to; only a patch that parses without a problem is kept there,
    so every diagnostic is made from the file itself and names it."""
    key = (patch.ref.file, patch.sha256)
    found = _PARSED.get(key)
    if found is None:
        kept_key = f"{_PARSER}:{patch.sha256}"
        known = _kept(patch, kept, kept_key) if kept is not None else None
        found = (known, []) if known else _parse(patch)
        if kept is not None and found[0] and not known:
            kept.put(kept_key, memo.encode((found[0].subject, found[0].author, found[0].files)))
        if hold:
            _PARSED[key] = found
    return found


_DECODE = memo.decoder((FileChange, Hunk))


def _kept(patch: Patch, kept: memo.Entries, key: str) -> ParsedPatch | None:
    """PATCH's parse from KEPT (under KEY), or None when it has none or the entry is not a parse (then it is made
    again)."""
    found, data = kept.get(key)
    if not found:
        return None
    try:
        subject, author, files = _DECODE(data)
    except (memo.Unreadable, TypeError, ValueError):
        return None
    if isinstance(subject, str) and isinstance(author, str) and isinstance(files, tuple) and files \
            and all(_is_change(f) for f in files):
        return ParsedPatch(patch.ref, subject, _shared(author), tuple(map(_one_string, files)))
    return None


def _one_string(change: FileChange) -> FileChange:
    """CHANGE with one string per repository path, as _file_change makes it (a memo gives new strings)."""
    return FileChange(_shared(change.path), tuple(map(_shared, change.paths)), change.hunks, change.creates_symlink)


_SHARED: dict[str, str] = {}


def _shared(text: str) -> str:
    """One string for each repository path (and author), however many patches name it. Not sys.intern: the
    interpreter's table of interned strings never shrinks, and doubling it past ~44,000 names costs ~1-2 MB."""
    return _SHARED.setdefault(text, text)


def _is_change(change: object) -> bool:
    return (isinstance(change, FileChange) and isinstance(change.path, str) and isinstance(change.paths, tuple)
            and all(isinstance(p, str) for p in change.paths) and isinstance(change.creates_symlink, bool)
            and isinstance(change.hunks, tuple) and all(
                isinstance(h, Hunk) and isinstance(h.section, str)
                and all(type(n) is int for n in (h.source_start, h.source_length, h.target_start, h.target_length))
                for h in change.hunks))


def _parse(patch: Patch) -> tuple[ParsedPatch | None, list[Diagnostic]]:
    import unidiff  # only where a patch is parsed, not found kept (about 5 ms of start-up)

    def where() -> str:  # only for a problem: display resolves the path (and keeps it in its cache)
        return display(patch.ref.path)

    if len(_MBOX_FROM.findall(patch.data)) > 1:
        return None, [Diagnostic(where(), 0, "holds more than one patch; keep one format-patch file per patch")]
    text = patch.data.decode("utf-8", "surrogateescape")
    headers = _headers(text[text.index("\n") + 1:] if text.startswith("From ") and "\n" in text else text)
    problems = []
    if "@" not in headers.get("from", ""):
        problems.append(Diagnostic(where(), 1, "not a git format-patch file: no 'From: Name <email>' header "
                                   "(make it with git format-patch)"))
    if not headers.get("subject"):
        problems.append(Diagnostic(where(), 1, "not a git format-patch file: no 'Subject:' header"))
    try:
        patchset = unidiff.PatchSet(text)
    except unidiff.UnidiffParseError as exc:
        return None, [*problems, Diagnostic(where(), _bad_hunk_line(text), f"does not parse as a diff: {exc}")]
    files = []
    for pf in patchset:
        files.append(_file_change(pf))
    if not files:
        problems.append(Diagnostic(where(), 0, "contains no diff"))
    if problems:
        return None, problems
    subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", headers["subject"])
    return ParsedPatch(patch.ref, subject, _shared(headers["from"]), tuple(files)), []


def _file_change(pf: unidiff.PatchedFile) -> FileChange:
    paths: list[str] = []
    for raw in (pf.source_file, pf.target_file):
        stripped = _strip_prefix(raw)
        if stripped is not None and stripped not in paths:
            paths.append(_shared(stripped))  # one string for a file however many patches change it
    info = str(pf.patch_info or "")
    for line in info.splitlines():
        for prefix in _EXTENDED:
            if line.startswith(prefix):
                value = line[len(prefix):].rstrip("\r")
                if value not in paths:
                    paths.append(_shared(value))
    hunks = tuple(
        Hunk(h.source_start, h.source_length, h.target_start, h.target_length, h.section_header.strip())
        for h in pf
    )
    symlink = any(line.strip() in (f"new file mode {SYMLINK_MODE}", f"new mode {SYMLINK_MODE}") for line in info.splitlines())
    main_path = _strip_prefix(pf.target_file) or _strip_prefix(pf.source_file) or (paths[0] if paths else "")
    return FileChange(_shared(main_path), tuple(paths), hunks, symlink)


def path_problem(path: str) -> str | None:
    """Why writing PATH (relative to a repo root) would escape the repo, or None."""
    if not path:
        return "an empty path"
    if path.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", path):
        return "an absolute path"
    parts = path.split("/")  # as PurePosixPath(path).parts for these tests, without interning every part
    if ".." in parts:
        return "a '..' path that leaves the repository"
    if any(p.casefold().rstrip(". ") == ".git" for p in parts):
        return "a path inside .git/"
    return None


def check(patch: Patch, kept: memo.Entries | None = None, hold: bool = True,
          ) -> tuple[ParsedPatch | None, list[Diagnostic]]:
    """PATCH parsed, with every reason it cannot be used: parse errors and paths escaping the repo (KEPT and
    HOLD: as for `parse`)."""
    parsed, problems = parse(patch, kept, hold)
    if parsed:
        problems = problems + [Diagnostic(display(patch.ref.path), 0, f"{path!r} is {why}")
                               for path, why in unsafe_paths(parsed)]
    return parsed, problems


def unsafe_paths(parsed: ParsedPatch) -> list[tuple[str, str]]:
    """(path, reason) for every path of PARSED that escapes its repository."""
    found = []
    for change in parsed.files:
        for path in change.paths:
            reason = path_problem(path)
            if reason:
                found.append((path, reason))
    return found


def symlink_prefixes(path: str) -> list[str]:
    """The leading directories of PATH, shortest first: where a symlink would redirect a write."""
    parts = PurePosixPath(path).parts
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def load_series(refs: Iterable[PatchRef]) -> list[Patch]:
    return [read(ref) for ref in refs]


def hunk_at(change: FileChange, source_line: int) -> tuple[int, Hunk] | None:
    """The 1-based number and hunk whose old-side start is SOURCE_LINE."""
    for number, hunk in enumerate(change.hunks, 1):
        if hunk.source_start == source_line:
            return number, hunk
    return None
