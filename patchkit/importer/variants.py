"""Variants of a port (A5, torch versions): found, not yet made (placeholder until the next commit)."""

from __future__ import annotations

from pathlib import Path


def find(port: Path, out: object, report: object) -> list[dict[str, object]]:
    return []
