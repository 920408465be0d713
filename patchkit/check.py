"""`patchkit rebase --check`: replay every series on the newest upstream and say what still holds.

Each upstream is checked in its own scratch index (see scratch.py), never in a workspace. The
series of all models on one upstream form a trie: a layer shared by several models is replayed
once per upstream ref, and each model continues from where the shared part left off.

Outcomes, per patch: clean, offset (N lines), fuzz (applies only with less context; broken
unless allowed), merged (only through a three-way merge), conflict (files, hunks and the upstream
commits that touched those lines), upstreamed (already in the new upstream: drop it),
target-missing (a file it changes is gone; renamed-to when git sees the rename), blocked (fails
only because an earlier broken patch is missing under it).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit import cache, git, memo, patchfile, settings
from patchkit.errors import BadInput, Diagnostic, InvalidInput, PatchkitError
from patchkit.manifest import Effective, Manifest, Model, PatchRef, Upstream
from patchkit.patchfile import ParsedPatch, Patch
from patchkit.paths import display
from patchkit.overlay import drift, fingerprint, static
from patchkit.overlay.drift import IndexReader, OverlayResult, TreeReader
from patchkit.scratch import Folder, Saved, Scratch, offsets, replay, split_verbose
from patchkit.shard import Shard, assign

Progress = Callable[[str], None]
OUTCOMES = ("clean", "offset", "fuzz", "merged", "upstreamed", "conflict", "target-missing", "blocked")
_BROKEN = {"conflict", "target-missing", "blocked"}
_PATCH_FAILED = re.compile(r"^error: patch failed: (.+):(\d+)$", re.M)
_CONTEXT = 3
_RUN = 256  # patches given to one `git apply` at most


@dataclass
class FileIssue:
    path: str
    reason: str
    hunks: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)  # "sha subject" of upstream commits since the pin
    renamed_to: str | None = None


@dataclass
class PatchCheck:
    patch: str  # layer/name
    layer: str
    name: str
    path: str
    outcome: str
    broken: bool = False
    offset: int = 0  # the largest hunk move, in lines
    fuzz: int = 0  # context lines that had to be ignored
    blocked_by: str | None = None
    files: list[FileIssue] = field(default_factory=list)
    range_diff: list[str] = field(default_factory=list)


@dataclass
class SeriesCheck:
    model: str
    upstream: str
    patches: Sequence[PatchCheck]  # a check's own: _Checks, made when read from what the replay kept
    variant: str | None = None  # the model's variant whose series this is (None: the model itself)
    target: str = ""  # the key in CheckReport.targets it was checked against ("" read as the upstream's name)

    @property
    def target_key(self) -> str:
        return self.target or self.upstream


@dataclass
class Target:
    upstream: str
    url: str
    pin: str
    ref: str
    commit: str
    commits_since_pin: int
    pin_is_ancestor: bool
    commits_behind: int = 0  # commits of the pin the target does not have


@dataclass
class CheckReport:
    targets: dict[str, Target]
    series: list[SeriesCheck]
    allow_fuzz: bool
    overlays: list[OverlayResult] = field(default_factory=list)
    shard: Shard | None = None  # the part of the check this report covers (`--shard K/N`)

    @property
    def ok(self) -> bool:
        return not self.broken() and not any(o.broken for o in self.overlays)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for s in self.series:
            for outcome, _ in _states(s.patches):
                counts[outcome] += 1
        return counts

    def broken(self) -> int:
        """Patches that break (overlays not counted)."""
        return sum(broken for s in self.series for _, broken in _states(s.patches))


def parse_onto(items: tuple[str, ...], manifest: Manifest) -> dict[str, str]:
    onto = {}
    for item in items:
        name, sep, ref = item.partition("=")
        if not sep or not name or not ref:
            raise BadInput(f"--onto {item!r}: expected UPSTREAM=REF")
        manifest.upstream(name)
        onto[name] = ref
    return onto


@dataclass
class _Unit:
    """One (model or variant, upstream) series of the check."""

    view: Effective
    upstream: str
    refs: Sequence[PatchRef]  # its series (the patches are read when its upstream is replayed)
    report: bool  # a series entry of its own (a variant's series identical to the model's is not repeated)
    overlays: tuple[list[static.Target], list[static.FileOverlay]] | None = None  # checked on this series
    target: str = ""  # the key of the target it is checked against (target_key)

    @property
    def label(self) -> str:
        return self.view.label


def target_key(manifest: Manifest, up: Upstream) -> str:
    """The name of the target a series on UP (a model's effective view of it) is checked against:
    the upstream's own name at its own pin and track, else `up@pin12` (and `~track` when that differs)."""
    own = manifest.upstreams[up.name]
    if up.base == own.base:
        return up.name
    return f"{up.name}@{up.pin[:12]}" + (f"~{up.track}" if up.track != own.track else "")


def _parsed_units(manifest: Manifest, chosen: list[Model], shard: Shard | None) -> tuple[list[_Unit], memo.Entries]:
    """_units, their patches parsed with the parses kept in the cache (saved with the new ones), and those kept
    parses, where the replay reads a patch's whole parse again (a check holds what each patch touches)."""
    kept = patchfile.parses_memo(settings.cache_root())
    try:
        units = _units(manifest, chosen, shard, kept)
    finally:  # the parses made are kept also when a patch of the check does not parse
        kept.save()
    return units, kept


def _units(manifest: Manifest, chosen: list[Model], shard: Shard | None,
           kept: memo.Entries | None = None) -> list[_Unit]:
    """Every series to check: each model's, then each variant's where it differs from the model's or
    where the variant's own overlay sets need its tree. With SHARD, only that shard's part. KEPT: the
    parses kept in the cache (patchfile.parses_memo)."""
    views = manifest.views(chosen)
    known = static.declarations_memo(settings.cache_root())  # the overlay modules' declarations, by content
    sets = static.load_each(manifest.root, list(dict.fromkeys(n for v in views for n in v.overlays)), known)
    known.save()
    units = []
    base: dict[str, Effective] = {}
    for view in views:
        base.setdefault(view.name, view)
        declared = ([t for s in view.overlays for t in sets[s][0]], [f for s in view.overlays for f in sets[s][1]])
        own = {x.upstream for s in view.overlays if s not in base[view.name].overlays for x in [*sets[s][0], *sets[s][1]]}
        for up in view.layers:
            differs = view.variant is None or view.patches[up] != base[view.name].patches[up]
            mine = ([t for t in declared[0] if t.upstream == up], [f for f in declared[1] if f.upstream == up])
            adds = up in own  # the variant's own overlay sets have targets on UP
            if differs or adds:
                units.append(_Unit(view, up, view.patches[up], differs, mine if mine[0] or mine[1] else None))
    if shard:
        keep = assign({(u.label, u.upstream): len(u.refs) for u in units}, shard.count)[shard.index - 1]
        units = [u for u in units if (u.label, u.upstream) in keep]
    _check_patches(units, kept)
    return units


def _check_patches(units: list[_Unit], kept: memo.Entries | None) -> None:
    """Every patch of UNITS read and checked before any is replayed (a shared one once), none held: an
    InvalidInput with every problem. KEPT: the parses kept in the cache."""
    problems: dict[str, list[Diagnostic]] = {}
    seen: set[tuple[Path, str]] = set()  # a series file and a name: no path string made per patch
    for ref in (r for unit in units for r in unit.refs):
        if (ref.series_path, ref.name) not in seen:
            seen.add((ref.series_path, ref.name))
            _read_checked(ref, kept, problems)
    _refuse(problems)


def _read_checked(ref: PatchRef, kept: memo.Entries | None, problems: dict[str, list[Diagnostic]],
                  ) -> tuple[Patch, ParsedPatch | None]:
    """REF's patch and its parse (not held in the process: see patchfile.parse), why it cannot be used added to
    PROBLEMS under its file. KEPT: the parses kept in the cache."""
    patch = patchfile.read(ref)
    parsed, found = patchfile.check(patch, kept, hold=False)
    if found:
        problems[ref.file] = found
    return patch, parsed


def _refuse(problems: dict[str, list[Diagnostic]]) -> None:
    """Raise InvalidInput with every diagnostic of PROBLEMS (why patch files cannot be used), if any."""
    if problems:
        raise InvalidInput(list(dict.fromkeys(d for found in problems.values() for d in found)))


def check(manifest: Manifest, models: list[str], *, onto: dict[str, str] | None = None, allow_fuzz: bool = False,
          fetch: bool = True, jobs: int = 4, progress: Progress = lambda _m: None,
          shard: Shard | None = None) -> CheckReport:
    """Every series of MODELS (default all) and of their variants, replayed on each upstream's target:
    one trie per upstream and base (pin, track), so a model with its own pin of an upstream is checked
    from that pin towards its own track."""
    chosen = [manifest.model(m) for m in models] if models else list(manifest.models.values())
    onto = onto or {}
    units, parses = _parsed_units(manifest, chosen, shard)
    groups: dict[str, dict[str, list[_Unit]]] = {}  # upstream -> target key -> its series
    for unit in units:
        unit.target = target_key(manifest, unit.view.upstreams[unit.upstream])
        groups.setdefault(unit.upstream, {}).setdefault(unit.target, []).append(unit)
    names = sorted(groups)
    memo = fingerprint.Memo.in_cache(settings.cache_root())
    work = Folder()  # every upstream's scratch indexes and new objects, removed at once at the end

    def one(name: str) -> tuple[dict[str, Target], list[tuple[_Unit, _Checks]], list[OverlayResult]]:
        targets, results, overlay_checks = {}, [], []
        for i, (key, members) in enumerate(groups[name].items()):
            up = members[0].view.upstreams[name]
            target, found, checks = _check_base(up, members, onto.get(name), fetch and i == 0, allow_fuzz, memo,
                                                progress, work, parses)
            targets[key] = target
            results += found
            for o in checks:
                o.target = key
            overlay_checks += checks
        return targets, results, overlay_checks

    outcomes: dict[str, tuple[dict[str, Target], list[tuple[_Unit, _Checks]], list[OverlayResult]]] = {}
    errors: list[PatchkitError] = []

    def keep(name: str, outcome: Callable[[], Any]) -> None:
        try:
            outcomes[name] = outcome()
        except PatchkitError as exc:
            errors.append(exc)

    workers = max(1, min(jobs, len(names) or 1))
    if workers == 1:  # one at a time: no thread, and no concurrent.futures (nor logging) to import
        for name in names:
            keep(name, lambda: one(name))  # noqa: B023 - called at once
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for name, future in [(name, pool.submit(one, name)) for name in names]:
                keep(name, future.result)
    memo.save()
    work.close()
    parses.close()
    if errors:
        errors.sort(key=lambda e: -e.exit_code)
        first = errors[0]
        first.details += [line for exc in errors[1:] for line in exc.lines()]
        raise first
    checked = {id(unit): found for n in names for unit, found in outcomes[n][1]}
    series = [SeriesCheck(u.view.name, u.upstream, checked[id(u)], u.view.variant, u.target)
              for u in units if u.report]
    order = {label: i for i, label in enumerate(dict.fromkeys(u.label for u in units))}
    overlay_checks = sorted((o for n in names for o in outcomes[n][2]),
                            key=lambda o: (order[_label(o.model, o.variant)], o.upstream))
    targets = {key: t for n in names for key, t in outcomes[n][0].items()}
    return CheckReport(dict(sorted(targets.items())), series, allow_fuzz, overlay_checks, shard)


def _label(model: str, variant: str | None) -> str:
    return f"{model}[{variant}]" if variant else model


def _check_base(up: Upstream, members: list[_Unit], onto: str | None, fetch: bool, allow_fuzz: bool,
                memo: fingerprint.Memo, progress: Progress, within: Folder, parses: memo.Entries,
                ) -> tuple[Target, list[tuple[_Unit, _Checks]], list[OverlayResult]]:
    """The series of MEMBERS, all made against UP's effective pin, replayed in one trie on its target
    (PARSES: the kept parses, where a patch's whole parse is read again)."""
    loaded: dict[tuple[Path, str], _Held] = {}
    problems: dict[str, list[Diagnostic]] = {}
    sequences = [(u.label, _load(u.refs, loaded, parses, problems)) for u in members]
    _refuse(problems)  # checked before the replay; changed since (to something that cannot be used)
    del loaded
    overlays = {u.label: u.overlays for u in members if u.overlays}
    at = f" (pin {up.pin[:12]} of {up.pinned_by})" if up.pinned_by else ""
    with _Replayer(cache.mirror_path(up), up, allow_fuzz, memo, within, parses) as replayer:
        target = _resolve(up, onto, fetch, progress, replayer.objects)
        n = sum(len(p) for _, p in sequences)
        progress(f"{up.name}{at}: replaying {n} patches of {len(sequences)} series on {target.ref} "
                 f"({target.commit[:12]}, {target.commits_since_pin} commits ahead of the pin"
                 + (f", {target.commits_behind} behind)" if target.commits_behind else ")"))
        results, overlay_checks = replayer.run(target.commit, sequences, overlays)
    by_label = {u.label: u for u in members}
    for o in overlay_checks:  # the replayer names series by label: give each its model and variant
        o.model, o.variant = by_label[o.model].view.name, by_label[o.model].view.variant
    checks = [(u, _Checks(u.refs, results[u.label])) for u in members]
    broken = sum(b for _, c in checks for _, b in c.states()) + sum(o.broken for o in overlay_checks)
    progress(f"{up.name}{at}: done, {broken} broken" if broken else f"{up.name}{at}: done, all hold")
    return target, checks, overlay_checks


class _Held:
    """A patch as the replay holds it: where it is in a series (its ref is made each time one is asked for), the
    paths each of its file changes reads or writes (one tuple for equal ones), and the start of its sha256, to
    refuse a file changed since it was read. Its bytes are read again where they are looked at (_bytes); no
    name, path, hash string or bytes are held per patch, so memory stays flat in the series' length."""

    __slots__ = ("series", "index", "touched", "digest")

    def __init__(self, series: Sequence[PatchRef], index: int, touched: tuple[tuple[str, ...], ...],
                 digest: bytes) -> None:
        self.series, self.index, self.touched, self.digest = series, index, touched, digest

    @property
    def ref(self) -> PatchRef:
        return self.series[self.index]


_DIGEST = 8  # bytes of a patch's sha256 a check holds: enough to see that its file changed


def _digest(patch: Patch) -> bytes:
    return bytes.fromhex(patch.sha256[:2 * _DIGEST])


def _load(refs: Sequence[PatchRef], loaded: dict[tuple[Path, str], _Held], kept: memo.Entries | None,
          problems: dict[str, list[Diagnostic]]) -> list[_Held]:
    """A series' patches, parsed and checked while their bytes are read, then held as _Held. The replay reads
    a patch again only where it looks at it alone, and an upstream's patches are read when it is replayed.
    LOADED: the patches read so far, by series file and name (a patch of a shared layer is read and hashed once,
    and is one object in every series that has it); KEPT: the parses kept in the cache, by content; PROBLEMS:
    why a patch cannot be used, by file, added to."""
    shapes: dict[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]] = {}
    patches = []
    for index, ref in enumerate(refs):
        key = (ref.series_path, ref.name)
        if key not in loaded:
            patch, parsed = _read_checked(ref, kept, problems)
            touched = tuple(c.paths for c in parsed.files) if parsed else ()
            loaded[key] = _Held(refs, index, shapes.setdefault(touched, touched), _digest(patch))
        patches.append(loaded[key])
    return patches


