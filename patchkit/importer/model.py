"""What the readers find and what the writer writes: small typed values, nothing else."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Where:
    """A place in the port folder: a path relative to it and a 1-based line (0: the whole file)."""

    path: str
    line: int = 0

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True)
class Step:
    """One shell step, as written (README code block or install script), with its working folder.

    kind: clone, checkout, reset, apply, copy, move, remove, pip, build, cd, sed, other.
    cwd: the folder the step runs in, relative to the port folder ("" = the port folder itself;
    "<site-packages>/pkg" for an installed package's folder).
    """

    kind: str
    words: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    cwd: str
    where: Where

    @property
    def text(self) -> str:
        return " ".join((*(f"{k}={shlex.quote(v)}" for k, v in self.env), shlex.join(self.words)))


@dataclass(frozen=True)
class PinEvidence:
    """One statement of which commit an upstream is at: one of the five forms."""

    form: str  # "reference block", "commit line", "prose", "git checkout", "git reset --hard", "clone -b"
    ref: str  # a SHA (maybe abbreviated), a branch or a tag
    where: Where
    runs: bool  # a shell step that really runs (it wins over what is only written)


@dataclass
class UpstreamPlan:
    """An upstream the port names, with everything said about its pin."""

    url: str  # https://github.com/owner/name.git, or pypi:name==version
    folder: str  # where the port's steps put it, relative to the port folder
    name: str = ""  # the manifest name chosen
    evidence: list[PinEvidence] = field(default_factory=list)
    pypi: str | None = None  # "name==version" for a PyPI upstream
    site_prefix: str = ""  # an installed package: patches are relative to this folder of the release
    install: dict[str, object] = field(default_factory=dict)
    install_where: list[Where] = field(default_factory=list)


@dataclass(frozen=True)
class Finding:
    """Something the import could not convert (or repaired, or decided): source, what, why."""

    where: str
    what: str
    reason: str


@dataclass(frozen=True)
class PatchOut:
    """One regenerated patch file of the model's layer."""

    upstream: str
    name: str
    data: bytes
    source: str  # the port file it came from
    files: tuple[str, ...]


@dataclass(frozen=True)
class FileOverlayOut:
    upstream: str
    path: str
    data: bytes
    base: str  # the upstream blob it replaces
    source: str


@dataclass(frozen=True)
class OverlayModuleOut:
    name: str  # overlays/<model>/<name>.py
    text: str
    source: str


@dataclass
class PinDecision:
    upstream: str
    pin: str
    track: str
    how: str  # "pinned", "track resolved", "inferred", "reused", "pypi"
    note: str = ""  # for the manifest comment (inferred pins say so visibly)
    candidates: list[str] = field(default_factory=list)  # inferred: where the patches apply strictly, newest first


@dataclass
class ImportReport:
    model: str
    port: str
    drivingsdk_commit: str | None
    upstreams: dict[str, PinDecision] = field(default_factory=dict)
    contradictions: list[Finding] = field(default_factory=list)
    repairs: list[Finding] = field(default_factory=list)
    not_converted: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    patches: list[str] = field(default_factory=list)  # written patch paths, relative to the port repository
    overlays: list[str] = field(default_factory=list)
    external_hooks: list[Finding] = field(default_factory=list)
    recipe: str | None = None
    todos: list[str] = field(default_factory=list)
    added: bool = True  # False: no upstream could be obtained; only the report is written
    changed: list[str] = field(default_factory=list)  # files the writer changed (empty: nothing to do)
