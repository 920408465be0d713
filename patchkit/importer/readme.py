"""The README reader: reference blocks, prose pins and the shell steps of its code blocks.

Nothing is executed: the steps are tokenised and their working folder is followed (`cd`, `git
clone` into a new folder), so every later step knows which upstream checkout it runs in. An
install script the README runs from the port folder (`bash install_X.sh`) is read the same way.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from patchkit.importer.model import PinEvidence, Step, Where

SITE = "<site-packages>"
_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
_SHA = re.compile(r"\b[0-9a-f]{7,40}\b")
_URL_LINE = re.compile(r"^\s*url\s*[=:]\s*(\S+)")
_COMMIT_LINE = re.compile(r"^\s*commit(?:_id)?\s*[=: ]\s*([0-9a-f]{7,40})\b", re.I)
_PLACEHOLDER = re.compile(r"\$\{?\w*install\w*\}?|\{\w*install\w*\}|\$\(pip show[^)]*\)|site-packages", re.I)
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class Line:
    text: str
    where: Where


@dataclass
class Readme:
    steps: list[Step] = field(default_factory=list)
    references: list[tuple[str, PinEvidence | None, Where]] = field(default_factory=list)  # url, pin, where
    prose: list[PinEvidence] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # package -> version from the README's tables
    unread: list[tuple[Where, str]] = field(default_factory=list)  # lines the shell reader could not follow


def code_blocks(text: str, path: str) -> tuple[list[list[Line]], list[Line]]:
    """The fenced code blocks of a markdown TEXT (each a list of lines) and the prose lines."""
    blocks: list[list[Line]] = []
    prose: list[Line] = []
    current: list[Line] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if _FENCE.match(raw):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
            continue
        (prose if current is None else current).append(Line(raw, Where(path, number)))
    if current:
        blocks.append(current)
    return blocks, prose


def commands(lines: list[Line]) -> list[Line]:
    """Logical shell lines: continuations joined, comments dropped, `&&` and `;` split."""
    out: list[Line] = []
    pending = ""
    start: Where | None = None
    for line in lines:
        text = line.text.rstrip()
        start = start or line.where
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        whole, pending = pending + text, ""
        for part in _split_commands(_strip_comment(whole)):
            if part.strip():
                out.append(Line(part.strip(), start))
        start = None
    return out


def _split_commands(text: str) -> list[str]:
    """TEXT cut at `&&`, `||` and `;` outside quotes."""
    parts, start, quote, i = [], 0, None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ";" or text[i:i + 2] in ("&&", "||"):
            parts.append(text[start:i])
            i += 1 if ch == ";" else 2
            start = i
            continue
        i += 1
    return [*parts, text[start:]]


def _strip_comment(text: str) -> str:
    """TEXT without a shell comment (a '#' starting a word outside quotes)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i]
    return text


def read(port: Path, readme: Path, name: str) -> Readme:
    """Everything the README at README (in the port folder PORT, named NAME) says about the port."""
    rel = readme.relative_to(port).as_posix()
    text = readme.read_text(encoding="utf-8", errors="replace")
    blocks, prose = code_blocks(text, rel)
    result = Readme()
    for block in blocks:
        _references(block, result)
    _prose_pins(prose, result)
    result.versions = _version_table(prose)
    state = _Shell(port, name, result)
    for block in blocks:
        for line in commands(block):
            state.step(line)
    return result


def _references(block: list[Line], result: Readme) -> None:
    """`url=...` with `commit_id=...` or `commit SHA` in the same block: the reference implementation."""
    url = None
    url_where = None
    for line in block:
        m = _URL_LINE.match(line.text)
        if m:
            if url is not None:
                result.references.append((url, None, url_where))  # type: ignore[arg-type]
            url, url_where = m.group(1), line.where
            continue
        c = _COMMIT_LINE.match(line.text)
        if c and url is not None:
            form = "reference block" if "_id" in line.text.lower().split(c.group(1))[0] else "commit line"
            result.references.append((url, PinEvidence(form, c.group(1).lower(), line.where, False), url_where))
            url = None
    if url is not None:
        result.references.append((url, None, url_where))  # type: ignore[arg-type]


def _prose_pins(prose: list[Line], result: Readme) -> None:
    for line in prose:
        if "commit" not in line.text.lower():
            continue
        for sha in _SHA.findall(line.text):
            if re.search(r"[a-f]", sha) and re.search(r"\d", sha):
                result.prose.append(PinEvidence("prose", sha, line.where, False))


def _version_table(prose: list[Line]) -> dict[str, str]:
    """`| mmcv | 1.7.2 |` rows of the README's version tables: package -> version."""
    versions: dict[str, str] = {}
    for line in prose:
        cells = [c.strip() for c in line.text.strip().strip("|").split("|")]
        if len(cells) == 2 and re.fullmatch(r"[A-Za-z][\w.-]*", cells[0]) and re.fullmatch(r"v?\d+(\.\w+)+", cells[1]):
            versions[cells[0].lower().replace("_", "-")] = cells[1].lstrip("v")
    return versions


