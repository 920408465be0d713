"""The mirror cache: one bare mirror per upstream URL, from which workspaces are made.

A mirror is created by cloning into a temporary folder and renaming it into place, so an
interrupted clone never leaves a half mirror. Updates are serialised per mirror by a lock.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from patchkit import git, settings
from patchkit.errors import BadInput, PatchkitError, PinNotFound, UpstreamUnreachable
from patchkit.lock import FileLock
from patchkit.manifest import Upstream

PIN_REFS = "refs/patchkit/pins"


@dataclass(frozen=True)
class FetchResult:
    upstream: str
    action: str  # "cloned", "fetched" or "cached"
    seconds: float
    track_before: str | None
    track_after: str | None


def mirror_path(upstream: Upstream, root: Path | None = None) -> Path:
    key = hashlib.sha1(upstream.url.encode()).hexdigest()[:12]
    return (root or settings.cache_root()) / "git" / f"{upstream.name}-{key}.git"


def _unreachable(upstream: Upstream, result: git.Result) -> UpstreamUnreachable:
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    return UpstreamUnreachable(
        f"cannot reach upstream {upstream.name!r} at {upstream.url}",
        details=[f"git: {ln}" for ln in lines[-3:]],
    )


def _clone(upstream: Upstream, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted clone
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    try:
        result = git.run(["clone", "--mirror", "--quiet", upstream.url, str(tmp / "m.git")],
                         check=False, config=settings.git_config(upstream.url))
        if not result.ok:
            raise _unreachable(upstream, result)
        git.run(["config", "--add", "remote.origin.fetch", f"+{PIN_REFS}/*:{PIN_REFS}/*"], tmp / "m.git")
        (tmp / "m.git").rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch(upstream: Upstream, path: Path) -> None:
    result = git.run(["fetch", "--prune", "--quiet", "origin"], path, check=False,
                     config=settings.git_config(upstream.url))
    if not result.ok:
        raise _unreachable(upstream, result)


def track_commit(path: Path, track: str) -> str | None:
    """The commit the track branch or tag points at in the mirror, or None."""
    for ref in (f"refs/heads/{track}", f"refs/tags/{track}"):
        result = git.run(["rev-parse", "--verify", "-q", f"{ref}^{{commit}}"], path, check=False)
        if result.ok:
            return result.stdout.strip()
    return None


def fetch(upstream: Upstream, root: Path | None = None) -> FetchResult:
    """Create or update the mirror of UPSTREAM."""
    path = mirror_path(upstream, root)
    start = time.monotonic()
    if upstream.kind == "pypi":
        from patchkit import pypi

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.parent / f"{path.name}.lock"):
            before = track_commit(path, pypi.TRACK_REF) if (path / "HEAD").exists() else None
            action = "fetched" if before else "imported"
            after = pypi.fetch(upstream, path)
        return FetchResult(upstream.name, action, time.monotonic() - start, before, after)
    with FileLock(path.parent / f"{path.name}.lock"):
        if (path / "HEAD").exists():
            before = track_commit(path, upstream.track)
            _fetch(upstream, path)
            action = "fetched"
        else:
            before = None
            _clone(upstream, path)
            action = "cloned"
        after = track_commit(path, upstream.track)
    return FetchResult(upstream.name, action, time.monotonic() - start, before, after)


def has_pin(upstream: Upstream, root: Path | None = None) -> bool:
    path = mirror_path(upstream, root)
    return (path / "HEAD").exists() and git.has_commit(path, upstream.pin)


def ensure_pin(upstream: Upstream, root: Path | None = None) -> tuple[Path, FetchResult | None]:
    """The mirror of UPSTREAM holding its pin; fetches only when the pin is not cached yet."""
    path = mirror_path(upstream, root)
    if has_pin(upstream, root):
        return path, None
    if not upstream.pin:
        raise BadInput(f"upstream {upstream.name!r} has no pin yet: run `patchkit pin {upstream.name}`")
    if upstream.kind == "pypi":
        from patchkit import pypi

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(path.parent / f"{path.name}.lock"):
            commit = pypi.pin(upstream, path)
        if commit != upstream.pin:
            raise PinNotFound(f"upstream {upstream.name!r}: {upstream.pypi} imports as {commit}, "
                              f"not the pin {upstream.pin}", details=["run `patchkit pin "
                                                                       f"{upstream.name}` to update it"])
        return path, FetchResult(upstream.name, "imported", 0.0, None, commit)
    result = fetch(upstream, root)
    if not git.has_commit(path, upstream.pin):
        _fetch_by_sha(upstream, path)
    if not git.has_commit(path, upstream.pin):
        raise PinNotFound(
            f"upstream {upstream.name!r}: pin {upstream.pin} is not in {upstream.url}",
            details=["it may have been force-pushed away, or the SHA is mistyped "
                     f"(upstreams.yaml line {upstream.pin_line or upstream.line})"],
        )
    return path, result


def _fetch_by_sha(upstream: Upstream, path: Path) -> None:
    """Ask the server for the pin itself: it may be reachable but on no advertised ref."""
    with FileLock(path.parent / f"{path.name}.lock"):
        git.run(["fetch", "--quiet", "origin", f"+{upstream.pin}:{PIN_REFS}/{upstream.pin}"],
                path, check=False, config=settings.git_config(upstream.url))


_MODE_RE = re.compile(r"^(\d{6}) (\w+) ([0-9a-f]+)\t(.*)$")


def symlinks(path: Path, commit: str, candidates: list[str]) -> set[str]:
    """Which of CANDIDATES are symlinks in COMMIT's tree."""
    found: set[str] = set()
    for i in range(0, len(candidates), 500):
        chunk = candidates[i:i + 500]
        result = git.run(["ls-tree", "-z", "--full-tree", commit, "--", *chunk], path)
        for entry in filter(None, result.stdout.split("\0")):
            m = _MODE_RE.match(entry)
            if m and m.group(1) == "120000":
                found.add(m.group(4))
    return found


def fetch_all(upstreams: list[Upstream], *, jobs: int = 4, root: Path | None = None,
              on_done: Callable[[Upstream, FetchResult | PatchkitError], None] = lambda _u, _r: None,
              ) -> dict[str, FetchResult | PatchkitError]:
    """Fetch UPSTREAMS in parallel; every outcome (result or error) is returned, none raised."""
    outcomes: dict[str, FetchResult | PatchkitError] = {}

    def one(upstream: Upstream) -> None:
        outcome: FetchResult | PatchkitError
        try:
            outcome = fetch(upstream, root)
        except PatchkitError as exc:
            outcome = exc
        outcomes[upstream.name] = outcome
        on_done(upstream, outcome)

    from concurrent.futures import ThreadPoolExecutor  # not on the paths that fetch nothing (CLI start-up)

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(upstreams) or 1))) as pool:
        list(pool.map(one, upstreams))
    return {u.name: outcomes[u.name] for u in upstreams}
