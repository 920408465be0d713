"""Checking YAML documents node by node, so every error carries its file and line."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from patchkit.errors import Diagnostic

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
NAME_MAX = 100  # a name becomes a folder, a file name part and a git branch name: keep it well under 255


def name_problem(value: str) -> str | None:
    """Why VALUE cannot name a model, upstream, layer or overlay set (a folder and a branch), or None."""
    if len(value) > NAME_MAX:
        return f"is {len(value)} characters long (at most {NAME_MAX}: it becomes a folder and a branch name)"
    if not _NAME_RE.match(value):
        return "is not valid (letters, digits, '.', '_', '-'; no leading punctuation)"
    if ".." in value or value.endswith((".", ".lock")):
        return "cannot be a git branch name (no '..', no trailing '.' or '.lock')"
    return None


def compose(text: str) -> yaml.Node | None:
    """`yaml.compose` of TEXT with libyaml's parser where PyYAML has it (about six times faster; the
    same nodes, lines and columns), and PyYAML's own parser for a document libyaml refuses, so an
    error's message and marks are the ones PyYAML gives."""
    if _FAST is not None:
        try:
            return yaml.compose(text, Loader=_FAST)
        except yaml.YAMLError:
            pass
    return yaml.compose(text, Loader=yaml.SafeLoader)


_FAST = getattr(yaml, "CSafeLoader", None)


def short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


class Checker:
    """Generic checks over a `yaml.compose` tree; every problem is collected with its line."""

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        self.where = where
        self.problems: list[Diagnostic] = []

    def error(self, node: yaml.Node | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(Diagnostic(self.where, line, message))

    # -- generic node helpers -------------------------------------------------------------

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Keys of a mapping node (unknown and duplicate keys reported)."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping")
            return {}
        items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                self.error(key, f"{what}: keys must be plain names")
                continue
            if key.value in items:
                first = items[key.value][0].start_mark.line + 1
                self.error(key, f"{what}: duplicate key {key.value!r} (first on line {first})")
                continue
            if allowed and key.value not in allowed:
                self.error(key, f"{what}: unknown key {key.value!r} (expected one of: {', '.join(allowed)})")
                continue
            items[key.value] = (key, value)
        return items

    def string(self, node: yaml.Node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null" or node.value == "":
            self.error(node, f"{what} must be a non-empty string")
            return None
        return str(node.value)

    def strings(self, node: yaml.Node, what: str, *, unique: bool = False) -> list[tuple[str, yaml.Node]]:
        """A list of non-empty strings, each with its node (null: an empty list). UNIQUE: a repeat is an error."""
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list")
            return []
        items: list[tuple[str, yaml.Node]] = []
        for item in node.value:
            value = self.string(item, what)
            if value is None:
                continue
            if unique and value in [v for v, _ in items]:
                self.error(item, f"{what}: {value!r} is listed twice")
            else:
                items.append((value, item))
        return items

    def name(self, key: yaml.Node, what: str) -> str | None:
        value = str(key.value)
        problem = name_problem(value)
        if problem:
            self.error(key, f"{what} name {short(value)} {problem}")
            return None
        return value

    def required(self, items: dict[str, tuple[yaml.Node, yaml.Node]], key: str, parent: yaml.Node, what: str) -> yaml.Node | None:
        if key not in items:
            self.error(parent, f"{what}: missing required key {key!r}")
            return None
        return items[key][1]

    def compose(self, text: str) -> yaml.Node | None:
        """The node tree of TEXT, or None (with the problem recorded) when it is not YAML."""
        try:
            return compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
            if context and start is not None and mark is not None and start.line != mark.line:
                problem += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
            self.problems.append(Diagnostic(self.where, mark.line + 1 if mark else 0, f"invalid YAML: {problem}"))
            return None
