"""Shared layers: the changes two or more models of one upstream make alike, moved into layers of
their own, so each model's layer keeps only its own changes.

A change is one run of removed and added lines of a hunk, compared by the file and those lines, not
by context or @@ numbers (git merges nearby changes into one hunk; two ports sharing one of them
still share it). The changes the same set of models makes form one layer, built at a pin from one of
its models' patches (the other runs of a hunk become context) and re-derived by git at that pin. A
layer serves the models of another pin only where it applies there strictly; the others get a layer
of their own base (split, not forced), and a piece that would serve one model stays in that model.
Each model's own patches are then re-derived on top of its shared layers, file by file, to the exact
tree its full series made before (checked): nothing a model changes is lost or changed.
Everything happens in scratch indexes over the mirrors.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from patchkit import git
from patchkit.errors import PatchkitError
from patchkit.importer import patches as patches_mod, provenance, regen
from patchkit.importer.model import Finding
from patchkit.importer.patches import FileDiff, Hunk
from patchkit.scratch import Scratch, replay

TRAILER = b"-- \npatchkit import\n\n"
_ORIGIN = re.compile(r"^Origin: DrivingSDK (\S+)(?: at ([0-9a-f]{40}))?", re.M)


@dataclass(frozen=True)
class Change:
    """One run of removed/added lines in PATH; NTH: how many equal runs the model has before it there."""

    path: str
    removed: tuple[bytes, ...]
    added: tuple[bytes, ...]
    nth: int = 0


@dataclass
class Member:
    """One model on the upstream: where its pin is and its own series (format-patch files)."""

    model: str
    mirror: Path
    pin: str
    series: list[tuple[str, bytes]]


@dataclass
class Layer:
    name: str
    upstream: str
    pin: str
    models: list[str]
    changes: list[Change]
    series: list[tuple[str, bytes]] = field(default_factory=list)  # (file, git's diff of it at the pin)
    heads: list[bytes] = field(default_factory=list)  # the message of the model patch each file's came from
    split: bool = False  # one of several layers of the same changes, one per base


@dataclass
class Shared:
    layers: list[Layer] = field(default_factory=list)
    own: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)  # model -> its series without them
    uses: dict[str, list[str]] = field(default_factory=dict)  # model -> its shared layers, in order
    findings: list[Finding] = field(default_factory=list)


# -- reading the changes of a patch --------------------------------------------------------

def split(data: bytes) -> tuple[bytes, bytes]:
    """A format-patch file as (head: mail header and message, diff)."""
    at = data.find(b"\ndiff --git ")
    head, diff = (data[:at + 1], data[at + 1:]) if at >= 0 else (data, b"")
    return head, diff[:-len(TRAILER)] if diff.endswith(TRAILER) else diff


def _runs(hunk: Hunk) -> list[tuple[int, int]]:
    """(start, end) of each run of removed/added lines in HUNK's body."""
    out, start = [], None
    for i, line in enumerate(hunk.body + [b" "]):
        changed = line[:1] in (b"-", b"+")
        if changed and start is None:
            start = i
        elif not changed and start is not None:
            out.append((start, i))
            start = None
    return out


def _eligible(fd: FileDiff) -> bool:
    """A plain text change of one file (no mode change, creation, deletion, rename or binary)."""
    return bool(fd.hunks) and fd.old_path == fd.new_path and not fd.binary and \
        not any(fd.has(t) for t in (b"new file", b"deleted file", b"old mode", b"similarity")) and \
        not any(line.startswith(b"\\") for h in fd.hunks for line in h.body)


Spot = tuple[int, int, int, int]  # patch index, file index, hunk index, run index


def changes(series: list[tuple[str, bytes]]) -> tuple[dict[Change, Spot], list[list[FileDiff]]]:
    """Every change of SERIES with where it is, and each patch's file diffs."""
    found: dict[Change, Spot] = {}
    seen: Counter[tuple[str, tuple[bytes, ...], tuple[bytes, ...]]] = Counter()
    parsed = []
    for k, (name, data) in enumerate(series):
        fds, _ = patches_mod.parse(split(data)[1], name)
        parsed.append(fds)
        for f, fd in enumerate(fds):
            if not _eligible(fd):
                continue
            for h, hunk in enumerate(fd.hunks):
                for r, (a, b) in enumerate(_runs(hunk)):
                    body = hunk.body[a:b]
                    key = (fd.path, tuple(x[1:] for x in body if x[:1] == b"-"), tuple(x[1:] for x in body if x[:1] == b"+"))
                    found[Change(*key, seen[key])] = (k, f, h, r)
                    seen[key] += 1
    return found, parsed


