"""Where things live, from the environment: the mirror cache, URL rewrites."""

from __future__ import annotations

import os
from pathlib import Path

from patchkit.errors import BadInput


def cache_root() -> Path:
    """PATCHKIT_CACHE, else $XDG_CACHE_HOME/patchkit, else ~/.cache/patchkit."""
    if os.environ.get("PATCHKIT_CACHE"):
        return Path(os.environ["PATCHKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "patchkit"


def url_rewrites() -> list[tuple[str, str]]:
    """PATCHKIT_URL_REWRITE="FROM=TO;FROM2=TO2": fetch URLs starting with FROM from TO instead.

    Handed to git as `url.TO.insteadOf=FROM`, so it means exactly what git's own setting
    (which keeps working as well) means.
    """
    raw = os.environ.get("PATCHKIT_URL_REWRITE", "")
    pairs = []
    for item in filter(None, (part.strip() for part in raw.split(";"))):
        source, sep, target = item.partition("=")
        if not sep or not source or not target:
            raise BadInput(f"PATCHKIT_URL_REWRITE: {item!r} is not FROM=TO")
        pairs.append((source, target))
    return pairs


def git_config(url: str | None = None) -> list[tuple[str, str]]:
    """git settings for talking to an upstream: the URL rewrites, and for URL the local mirror
    PATCHKIT_MIRROR_TEMPLATE names, as one more rewrite (so clone, fetch and fetch-by-SHA all use it
    while the mirror's remote keeps the real URL)."""
    config = [(f"url.{target}.insteadOf", source) for source, target in url_rewrites()]
    local = mirror_template_url(url) if url else None
    if url and local != url:
        config.append((f"url.{local}.insteadOf", url))
    return config


def mirror_template_url(url: str) -> str:
    """URL, or the local mirror PATCHKIT_MIRROR_TEMPLATE names for it when that path exists.

    The template may use {host}, {owner} and {name} (the repository name without `.git`), e.g.
    `/srv/mirrors/{host}/{owner}/{name}.git` or `/data/git/{owner}+{name}/repo`.
    """
    template = os.environ.get("PATCHKIT_MIRROR_TEMPLATE")
    if not template:
        return url
    import re

    m = re.match(r"^(?:https?|ssh|git)://(?:[^@/]+@)?([^/:]+)(?::\d+)?/([^/]+)/([^/]+?)(?:\.git)?/?$", url) or \
        re.match(r"^[^@]+@([^:]+):([^/]+)/([^/]+?)(?:\.git)?$", url)
    if not m:
        return url
    path = Path(template.format(host=m.group(1), owner=m.group(2), name=m.group(3))).expanduser()
    return str(path) if path.exists() else url
