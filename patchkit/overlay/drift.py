"""Does an overlay still fit its upstream? Runtime targets and whole-file overlays, checked statically.

Runtime targets: `holds` (same fingerprint), `drifted` (the body changed: the upstream diff of
the target is shown), `signature-changed`, `missing` (with where a same-named definition now
is, if anywhere), `unfingerprinted` (nothing to compare with: run `patchkit overlay fingerprint`).
Whole-file overlays: `holds` (the upstream file is still the base), `merged` (upstream's change
merges cleanly into the overlay; the merge is shown), `conflict`, `missing` (the file is gone).
"""

from __future__ import annotations

import ast
import re
import tempfile
from collections.abc import Callable, Mapping
from typing import Any
from dataclasses import asdict, dataclass, field
from pathlib import Path

from patchkit import git
from patchkit.overlay import fingerprint as fp
from patchkit.overlay.static import FileOverlay, Target

HOLDING = {"holds", "merged"}


class TreeReader:
    """Files of a tree (commit, tree id or index tree) in a repository, through git.

    Look-ups go through one `git cat-file --batch-command` (OBJECTS, shared by the readers of one
    repository; a reader without one starts its own, stopped by `close`), and each module is parsed
    once per blob (PARSED, shared likewise). TREE may be a function that makes the tree on first use
    (the pin-side replay, needed only when something drifted); None there means no tree."""

    def __init__(self, repo: Path, tree: str | Callable[[], str | None] | None,
                 env: Mapping[str, str] | None = None, *, objects: git.Batch | None = None,
                 parsed: dict[str, ast.Module | None] | None = None, memo: fp.Memo | None = None) -> None:
        self.repo, self.env, self.memo = repo, env, memo or fp.Memo(None)
        self._tree, self._made = tree, not callable(tree)
        self._own = objects is None
        self.objects = objects if objects is not None else git.Batch(repo, env)
        self.parsed = parsed if parsed is not None else {}

    @property
    def tree(self) -> str | None:
        if not self._made:
            assert callable(self._tree)
            self._tree, self._made = self._tree(), True
        return self._tree  # type: ignore[return-value]

    def read(self, path: str) -> str | None:
        blob = self.blob(path)
        return self.read_blob(blob) if blob else None

    def blob(self, path: str) -> str | None:
        found = self.objects.info(f"{self.tree}:{path}") if self.tree else None
        return found[0] if found and found[1] == "blob" else None

    def read_blob(self, blob: str) -> str | None:
        if self.tree is None:  # a tree that could not be made has no blobs of its own
            return None
        found = self.objects.contents(blob)
        return found[1].decode("utf-8", "replace") if found and found[0] == "blob" else None

    def module(self, blob: str) -> ast.Module | None:
        """The syntax tree of BLOB (None when it does not parse), parsed once per blob: its text is read
        only then."""
        if blob not in self.parsed:
            try:
                self.parsed[blob] = ast.parse(self.read_blob(blob) or "")
            except (SyntaxError, ValueError):
                self.parsed[blob] = None
        return self.parsed[blob]

    def fingerprint(self, path: str, qualname: str) -> str | None:
        """The fingerprint of QUALNAME in PATH (None when it is not there), from the memo when known."""
        blob = self.blob(path)
        if blob is None:
            return None
        known, value = self.memo.get(blob, qualname)
        if not known:
            module = self.module(blob)
            value = fp.of_module(module, qualname) if module is not None else None
            self.memo.put(blob, qualname, value)
        return value

    def grep(self, pattern: str) -> list[str]:
        if not self.tree:
            return []
        result = git.run(["grep", "-n", "-E", pattern, self.tree, "--", "*.py"], self.repo, check=False, env=self.env)
        return [ln.split(":", 1)[1] if ln.startswith(self.tree + ":") else ln for ln in result.stdout.splitlines()]

    def close(self) -> None:
        if self._own:
            self.objects.close()

    def __enter__(self) -> TreeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IndexReader(TreeReader):
    """Files of an index file INDEX (a scratch's, saved where a series ends): looked up in the file itself,
    read once when first asked (`git.index_files`), so no tree is written for them. HEXSZ: how long the
    repository's object ids are."""

    def __init__(self, repo: Path, index: Path, env: Mapping[str, str], hexsz: int, **shared: Any) -> None:
        super().__init__(repo, str(index), {**env, "GIT_INDEX_FILE": str(index)}, **shared)
        self.index, self.hexsz = index, hexsz
        self._files: dict[str, str] | None = None

    def blob(self, path: str) -> str | None:
        if self._files is None:
            self._files = git.index_files(self.index, self.repo, self.env or {}, self.hexsz)
        return self._files.get(path)

    def grep(self, pattern: str) -> list[str]:
        result = git.run(["grep", "--cached", "-n", "-E", pattern, "--", "*.py"], self.repo, check=False, env=self.env)
        return result.stdout.splitlines()


@dataclass
class TargetState:
    target: str
    upstream: str
    where: str
    state: str
    declared: str | None
    current: str | None = None
    detail: list[str] = field(default_factory=list)


@dataclass
class FileState:
    set: str
    upstream: str
    path: str
    state: str
    detail: list[str] = field(default_factory=list)


