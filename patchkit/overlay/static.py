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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

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
    call: ast.Call

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


def targets(folder: Path) -> tuple[list[Target], list[Diagnostic]]:
    """Every declaration in the overlay modules of FOLDER, and the problems found reading them."""
    found: list[Target] = []
    problems: list[Diagnostic] = []
    for file in sorted(folder.glob("*.py")):
        if file.name.startswith("_"):
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        except SyntaxError as exc:
            problems.append(Diagnostic(display(file), exc.lineno or 0, f"does not parse: {exc.msg}"))
            continue
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
            found.append(Target(target, upstream, fp, file, node.lineno, node))
    return found, problems


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


def load_each(manifest_root: Path, names: Iterable[str]) -> dict[str, tuple[list[Target], list[FileOverlay]]]:
    """The declarations and whole-file overlays of each set in NAMES, each set read once however
    many models use it; raise on any problem in any of them."""
    found: dict[str, tuple[list[Target], list[FileOverlay]]] = {}
    problems: list[Diagnostic] = []
    for name in dict.fromkeys(names):
        folder = sets_root(manifest_root) / name
        targets_found, issues = targets(folder)
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
        for target, value in sorted(edits, key=lambda e: (e[0].call.lineno, e[0].call.col_offset), reverse=True):
            text = _set_one(text, starts, target.call, value)
        atomic_write(file, text.encode())


def _line_starts(text: str) -> list[int]:
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _set_one(text: str, starts: list[int], call: ast.Call, value: str) -> str:
    lines = text.splitlines(keepends=True)

    def pos(lineno: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        return starts[lineno - 1] + len(lines[lineno - 1].encode()[:col].decode())

    existing = next((k for k in call.keywords if k.arg == "fingerprint"), None)
    if existing is not None:
        node = existing.value
        start = pos(node.lineno, node.col_offset)
        end = pos(node.end_lineno or node.lineno, node.end_col_offset or 0)
        return text[:start] + f'"{value}"' + text[end:]
    # right after the last argument, so the call keeps its layout (and any trailing comma)
    nodes: list[ast.expr | ast.keyword] = [*call.args, *call.keywords]
    last = max(nodes, key=lambda n: (n.end_lineno or 0, n.end_col_offset or 0))
    end = pos(last.end_lineno or last.lineno, last.end_col_offset or 0)
    return text[:end] + f', fingerprint="{value}"' + text[end:]
