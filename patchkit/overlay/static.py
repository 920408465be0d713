"""Reading overlay sets without importing them: declarations, whole-file overlays, rewrites.

An overlay set is a folder `overlays/<set>/`: Python modules whose `replace(...)` and
`replace_value(...)` calls declare runtime targets, and optionally `files.yaml` listing
whole-file overlays kept under `files/<upstream>/<path>`:

    files:
      - upstream: mmcv
        path: mmcv/runner/optimizer.py
        base: 0123456789abcdef0123456789abcdef01234567   # the upstream blob it was based on
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from patchkit import memo
from patchkit.errors import Diagnostic, InvalidInput
from patchkit.overlay.api import TargetName
from patchkit.paths import atomic_write, display

if TYPE_CHECKING:
    import yaml

_DECLARERS = {"replace": 0, "replace_value": 0}
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Target(TargetName):
    """One runtime replacement, as written in an overlay file."""

    target: str
    upstream: str
    fingerprint: str | None
    file: Path
    line: int
    value_at: tuple[int, int, int, int] | None  # the fingerprint= value: line, column, end line, end column
    args_end: tuple[int, int]  # line, column after the call's last argument (columns: UTF-8 byte offsets)

    @property
    def where(self) -> str:
        return f"{display(self.file)}:{self.line}"


@dataclass(frozen=True)
class FileOverlay:
    set: str
    upstream: str
    path: str  # the upstream path it replaces
    source: Path  # our file
    base: str  # the upstream blob it was based on
    line: int  # in files.yaml


def sets_root(manifest_root: Path) -> Path:
    return manifest_root / "overlays"


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def targets(folder: Path, kept: memo.Memo | None = None) -> tuple[list[Target], list[Diagnostic]]:
    """Every declaration in the overlay modules of FOLDER, and the problems found reading them. KEPT
    (`declarations_memo`): the declarations of modules read before, by the sha256 of their text (only a
    module without a problem is kept: every problem is found in the file itself, at its line)."""
    found: list[Target] = []
    problems: list[Diagnostic] = []
    for file in sorted(folder.glob("*.py")):
        if file.name.startswith("_"):
            continue
        text = file.read_text(encoding="utf-8")
        key = f"{_READER}:{hashlib.sha256(text.encode()).hexdigest()}"
        known = _kept(kept.get(key)) if kept is not None else None
        if known is None:
            known, issues = _declarations(text, file)
            problems += issues
            if kept is not None and not issues:
                kept.put(key, memo.encode(known))
        found += [Target(target, upstream, fp, file, line, value_at, args_end)
                  for target, upstream, fp, line, value_at, args_end in known]
    return found, problems


_Declared = tuple[str, str, str | None, int, tuple[int, int, int, int] | None, tuple[int, int]]  # Target's, not the file
DECLARATIONS_VERSION = 1
_READER = memo.code_key("overlay/static.py")


def declarations_memo(cache_root: Path) -> memo.Memo:
    """The declarations of overlay modules kept in the cache folder (see `targets`)."""
    return memo.Memo(cache_root / f"overlay-declarations-v{DECLARATIONS_VERSION}.json", 1024)


def _declarations(text: str, file: Path) -> tuple[list[_Declared], list[Diagnostic]]:
    """The replace(...) and replace_value(...) calls of the module TEXT (FILE names it in problems)."""
    try:
        tree = ast.parse(text, filename=str(file))
    except SyntaxError as exc:
        return [], [Diagnostic(display(file), exc.lineno or 0, f"does not parse: {exc.msg}")]
    found: list[_Declared] = []
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name not in _DECLARERS or not node.args:
            continue
        target = _literal(node.args[0])
        keywords = {k.arg: k.value for k in node.keywords}
        upstream = _literal(keywords["upstream"]) if "upstream" in keywords else None
        fp = _literal(keywords["fingerprint"]) if "fingerprint" in keywords else None
        if target is None or upstream is None:
            problems.append(Diagnostic(display(file), node.lineno, f"{name}(...) needs a literal target string "
                                       "and upstream=\"NAME\" so patchkit can read it without importing"))
            continue
        value = keywords.get("fingerprint")
        value_at = None if value is None else (value.lineno, value.col_offset, value.end_lineno or value.lineno,
                                               value.end_col_offset or 0)
        last = max([*node.args, *node.keywords], key=lambda n: (n.end_lineno or 0, n.end_col_offset or 0))
        found.append((target, upstream, fp, node.lineno, value_at, (last.end_lineno or last.lineno,
                                                                    last.end_col_offset or 0)))
    return found, problems


_DECODE = memo.decoder(())


def _kept(entry: tuple[bool, object]) -> list[_Declared] | None:
    """The declarations a memo entry holds, or None (no entry, or not declarations: read the module again)."""
    if not entry[0]:
        return None
    try:
        known = _DECODE(entry[1])
    except (memo.Unreadable, TypeError, ValueError):
        return None
    ok = isinstance(known, list) and all(
        isinstance(d, tuple) and len(d) == 6 and isinstance(d[0], str) and isinstance(d[1], str)
        and isinstance(d[2], (str, type(None))) and type(d[3]) is int and _ints(d[5], 2)
        and (d[4] is None or _ints(d[4], 4)) for d in known)
    return known if ok else None


def _ints(value: object, n: int) -> bool:
    return isinstance(value, tuple) and len(value) == n and all(type(v) is int for v in value)


def file_overlays(folder: Path, set_name: str) -> tuple[list[FileOverlay], list[Diagnostic]]:
    path = folder / "files.yaml"
    if not path.is_file():
        return [], []
    import yaml  # only for a set with whole-file overlays

    from patchkit import yamlcheck

    where = display(path)
    try:
        root = yamlcheck.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [], [Diagnostic(where, mark.line + 1 if mark else 0, f"invalid YAML: {getattr(exc, 'problem', exc)}")]
    items = _files_list(root)
    if items is None:
        return [], [Diagnostic(where, 1, "expected `files:` with a list of {upstream, path, base}")]
    found, problems = [], []
    for item in items:
        line = item.start_mark.line + 1
        fields = ({k.value: v.value for k, v in item.value if isinstance(v, yaml.ScalarNode)}
                  if isinstance(item, yaml.MappingNode) else {})
        missing = [k for k in ("upstream", "path", "base") if not fields.get(k)]
        if missing:
            problems.append(Diagnostic(where, line, f"missing {', '.join(missing)}"))
            continue
        rel = PurePosixPath(fields["path"])
        if rel.is_absolute() or ".." in rel.parts or ".git" in rel.parts:
            problems.append(Diagnostic(where, line, f"path {fields['path']!r} leaves the repository"))
            continue
        if not _SHA.match(fields["base"]):
            problems.append(Diagnostic(where, line, f"base {fields['base']!r} is not a 40-hex blob SHA"))
            continue
        source = folder / "files" / fields["upstream"] / rel
        if not source.is_file():
            problems.append(Diagnostic(where, line, f"{display(source)} not found"))
            continue
        found.append(FileOverlay(set_name, fields["upstream"], str(rel), source, fields["base"], line))
    return found, problems


def _files_list(root: yaml.Node | None) -> list[yaml.Node] | None:
    import yaml

    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if key.value == "files" and isinstance(value, yaml.SequenceNode):
            return list(value.value)
    return None


def load_sets(manifest_root: Path, names: tuple[str, ...]) -> tuple[list[Target], list[FileOverlay]]:
    """All declarations and whole-file overlays of the sets NAMES; raise on any problem."""
    each = load_each(manifest_root, names)
    return [t for name in names for t in each[name][0]], [f for name in names for f in each[name][1]]


def load_each(manifest_root: Path, names: Iterable[str], kept: memo.Memo | None = None,
              ) -> dict[str, tuple[list[Target], list[FileOverlay]]]:
    """The declarations and whole-file overlays of each set in NAMES, each set read once however
    many models use it; raise on any problem in any of them. KEPT: see `targets`."""
    found: dict[str, tuple[list[Target], list[FileOverlay]]] = {}
    problems: list[Diagnostic] = []
    for name in dict.fromkeys(names):
        folder = sets_root(manifest_root) / name
        targets_found, issues = targets(folder, kept)
        files, more = file_overlays(folder, name)
        found[name] = (targets_found, files)
        problems += issues + more
    if problems:
        raise InvalidInput(problems)
    return found


def write_fingerprints(updates: list[tuple[Target, str]]) -> None:
    """Write each new `fingerprint=` value into its overlay file, touching nothing else."""
    by_file: dict[Path, list[tuple[Target, str]]] = {}
    for target, value in updates:
        by_file.setdefault(target.file, []).append((target, value))
    for file, edits in by_file.items():
        text = file.read_text(encoding="utf-8")
        starts = _line_starts(text)
        # from the end of the file back, so earlier positions stay valid
        for target, value in sorted(edits, key=lambda e: (e[0].value_at or e[0].args_end)[:2], reverse=True):
            text = _set_one(text, starts, target, value)
        atomic_write(file, text.encode())


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _set_one(text: str, starts: list[int], target: Target, value: str) -> str:
    lines = text.splitlines(keepends=True)

    def pos(lineno: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        return starts[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    if target.value_at is not None:
        line, col, end_line, end_col = target.value_at
        return text[:pos(line, col)] + f'"{value}"' + text[pos(end_line, end_col):]
    # right after the last argument, so the call keeps its layout (and any trailing comma)
    end = pos(*target.args_end)
    return text[:end] + f', fingerprint="{value}"' + text[end:]
