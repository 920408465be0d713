"""`upstreams.yaml`: what is pinned and what each model's workspace is made of.

The file is read with `yaml.compose`, so every problem is reported with its line, and all
problems are collected before anything is raised: a user fixes them in one pass.

    version: 1                     # optional; the schema version
    upstreams:
      mmcv:
        url: https://github.com/open-mmlab/mmcv.git
        pin: 0123456789abcdef0123456789abcdef01234567   # full commit SHA
        track: 1.x                 # branch or tag that rebase follows
    models:
      fbocc:
        description: FB-OCC on Ascend   # optional
        upstreams:                 # upstream -> ordered patch layers
          mmcv: [mmcv-npu, fbocc]
          fb-bev: [fbocc]
        overlays: [npu-common, fbocc]   # optional; default: overlays/<model>/ when it exists
      bevdepth:                    # version 2: a model's own base of an upstream, and variants
        upstreams:
          mmcv:                    # the long form (the short form is a list of layers)
            pin: 89abcdef0123456789abcdef0123456789abcdef   # optional; default: the upstream's pin
            track: 1.x             # optional; default: the upstream's track
            layers: [mmcv-npu, bevdepth]
        variants:                  # hardware/toolchain variants of this one model
          a5:
            description: Atlas A5  # optional
            upstreams: {mmcv: [mmcv-a5]}   # layers appended after the model's
            overlays: [bevdepth-a5]        # overlay sets appended after the model's
            requires: ["torch-npu==2.7.1"] # extra requirements of `install` for this variant
    toolchain:                     # optional; what `patchkit install` puts first into a new venv, per device
      cpu:
        torch: "2.13.0"            # exact versions (== each); torchvision and torch_npu optional
        torchvision: "0.28.0"
        tools: ["setuptools>=77.0.3,<81", wheel, ninja, "numpy<2"]   # build tools, same pip call
        pip_args: []               # index options of that call (--index-url ..., --extra-index-url ...)

A layer's patches for an upstream live in `patches/<layer>/<upstream>/` with a `series` file.
Version 1 (or no `version:`) is read as it always was; a file that says `version: 1` and uses a
version-2 form is refused at that line. Every verb sees a model through `Manifest.effective(model,
variant)`: its upstreams at their effective pins and tracks, its layers, patches and overlays with
the variant's appended.
"""

from __future__ import annotations

import hashlib
import os
import re
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

from patchkit import __version__, memo
from patchkit.errors import BadInput, InvalidInput
from patchkit.paths import display

MANIFEST_NAME = "upstreams.yaml"
SCHEMA_VERSION = 2
READABLE_VERSIONS = ("1", "2")  # 1: no long form, no variants
INSTALL_BUILDS = ("wheel", "editable", "command", "none")
INSTALL_KEYS = ("after", "build", "env", "npu_env", "constraints", "pip_args", "command", "requires")
DEVICES = ("npu", "cuda", "cpu")  # every table per device (toolchain, recipe env, verification records)
TOOLCHAIN_KEYS = ("torch", "torchvision", "torch_npu", "tools", "pip_args")


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    pin: str
    track: str  # a branch or tag; for a PyPI release, a version specifier such as ">=1.6,<1.7"
    line: int
    pin_line: int = 0
    exclude: tuple[str, ...] = ()  # paths the workspace leaves out (sparse checkout patterns)
    pypi: str | None = None  # "name==version" for a PyPI release (then url is "pypi:name==version")
    sha256: str | None = None  # of the release file
    install: dict[str, object] | None = None  # how it is installed (see patchkit.install)
    pinned_by: str | None = None  # in a model's effective view: the model whose block holds the pin

    @property
    def base(self) -> tuple[str, str]:
        """(pin, track): what a series on this upstream is made against and checked towards."""
        return self.pin, self.track

    @property
    def kind(self) -> str:
        return "pypi" if self.pypi else "git"


@dataclass(frozen=True, slots=True)
class PatchRef:
    """One entry of a series: where the patch file is and where it was named."""

    layer: str
    upstream: str
    name: str
    given: str  # the patch file where it is not NAME beside the series file ("": it is, see `file`)
    series_path: Path
    line: int

    @property
    def id(self) -> str:
        return f"{self.layer}/{self.name}"

    @property
    def file(self) -> str:
        """The patch file, a string: NAME in the series file's folder unless another was given (a series of
        thousands holds no path string per patch, only its name)."""
        return self.given or os.path.join(os.fspath(self.series_path.parent), self.name)

    @property
    def path(self) -> Path:
        return Path(self.file)