@dataclass
class OverlayResult:
    """One model's overlay declarations classified against one code base: the pinned code (`overlay list`,
    `overlay fingerprint`; SOURCES: what was read, per upstream) or one upstream's newest commit
    (`overlay check` and `rebase --check`, one result per model and UPSTREAM)."""
    model: str
    targets: list[TargetState] = field(default_factory=list)
    files: list[FileState] = field(default_factory=list)
    upstream: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    variant: str | None = None  # against an upstream: the model's variant whose series this is (None: the model)
    target: str = ""  # against an upstream: the key of the check's target ("" read as the upstream's name)

    @property
    def target_key(self) -> str:
        return self.target or self.upstream or ""

    @property
    def broken(self) -> int:
        return sum(t.state not in HOLDING for t in self.targets) + sum(f.state not in HOLDING for f in self.files)

    @property
    def ok(self) -> bool:
        return not self.broken

    def as_json(self) -> dict[str, Any]:
        """The JSON the commands write: {model, upstream, variant, target, targets, files} for a check against
        an upstream, {model, sources, targets, files} for the pinned code."""
        where: dict[str, Any] = {"upstream": self.upstream, "variant": self.variant, "target": self.target_key} \
            if self.upstream is not None else {"sources": self.sources}
        return {"model": self.model, **where, "targets": [asdict(t) for t in self.targets],
                "files": [asdict(f) for f in self.files]}


def module_file(reader: TreeReader, module: str) -> str | None:
    base = module.replace(".", "/")
    for prefix in ("", "src/"):
        for candidate in (f"{prefix}{base}.py", f"{prefix}{base}/__init__.py"):
            if reader.blob(candidate):
                return candidate
    return None


def current(target: Target, reader: TreeReader) -> tuple[str | None, str | None]:
    """(file, fingerprint) of TARGET in READER's tree; None where it is not found."""
    path = module_file(reader, target.module)
    return (path, reader.fingerprint(path, target.qualname)) if path is not None else (None, None)


def classify(target: Target, reader: TreeReader, old: TreeReader | None = None) -> TargetState:
    state = TargetState(target.target, target.upstream, target.where, "holds", target.fingerprint)
    path, value = current(target, reader)
    state.current = value
    if value is None:
        state.state = "missing"
        what = f"module {target.module} is not in the upstream" if path is None else \
            f"{path} has no {target.qualname}"
        state.detail = [what, *_moved(target, reader)]
        return state
    if target.fingerprint is None:
        state.state = "unfingerprinted"
        state.detail = ["no fingerprint to compare with: run `patchkit overlay fingerprint`"]
        return state
    if value == target.fingerprint:
        return state
    old_sig = target.fingerprint.rpartition("-")[2]
    state.state = "signature-changed" if value.rpartition("-")[2] != old_sig else "drifted"
    if old is not None and path is not None:
        before, source = old.read(path), reader.read(path) or ""
        if before is not None:
            state.detail = _diff(fp.segment(before, target.qualname), fp.segment(source, target.qualname), path)
    return state


def _moved(target: Target, reader: TreeReader) -> list[str]:
    name = target.qualname.rsplit(".", 1)[-1]
    hits = reader.grep(rf"^\s*(async\s+)?(def|class)\s+{re.escape(name)}\b|^{re.escape(name)}\s*=")
    return [f"a {name} is defined at {hit.strip()}" for hit in hits[:5]]


def _diff(before: str, after: str, path: str, limit: int = 40) -> list[str]:
    import difflib  # only for a target that drifted

    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), f"a/{path}", f"b/{path}",
                                      n=2, lineterm=""))
    return lines[:limit] + ([f"... {len(lines) - limit} more lines"] if len(lines) > limit else [])


def check_file(overlay: FileOverlay, reader: TreeReader, base_readers: list[TreeReader]) -> FileState:
    """Does upstream's change to OVERLAY's file merge into it? BASE_READERS can find the base blob."""
    state = FileState(overlay.set, overlay.upstream, overlay.path, "holds")
    blob = reader.blob(overlay.path)
    if blob is None:
        state.state, state.detail = "missing", [f"{overlay.path} is not in the upstream any more"]
        return state
    if blob == overlay.base:
        return state
    base = next((text for r in base_readers if (text := r.read_blob(overlay.base)) is not None), None)
    theirs = reader.read_blob(blob) or ""
    if base is None:
        state.state = "conflict"
        state.detail = [f"the base blob {overlay.base[:12]} is not in the upstream history; "
                        "cannot merge (re-base the overlay and update `base`)"]
        return state
    ours = overlay.source.read_text(encoding="utf-8")
    merged, conflicts = merge(ours, base, theirs)
    if conflicts:
        state.state = "conflict"
        state.detail = [f"{conflicts} conflicting region(s) merging upstream's change into the overlay"]
        state.detail += _diff(base, theirs, overlay.path, limit=20)
    else:
        state.state = "merged"
        state.detail = _diff(ours, merged, overlay.path, limit=20)
    return state


def merge(ours: str, base: str, theirs: str) -> tuple[str, int]:
    """Three-way merge of text with `git merge-file`: (result, number of conflicts)."""
    with tempfile.TemporaryDirectory(prefix="patchkit-merge-") as tmp:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        result = git.run(["merge-file", "-p", *paths], check=False)
    if result.returncode < 0 or result.returncode > 127:
        raise git.failure(result)
    return result.stdout, result.returncode