def _cosmetic(change: Change) -> bool:
    """Whether CHANGE only changes whitespace or comments (never a layer of its own: validate refuses it)."""
    def code(lines: tuple[bytes, ...]) -> list[bytes]:
        return [s for s in (line.strip() for line in lines) if s and not s.startswith(b"#")]
    return code(change.removed) == code(change.added)


def partial(fd: FileDiff, keep: set[tuple[int, int]]) -> FileDiff:
    """FD with only the runs KEEP ((hunk, run) pairs): the others' removed lines become context."""
    hunks = []
    for h, hunk in enumerate(fd.hunks):
        runs = _runs(hunk)
        if not any((h, r) in keep for r in range(len(runs))):
            continue
        dropped = {i for r, (a, b) in enumerate(runs) if (h, r) not in keep for i in range(a, b)}
        body = [(b" " + line[1:] if line[:1] == b"-" else None) if i in dropped else line
                for i, line in enumerate(hunk.body)]
        hunks.append(Hunk(hunk.line, hunk.old_start, hunk.new_start, hunk.section, [b for b in body if b is not None]))
    return FileDiff(fd.source, fd.line, fd.old_path, fd.new_path, fd.header, hunks)


# -- scratch helpers -----------------------------------------------------------------------

def _replay(scratch: Scratch, base: str, patches: list[bytes]) -> list[str] | None:
    """The trees after each of PATCHES applied strictly at BASE, or None when one does not apply
    (scratch.replay when only the last one matters: it writes no tree between patches)."""
    scratch.reset(base)
    trees = []
    for data in patches:
        if not scratch.apply(data).ok:
            return None
        trees.append(scratch.tree())
    return trees


# -- the layers ----------------------------------------------------------------------------

def share(upstream: str, members: list[Member]) -> Shared:
    """The shared layers of UPSTREAM among MEMBERS, and each member's own series without them."""
    result = Shared()
    found = {m.model: changes(m.series) for m in members}
    by_model = {m.model: m for m in members}
    holders: dict[Change, list[str]] = {}
    for m in members:
        for change in found[m.model][0]:
            holders.setdefault(change, []).append(m.model)
    groups: dict[tuple[str, ...], list[Change]] = {}
    for change, models in holders.items():
        if len(models) > 1 and not _cosmetic(change):
            groups.setdefault(tuple(sorted(models)), []).append(change)
    for models, group in sorted(groups.items(), key=lambda g: (-len(g[0]), g[0])):
        result.layers += _pieces(upstream, [by_model[n] for n in models], group, found, result.findings)
    _name(result.layers)
    _settle(result, members)
    for m in members:
        layers = [layer for layer in result.layers if m.model in layer.models]
        result.uses[m.model] = [layer.name for layer in layers]
        result.own[m.model] = _own(m, layers, result.findings) if layers else m.series
    return result


def _pieces(upstream: str, members: list[Member], group: list[Change],
            found: dict[str, tuple[dict[Change, Spot], list[list[FileDiff]]]], findings: list[Finding]) -> list[Layer]:
    """GROUP as layers: one built at the pin most of MEMBERS have, serving every member where it applies
    strictly; the rest the same way at their pins. A piece serving one model is no layer."""
    out = []
    left = list(members)
    while len(left) > 1:
        counts = Counter(m.pin for m in left)
        pin = max(counts, key=lambda p: (counts[p], p))
        rep = next(m for m in left if m.pin == pin)
        layer = _build(upstream, rep, group, found[rep.model])
        if layer is None:
            findings.append(Finding(upstream, f"{len(group)} changes of {', '.join(m.model for m in left)}",
                                    f"not shared: they do not apply as a layer at {pin[:12]}"))
            break
        served = [m for m in left if m.pin == pin or _applies(m, layer.series)]
        layer.models = [m.model for m in served]
        left = [m for m in left if m not in served]
        if len(served) > 1:
            layer.split = bool(out) or bool(left)
            out.append(layer)
        elif left or len(out):
            findings.append(Finding(upstream, f"{len(group)} changes of {served[0].model}", "shared with "
                                    "models of another base where they do not apply strictly: kept in its own layer"))
    if len(left) == 1 and out:
        findings.append(Finding(upstream, f"{len(group)} changes of {left[0].model}", "shared with models of another "
                                f"base ({out[0].pin[:12]}) where they do not apply strictly: kept in its own layer"))
    return out