@dataclass(frozen=True, slots=True)
class SeriesFile:
    """One layer's series file for one upstream, as read: its patch files' names and their lines, one string
    each (a series of thousands is two strings, not an object per patch)."""

    layer: str
    upstream: str
    path: Path  # the series file; each patch file is its name beside it
    names: str  # the patch files' names in series order, "\n"-joined
    lines: str  # the line of each in the series file, ","-joined

    def __len__(self) -> int:
        return self.names.count("\n") + 1 if self.names else 0

    def __iter__(self) -> Iterator[PatchRef]:
        for name, line in zip(_items(self.names, "\n"), _items(self.lines, ",")):
            yield self.ref(name, int(line))

    def ref(self, name: str, line: int) -> PatchRef:
        return PatchRef(self.layer, self.upstream, name, "", self.path, line)


def _items(text: str, sep: str) -> Iterator[str]:
    """TEXT's SEP-separated items one at a time (no list of them all)."""
    start = 0
    while text:
        end = text.find(sep, start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 1


@dataclass(frozen=True, eq=False)
class Series(Sequence[PatchRef]):
    """A model's patches on one upstream: its layers' series files in order, read as PatchRefs, each made when
    it is read. It compares equal to any sequence of the same refs."""

    files: tuple[SeriesFile, ...] = ()

    def __len__(self) -> int:
        return self._ends[-1] if self.files else 0

    def __iter__(self) -> Iterator[PatchRef]:
        for part in self.files:
            yield from part

    @overload
    def __getitem__(self, index: int) -> PatchRef: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[PatchRef, ...]: ...
    def __getitem__(self, index: int | slice) -> PatchRef | tuple[PatchRef, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        size = len(self)
        if not -size <= index < size:
            raise IndexError("series index out of range")
        index %= size
        at = bisect_right(self._ends, index)
        part, first = self.files[at], self._ends[at - 1] if at else 0
        starts, lines = self._index(at)
        i = index - first
        end = starts[i + 1] - 1 if i + 1 < len(starts) else len(part.names)
        return part.ref(part.names[starts[i]:end], lines[i])

    def __add__(self, other: Sequence[PatchRef]) -> Series:
        if isinstance(other, Series):
            return Series(self.files + other.files)
        return NotImplemented

    def __radd__(self, other: Sequence[PatchRef]) -> Series:
        if isinstance(other, tuple) and not other:  # () + a series: no patches before it
            return self
        return NotImplemented

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Series) and self.files == other.files:
            return True
        if not isinstance(other, (Series, tuple, list)) or len(other) != len(self):
            return False
        return all(a == b for a, b in zip(self, other))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Series({len(self)} patches: {', '.join(f'{p.layer}/{p.upstream}' for p in self.files)})"

    @property
    def _ends(self) -> list[int]:
        """The index after each file's last patch."""
        ends = self.__dict__.get("_ends_")
        if ends is None:
            ends, total = [], 0
            for part in self.files:
                total += len(part)
                ends.append(total)
            object.__setattr__(self, "_ends_", ends)
        return ends

    def _index(self, at: int) -> tuple[array[int], array[int]]:
        """Where each name of file AT starts in its names, and each one's line (made once: 8 bytes a patch)."""
        index = self.__dict__.setdefault("_index_", {})
        if at not in index:
            part = self.files[at]
            starts, pos = array("I", [0]), part.names.find("\n")
            while pos >= 0:
                starts.append(pos + 1)
                pos = part.names.find("\n", pos + 1)
            index[at] = (starts, array("I", map(int, _items(part.lines, ","))))
        return index[at]


NO_PATCHES = Series()


@dataclass(frozen=True)
class Variant:
    """What a hardware/toolchain variant adds to its model (only the additions)."""

    name: str
    line: int
    description: str = ""
    layers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # upstream -> layers appended
    patches: dict[str, Series] = field(default_factory=dict)  # upstream -> those layers' series
    overlays: tuple[str, ...] = ()  # overlay sets appended
    requires: tuple[str, ...] = ()  # pip requirements `install` adds


@dataclass(frozen=True)
class Model:
    name: str
    line: int
    description: str
    layers: dict[str, tuple[str, ...]]  # upstream -> ordered layers
    patches: dict[str, Series] = field(default_factory=dict)  # upstream -> series
    overlays: tuple[str, ...] = ()  # overlay sets: folders under overlays/
    pins: dict[str, str] = field(default_factory=dict)  # upstream -> the model's own pin (long form only)
    tracks: dict[str, str] = field(default_factory=dict)  # upstream -> the model's own track (long form only)
    pin_lines: dict[str, int] = field(default_factory=dict)  # upstream -> the line of the model's pin
    variants: dict[str, Variant] = field(default_factory=dict)

    def resolve(self, manifest: Manifest, variant: str | None = None) -> Effective:
        return manifest.effective(self, variant)


@dataclass(frozen=True)
class Effective:
    """A model as the verbs see it: its upstreams at its effective pins and tracks, and its layers,
    patches and overlays with the variant's appended. Made only by `Manifest.effective`."""

    model: Model
    variant: str | None
    upstreams: dict[str, Upstream]  # the model's upstreams, in its order
    layers: dict[str, tuple[str, ...]]
    patches: dict[str, Series]
    overlays: tuple[str, ...]
    requires: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def line(self) -> int:
        return self.model.line

    @property
    def description(self) -> str:
        return self.model.description

    @property
    def label(self) -> str:
        """`model` or `model[variant]`, for messages."""
        return f"{self.name}[{self.variant}]" if self.variant else self.name

    def base(self, upstream: str) -> tuple[str, str]:
        return self.upstreams[upstream].base


@dataclass(frozen=True)
class Toolchain:
    """The torch stack of one device kind: installed first, in one pip call, into a new venv."""

    device: str
    line: int
    torch: str
    torchvision: str | None = None
    torch_npu: str | None = None
    tools: tuple[str, ...] = ()
    pip_args: tuple[str, ...] = ()

    @property
    def pins(self) -> dict[str, str]:
        """Package -> the exact version declared."""
        pins = {"torch": self.torch, "torchvision": self.torchvision, "torch_npu": self.torch_npu}
        return {name: version for name, version in pins.items() if version}

    def requirements(self) -> list[str]:
        return [f"{name}=={version}" for name, version in self.pins.items()] + list(self.tools)


@dataclass(frozen=True)
class Manifest:
    path: Path
    upstreams: dict[str, Upstream]
    models: dict[str, Model]
    toolchain: dict[str, Toolchain] = field(default_factory=dict)  # device -> its toolchain

    @property
    def root(self) -> Path:
        return self.path.parent

    def model(self, name: str) -> Model:
        if name not in self.models:
            known = ", ".join(sorted(self.models)) or "none"
            raise BadInput(f"unknown model {name!r} in {display(self.path)} (models: {known})")
        return self.models[name]

    def effective(self, model: str | Model | Effective, variant: str | None = None) -> Effective:
        """THE view of MODEL (with VARIANT) every verb works from."""
        if isinstance(model, Effective):
            model = model.model
        found = self.model(model) if isinstance(model, str) else model
        if variant is not None and variant not in found.variants:
            known = ", ".join(sorted(found.variants)) or "none"
            raise BadInput(f"{display(self.path)}:{found.line}: model {found.name!r} has no variant {variant!r} "
                           f"(variants: {known})")
        ups = {up: self._effective_upstream(found, up) for up in found.layers}
        if variant is None:
            return Effective(found, None, ups, dict(found.layers), dict(found.patches), found.overlays)
        v = found.variants[variant]
        layers = {up: found.layers[up] + v.layers.get(up, ()) for up in found.layers}
        patches = {up: found.patches.get(up, NO_PATCHES) + v.patches.get(up, NO_PATCHES) for up in found.layers}
        return Effective(found, variant, ups, layers, patches, found.overlays + v.overlays, v.requires)

    def views(self, models: list[Model] | None = None) -> list[Effective]:
        """Every model (of MODELS, default all) as itself, then each of its variants, in manifest order."""
        chosen = list(self.models.values()) if models is None else models
        return [self.effective(m, v) for m in chosen for v in (None, *m.variants)]

    def _effective_upstream(self, model: Model, up: str) -> Upstream:
        upstream = self.upstreams[up]
        if up not in model.pins and up not in model.tracks:
            return upstream
        pin = model.pins.get(up, upstream.pin)
        return replace(upstream, pin=pin, track=model.tracks.get(up, upstream.track),
                       pin_line=model.pin_lines.get(up, upstream.pin_line),
                       pinned_by=model.name if up in model.pins else None)

    def upstream(self, name: str) -> Upstream:
        if name not in self.upstreams:
            known = ", ".join(sorted(self.upstreams)) or "none"
            raise BadInput(f"unknown upstream {name!r} in {display(self.path)} (upstreams: {known})")
        return self.upstreams[name]


def series_dir(root: Path, layer: str, upstream: str) -> Path:
    return root / "patches" / layer / upstream


def find(start: Path | None = None) -> Path:
    """The nearest upstreams.yaml in START (default: the current directory) or its parents."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    raise BadInput(f"no {MANIFEST_NAME} in {here} or any parent folder (use --manifest PATH)")


def load(path: Path, kept: memo.Memo | None = None) -> Manifest:
    """Read and check PATH; raise InvalidInput listing every problem found. KEPT (`manifests_memo`): the
    manifest last read from PATH, used when PATH's text and every file it read are still the same."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{display(path)}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{display(path)}: cannot read: {exc}") from None
    key = f"{_CODE}:{hashlib.sha256(text.encode()).hexdigest()}"
    known = _kept(kept, key, path) if kept is not None else None
    if known is not None:
        return known
    from patchkit.manifest_read import Reader  # PyYAML only where a manifest is read from its text

    reader = Reader(path, display(path))
    manifest = reader.check(text)
    if reader.problems:
        raise InvalidInput(reader.problems)
    assert manifest is not None
    if kept is not None:
        kept.put(key, {"reads": reader.reads, "manifest": memo.encode(manifest)})
    return manifest


# -- the memo of a read manifest ----------------------------------------------------------------
# One file per manifest path in the cache: the key holds the text's sha256 and what reads a manifest
# (this code's files and patchkit's version); the entry, every file the reader looked at (a series file's
# sha256, whether a patch file or an overlay folder exists), all checked again before the entry is used.

MANIFESTS_VERSION = 1
_CODE = f"{MANIFESTS_VERSION}-{__version__}-" + memo.code_key("manifest.py", "manifest_read.py", "series.py",
                                                              "yamlcheck.py")


def manifests_memo(cache_root: Path, path: Path) -> memo.Memo:
    """Where the manifest read from PATH is kept (a relative PATH: from the current folder): one file per path
    and reading code, so two checkouts of patchkit on one port (an A/B) do not evict each other, and a run
    reads one manifest's JSON, not every version's (a 60-model manifest's is about 0.8 MB)."""
    where = str(path) if path.is_absolute() else f"{os.getcwd()}\0{path}"
    name = hashlib.sha256(f"{where}\0{_CODE}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return memo.Memo(cache_root / f"manifests-v{MANIFESTS_VERSION}" / f"{name}.json", limit=1)


_DECODE = memo.decoder((Manifest, Upstream, Model, Variant, Series, SeriesFile, Toolchain))


def _kept(kept: memo.Memo, key: str, path: Path) -> Manifest | None:
    found, entry = kept.get(key)
    try:
        if not found or not _unchanged(entry["reads"]):
            return None
        manifest = _DECODE(entry["manifest"])
    except (memo.Unreadable, TypeError, ValueError, KeyError):
        return None
    return manifest if isinstance(manifest, Manifest) and manifest.path == path else None


def _unchanged(reads: list[Any]) -> bool:
    """Every file the reader looked at is as it found it."""
    for kind, name, *rest in reads:
        if kind == "is_files":  # a series' patch files (manifest_read.Reader._read_series)
            names, found = rest
            if any(os.path.isfile(os.path.join(name, base)) != found for base in names.split("\n")):
                return False
            continue
        (found,) = rest
        if kind == "file":
            try:
                with open(name, "rb") as fh:
                    now: str | bool = hashlib.sha256(fh.read()).hexdigest()
            except OSError:
                return False
        elif kind in ("is_file", "is_dir"):
            now = os.path.isfile(name) if kind == "is_file" else os.path.isdir(name)
        else:
            return False
        if now != found:
            return False
    return True


def write_pin(manifest: Manifest, upstream: Upstream, pin: str) -> None:
    """Set UPSTREAM's pin in the manifest file, editing only that line (or adding it)."""
    from patchkit.paths import atomic_write

    lines = manifest.path.read_text(encoding="utf-8").splitlines(keepends=True)
    if upstream.pin_line:
        line = lines[upstream.pin_line - 1]
        lines[upstream.pin_line - 1] = re.sub(r"(pin:\s*)\S+", lambda m: m.group(1) + pin, line, count=1)
    else:  # after the release's sha256, inside the upstream's block
        first = lines[upstream.line] if upstream.line < len(lines) else "    "
        indent = first[:len(first) - len(first.lstrip())] or "    "
        at = upstream.line
        for i in range(upstream.line, len(lines)):
            if lines[i].strip() and not lines[i].startswith(indent):
                break
            if lines[i].startswith(f"{indent}sha256:"):
                at = i + 1
        lines.insert(at, f"{indent}pin: {pin}\n")
    atomic_write(manifest.path, "".join(lines).encode())