def _read(patch: _Held) -> Patch:
    """PATCH read again (its bytes and sha256); refused when the file changed since the check read it."""
    read = patchfile.read(patch.ref)
    if _digest(read) != patch.digest:
        raise BadInput(f"{display(read.ref.path)} changed while rebase --check ran; run it again")
    return read


def _bytes(patch: _Held) -> bytes:
    return _read(patch).data


def resolve_ref(mirror: Path, ref: str, objects: git.Batch | None = None) -> str | None:
    """The commit REF names in MIRROR (a branch first, then a tag, then any revision), or None."""
    with contextlib.ExitStack() as stack:
        reader = objects or stack.enter_context(git.Batch(mirror))
        for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
            found = reader.info(f"{candidate}^{{commit}}")
            if found:
                return found[0]
    return None


def _resolve(up: Upstream, onto: str | None, fetch: bool, progress: Progress, objects: git.Batch) -> Target:
    """The commit to check UP against; OBJECTS reads UP's mirror (no process per look-up)."""
    if fetch:
        progress(f"{up.name}: fetching {up.url}")
        cache.fetch(up)
    mirror = cache.mirror_path(up)
    if not (mirror / "HEAD").exists() or objects.info(f"{up.pin}^{{commit}}") is None:
        mirror, _ = cache.ensure_pin(up)  # fetches when the pin is not cached yet
    ref = onto or up.track
    if up.kind == "pypi":  # a release: --onto names a version; the track is the newest matching one
        from patchkit import pypi

        if onto:
            pypi.import_version(up, mirror, onto)
        elif resolve_ref(mirror, pypi.TRACK_REF, objects):
            ref = pypi.TRACK_REF
        else:  # never fetched: the newest release is not known, so the pinned one is the target
            ref = pypi.split(up.pypi or "")[1]
            progress(f"{up.name}: newest release matching {up.track!r} not fetched yet; checking {ref}")
    commit = resolve_ref(mirror, ref, objects)
    if commit is None:
        raise BadInput(f"upstream {up.name!r}: {ref!r} is not a branch, tag or commit of {up.url}")
    if commit == up.pin:
        return Target(up.name, up.url, up.pin, ref, commit, 0, True, 0)
    ahead, behind = git.out(["rev-list", "--count", "--left-right", f"{commit}...{up.pin}"], mirror).split()
    return Target(up.name, up.url, up.pin, ref, commit, int(ahead), behind == "0", int(behind))