def _applies(member: Member, series: list[tuple[str, bytes]]) -> bool:
    with Scratch(member.mirror) as scratch:
        return replay(scratch, member.pin, [data for _, data in series]) is not None


def _build(upstream: str, rep: Member, group: list[Change], found: tuple[dict[Change, Spot], list[list[FileDiff]]]) -> Layer | None:
    """The layer of GROUP's changes made from REP's patches at REP's pin (one patch a file)."""
    where, parsed = found
    keep: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for change in group:
        k, f, h, r = where[change]
        keep.setdefault((k, f), set()).add((h, r))
    layer = Layer("", upstream, rep.pin, [], list(group))
    with Scratch(rep.mirror) as scratch:
        scratch.reset(rep.pin)
        for (k, f), runs in sorted(keep.items()):
            before = scratch.tree()
            if not scratch.apply(partial(parsed[k][f], runs).data()).ok:
                return None
            layer.series.append((parsed[k][f].path, regen.diff(scratch, before, scratch.tree())))
            layer.heads.append(split(rep.series[k][1])[0])
    return layer


def _name(layers: list[Layer]) -> None:
    """Names a newcomer reads: upstream, `shared`, the files' names; the base when a layer was split."""
    taken: Counter[str] = Counter()
    for layer in layers:
        paths = list(dict.fromkeys(c.path for c in layer.changes))
        stems = [Path(p).stem.strip("_") or Path(p).name for p in paths]
        folder = Path(os.path.commonpath(paths)).name if len(paths) > 1 else ""
        topic = "-".join(stems) if len(stems) <= 2 else f"{folder or stems[0]}-{len(stems)}-files"
        name = provenance.slug(f"{layer.upstream}-shared-{topic}", 60).lower().replace("_", "-").replace(".", "-")
        if layer.split or any(o.split and o.changes == layer.changes for o in layers):
            name += f"-at-{layer.pin[:7]}"
        taken[name] += 1
        layer.name = name if taken[name] == 1 else f"{name}-{taken[name]}"


def _settle(result: Shared, members: list[Member]) -> None:
    """Each model's layers replayed in order at its pin; a layer that does not apply there (after another
    one touching the same lines) stops serving it; a layer left with one model is dropped."""
    changed = True
    while changed:
        changed = False
        for m in members:
            layers = [layer for layer in result.layers if m.model in layer.models]
            with Scratch(m.mirror) as scratch:
                scratch.reset(m.pin)
                bad = next((layer for layer in layers
                            if not all(scratch.apply(data).ok for _, data in layer.series)), None)
            if bad is not None:
                bad.models.remove(m.model)
                result.findings.append(Finding(bad.name, m.model, "not served: the layer does not apply strictly "
                                               "after the model's other shared layers"))
                changed = True
        for layer in [x for x in result.layers if len(x.models) < 2]:
            result.layers.remove(layer)
            changed = True


