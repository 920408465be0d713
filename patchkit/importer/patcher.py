"""The runtime-patcher reader: a port's `mx_driving.patcher` module (legacy `PatcherBuilder` and the
2.0 `AtomicPatch` API), read as text (never imported: it imports torch_npu and mx_driving).

A patch function `f(module, options)` registered with `add_module_patch("pkg", Patch(f))` that
assigns its own nested definitions to `module.a.B.c` targets is static: each target is resolved in
the upstreams' trees (with the port's patches) to `pkg.a:B.c` in one file, fingerprinted there, and the
function becomes an overlay module declaring those replacements. Everything else (mx_driving's own
patches such as `msda` or `ddp`, targets in no upstream, functions that use their module or options
argument otherwise) is listed as an external hook with the reason.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from patchkit.importer.model import Finding, OverlayModuleOut
from patchkit.importer.regen import Tree
from patchkit.overlay import fingerprint as fp

T = TypeVar("T")

_MARKERS = ("mx_driving.patcher", "PatcherBuilder", "default_patcher")


@dataclass
class PatcherResult:
    modules: list[OverlayModuleOut] = field(default_factory=list)
    hooks: list[Finding] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def files(port: Path) -> list[Path]:
    """The port's patcher modules (launch scripts under test/ aside)."""
    found = []
    for path in sorted(port.rglob("*.py")):
        rel = path.relative_to(port).as_posix()
        if rel.startswith("test/") or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if any(m in text for m in _MARKERS) and ("add_module_patch" in text or "AtomicPatch" in text):
            found.append(path)
    return found


def read(port: Path, trees: dict[str, Tree], model: str) -> PatcherResult:
    result = PatcherResult()
    for path in files(port):
        rel = path.relative_to(port).as_posix()
        if "_a5" in path.stem or "a5" == path.stem.rsplit("_", 1)[-1]:
            result.findings.append(Finding(rel, "runtime patcher for A5", "a hardware variant: no README step uses it "
                                           "(variants are the fleet issue's, 16)"))
            continue
        _file(path, rel, trees, result)
    return result


def _file(path: Path, rel: str, trees: dict[str, Tree], result: PatcherResult) -> None:
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        result.findings.append(Finding(f"{rel}:{exc.lineno}", "runtime patcher", f"does not parse: {exc.msg}"))
        return
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    imports = [ast.get_source_segment(source, n) or "" for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if name == "add_module_patch" and call.args and isinstance(call.args[0], ast.Constant):
            for item in call.args[1:]:
                _registered(str(call.args[0].value), item, defs, source, imports, rel, trees, result)
        elif name == "AtomicPatch":
            _atomic(call, defs, source, imports, rel, trees, result)


def _registered(package: str, item: ast.expr, defs: dict[str, ast.FunctionDef], source: str, imports: list[str],
                rel: str, trees: dict[str, Tree], result: PatcherResult) -> None:
    target = item.args[0] if isinstance(item, ast.Call) and item.args else item
    fname = target.id if isinstance(target, ast.Name) else ast.unparse(target)
    where = f"{rel}:{item.lineno}"
    if fname not in defs:
        result.hooks.append(Finding(where, f"{fname} on {package}", "an mx_driving built-in patch: its code is in "
                                    "mx_driving, not in the port (it stays the port's patcher's)"))
        return
    func = defs[fname]
    params = [a.arg for a in func.args.args]
    roots = {params[0]: package} if params else {}
    roots.update(_local_imports(func.body))
    reads, body = _module_reads(func.body, params[0] if params else "", package)
    assigned, rest = _split(body, roots)
    if not assigned:
        result.hooks.append(Finding(f"{rel}:{func.lineno}", f"{fname} on {package}", "assigns no `module.X.y = f` target"))
        return
    if any(_uses(stmt, params) for stmt in rest):
        result.hooks.append(Finding(f"{rel}:{func.lineno}", f"{fname} on {package}", "uses its module or options "
                                    "argument beyond reading names and `module.X.y = f` assignments: not static"))
        return
    local = {n.name for n in rest if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    declared = []
    for dotted, value, line in assigned:
        if value not in local:
            result.hooks.append(Finding(f"{rel}:{line}", dotted, f"assigned {value!r}, not a function the patch defines"))
            continue
        found = resolve(dotted, trees)
        if isinstance(found, str):
            result.hooks.append(Finding(f"{rel}:{line}", dotted, found))
            continue
        declared.append((found, value))
    if declared:
        result.modules.append(_module(rel, func, rest, source, imports + reads, declared))


def _local_imports(body: list[ast.stmt]) -> dict[str, str]:
    """name -> dotted path of `from M import C [as D]` statements in a patch function."""
    out = {}
    for stmt in body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for alias in stmt.names:
                out[alias.asname or alias.name] = f"{stmt.module}.{alias.name}"
    return out


def _module_reads(body: list[ast.stmt], param: str, package: str) -> tuple[list[str], list[ast.stmt]]:
    """`X = module.X` (and `A, B = module.A, module.B`) made imports; the other statements."""
    pairs, rest = _partition(body, lambda stmt: _reads(stmt, param))
    return [f"from {package} import {attr}" + (f" as {name}" if name != attr else "") for name, attr in pairs], rest


def _partition(body: list[ast.stmt], match: Callable[[ast.stmt], list[T] | None]) -> tuple[list[T], list[ast.stmt]]:
    """What MATCH finds in each statement it recognises (it answers None for the others), and the others."""
    found: list[T] = []
    rest: list[ast.stmt] = []
    for stmt in body:
        items = match(stmt)
        if items is None:
            rest.append(stmt)
        else:
            found += items
    return found, rest


def _reads(stmt: ast.stmt, param: str) -> list[tuple[str, str]] | None:
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
        return None
    target, value = stmt.targets[0], stmt.value
    names = target.elts if isinstance(target, ast.Tuple) else [target]
    values = value.elts if isinstance(value, ast.Tuple) else [value]
    if len(names) != len(values):
        return None
    pairs = []
    for n, v in zip(names, values):
        if not (isinstance(n, ast.Name) and isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name)
                and v.value.id == param):
            return None
        pairs.append((n.id, v.attr))
    return pairs


def _split(body: list[ast.stmt], roots: dict[str, str]) -> tuple[list[tuple[str, str, int]], list[ast.stmt]]:
    """(dotted target, assigned name, line) of `root.a.b = name` (also inside `if hasattr(...)` blocks whose
    else only raises), and the other statements."""
    return _partition(body, lambda stmt: _assignments(stmt, roots))


def _assignments(stmt: ast.stmt, roots: dict[str, str]) -> list[tuple[str, str, int]] | None:
    if isinstance(stmt, ast.If) and all(isinstance(s, ast.Raise) for s in stmt.orelse):
        inner = [_assignments(s, roots) for s in stmt.body]
        return None if any(i is None for i in inner) else [a for i in inner for a in i or []]
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.value, ast.Name):
        chain = _chain(stmt.targets[0])
        if chain and chain[0] in roots and len(chain) > 1:
            return [(".".join([roots[chain[0]], *chain[1:]]), stmt.value.id, stmt.lineno)]
    return None


