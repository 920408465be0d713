"""The copy-over reader: `cp` steps that put a file into an upstream checkout become a patch on that
upstream, or a whole-file overlay (with the upstream blob it replaces) where the copy replaces most
of the file. Copies of the port's own patch files, launch scripts and runtime patcher feed the other
readers; a source a port patch created (in another checkout) is read from that checkout's state.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from patchkit.importer import readme as readme_mod
from patchkit.importer.model import FileOverlayOut, Finding, Step
from patchkit.importer.regen import Tree
from patchkit.importer.upstreams import Plans

MOSTLY = 0.5  # a copy keeping less than this share of the upstream file's lines is a whole-file overlay


@dataclass
class Copied:
    url: str  # the upstream
    path: str  # in it
    data: bytes
    source: str  # what was copied, for the patch's message
    step: Step
    replaces: str | None = None  # a folder of the upstream the copy replaces as a whole (rm -rf X; mv Y X)


@dataclass
class CopyResult:
    copies: list[Copied] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)


def read(steps: list[Step], plans: Plans, trees: dict[str, Tree], port: Path) -> CopyResult:
    result = CopyResult()
    removed: dict[str, Step] = {}
    for step in steps:
        if step.kind == "remove":
            for arg in (w for w in step.words[1:] if not w.startswith("-")):
                removed[readme_mod.join(step.cwd, arg)] = step
            continue
        if step.kind == "move":
            _move(step, removed, plans, trees, port, result)
            continue
        if step.kind != "copy":
            continue
        args = [w for w in step.words[1:] if not w.startswith("-")]
        if len(args) < 2:
            result.findings.append(Finding(str(step.where), step.text, "a copy step this reader cannot follow"))
            continue
        for src in args[:-1]:
            _one(step, readme_mod.join(step.cwd, src), readme_mod.join(step.cwd, args[-1]),
                 args[-1].endswith("/") or args[-1] in (".", ".."), plans, trees, port, result)
    return result


def _one(step: Step, src: str, dest: str, dest_is_dir: bool, plans: Plans, trees: dict[str, Tree],
         port: Path, result: CopyResult) -> None:
    if src.endswith(".patch"):
        return  # the port's patch, read by the patch reader when a step applies it
    top = src.split("/")[0]
    if plans.at(src) is None and top == "test":
        result.notes.append(Finding(str(step.where), step.text, "the port's launch scripts: read by the recipe reader"))
        return
    target = plans.at(dest)
    if target is None:
        result.findings.append(Finding(str(step.where), step.text, f"copies into {dest or 'the port folder'}, "
                                       "which is no upstream checkout the README made"))
        return
    plan, rel = target
    tree = trees.get(plan.url)
    if tree is None:
        result.findings.append(Finding(str(step.where), step.text, f"{plan.url}: upstream not available"))
        return
    files = _sources(src, plans, trees, port)
    cwd = step.cwd
    while not files and cwd and src.startswith(cwd + "/"):
        # the README forgot a `cd ..` (its next block assumes the folder above): look there, and say so
        arg = src[len(cwd) + 1:]
        cwd = cwd.rsplit("/", 1)[0] if "/" in cwd else ""
        files = _sources(readme_mod.join(cwd, arg), plans, trees, port)
        if files:
            result.notes.append(Finding(str(step.where), step.text, f"{src} does not exist; {readme_mod.join(cwd, arg)} "
                                        "does (the README misses a `cd ..` before this step): copied from there"))
            src = readme_mod.join(cwd, arg)
    if not files:
        result.findings.append(Finding(str(step.where), step.text, f"{src}: no such file in the port folder "
                                       "or in a checkout the port's patches made"))
        return
    base = src.rsplit("/", 1)[-1] if "/" in src else src
    many = len(files) > 1 or files[0][0] != ""
    into_dir = dest_is_dir or many or tree.entry(rel) is None and _is_dir(tree, rel)
    for sub, data in files:
        if many and "*" in src:
            path = "/".join(p for p in (rel, sub) if p)
        elif into_dir:
            path = "/".join(p for p in (rel, base if "*" not in base else "", sub) if p)
        else:
            path = rel
        result.copies.append(Copied(plan.url, plan.site_prefix + path, data,
                                    f"{src}/{sub}".rstrip("/"), step))


def _move(step: Step, removed: dict[str, Step], plans: Plans, trees: dict[str, Tree], port: Path,
          result: CopyResult) -> None:
    """`rm -rf X` then `mv Y X` with X in one checkout and Y a folder of another: X is replaced whole."""
    args = [w for w in step.words[1:] if not w.startswith("-")]
    dest = readme_mod.join(step.cwd, args[-1]) if len(args) == 2 else ""
    src = readme_mod.join(step.cwd, args[0]) if len(args) == 2 else ""
    target, source = plans.at(dest), plans.at(src)
    if dest not in removed or target is None or source is None or source[0].url == target[0].url \
            or target[0].url not in trees or source[0].url not in trees:
        result.findings.append(Finding(str(step.where), step.text, "a `mv` step this reader cannot follow (it converts "
                                       "`rm -rf X` + `mv Y X` replacing a folder of one checkout by another's)"))
        return
    files = _sources(src, plans, trees, port)
    if not files or files[0][0] == "":
        result.findings.append(Finding(str(step.where), step.text, f"{src} is not a folder of a checkout"))
        return
    plan, rel = target
    result.notes.append(Finding(f"{removed[dest].where}, {step.where}", f"{removed[dest].text}; {step.text}",
                                f"{rel}/ of {plan.url} replaced by {src}: one patch (the swap is one change; "
                                f"{src} stays in its own checkout too)"))
    removed.pop(dest)
    for sub, data in files:
        result.copies.append(Copied(plan.url, f"{rel}/{sub}", data, f"{src}/{sub}", step, replaces=rel))


def consumed_removals(steps: list[Step], plans: Plans) -> set[Step]:
    """The `rm` steps a package swap (`mv`) converts."""
    out = set()
    for i, step in enumerate(steps):
        if step.kind == "move":
            dest = readme_mod.join(step.cwd, [w for w in step.words[1:] if not w.startswith("-")][-1])
            out |= {s for s in steps[:i] if s.kind == "remove" and
                    dest in (readme_mod.join(s.cwd, w) for w in s.words[1:] if not w.startswith("-"))}
    return out


def _is_dir(tree: Tree, rel: str) -> bool:
    out = tree.scratch.run(["ls-files", "--", f"{rel}/"], check=False).stdout
    return bool(out.strip()) or rel == ""


def _sources(src: str, plans: Plans, trees: dict[str, Tree], port: Path) -> list[tuple[str, bytes]]:
    """(path below SRC, content) of what `cp -r SRC` copies: from the port folder or a checkout's state."""
    inside = plans.at(src)
    if inside is not None and inside[0].url in trees:
        tree = trees[inside[0].url]
        one = tree.read(inside[1]) if inside[1] else None
        if one is not None:
            return [("", one)]
        listed = tree.scratch.run(["ls-files", "--", f"{inside[1]}/"], check=False).stdout.split()
        return [(p[len(inside[1]) + 1:], tree.read(p) or b"") for p in listed]
    parent = port / src.rsplit("/", 1)[0] if "/" in src else port
    pattern = src.rsplit("/", 1)[-1]
    matches = sorted(p for p in parent.glob(pattern)) if "*" in pattern else [port / src]
    out: list[tuple[str, bytes]] = []
    for match in matches:
        if match.is_file() and not match.is_symlink():
            out.append(("" if "*" not in pattern else match.name, match.read_bytes()))
        elif match.is_dir():
            out += [((match.name + "/" if "*" in pattern else "") + str(f.relative_to(match)), f.read_bytes())
                    for f in sorted(match.rglob("*")) if f.is_file() and not f.is_symlink()]
    return out


def replaces_most(base: bytes, new: bytes) -> bool:
    """Whether NEW keeps less than MOSTLY of BASE's lines (then a whole-file overlay says it better)."""
    a, b = base.splitlines(), new.splitlines()
    kept = sum(block.size for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
    return bool(a) and kept < MOSTLY * len(a)


def line_ends_like(base: bytes, data: bytes) -> bytes:
    """DATA with BASE's line ends (a copy stored CRLF over an LF file would otherwise change every line)."""
    from patchkit.importer.regen import is_crlf

    if is_crlf(base) == is_crlf(data):
        return data
    lf = data.replace(b"\r\n", b"\n")
    return lf.replace(b"\n", b"\r\n") if is_crlf(base) else lf


def overlay_of(copy: Copied, upstream: str, tree: Tree) -> FileOverlayOut | None:
    """A whole-file overlay for COPY when it replaces most of an existing upstream file."""
    entry = tree.entry(copy.path, tree.pin)
    if entry is None:
        return None
    if not replaces_most(tree.blob(entry[1]), copy.data):
        return None
    return FileOverlayOut(upstream, copy.path, copy.data, entry[1], copy.source)
