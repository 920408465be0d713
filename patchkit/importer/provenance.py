"""Where a port file comes from: the DrivingSDK commit and the author and date of its last change,
read from the port folder's git history (read only: `git log`, which runs no hooks; a config that
would run a program, core.fsmonitor, is switched off), and the format-patch files made from them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from patchkit import git

_SAFE = [("core.fsmonitor", "false"), ("core.hooksPath", "/dev/null")]
UNKNOWN_AUTHOR = "DrivingSDK port (no git history) <unknown@patchkit.invalid>"
UNKNOWN_DATE = "Thu, 1 Jan 1970 00:00:00 +0000"


@dataclass(frozen=True)
class Origin:
    repo_commit: str | None  # HEAD of the checkout holding the port folder
    author: str
    date: str  # RFC 2822, as format-patch writes it
    path: str  # the port file, relative to the checkout (model_examples/X/y.patch) or to the port


def head(port: Path) -> str | None:
    result = git.run(["rev-parse", "--verify", "-q", "HEAD"], port, check=False, config=_SAFE)
    return result.stdout.strip() if result.ok else None


def origin(port: Path, rel: str) -> Origin:
    """The provenance of the port file REL (relative to PORT)."""
    commit = head(port)
    prefix = git.run(["rev-parse", "--show-prefix"], port, check=False, config=_SAFE)
    path = (prefix.stdout.strip() if prefix.ok else "") + rel
    if commit is None:
        return Origin(None, UNKNOWN_AUTHOR, UNKNOWN_DATE, rel)
    log = git.run(["log", "-1", "--format=%an <%ae>%x00%aD", "--", rel], port, check=False, config=_SAFE)
    if not log.ok or "\0" not in log.stdout:
        return Origin(commit, UNKNOWN_AUTHOR, UNKNOWN_DATE, path)
    author, date = log.stdout.strip().split("\0", 1)
    return Origin(commit, author, date, path)


def format_patch(diff: bytes, subject: str, body: str, origin: Origin) -> bytes:
    """A `git format-patch` file of DIFF with DEP-3 provenance."""
    where = f"DrivingSDK {origin.path}" + (f" at {origin.repo_commit}" if origin.repo_commit else " (no git history)")
    text = (f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"From: {origin.author}\nDate: {origin.date}\nSubject: [PATCH] {subject}\n\n"
            f"{body.strip()}\n\nOrigin: {where}\nUpstream-Status: Pending\n---\n")
    return text.encode("utf-8") + diff + b"-- \npatchkit import\n\n"


def slug(text: str, limit: int = 52) -> str:
    """A file-name part as format-patch makes it from a subject."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.")[:limit].rstrip("-.") or "patch"


def cosmetic(diff: bytes) -> bool:
    """Whether DIFF only changes whitespace or comments (as patchkit's lint judges a patch)."""
    from patchkit import lint, patchfile
    from patchkit.manifest import PatchRef

    data = format_patch(diff, "probe", "", Origin(None, UNKNOWN_AUTHOR, UNKNOWN_DATE, "probe"))
    ref = PatchRef("import", "import", "probe.patch", "/nonexistent/probe.patch", Path("/nonexistent/series"), 0)
    patch = patchfile.Patch(ref, data, hashlib.sha256(data).hexdigest())
    parsed, _ = patchfile.parse(patch)
    return parsed is not None and any("only changes whitespace or comments" in d.message for d in lint.lint(patch, parsed))