# -- the replay ------------------------------------------------------------------------------

class _PinSide(TreeReader):
    """The pin with the model's series, made per file when a file is read (see _Replayer._overlays)."""

    def __init__(self, make: Callable[[frozenset[str]], str | None], repo: Path, env: Mapping[str, str],
                 **shared: Any) -> None:
        super().__init__(repo, None, env, **shared)
        self._make = make

    def reader(self, *paths: str) -> TreeReader:
        """A reader of the pin with the patches PATHS need."""
        return TreeReader(self.repo, lambda: self._make(frozenset(paths)), self.env, objects=self.objects,
                          parsed=self.parsed, memo=self.memo)

    def read(self, path: str) -> str | None:
        return self.reader(path).read(path)


Kept = str | PatchCheck
_CLEAN = "clean"  # what the replay keeps of a patch that applied as it is; for one that moved, one string (_moved);
# a whole PatchCheck for the other outcomes (see _Checks)


def _moved(offset: int, lines: list[str]) -> str:
    """What the replay keeps of a patch that moved: its offset and its lines, one string a line (no line holds a
    break, and the first is a number, never _CLEAN): no tuple and no int a patch."""
    return "\n".join([str(offset), *lines])


class _Node:
    """A patch of the trie (slots, and no containers where there is nothing: a node a patch)."""

    __slots__ = ("patch", "_next", "result", "ends", "saved")

    def __init__(self, patch: _Held | None) -> None:
        self.patch = patch
        self._next: _Node | tuple[_Node, ...] | None = None  # the children: most nodes have one, held as itself
        self.result: Kept | None = None
        self.ends: tuple[str, ...] = ()  # models whose series ends here
        self.saved: Saved | None = None  # the index after this patch, where a series whose overlays are read ends

    @property
    def children(self) -> tuple[_Node, ...]:
        """The nodes after this one, in the order the series reach them."""
        after = self._next
        return () if after is None else (after,) if isinstance(after, _Node) else after

    def add(self, child: _Node) -> None:
        after = self._next
        self._next = child if after is None else (after, child) if isinstance(after, _Node) else (*after, child)

    def child(self, patch: _Held) -> _Node | None:
        """The child for PATCH: the same patch file (one _Held however many series have it, see _load)."""
        return next((node for node in self.children if node.patch is patch), None)