class _Shell:
    """Follows the working folder through the steps and classifies each command."""

    def __init__(self, port: Path, name: str, result: Readme) -> None:
        self.port = port
        self.name = name
        self.result = result
        self.cwd = ""
        self.vars: dict[str, str] = {}
        self.pip_show: str | None = None

    def step(self, line: Line) -> None:
        try:
            words = shlex.split(line.text, comments=True)
        except ValueError:
            self.result.unread.append((line.where, line.text))
            return
        env = []
        while words and _ASSIGN.match(words[0]) and len(words) > 1:
            key, value = _ASSIGN.match(words[0]).groups()  # type: ignore[union-attr]
            env.append((key, value))
            words = words[1:]
        if not words:
            return
        if len(words) == 1 and _ASSIGN.match(words[0]):
            key, value = _ASSIGN.match(words[0]).groups()  # type: ignore[union-attr]
            self.vars[key] = self.cwd if value in ("$(pwd)", "`pwd`", "${PWD}", "$PWD") else value
            return
        kind = self._kind(words)
        record = Step(kind, tuple(words), tuple(env), self.cwd, line.where)
        if kind == "cd":
            self._cd(words[1] if len(words) > 1 else "", line)
            return
        if kind == "script":
            if self._script(words, line):
                return
        if kind == "pip" and len(words) > 2 and words[1] == "show":
            self.pip_show = words[2]
        self.result.steps.append(record)

    @staticmethod
    def _kind(words: list[str]) -> str:
        head = words[0]
        if head == "git" and len(words) > 1:
            sub = words[1]
            if sub == "reset" and "--hard" in words:
                return "reset"
            return {"clone": "clone", "checkout": "checkout", "apply": "apply", "am": "apply"}.get(sub, "git")
        if head in ("pip", "pip3") or words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
            return "pip"
        if head in ("python", "python3") and len(words) > 2 and words[1] == "setup.py":
            return "build"
        return {"cd": "cd", "cp": "copy", "mv": "move", "rm": "remove", "sed": "sed", "patch": "apply",
                "bash": "script", "sh": "script", "source": "script"}.get(head, "other")

    def _cd(self, target: str, line: Line) -> None:
        if target.startswith("$") and target.strip("${}") in self.vars:
            self.cwd = self.vars[target.strip("${}")]
            return
        target = self._expand(target)
        marker = f"model_examples/{self.name}"
        if marker in target:
            self.cwd = target.split(marker, 1)[1].strip("/")
        elif _PLACEHOLDER.search(target):
            rest = _PLACEHOLDER.split(target, 1)[1].strip("/")
            self.cwd = f"{SITE}/{rest}" if rest else SITE
        elif target.startswith(("/", "~", "$")) or not target:
            self.result.unread.append((line.where, line.text))
        else:
            self.cwd = _join(self.cwd, target)

    def _expand(self, text: str) -> str:
        for key, value in self.vars.items():
            text = text.replace("${" + key + "}", value).replace("$" + key, value)
        return text

    def _script(self, words: list[str], line: Line) -> bool:
        """`bash x.sh` of a script in the port folder: its steps are read here, in order."""
        if len(words) < 2 or not words[1].endswith(".sh"):
            return False
        rel = _join(self.cwd, words[1])
        path = self.port / rel
        if rel.startswith(("..", SITE)) or not path.is_file() or rel.split("/")[0] == "test":
            return False
        lines = [Line(t, Where(rel, n)) for n, t in enumerate(path.read_text(errors="replace").splitlines(), 1)]
        for sub in commands(lines):
            self.step(sub)
        return True


def clone_folder(words: list[str] | tuple[str, ...]) -> str | None:
    """The folder `git clone ... URL [DIR]` makes."""
    args = [w for i, w in enumerate(words[2:], 2) if not w.startswith("-") and words[i - 1] not in ("-b", "--branch", "--depth", "-c")]
    if not args:
        return None
    if len(args) > 1:
        return args[1]
    return PurePosixPath(args[0].rstrip("/")).name.removesuffix(".git")


def clone_branch(words: list[str] | tuple[str, ...]) -> str | None:
    for i, w in enumerate(words):
        if w in ("-b", "--branch") and i + 1 < len(words):
            return words[i + 1]
    return None


def clone_url(words: list[str] | tuple[str, ...]) -> str | None:
    args = [w for i, w in enumerate(words[2:], 2) if not w.startswith("-") and words[i - 1] not in ("-b", "--branch", "--depth", "-c")]
    return args[0] if args else None


def _join(cwd: str, target: str) -> str:
    parts = [p for p in cwd.split("/") if p] if cwd else []
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            else:
                parts.append("..")
        else:
            parts.append(part)
    return "/".join(parts)


join = _join