def _own(member: Member, layers: list[Layer], findings: list[Finding]) -> list[tuple[str, bytes]]:
    """MEMBER's series re-derived on top of LAYERS: each patch moves its files to where the original
    series had them after it; a patch left empty is dropped, one left with only whitespace or comment
    changes too (as the import leaves such files out). The result is checked to end at the original
    tree, but for those."""
    originals = [data for _, data in member.series]
    left_out: set[str] = set()
    with Scratch(member.mirror) as first, Scratch(member.mirror, objects=first.objects) as scratch:
        trees = _replay(first, member.pin, originals)
        shared = replay(scratch, member.pin, [data for layer in layers for _, data in layer.series])
        if trees is None or shared is None:
            raise PatchkitError(f"internal: {member.model}'s series or shared layers do not apply at {member.pin[:12]}")
        out = []
        for (name, data), tree in zip(member.series, trees):
            fds, _ = patches_mod.parse(split(data)[1], name)
            before = scratch.tree()
            regen.set_paths(scratch, tree, list(dict.fromkeys(p for fd in fds for p in fd.paths)))
            after = scratch.tree()
            diff = regen.diff(scratch, before, after) if after != before else b""
            paths = {p for fd in fds for p in fd.paths}
            moved = [layer.name for layer in layers if any(p in paths for p, _ in layer.series)]
            if diff and provenance.cosmetic(diff):
                scratch.reset(before)
                left_out.update(fd.path for fd in fds)
                findings.append(Finding(f"patches/{member.model}/{layers[0].upstream}/{name}", ", ".join(fd.path for fd in fds),
                                        "left out: only whitespace or comment changes remain once its shared "
                                        "hunks are in shared layers"))
            elif diff:
                out.append((name, _with_diff(data, diff, moved if diff != split(data)[1] else [])))
        differ = set(git.output_bytes(["diff-tree", "-r", "--name-only", "-z", scratch.tree(), trees[-1]], member.mirror,
                                      env=scratch.env).decode("utf-8", "surrogateescape").split("\0")) - {""} if trees else set()
        if differ - left_out:
            raise PatchkitError(f"internal: {member.model}'s series on its shared layers does not end where it did")
    return out


def _with_diff(data: bytes, diff: bytes, moved: list[str]) -> bytes:
    """DATA with DIFF as its diff; MOVED: the shared layers that took some of its changes (said in its message)."""
    head, _ = split(data)
    if moved:
        said = (f"Its changes other models' ports make alike are in the shared layer{'s' if len(moved) > 1 else ''} "
                f"{', '.join(moved)} (applied before this layer); this patch keeps the rest.")
        head = head.replace(b"\n\nOrigin: ", b"\n\n" + said.encode() + b"\n\nOrigin: ", 1)
    return head + diff + TRAILER


# -- the files of a layer ------------------------------------------------------------------

def layer_files(layer: Layer, sources: dict[tuple[str, str], str]) -> list[tuple[str, bytes]]:
    """LAYER's series as format-patch files whose DEP-3 headers name every model and port file.
    SOURCES: (model, file) -> the `Origin:` of the model's patch of that file."""
    out = []
    for i, ((path, diff), head) in enumerate(zip(layer.series, layer.heads), 1):
        text = head.decode("utf-8", "replace")
        author, date = (re.search(rf"^{k}: (.*)$", text, re.M) for k in ("From", "Date"))
        froms = [f"{m} ({sources[m, path][0]})" for m in layer.models if (m, path) in sources]
        commit = next((sources[m, path][1] for m in layer.models if (m, path) in sources), None)
        count = sum(1 for c in layer.changes if c.path == path)
        body = (f"{count} change{'s' if count != 1 else ''} to {path} the same (modulo context and line numbers) "
                f"in the ports of {len(layer.models)} models: {', '.join(froms)}. `patchkit import --all` moved "
                f"{'them' if count != 1 else 'it'} into the shared layer {layer.name}, applied before each model's "
                f"own layer, re-derived at {layer.pin[:12]}.")
        origin = provenance.Origin(commit, author.group(1) if author else provenance.UNKNOWN_AUTHOR,
                                   date.group(1) if date else provenance.UNKNOWN_DATE,
                                   ", ".join(dict.fromkeys(sources[m, path][0] for m in layer.models if (m, path) in sources)))
        out.append((f"{i:04d}-{provenance.slug(path)}.patch",
                    provenance.format_patch(diff, f"{path}: the change {len(layer.models)} models share", body, origin)))
    return out


def sources(model: str, series: list[tuple[str, bytes]]) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(MODEL, file) -> (the port file, DrivingSDK commit) the `Origin:` line of its patch names."""
    out = {}
    for name, data in series:
        head, diff = split(data)
        found = _ORIGIN.search(head.decode("utf-8", "replace"))
        if found:
            for fd in patches_mod.parse(diff, name)[0]:
                out.setdefault((model, fd.path), (found.group(1), found.group(2)))
    return out