class _Checks(Sequence[PatchCheck]):
    """A series' outcomes as PatchChecks, made each time they are read from what the replay kept per
    patch: nothing but the patch for a clean one, the offset and its lines for one that moved (memory flat
    in the series' length: the report writes them one by one)."""

    def __init__(self, refs: Sequence[PatchRef], kept: list[Kept]) -> None:
        self._refs, self._kept = refs, kept
        self._folders: dict[str, tuple[str, frozenset[str]]] = {}  # see _shown

    def __len__(self) -> int:
        return len(self._kept)

    def __getitem__(self, index: int | slice) -> Any:  # PatchCheck, or a list of them for a slice
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return _check_of(self._refs[index], self._kept[index], self._folders)

    def __iter__(self) -> Iterator[PatchCheck]:
        return (_check_of(r, k, self._folders) for r, k in zip(self._refs, self._kept))

    def states(self) -> Iterator[tuple[str, bool]]:
        """(outcome, broken) of each patch, as its PatchCheck says, without making the PatchChecks."""
        for kept in self._kept:
            if isinstance(kept, PatchCheck):
                yield kept.outcome, kept.broken
            else:
                yield (_CLEAN if kept == _CLEAN else "offset"), False


def _states(patches: Sequence[PatchCheck]) -> Iterator[tuple[str, bool]]:
    """(outcome, broken) of each of PATCHES (a check's own _Checks: without making its PatchChecks)."""
    return patches.states() if isinstance(patches, _Checks) else ((p.outcome, p.broken) for p in patches)


