"""Fingerprints of upstream code, from its AST: comments, docstrings and formatting do not count.

A fingerprint is `BODY-SIG`: 16 hex digits over the whole target (every definition of the name
in its scope, decorators included) and 8 over its signature (arguments and decorators of a
function, bases of a class), so a changed signature is told apart from a changed body. The AST is
serialised by hand, skipping empty and None fields, so the result does not depend on the Python
version's `ast.dump` format.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

from patchkit import memo

_SKIP_FIELDS = {"ctx", "type_comment", "kind", "type_params"}


_DOC_SCOPES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _serialise(node: object, out: list[str]) -> None:
    """Append NODE's text to OUT; a docstring opening a scope's body is left out (an emptied body
    reads as `pass`), read in place: the caller's tree is neither copied nor changed."""
    if isinstance(node, ast.AST):
        out.append(type(node).__name__ + "(")
        for name in node._fields:
            if name in _SKIP_FIELDS:
                continue
            value = getattr(node, name, None)
            if name == "body" and isinstance(node, _DOC_SCOPES) and _has_docstring(value):
                value = value[1:] or [_PASS]
            if value is None or value == []:
                continue
            out.append(name + "=")
            _serialise(value, out)
            out.append(",")
        out.append(")")
    elif isinstance(node, list):
        out.append("[")
        for item in node:
            _serialise(item, out)
            out.append(",")
        out.append("]")
    else:
        out.append(repr(node))


_PASS = ast.Pass()


def _has_docstring(body: object) -> bool:
    return (isinstance(body, list) and bool(body) and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str))


def _digest(nodes: list[ast.AST], size: int) -> str:
    out: list[str] = []
    for node in nodes:
        _serialise(node, out)
    return hashlib.sha256("".join(out).encode()).hexdigest()[:size]


def _signature(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [node.args, *node.decorator_list] + ([node.returns] if node.returns else [])
    if isinstance(node, ast.ClassDef):
        return [*node.bases, *node.keywords, *node.decorator_list]
    return []


def find(module: ast.Module, qualname: str) -> list[ast.stmt]:
    """Every definition of QUALNAME (`Class.method`, `func`, `CONST`) in MODULE, in source order."""
    scope: list[ast.stmt] = module.body
    *outer, name = qualname.split(".")
    for part in outer:
        classes = [n for n in scope if isinstance(n, ast.ClassDef) and n.name == part]
        if not classes:
            return []
        scope = classes[-1].body
    return [n for n in scope if _defines(n, name)]


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def fingerprint(nodes: list[ast.stmt]) -> str:
    """`BODY-SIG` of the definitions NODES (see the module docstring)."""
    body = _digest(list(nodes), 16)
    sig = _digest([s for n in nodes for s in _signature(n)], 8)
    return f"{body}-{sig}"


def of_source(source: str, qualname: str) -> str | None:
    """The fingerprint of QUALNAME in SOURCE, or None when it is not defined there.

    >>> a = of_source("def f(x):\\n    # a comment\\n    return x + 1\\n", "f")
    >>> a == of_source('def f(x):\\n    "doc"\\n    return (x +\\n            1)\\n', "f")
    True
    >>> a == of_source("def f(x):\\n    return x + 2\\n", "f")
    False
    """
    return of_module(ast.parse(source), qualname)


def of_module(module: ast.Module, qualname: str) -> str | None:
    """The fingerprint of QUALNAME in a parsed MODULE (parse once, fingerprint many targets)."""
    nodes = find(module, qualname)
    return fingerprint(nodes) if nodes else None


def segment(source: str, qualname: str) -> str:
    """The source text of QUALNAME's definitions (decorators included), for a diff."""
    nodes = find(ast.parse(source), qualname)
    lines = source.splitlines(keepends=True)
    parts = []
    for node in nodes:
        first = min([node.lineno, *[d.lineno for d in getattr(node, "decorator_list", [])]])
        parts.append("".join(lines[first - 1:node.end_lineno]))
    return "".join(parts)


class Memo:
    """Fingerprints already computed, by upstream blob and qualified name: a blob never changes, so a
    warm `rebase --check` parses no upstream module whose fingerprints it has seen. Kept in the cache
    folder (patchkit.memo), one file per version of this algorithm and of Python's AST; safe to delete."""

    VERSION = 1

    def __init__(self, path: Path | None) -> None:
        self._kept = memo.Memo(path)

    @classmethod
    def in_cache(cls, cache_root: Path) -> Memo:
        return cls(cache_root / f"fingerprints-v{cls.VERSION}-py{sys.version_info[0]}{sys.version_info[1]}.json")

    def get(self, blob: str, qualname: str) -> tuple[bool, str | None]:
        return self._kept.get(f"{blob}:{qualname}")

    def put(self, blob: str, qualname: str, value: str | None) -> None:
        self._kept.put(f"{blob}:{qualname}", value)

    def save(self) -> None:
        self._kept.save()