def _chain(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _uses(stmt: ast.stmt, names: list[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(stmt))


def resolve(dotted: str, trees: dict[str, Tree]) -> tuple[str, str, str, str] | str:
    """(upstream, module, qualname, fingerprint) of DOTTED in one of TREES, or why it cannot be resolved."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module, qualname = ".".join(parts[:cut]), ".".join(parts[cut:])
        base = "/".join(parts[:cut])
        for upstream, tree in trees.items():
            for path in (f"{base}.py", f"{base}/__init__.py"):
                data = tree.read(path)
                if data is None:
                    continue
                try:
                    found = fp.find(ast.parse(data), qualname)
                except SyntaxError:
                    return f"{path} in {upstream} does not parse"
                if not found:
                    return f"{qualname} is not defined in {upstream}:{path} (re-exported or made at run time)"
                return upstream, module, qualname, fp.fingerprint(found)
    return f"module {parts[0]} is in no upstream of this port (a package such as torch or mx_driving)"


def _module(rel: str, func: ast.FunctionDef, rest: list[ast.stmt], source: str, imports: list[str],
            declared: list[tuple[tuple[str, str, str, str], str]]) -> OverlayModuleOut:
    body = "\n\n".join(textwrap.dedent(ast.get_source_segment(source, s, padded=True) or "") for s in rest)
    decls = "\n".join(f'replace("{m}:{q}", upstream="{u}", fingerprint="{f}")({name})' for (u, m, q, f), name in declared)
    text = (f'"""{func.name} of the port\'s runtime patcher {rel}:{func.lineno}, made an overlay by `patchkit import`.\n\n'
            "Its definitions are the port's, as written; each replacement is declared with the fingerprint of the\n"
            "upstream code it replaces at the pin (with the port's patches), so `patchkit overlay check` sees drift.\n"
            '"""\n# ruff: noqa\n' + "\n".join(imports) + "\n\nfrom patchkit.overlay import replace\n\n\n" + body +
            "\n\n\n" + decls + "\n")
    return OverlayModuleOut(f"patcher_{func.name}", text, rel)


def _atomic(call: ast.Call, defs: dict[str, ast.FunctionDef], source: str, imports: list[str], rel: str,
            trees: dict[str, Tree], result: PatcherResult) -> None:
    target = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "target"), None)
    repl = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "replacement"), None)
    where = f"{rel}:{call.lineno}"
    if not (isinstance(target, ast.Constant) and isinstance(target.value, str)):
        result.hooks.append(Finding(where, "AtomicPatch", "its target is not a literal string"))
        return
    if not (isinstance(repl, ast.Name) and repl.id in defs):
        result.hooks.append(Finding(where, target.value, "its replacement is not a function this module defines"))
        return
    found = resolve(target.value, trees)
    if isinstance(found, str):
        result.hooks.append(Finding(where, target.value, found))
        return
    result.modules.append(_module(rel, defs[repl.id], [defs[repl.id]], source, imports, [(found, repl.id)]))