def _check_of(ref: PatchRef, kept: Kept, folders: dict[str, tuple[str, frozenset[str]]]) -> PatchCheck:
    if isinstance(kept, PatchCheck):
        return kept
    check = PatchCheck(ref.id, ref.layer, ref.name, _shown(ref.file, folders), _CLEAN)
    if kept != _CLEAN:
        offset, _, lines = kept.partition("\n")
        check.outcome, check.offset, check.range_diff = "offset", int(offset), lines.split("\n") if lines else []
    return check


def _shown(path: str, folders: dict[str, tuple[str, frozenset[str]]]) -> str:
    """display(PATH), from its folder's: the same string, one resolve per folder, unless PATH itself is a
    symbolic link (then its own). FOLDERS: the folders shown so far, each with the names of the links in it
    (one listing per folder, not a look-up per patch each time the series is read)."""
    parent, name = os.path.split(path)
    if parent not in folders:
        folders[parent] = (display(parent or "."), _links(parent or "."))
    shown, links = folders[parent]
    if name in links:
        return display(path)
    return name if shown == "." else f"{shown}/{name}"


def _links(folder: str) -> frozenset[str]:
    try:
        with os.scandir(folder) as entries:
            return frozenset(e.name for e in entries if e.is_symlink())
    except OSError:
        return frozenset()


@dataclass
class _State:
    history: list[_Held] = field(default_factory=list)  # every patch checked so far, in series order
    broken: list[_Held] = field(default_factory=list)

    def copy(self) -> _State:
        return _State(list(self.history), list(self.broken))


_MISSING = re.compile(r"^error: (.+): does not exist in index$", re.M)


