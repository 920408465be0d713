"""Activation: load overlay modules and patch their targets, now or when the target is imported.

    from patchkit.overlay.runtime import activate
    activate(dirs=["overlays/npu"])          # or PATCHKIT_OVERLAYS=overlays/npu:overlays/shared

Every `*.py` file of an overlay folder (sorted, not starting with `_`, not recursive) is loaded as
the module `patchkit_overlays.<folder>.<stem>`; its `replace`/`replace_value` declarations are
then applied:

* a target whose module is already imported is patched at once; other modules that hold the
  original under another name (`from mod import f`) get the replacement too (one pass over
  `sys.modules`, module-level functions and classes only);
* a target whose module is not imported yet waits for it: one finder at the front of
  `sys.meta_path` wraps that module's loader, and the targets are patched right after the module
  body has run, before the importer sees it.

The replacement object itself is installed (wrapped only in `classmethod`, `staticmethod` or
`property` where the upstream attribute is one), so a replaced function costs nothing per call.
`original(replacement)` gives the upstream object. `deactivate()` undoes everything.

This module needs nothing but the standard library and imports fast: training workers call
`activate_from_env()` before importing torch.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
import time
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from patchkit.overlay import api

if TYPE_CHECKING:
    from os import PathLike

__all__ = ["ActivationReport", "Entry", "OverlayError", "activate", "activate_from_env", "deactivate",
           "report"]

ENV_DIRS = "PATCHKIT_OVERLAYS"
ENV_STRICT = "PATCHKIT_OVERLAY_STRICT"
ENV_LOG = "PATCHKIT_OVERLAY_LOG"
PACKAGE = "patchkit_overlays"  # parent of the synthetic module names of overlay files

APPLIED, PENDING, MISSING = "applied", "pending", "missing"
_FUNCTION_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType,
                   types.WrapperDescriptorType)


class OverlayError(Exception):
    """An overlay cannot be activated: a missing target (strict), a broken overlay file, no folders."""


@dataclass
class Entry:
    """One declared target and where it stands."""

    target: str
    upstream: str
    status: str  # applied | pending | missing
    kind: str | None  # function|method|classmethod|staticmethod|property|class|attribute; None until resolved
    file: str
    line: int
    detail: str = ""


@dataclass
class ActivationReport:
    """What activate() did. Its entries are live: a pending target turns applied on import."""

    model: str | None
    strict: bool
    seconds: float  # time spent in activate() since the last deactivate()
    entries: list[Entry] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for e in self.entries if e.status == status)

    def lines(self) -> list[str]:
        out = []
        for e in self.entries:
            line = f"{e.status:<8} {e.kind or '-':<12} {e.target}  ({e.file}:{e.line})"
            out.append(f"{line}  {e.detail}" if e.detail else line)
        out.append(f"overlays: {self.count(APPLIED)} applied, {self.count(PENDING)} pending, "
                   f"{self.count(MISSING)} missing in {self.seconds * 1000:.1f} ms")
        return out


# Internal records are plain classes: a dataclass costs import time, these are imported early.


class _Target:
    __slots__ = ("decl", "entry", "strict", "file_key")

    def __init__(self, decl: api.Declaration, entry: Entry, strict: bool, file_key: str) -> None:
        self.decl, self.entry, self.strict, self.file_key = decl, entry, strict, file_key


class _File:
    __slots__ = ("module_name", "declarations", "targets")

    def __init__(self, module_name: str, declarations: list[api.Declaration]) -> None:
        self.module_name, self.declarations = module_name, declarations
        self.targets: list[_Target] = []


class _Patch:
    """One attribute we set: enough to put the previous state back."""

    __slots__ = ("target", "owner", "attr", "present", "previous")

    def __init__(self, target: _Target, owner: Any, attr: str, present: bool, previous: Any) -> None:
        self.target, self.owner, self.attr = target, owner, attr
        self.present = present  # the owner held it itself (else it was inherited or lazy: delete it)
        self.previous = previous


class _State:
    model: str | None = None
    strict: bool = True
    seconds: float = 0.0


# The state of this process. Module globals: activation is process-wide by nature.
_files: dict[str, _File] = {}  # resolved overlay file path -> what it declared
_entries: list[Entry] = []
_pending: dict[str, list[_Target]] = {}  # module name -> targets waiting for its import
_patches: list[_Patch] = []
_finder: _OverlayFinder | None = None
_state = _State()


# ---------------------------------------------------------------------------------------------
# Public API


def activate(model: str | None = None, *, dirs: list[str | PathLike[str]] | None = None,
             strict: bool = True) -> ActivationReport:
    """Load the overlay files of DIRS (default: $PATCHKIT_OVERLAYS) and patch their targets.

    Idempotent: files already loaded (by resolved path) are neither loaded nor applied again.
    Strict, a target whose module is imported but lacks the attribute raises OverlayError (and
    this call's overlays are undone); lax, it is reported as missing. MODEL is only recorded.
    """
    start = time.perf_counter()
    folders = _folders(model, dirs)
    mark = len(_patches)
    new: list[str] = []
    try:
        for path in _overlay_files(folders):
            key = os.path.realpath(path)
            if key in _files:
                continue
            loaded = _load(key)
            _files[key] = loaded
            new.append(key)
            loaded.targets = [_Target(d, Entry(d.target, d.upstream, PENDING, None, d.file, d.line),
                                      strict, key) for d in loaded.declarations]
            for target in loaded.targets:
                _entries.append(target.entry)
                _place(target)
        _alias_pass(_patches[mark:])
    except BaseException:
        _forget(new)
        raise
    finally:
        _state.seconds += time.perf_counter() - start
    if model is not None:
        _state.model = model
    _state.strict = strict
    return report()


def activate_from_env() -> ActivationReport | None:
    """Activate $PATCHKIT_OVERLAYS if set (lax when $PATCHKIT_OVERLAY_STRICT is 0/false).

    With $PATCHKIT_OVERLAY_LOG set to a file, the report lines are appended to it.
    """
    if not os.environ.get(ENV_DIRS):
        return None
    strict = os.environ.get(ENV_STRICT, "1").strip().lower() not in ("0", "false", "no", "off")
    result = activate(None, strict=strict)
    log = os.environ.get(ENV_LOG)
    if log:
        text = "".join(f"{line}\n" for line in [f"# patchkit overlays, pid {os.getpid()}", *result.lines()])
        try:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:  # a bad log path must not stop a training run
            print(f"patchkit: cannot write the overlay report to {log}: {exc}", file=sys.stderr)
    return result


def report() -> ActivationReport:
    """The current state: every target of every loaded overlay file."""
    return ActivationReport(_state.model, _state.strict, _state.seconds, list(_entries))


def deactivate() -> None:
    """Undo everything: restore patched attributes, drop the import hook and the loaded overlays."""
    global _finder
    _forget(list(_files))
    if _finder is not None:
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
        _finder = None
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    _state.model, _state.strict, _state.seconds = None, True, 0.0


# ---------------------------------------------------------------------------------------------
# Loading overlay files


def _folders(model: str | None, dirs: list[str | PathLike[str]] | None) -> list[str]:
    if dirs is None and not os.environ.get(ENV_DIRS) and model:
        dirs = list(model_dirs(model))
    if dirs is None:
        value = os.environ.get(ENV_DIRS)
        if not value:
            what = f"the overlays of model {model!r}" if model else "overlays"
            raise OverlayError(f"cannot find {what}: set {ENV_DIRS} or pass dirs ({ENV_DIRS} "
                               f"is a list of overlay folders separated by {os.pathsep!r})")
        dirs = [part for part in value.split(os.pathsep) if part]
    folders = []  # no pathlib: it is not imported yet in a fresh worker, and costs milliseconds
    for d in dirs:
        folder = os.path.realpath(os.fspath(d))
        if not os.path.isdir(folder):
            raise OverlayError(f"overlay folder {os.fspath(d)} does not exist or is not a folder")
        folders.append(folder)
    return folders


def model_dirs(model: str) -> list[str]:
    """The overlay folders of MODEL, from upstreams.yaml (PATCHKIT_MANIFEST, else found upward)."""
    from pathlib import Path

    from patchkit import manifest as manifest_mod
    from patchkit.errors import PatchkitError

    try:
        path = Path(os.environ["PATCHKIT_MANIFEST"]) if os.environ.get("PATCHKIT_MANIFEST") else manifest_mod.find()
        found = manifest_mod.load(path)
        sets = found.model(model).overlays
    except PatchkitError as exc:
        raise OverlayError(f"cannot find the overlays of model {model!r}: {' '.join(exc.lines())}; "
                           f"set {ENV_DIRS} or pass dirs") from None
    return [str(found.root / "overlays" / name) for name in sets]


def _overlay_files(folders: list[str]) -> list[str]:
    files = []
    for folder in folders:
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it if e.name.endswith(".py") and not e.name.startswith("_")
                           and e.is_file())
        files += [os.path.join(folder, name) for name in names]
    return files


def _identifier(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return out if out.isidentifier() else f"_{out}"


def _parent(name: str) -> types.ModuleType:
    """A synthetic package in sys.modules, so that `patchkit_overlays.x.y` imports (pickle)."""
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name, "Overlay modules loaded by patchkit.overlay.runtime.")
        module.__path__ = []  # a package that finds nothing on disk
        sys.modules[name] = module
        head, _, tail = name.rpartition(".")
        if head:
            setattr(_parent(head), tail, module)
    return module


def _load(path: str) -> _File:
    """Execute overlay file PATH as a module; return the declarations it made."""
    folder, filename = os.path.split(path)
    base = f"{PACKAGE}.{_identifier(os.path.basename(folder))}.{_identifier(filename[:-3])}"
    name, n = base, 1
    while name in sys.modules:  # same folder and file name in two places
        n += 1
        name = f"{base}_{n}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise OverlayError(f"cannot load overlay file {path}")
    module = importlib.util.module_from_spec(spec)
    head, _, tail = name.rpartition(".")
    parent = _parent(head)
    before = len(api._DECLARED)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        made = api._DECLARED[before:]
        del api._DECLARED[before:]
        for decl in made:
            api._ORIGINALS.pop(id(decl.replacement), None)
        if isinstance(exc, (OverlayError, KeyboardInterrupt, SystemExit)):
            raise
        raise OverlayError(f"overlay file {path} failed to load: {type(exc).__name__}: {exc}") from exc
    setattr(parent, tail, module)
    return _File(name, api._DECLARED[before:])


def _forget(keys: list[str]) -> None:
    """Undo the patches of the overlay files KEYS and drop everything they declared."""
    keys_set = set(keys)
    if not keys_set:
        return
    for i in range(len(_patches) - 1, -1, -1):
        patch = _patches[i]
        if patch.target.file_key in keys_set:
            _restore(patch)
            del _patches[i]
    for module_name in list(_pending):
        left = [t for t in _pending[module_name] if t.file_key not in keys_set]
        if left:
            _pending[module_name] = left
        else:
            del _pending[module_name]
    dropped = {id(t.entry) for k in keys_set for t in _files[k].targets}
    _entries[:] = [e for e in _entries if id(e) not in dropped]
    for key in keys:
        loaded = _files.pop(key)
        sys.modules.pop(loaded.module_name, None)
        head, _, tail = loaded.module_name.rpartition(".")
        parent = sys.modules.get(head)
        if parent is not None and getattr(parent, tail, None) is not None:
            delattr(parent, tail)
        ids = {id(d) for d in loaded.declarations}
        api._DECLARED[:] = [d for d in api._DECLARED if id(d) not in ids]
        for decl in loaded.declarations:
            api._ORIGINALS.pop(id(decl.replacement), None)


def _restore(patch: _Patch) -> None:
    try:
        if patch.present:
            setattr(patch.owner, patch.attr, patch.previous)
        elif patch.attr in getattr(patch.owner, "__dict__", {}):
            delattr(patch.owner, patch.attr)
    except (AttributeError, TypeError):
        pass


# ---------------------------------------------------------------------------------------------
# Patching


def _place(target: _Target) -> None:
    """Patch TARGET now if its module is imported, else leave it to the import hook."""
    module_name = target.decl.module
    module = sys.modules.get(module_name)
    if module is not None:
        _apply(target, module)
        return
    _pending.setdefault(module_name, []).append(target)
    target.entry.detail = f"waits for `import {module_name}`"
    _install_finder()


def _apply(target: _Target, module: Any) -> None:
    """Patch TARGET in its imported MODULE (strict: raise when it is missing; lax: report it)."""
    decl, entry = target.decl, target.entry
    try:
        owner, attr, present, raw = _resolve(module, decl)
        kind, installed, original = _install_form(owner, raw, decl.replacement)
        try:
            setattr(owner, attr, installed)
        except (AttributeError, TypeError) as exc:
            raise _Missing(f"cannot set {decl.target}: {type(exc).__name__}: {exc}") from None
    except _Missing as missing:
        entry.status, entry.detail = MISSING, str(missing)
        if target.strict:
            raise OverlayError(f"overlay target {decl.target} ({decl.file}:{decl.line}, upstream "
                               f"{decl.upstream}): {missing}") from None
        return
    _patches.append(_Patch(target, owner, attr, present, raw))
    if _records_original(decl.replacement):
        api._record_original(decl.replacement, original)
    entry.status, entry.kind, entry.detail = APPLIED, kind, ""


class _Missing(Exception):
    pass


def _resolve(module: Any, decl: api.Declaration) -> tuple[Any, str, bool, Any]:
    """(owner, attribute, whether the owner holds it itself, the raw object it holds)."""
    parts = decl.qualname.split(".")
    owner = module
    for i, part in enumerate(parts[:-1]):
        try:
            owner = getattr(owner, part)
        except AttributeError:
            where = f"{decl.module}:{'.'.join(parts[:i])}" if i else decl.module
            raise _Missing(f"{where} has no attribute {part!r}") from None
    attr = parts[-1]
    if isinstance(owner, type):
        for klass in owner.__mro__:  # the class dicts show descriptors as they are
            if attr in klass.__dict__:
                return owner, attr, klass is owner, klass.__dict__[attr]
    else:
        namespace = getattr(owner, "__dict__", None)
        if isinstance(namespace, dict) and attr in namespace:
            return owner, attr, True, namespace[attr]
    try:
        return owner, attr, False, getattr(owner, attr)  # a module __getattr__, a slot, a metaclass
    except AttributeError:
        where = f"{decl.module}:{'.'.join(parts[:-1])}" if len(parts) > 1 else decl.module
        raise _Missing(f"{where} has no attribute {attr!r}") from None


def _install_form(owner: Any, raw: Any, replacement: Any) -> tuple[str, Any, Any]:
    """(kind, the object to set, what original() gives) for RAW, held by OWNER, replaced."""
    plain = isinstance(replacement, types.FunctionType)
    if isinstance(raw, type):
        return "class", replacement, raw
    if isinstance(owner, type):
        if isinstance(raw, classmethod):
            return "classmethod", classmethod(replacement) if plain else replacement, raw.__func__
        if isinstance(raw, types.ClassMethodDescriptorType):  # a classmethod of a C class
            return "classmethod", classmethod(replacement) if plain else replacement, raw
        if isinstance(raw, staticmethod):
            return "staticmethod", staticmethod(replacement) if plain else replacement, raw.__func__
        if isinstance(raw, property):
            return "property", property(replacement) if plain else replacement, raw
        if isinstance(raw, _FUNCTION_TYPES):
            return "method", replacement, raw
        return "attribute", replacement, raw
    if callable(raw):
        return "function", replacement, raw
    return "attribute", replacement, raw


def _records_original(replacement: Any) -> bool:
    """original() is for code: a plain value (True, 3) shares its id with every other use of it."""
    return callable(replacement) or isinstance(replacement, (property, classmethod, staticmethod))


def _alias_pass(patches: list[_Patch]) -> None:
    """Give modules that imported a patched original under their own name the replacement.

    Only module-level functions and classes, only for originals defined in the target's own
    top-level package (so replacing `pkg.mod:sqrt`, which is `math.sqrt`, leaves math alone).
    """
    swaps: dict[int, tuple[Any, Any, _Patch]] = {}  # id(original) -> (original, replacement, patch)
    for patch in patches:
        if patch.target.entry.kind not in ("function", "class") or not isinstance(patch.owner, types.ModuleType):
            continue
        original, top = patch.previous, patch.target.decl.module.partition(".")[0]
        defined_in = getattr(original, "__module__", None)
        if not isinstance(defined_in, str) or defined_in.partition(".")[0] != top:
            continue
        swaps[id(original)] = (original, getattr(patch.owner, patch.attr), patch)
    if not swaps:
        return
    for key, (original, replacement, patch) in list(swaps.items()):  # two overlays, one target
        seen = {key}
        while id(replacement) in swaps and id(replacement) not in seen:
            seen.add(id(replacement))
            replacement = swaps[id(replacement)][1]
        swaps[key] = (original, replacement, patch)
    wanted = swaps.keys()
    counts: dict[int, int] = {}
    for name, module in list(sys.modules.items()):
        if module is None or name == "patchkit" or name.startswith(("patchkit.", PACKAGE)):
            continue
        try:
            namespace = module.__dict__
        except Exception:  # noqa: BLE001 - odd objects live in sys.modules too
            continue
        if not isinstance(namespace, dict) or wanted.isdisjoint(map(id, namespace.values())):
            continue
        hits = [(k, v) for k, v in namespace.items() if id(v) in swaps and swaps[id(v)][0] is v]
        for attr, value in hits:
            _, replacement, patch = swaps[id(value)]
            if patch.owner is module and attr == patch.attr:
                continue
            namespace[attr] = replacement
            _patches.append(_Patch(patch.target, module, attr, True, value))
            counts[id(patch)] = counts.get(id(patch), 0) + 1
    for _, _, patch in swaps.values():
        if counts.get(id(patch)):
            n = counts[id(patch)]
            patch.target.entry.detail = f"+{n} alias{'es' if n > 1 else ''}"


# ---------------------------------------------------------------------------------------------
# The import hook


def _install_finder() -> None:
    global _finder
    if _finder is None:
        _finder = _OverlayFinder()
        sys.meta_path.insert(0, _finder)


def _on_loaded(name: str, module: Any) -> None:
    """Module NAME has just run its body: patch its pending targets.

    Strict, a missing target undoes the others of this module, leaves them pending and fails the
    import with OverlayError.
    """
    targets = _pending.pop(name, None)
    if not targets:
        return
    module = sys.modules.get(name, module)  # a module may put another object in its place
    try:
        for target in targets:
            _apply(target, module)
    except OverlayError:
        for target in targets:  # strict: none of this module's targets stays applied
            for i in range(len(_patches) - 1, -1, -1):
                if _patches[i].target is target:
                    _restore(_patches.pop(i))
            if target.entry.status == APPLIED:
                target.entry.status = PENDING
        _pending[name] = targets
        raise


class _OverlayFinder:
    """Finds nothing itself: for a module with pending targets it asks the other finders and
    wraps the loader of the spec they return so that the targets are patched after exec."""

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _pending or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.discard(fullname)
        if spec is None:
            return None
        if not _wrap_loader(spec, fullname):
            for t in _pending.get(fullname, ()):
                t.entry.detail = "its module has no loader to hook (a namespace package?): not patched"
        return spec

    def invalidate_caches(self) -> None:
        pass


def _wrap_loader(spec: Any, name: str) -> bool:
    """Make SPEC's loader patch NAME's targets after running the module; False where it cannot."""
    loader = spec.loader
    if loader is None or not hasattr(loader, "exec_module"):
        return False
    if not isinstance(loader, (type, types.ModuleType)):
        # A shallow copy with exec_module overridden on the instance: same class (isinstance and
        # pkg_resources' loader-type lookups keep working), same attributes, the original untouched.
        try:
            clone = copy.copy(loader)
            if clone is not loader and type(clone) is type(loader):
                clone.exec_module = _patching_exec(clone.exec_module, name)
                spec.loader = clone
                return True
        except Exception:  # noqa: BLE001 - __slots__, uncopyable loaders: use the proxy
            pass
    spec.loader = _LoaderProxy(loader, _patching_exec(loader.exec_module, name))
    return True


def _patching_exec(exec_module: Any, name: str) -> Any:
    def exec_and_patch(module: types.ModuleType) -> None:
        exec_module(module)
        _on_loaded(name, module)

    return exec_and_patch


class _LoaderProxy:
    """A loader that runs the hook after exec_module and delegates everything else."""

    def __init__(self, loader: Any, exec_module: Any) -> None:
        self._loader = loader
        self.exec_module = exec_module

    def __getattr__(self, attr: str) -> Any:
        if attr == "_loader":  # not set yet (copy, pickle): no recursion
            raise AttributeError(attr)
        return getattr(self._loader, attr)

    def __repr__(self) -> str:
        return f"<patchkit overlay hook around {self._loader!r}>"
