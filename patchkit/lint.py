"""Header and content lint of a patch file, run by `patchkit validate` (never by `apply`).

Why: a port carries its patches for years. A patch whose message does not say whether it was
sent upstream (the DEP-3 `Upstream-Status:` line) cannot be triaged when the upstream moves,
and a patch that only re-indents or rewords comments buys nothing but conflicts at the next
rebase. Both are cheap to catch before review; `lint` only returns diagnostics, it never prints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

import unidiff

from patchkit.errors import Diagnostic
from patchkit.patchfile import FileChange, ParsedPatch, Patch
from patchkit.paths import display

DEP3_VALUES = ("Pending", "Submitted", "Backport", "Denied", "Inappropriate")
_DEP3_HINT = "DEP-3: Pending, Submitted, Backport, Denied or Inappropriate"
_STATUS = re.compile(r"^Upstream-Status:[ \t]*(.*?)\s*$", re.I)
_VALID = re.compile(rf"^(?:{'|'.join(DEP3_VALUES)})(?: \[.*\])?$")
_HASH_SUFFIXES = {".py", ".pyx", ".sh", ".cfg", ".yaml", ".yml", ".toml", ".txt", ".cmake"}
_C_SUFFIXES = {".c", ".cc", ".cpp", ".cu", ".h", ".hpp", ".cuh"}
_NOT_COSMETIC = ("old mode ", "new mode ", "copy from ", "rename from ", "new file mode ", "deleted file mode ")
_BUILD_OUTPUT = re.compile(r"(^|/)__pycache__/|\.(pyc|pyo|so|o)$")


def lint(patch: Patch, parsed: ParsedPatch) -> list[Diagnostic]:
    """Every lint problem of PATCH (already parsed: its From/Subject problems are parse's)."""
    where = display(patch.ref.path)
    lines = patch.data.decode("utf-8", "surrogateescape").split("\n")
    found = _upstream_status(where, _message(lines))
    if _cosmetic(parsed, "\n".join(lines)):
        found.append(Diagnostic(where, 0, "only changes whitespace or comments "
                                          "(cosmetic hunks are conflicts waiting to happen)"))
    found += [Diagnostic(where, _diff_line(lines, change.path), f"{change.path}: a build output, not source "
                         "(remove this file's section from the patch; ignore it in the workspace)")
              for change in parsed.files if _BUILD_OUTPUT.search(change.path)]
    return found


def _diff_line(lines: list[str], path: str) -> int:
    """The 1-based line of PATH's `diff --git` header (0 when not found)."""
    return next((i + 1 for i, line in enumerate(lines)
                 if line.startswith("diff --git ") and line.rstrip("\r").endswith("/" + path)), 0)


def upstream_status(patch: Patch) -> str | None:
    """The DEP-3 value of PATCH's first `Upstream-Status:` line ('Pending', ...; free text after it dropped),
    the line as written when it is no DEP-3 value, None when there is none."""
    lines = patch.data.decode("utf-8", "surrogateescape").split("\n")
    value = next((m.group(1) for _, line in _message(lines) if (m := _STATUS.match(line))), None)
    if value is None:
        return None
    return value.split(" [")[0] if _VALID.match(value) else value


def _message(lines: list[str]) -> list[tuple[int, str]]:
    """(1-based line, text) of the headers and commit message: up to the `---` before the diff."""
    end = next((i for i, line in enumerate(lines) if line.startswith("diff ")
                or (line.startswith("--- ") and lines[i + 1:i + 2] and lines[i + 1].startswith("+++ "))),
               len(lines))
    cut = next((i for i, line in enumerate(lines[:end]) if line.rstrip("\r") == "---"), end)
    return [(i + 1, line.rstrip("\r")) for i, line in enumerate(lines[:cut])]


def _upstream_status(where: str, message: list[tuple[int, str]]) -> list[Diagnostic]:
    statuses = [(n, m.group(1)) for n, line in message if (m := _STATUS.match(line))]
    if not statuses:
        subject = next((n for n, line in message if line.lower().startswith("subject:")), 0)
        return [Diagnostic(where, subject, f"no Upstream-Status: line ({_DEP3_HINT})")]
    return [Diagnostic(where, n, f"Upstream-Status: {value!r} is not a DEP-3 value "
                                 f"({_DEP3_HINT}, optionally followed by ' [free text]')")
            for n, value in statuses if not _VALID.match(value)]


def _cosmetic(parsed: ParsedPatch, text: str) -> bool:
    """True when every hunk leaves each file the same once whitespace and comments are ignored."""
    try:
        patchset = unidiff.PatchSet(text)
    except unidiff.UnidiffParseError:
        return False
    if len(patchset) != len(parsed.files) or not any(change.hunks for change in parsed.files):
        return False
    return all(_file_cosmetic(change, pf) for change, pf in zip(parsed.files, patchset))


def _file_cosmetic(change: FileChange, pf: unidiff.PatchedFile) -> bool:
    info = str(pf.patch_info or "").splitlines()
    if not change.hunks or pf.is_added_file or pf.is_removed_file:
        return False
    if len({path.rstrip("\r") for path in change.paths}) != 1:  # a rename (unidiff's is_rename trips on CRLF)
        return False
    if any(line.startswith(_NOT_COSMETIC) for line in info):
        return False
    style = _comment_style(change.path)
    for hunk in pf:
        before = [ln.value for ln in hunk if ln.line_type in (" ", "-")]
        after = [ln.value for ln in hunk if ln.line_type in (" ", "+")]
        if _normalise(before, style) != _normalise(after, style):
            return False
    return True


def _comment_style(path: str) -> str:
    p = PurePosixPath(path.rstrip("\r"))  # parse keeps the CR of a CRLF patch's +++ line
    if p.name == "CMakeLists.txt" or p.suffix in _HASH_SUFFIXES:
        return "#"
    return "c" if p.suffix in _C_SUFFIXES else ""


def _normalise(lines: Iterable[str], style: str) -> list[str]:
    """LINES (one side of a hunk, context included) without comments, whitespace or blank lines.

    >>> _normalise(["x = 1  # one", "# gone", "s = '#' # c"], "#")
    ['x=1', "s='#'"]
    >>> _normalise(["int a; // c", "/* start", " * more", "end */ int b;", "*p = 1;", " */ c();"], "c")
    ['inta;', 'intb;', '*p=1;', 'c();']
    >>> _normalise(["x = a", "    * b;"], "c")  # a continued product, not a comment
    ['x=a', '*b;']
    """
    out = []
    in_block = False
    for line in lines:
        if style == "c" and not in_block and re.match(r"\s*\*(?:/|(?:\s|$)(?!.*;\s*$))", line):
            line = line.split("*/", 1)[1] if "*/" in line else ""  # a comment that opened above the hunk
        code, in_block = _strip_comment(line, style, in_block)
        code = "".join(code.split())
        if code:
            out.append(code)
    return out


def _strip_comment(line: str, style: str, in_block: bool) -> tuple[str, bool]:
    """LINE without its comments (not inside quotes); whether a /* comment is still open after it."""
    code, quote, i = [], "", 0
    while i < len(line):
        ch, pair = line[i], line[i:i + 2]
        if in_block:
            in_block, i = (False, i + 2) if pair == "*/" else (True, i + 1)
            continue
        if quote:
            code.append(line[i:i + 2] if ch == "\\" else ch)
            quote = "" if ch == quote else quote
            i += 2 if ch == "\\" else 1
            continue
        if (style == "#" and ch == "#") or (style == "c" and pair == "//"):
            break
        if style == "c" and pair == "/*":
            in_block, i = True, i + 2
            continue
        if style and ch in "'\"":
            quote = ch
        code.append(ch)
        i += 1
    return "".join(code), in_block