class _Replayer:
    """Replays the series of one upstream on its target. One `git apply` per patch that applies;
    the extra work (three-way merge, fuzz, the old world at the pin) only for patches that do not."""

    def __init__(self, mirror: Path, up: Upstream, allow_fuzz: bool, memo: fingerprint.Memo | None,
                 within: Folder, parses: memo.Entries | None = None) -> None:
        """PARSES: the parses kept in the cache, where a patch's whole parse is read again (see _parse)."""
        self.mirror, self.up, self.allow_fuzz, self.memo = mirror, up, allow_fuzz, memo
        self.target = up.pin
        self._renames: dict[str, str] | None = None
        self._moves: dict[str, list[tuple[int, int, int, int]]] = {}
        self.new = Scratch(mirror, within=within)
        self.old = Scratch(mirror, within=within)  # the folder's objects, shared with self.new
        self.objects = git.Batch(mirror, self.new.env)  # reads both scratches' objects and the mirror's
        self._parsed: dict[str, ast.Module | None] = {}  # modules by blob, parsed once
        self._pin_trees: dict[tuple[str, ...], str | None] = {}
        self.parses = parses

    def close(self) -> None:
        self.objects.close()
        self.old.close()
        self.new.close()

    def __enter__(self) -> _Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, target: str, sequences: list[tuple[str, list[_Held]]],
            overlays: dict[str, tuple[list[static.Target], list[static.FileOverlay]]] | None = None,
            ) -> tuple[dict[str, list[Kept]], list[OverlayResult]]:
        """Replay SEQUENCES (series by label) on TARGET and check their OVERLAYS; what was kept of each patch
        (see _Checks), by label, and the overlays' results."""
        self.target = target
        overlays = overlays or {}
        root = _Node(None)
        nodes: dict[str, list[_Node]] = {}  # each series' nodes, in its order
        for model, patches in sequences:
            node, mine = root, nodes.setdefault(model, [])
            for patch in patches:
                found = node.child(patch)
                if found is None:
                    found = _Node(patch)
                    node.add(found)
                node = found
                mine.append(node)
            node.ends += (model,)
        ends = {model: mine[-1] if mine else root for model, mine in nodes.items()}
        if root.children:
            self.new.reset(target)
            self._walk(root, set(overlays))
        overlay_checks = []
        series = dict(sequences)
        last = {id(ends[model]): model for model in overlays}  # the last model to read each saved index
        for model, declared in overlays.items():
            end = ends[model]
            overlay_checks.append(self._overlays(model, series[model], end, *declared))
            if last[id(end)] == model and end.saved is not None:
                end.saved.drop()
        results = {model: [n.result for n in mine] for model, mine in nodes.items()}
        assert all(r is not None for kept in results.values() for r in kept)  # the walk reached every node
        return results, overlay_checks  # type: ignore[return-value]

    def _overlays(self, model: str, patches: list[_Held], end: _Node, targets: list[static.Target],
                  files: list[static.FileOverlay]) -> OverlayResult:
        """The model's overlays against its series replayed on the target (broken patches left out).
        The pin side (what a drifted target is diffed against, where a file overlay's base blob may
        only exist) is replayed only when a reader asks for a file, and only as far as that file
        needs: the series' patches on it (and on the files those also change), once per distinct set."""
        shared = {"objects": self.objects, "parsed": self._parsed, "memo": self.memo}
        new: TreeReader = (IndexReader(self.mirror, end.saved.path, self.new.env, len(self.target), **shared)
                           if end.saved is not None else TreeReader(self.mirror, self.target, self.new.env, **shared))
        pin = _PinSide(lambda paths: self._pin_tree(patches, paths), self.mirror, self.old.env, **shared)
        return OverlayResult(model, [drift.classify(t, new, pin) for t in targets],
                             [drift.check_file(f, new, [new, pin.reader(f.path)]) for f in files], self.up.name)

    def _pin_tree(self, patches: list[_Held], paths: frozenset[str]) -> str | None:
        """The pin with those of PATCHES that PATHS need, in series order (None: one does not apply)."""
        needed, chosen = set(paths), [False] * len(patches)
        grown = True
        while grown:  # the patches on the needed files, and the files they change too
            grown = False
            for i, patch in enumerate(patches):
                touched = _touched(patch)
                if not chosen[i] and touched & needed:
                    chosen[i], grown = True, True
                    needed |= touched
        selected = [p for p, keep in zip(patches, chosen) if keep]
        key = tuple(p.ref.id for p in selected)  # on one upstream an id names one file, read once (_load)
        if key not in self._pin_trees:
            self._pin_trees[key] = replay(self.old, self.up.pin, [_bytes(p) for p in selected])
        return self._pin_trees[key]

    def _walk(self, root: _Node, read: set[str]) -> None:
        """Every patch of the trie, depth first, with an explicit stack: a series is as long as time
        allows, not as deep as the interpreter's stack. Siblings restart from their parent's index
        (a saved copy of the file) and get their own copy of its state; an only child goes on in place.
        Where the series of a model in READ ends (its overlays read the result), the index is saved."""
        pending: list[tuple[_Node, _State, Saved | None, bool]] = []

        def push_children(node: _Node, state: _State) -> None:
            children = node.children
            saved = self.new.save() if len(children) > 1 else None
            for i, child in reversed(list(enumerate(children))):
                pending.append((child, state.copy() if saved else state, saved if i else None, i == len(children) - 1))

        push_children(root, _State())
        while pending:
            node, state, restore, last = pending.pop()
            if restore is not None:
                self.new.restore(restore)
                if last:  # no sibling after this one starts from it
                    restore.drop()
            chain = [node]  # on to where the series part or a tree is read
            while len(chain[-1].children) == 1 and not read.intersection(chain[-1].ends):
                chain.append(chain[-1].children[0])
            self._chain(chain, state)
            if read.intersection(chain[-1].ends):
                chain[-1].saved = self.new.save()
            push_children(chain[-1], state)

    def _chain(self, chain: list[_Node], state: _State) -> None:
        """The patches of CHAIN in order: runs of them in one `git apply` (_strict_run); the first
        that does not apply there, and a run whose report git's output cannot be cut into, through `_step`."""
        i = 0
        while i < len(chain):
            run = chain[i:i + _RUN]
            done = self._strict_run(run) if len(run) > 1 else 0
            one_by_one = run if done is None else run[done:done + 1]
            for node in run[:done or 0]:
                state.history.append(node.patch)  # type: ignore[arg-type]
            for node in one_by_one:
                assert node.patch is not None
                node.result = self._step(node.patch, state)
                state.history.append(node.patch)
            i += (done or 0) + len(one_by_one)

    def _strict_run(self, run: list[_Node]) -> int | None:
        """Apply RUN's patches in one process and set the result of each leading one that applied, as
        `_step` would (clean or offset); how many (the index then holds exactly those), or None when
        git's report could not be cut per patch (the index is then as before)."""
        patches = [n.patch for n in run if n.patch is not None]
        names = [list(p.touched) for p in patches]
        paths = [os.path.abspath(p.ref.file) for p in patches]  # git runs in the mirror
        with self.new.save() as start:  # where a report that cannot be cut goes back to
            result = self.new.apply_files(paths)
            parts = split_verbose(result.stderr, names)
            expected = len(patches) if result.ok else 0
            if not result.ok and parts:  # nothing was applied: again, those before the first that failed
                expected = len(parts)
                result = self.new.apply_files(paths[:expected])
                if not result.ok:
                    return 0
                parts = split_verbose(result.stderr, names[:expected])
            if len(parts) != expected:
                self.new.restore(start)
                return None
        for node, patch, part in zip(run, patches, parts):
            node.result = self._clean(patch, git.Result(result.args, 0, "", part))
        return len(parts)

    # one patch ------------------------------------------------------------------------------

    def _step(self, patch: _Held, state: _State) -> Kept:
        read = _read(patch)
        data = read.data
        strict = self.new.apply(data)
        if strict.ok:
            return self._clean(patch, strict, read)
        parsed = self._parse(patch, read)
        ref = patch.ref
        check = PatchCheck(ref.id, ref.layer, ref.name, display(ref.path), "clean")
        if self.new.apply(data, "--reverse", "--check").ok:
            check.outcome = "upstreamed"
            return check
        culprit = self._needed_broken(patch, data, state)
        if culprit is not None:
            check.outcome, check.broken, check.blocked_by = "blocked", True, culprit.ref.id
            state.broken.append(patch)
            return check
        missing = self._missing(parsed, strict)
        if missing:
            check.outcome, check.broken, check.files = "target-missing", True, missing
            state.broken.append(patch)
            return check
        return self._merge_or_fuzz(patch, data, parsed, state, check, strict)

    def _clean(self, patch: _Held, strict: git.Result, read: Patch | None = None) -> Kept:
        """A patch that applied as it is (STRICT: git's report; READ: the patch read, when it was already): clean,
        or its offset and lines when a hunk moved."""
        moved = offsets(strict)
        if any(moved):
            return _moved(max(moved, key=abs), _offset_lines(self._parse(patch, read), strict))
        return _CLEAN

    def _parse(self, patch: _Held, read: Patch | None = None) -> ParsedPatch:
        """PATCH's whole parse (its hunks), where one is looked at: from the kept parses, else made again from
        its bytes (READ: the patch read, when it was already). A check holds only what each patch touches
        (_Held.touched)."""
        parsed, _ = patchfile.parse(read or _read(patch), self.parses, hold=False)
        assert parsed is not None  # every series was checked to parse before the replay
        return parsed

    def _merge_or_fuzz(self, patch: _Held, data: bytes, parsed: ParsedPatch, state: _State, check: PatchCheck,
                       strict: git.Result) -> PatchCheck:
        before = self.new.tree()
        self._old_blobs(patch, state)
        if self.new.apply(data, "--3way").ok:
            after = self.new.tree()
            if after == before:
                check.outcome = "upstreamed"
                return check
            check.outcome, check.range_diff = "merged", self._range_diff(patch, data, before, after)
            return check
        self.new.reset(before)  # a failed three-way apply leaves unmerged entries
        for context in (_CONTEXT - 1, 1):
            if self.new.apply(data, f"-C{context}").ok:
                check.outcome, check.fuzz = "fuzz", _CONTEXT - context
                check.broken = not self.allow_fuzz
                check.range_diff = self._range_diff(patch, data, before, self.new.tree())
                return check
        check.outcome, check.broken = "conflict", True
        check.files = self._conflicts(parsed, strict)
        state.broken.append(patch)
        return check

    def _old_world(self, patches: list[_Held]) -> None:
        """The old scratch index: the pin with PATCHES applied (they all applied there)."""
        self.old.reset(self.up.pin)
        for patch in patches:
            self.old.apply(_bytes(patch))

    def _needed_broken(self, patch: _Held, data: bytes, state: _State) -> _Held | None:
        """The broken patch PATCH (its bytes: DATA) needs: it fails on the pin without the broken patches on its
        files."""
        files = _touched(patch)
        broken = _on(state.broken, files)
        if not broken:
            return None  # no broken patch touches its files, so it cannot need one
        skip = set(state.broken)
        self._old_world([p for p in _on(state.history, files) if p not in skip])
        if self.old.apply(data, "--check").ok:
            return None
        return broken[-1]

    def _old_blobs(self, patch: _Held, state: _State) -> None:
        """Make the blobs PATCH was made against exist, so a three-way merge can use them.

        The first patch on a file was made against the pin's blob, which the mirror has; a later
        one against the pin plus the earlier patches on that file, which only replaying makes.
        """
        earlier = _on(state.history, _touched(patch))
        if earlier:
            self._old_world(earlier)

    # details ---------------------------------------------------------------------------------

    def _missing(self, parsed: ParsedPatch, strict: git.Result) -> list[FileIssue]:
        issues = []
        for path in dict.fromkeys(_MISSING.findall(strict.stderr)):
            renamed = self.renames().get(path)
            issues.append(FileIssue(path, f"renamed upstream to {renamed}" if renamed else "removed upstream",
                                    renamed_to=renamed))
        return issues

    def renames(self) -> dict[str, str]:
        if self._renames is None:
            out = git.out(["diff", "--name-status", "-M", "--diff-filter=R", self.up.pin, self.target], self.mirror)
            self._renames = {}
            for line in out.splitlines():
                parts = line.split("\t")
                if len(parts) == 3:
                    self._renames[parts[1]] = parts[2]
        return self._renames

    def _conflicts(self, parsed: ParsedPatch, strict: git.Result) -> list[FileIssue]:
        issues: dict[str, FileIssue] = {}
        for m in _PATCH_FAILED.finditer(strict.stderr):
            path, line = m.group(1), int(m.group(2))
            issue = issues.setdefault(path, FileIssue(path, "does not apply"))
            change = parsed.file(path)
            found = patchfile.hunk_at(change, line) if change else None
            if found:
                number, hunk = found
                issue.hunks.append(f"hunk #{number} {hunk.header()}")
                issue.commits += [c for c in self._touching(path, hunk.source_start, hunk.source_length)
                                  if c not in issue.commits]
            else:
                issue.hunks.append(f"hunk at line {line}")
        if not issues:
            issues = {c.path: FileIssue(c.path, "does not apply") for c in parsed.files}
        return list(issues.values())

    def _touching(self, path: str, start: int, length: int) -> list[str]:
        """Upstream commits since the pin that changed lines START..START+LENGTH of PATH (pin numbering)."""
        first, last = self._map(path, start, max(length, 1))
        fmt = ["--no-patch", "--format=%h %s"]
        result = git.run(["log", *fmt, f"-L{first},{last}:{path}", f"{self.up.pin}..{self.target}"],
                         self.mirror, check=False)
        if not result.ok:  # the range left the file: fall back to every commit on it
            result = git.run(["log", *fmt[1:], f"{self.up.pin}..{self.target}", "--", path], self.mirror, check=False)
        return [ln for ln in result.stdout.splitlines() if ln.strip()][:8]

    def _map(self, path: str, start: int, length: int) -> tuple[int, int]:
        """Where lines START..START+LENGTH-1 of PATH at the pin are at the target."""
        if path not in self._moves:
            diff = git.run(["diff", "-U0", self.up.pin, self.target, "--", path], self.mirror, check=False).stdout
            self._moves[path] = [(int(a), int(b or 1), int(c), int(d or 1)) for a, b, c, d in
                                 re.findall(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", diff, re.M)]
        end = start + length - 1
        first, last = start, end
        for old_start, old_len, new_start, new_len in self._moves[path]:
            old_end = old_start + max(old_len, 1) - 1
            delta = new_len - old_len
            if old_end < start:
                first += delta
                last += delta
            elif old_start <= end:
                last += delta
        return max(first, 1), max(last, first)

    def _range_diff(self, patch: _Held, data: bytes, before: str, after: str) -> list[str]:
        paths = [p for paths in patch.touched for p in paths]
        new = self.new.run(["diff-tree", "-p", "-M", before, after, "--", *paths]).stdout
        old = data.decode("utf-8", "replace")
        old = old[old.find("diff --git"):] if "diff --git" in old else old
        return _diff_of_diffs(old, new)


def _touched(patch: _Held) -> set[str]:
    """The paths PATCH reads or writes."""
    return {p for paths in patch.touched for p in paths}


def _on(patches: list[_Held], files: set[str]) -> list[_Held]:
    """Those of PATCHES that change one of FILES, in order."""
    return [p for p in patches if any(x in files for paths in p.touched for x in paths)]


def _offset_lines(parsed: ParsedPatch, result: git.Result) -> list[str]:
    lines = []
    for m in re.finditer(r"^Checking patch (.+)\.\.\.$|^Hunk #(\d+) succeeded at (\d+) \(offset (-?\d+) lines?\)\.$",
                         result.stderr, re.M):
        if m.group(1):
            current = parsed.file(m.group(1))
            path = m.group(1)
            continue
        number, offset = int(m.group(2)), int(m.group(4))
        hunk = current.hunks[number - 1] if current and number <= len(current.hunks) else None
        header = hunk.header() if hunk else f"hunk #{number}"
        lines.append(f"{path}: hunk #{number} {header} moved {offset:+d} lines")
    return lines


def _normalise(diff: str) -> list[str]:
    out = []
    for line in diff.splitlines():
        if line.startswith("index ") or line.startswith("-- ") or line == "--":
            continue
        if line.startswith("@@"):
            line = "@@" + line.split("@@", 2)[-1]
        out.append(line)
    while out and not out[-1].strip() or (out and re.match(r"^\d+\.\d+", out[-1])):
        out.pop()
    return out


def _diff_of_diffs(old: str, new: str, limit: int = 12) -> list[str]:
    import difflib  # only for a patch that merged or needed fuzz

    lines = [ln for ln in difflib.unified_diff(_normalise(old), _normalise(new), "before", "after", n=0, lineterm="")
             if not ln.startswith(("---", "+++", "@@"))]
    return lines[:limit] + ([f"... {len(lines) - limit} more lines"] if len(lines) > limit else [])
