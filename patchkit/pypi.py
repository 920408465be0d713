"""PyPI releases as upstreams: downloaded once, unpacked into a git repository, then patched,
applied, checked and rebased exactly like a git upstream.

A release file (sdist or wheel, chosen by its sha256) becomes one root commit whose tree is the
unpacked release (an sdist's top folder stripped) and whose author, committer, date and message
are fixed, so the same file gives the same commit SHA everywhere: that SHA is the upstream's pin.
Each imported version is a tag in the upstream's mirror; `patchkit-track` points at the newest
release matching the upstream's `track` specifier.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.parse  # light (pathlib imports it); urllib.request and the archive modules only where used
from pathlib import Path

from patchkit import git, settings
from patchkit.errors import BadInput, PinNotFound, UpstreamUnreachable
from patchkit.manifest import Upstream

TRACK_REF = "patchkit-track"


def index_url() -> str:
    """PATCHKIT_PYPI_URL (a JSON API base, file:// works) or PyPI's."""
    return os.environ.get("PATCHKIT_PYPI_URL", "https://pypi.org/pypi").rstrip("/")


def split(spec: str) -> tuple[str, str]:
    name, _, version = spec.partition("==")
    return name, version


_FETCHED: dict[str, dict[str, object]] = {}  # one download of a project's JSON per run


def _json(upstream: Upstream, path: str) -> dict[str, object]:
    url = f"{index_url()}/{path}"
    if url not in _FETCHED:
        _FETCHED[url] = _download_json(upstream, url)
    return _FETCHED[url]


def _download_json(upstream: Upstream, url: str) -> dict[str, object]:
    import urllib.error  # here: 30 ms of imports that a check of cached releases never needs
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (https or file by design)
            return json.loads(response.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise BadInput(f"upstream {upstream.name!r}: {url} does not exist (no such release)") from None
        raise UpstreamUnreachable(f"cannot reach the package index for {upstream.name!r}: {url}: {exc}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UpstreamUnreachable(f"cannot reach the package index for {upstream.name!r}: {url}: {exc}") from None


def _files(upstream: Upstream, name: str, version: str) -> list[dict[str, object]]:
    """The files of one release, from the project's JSON (every release, with digests)."""
    releases = dict(_json(upstream, f"{name}/json").get("releases", {}))  # type: ignore[call-overload]
    if version not in releases:
        raise BadInput(f"upstream {upstream.name!r}: {name} has no release {version} on {index_url()}")
    base = f"{index_url()}/{name}/json"  # a mirror's index may give file URLs relative to the JSON's
    return [{**f, "url": urllib.parse.urljoin(base, str(f.get("url", "")))} for f in releases[version]]


def _download(upstream: Upstream, url: str, filename: str, sha256: str) -> Path:
    target = settings.cache_root() / "pypi" / sha256 / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import urllib.error
    import urllib.request

    digest = hashlib.sha256()
    tmp = target.with_name(f".{filename}.part")
    try:
        with urllib.request.urlopen(url, timeout=300) as response, open(tmp, "wb") as out:  # noqa: S310
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise UpstreamUnreachable(f"cannot download {url} for {upstream.name!r}: {exc}") from None
    if digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise PinNotFound(f"upstream {upstream.name!r}: {filename} has sha256 {digest.hexdigest()}, "
                          f"not the {sha256} upstreams.yaml names")
    os.replace(tmp, target)
    return target


def _unpack(archive: Path, dest: Path) -> None:
    import tarfile
    import zipfile

    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    entries = [p for p in dest.iterdir()]
    if not archive.name.endswith(".whl") and len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]  # an sdist's name-version/ folder
        for child in list(inner.iterdir()):
            child.rename(dest / child.name)
        inner.rmdir()


def _commit(mirror: Path, archive: Path, spec: str, sha256: str, tag: str) -> str:
    """Import ARCHIVE into MIRROR as a deterministic root commit tagged TAG; return its SHA."""
    with tempfile.TemporaryDirectory(prefix="patchkit-pypi-") as tmp:
        work = Path(tmp) / "tree"
        work.mkdir()
        _unpack(archive, work)
        git.run(["init", "--quiet", "-b", "release"], work)
        git.run(["add", "-A", "-f", "."], work, config=[("core.autocrlf", "false")])
        git.run(["commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m",
                 f"{spec} from PyPI\n\n{archive.name}\nsha256: {sha256}\n"], work, env=git.FIXED_IDENTITY)
        commit = git.out(["rev-parse", "HEAD"], work)
        if not (mirror / "HEAD").exists():
            mirror.parent.mkdir(parents=True, exist_ok=True)
            git.run(["init", "--quiet", "--bare", str(mirror)])
        git.run(["push", "--quiet", "--force", str(mirror), f"HEAD:refs/tags/{tag}"], work)
    return commit


def import_version(upstream: Upstream, mirror: Path, version: str, sha256: str | None = None) -> str:
    """The commit of VERSION of UPSTREAM's package, imported into MIRROR if it is not there yet."""
    name, _ = split(upstream.pypi or "")
    existing = git.run(["rev-parse", "--verify", "-q", f"refs/tags/{version}^{{commit}}"], mirror, check=False) \
        if (mirror / "HEAD").exists() else None
    if existing is not None and existing.ok:
        return existing.stdout.strip()
    files = _files(upstream, name, version)
    if sha256:
        chosen = next((f for f in files if dict(f.get("digests", {})).get("sha256") == sha256), None)  # type: ignore[call-overload]
        if chosen is None:
            raise PinNotFound(f"upstream {upstream.name!r}: no file of {name}=={version} has sha256 {sha256}")
    else:
        sdists = [f for f in files if f.get("packagetype") == "sdist"]
        if not (sdists or files):
            raise BadInput(f"upstream {upstream.name!r}: {name}=={version} has no files")
        chosen = (sdists or files)[0]
    digest = str(dict(chosen["digests"])["sha256"])  # type: ignore[call-overload]
    archive = _download(upstream, str(chosen["url"]), str(chosen["filename"]), digest)
    return _commit(mirror, archive, f"{name}=={version}", digest, version)


def fetch(upstream: Upstream, mirror: Path) -> str | None:
    """Import the pinned release and the newest release matching `track`; return the latter's commit."""
    name, version = split(upstream.pypi or "")
    import_version(upstream, mirror, version, upstream.sha256)
    releases = dict(_json(upstream, f"{name}/json").get("releases", {}))  # type: ignore[call-overload]
    from packaging.specifiers import SpecifierSet  # only here: rebase --check --no-fetch needs none of it
    from packaging.version import InvalidVersion, Version

    spec = SpecifierSet(upstream.track)
    candidates = []
    for text, files in releases.items():
        try:
            candidate = Version(text)
        except InvalidVersion:
            continue
        if files and not candidate.is_prerelease and candidate in spec:
            candidates.append((candidate, text))
    if not candidates:
        return None
    newest = max(candidates)[1]
    commit = import_version(upstream, mirror, newest)
    git.run(["update-ref", f"refs/heads/{TRACK_REF}", commit], mirror)
    return commit


def pin(upstream: Upstream, mirror: Path) -> str:
    name, version = split(upstream.pypi or "")
    return import_version(upstream, mirror, version, upstream.sha256)

