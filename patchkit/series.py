"""Quilt-compatible `series` files: one patch file name a line, `#` comments, blank lines ignored.

>>> [e.name for e in parse_text("# base\\n0001-a.patch\\n\\n0002-b.patch -p1  # why\\n", "series")[0]]
['0001-a.patch', '0002-b.patch']
"""

from __future__ import annotations

from dataclasses import dataclass

from patchkit.errors import Diagnostic


@dataclass(frozen=True)
class SeriesEntry:
    name: str
    line: int


def parse_text(text: str, where: str) -> tuple[list[SeriesEntry], list[Diagnostic]]:
    """Entries of a series file and the problems found in it (WHERE names it in diagnostics)."""
    entries: list[SeriesEntry] = []
    problems: list[Diagnostic] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *options = line.split()
        bad = [o for o in options if o != "-p1"]
        if bad:
            problems.append(Diagnostic(where, lineno, f"unsupported option {' '.join(bad)!r} for {name} "
                                       "(git format-patch files apply with -p1 only)"))
        if name.startswith("/") or ".." in name.split("/"):  # as PurePosixPath's, without interning each name
            problems.append(Diagnostic(where, lineno, f"patch name {name!r} points outside the series folder"))
            continue
        if name in seen:
            problems.append(Diagnostic(where, lineno, f"{name} is listed twice (first on line {seen[name]})"))
            continue
        seen[name] = lineno
        entries.append(SeriesEntry(name, lineno))
    return entries, problems


def parse_bytes(data: bytes, where: str) -> tuple[list[SeriesEntry], list[Diagnostic]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [], [Diagnostic(where, 0, "series file is not UTF-8 text")]
    return parse_text(text, where)
