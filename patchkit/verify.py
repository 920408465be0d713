"""Verification records: which check passed for which model on which device, written by the runs themselves.

`verified/<model>.jsonl` in the port repository (beside upstreams.yaml), one JSON object a line, only ever
appended to (never edited by hand, never by rewriting the commented recipes); commit it to share it:

    {"model": "fbocc", "check": "overfit", "device": "cpu", "ok": true, "date": "2026-12-02T06:40:11Z",
     "patchkit": "0.1.0", "fingerprint": "1a2b3c4d5e6f7a8b", "workspace": {...}, "detail": {...}}

check: apply (device "any": a workspace is the same on every device), compile (`patchkit install
--device D`: the stack's extensions built for D), smoke, overfit (`patchkit train --smoke [--overfit]`
on D). fingerprint: a hash of the workspace fingerprint (pins, heads, series and overlay hashes, and the
variant when the workspace is built as one), which `workspace` holds in full. `patchkit list` shows the newest record per device; a device with none is
"never".

PATCHKIT_NO_RECORD=1 turns recording off (the test suite sets it: its opt-in tests use this repository as
the port, and a test run is not a verification of the port).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from patchkit import __version__
from patchkit.errors import BadInput
from patchkit.lock import FileLock
from patchkit.manifest import DEVICES
from patchkit.paths import atomic_write, display

FOLDER = "verified"
OFF = "PATCHKIT_NO_RECORD"  # set (not "" or "0"): runs append no record
CHECKS = ("apply", "compile", "smoke", "overfit")


@dataclass(frozen=True)
class Record:
    model: str
    check: str
    device: str
    ok: bool
    date: str
    patchkit: str
    fingerprint: str
    workspace: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)


def path(root: Path, model: str) -> Path:
    return root / FOLDER / f"{model}.jsonl"


def make(model: str, check: str, device: str, ok: bool, workspace: dict[str, Any],
         detail: dict[str, Any] | None = None) -> Record:
    digest = hashlib.sha256(json.dumps(workspace, sort_keys=True).encode()).hexdigest()[:16]
    return Record(model, check, device, ok, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), __version__,
                  digest, workspace, detail or {})


def append(root: Path, record: Record) -> Path:
    """Add RECORD as the last line of its model's file (atomically, one writer at a time)."""
    target = path(root, record.model)
    with FileLock(target.parent / f".{record.model}.lock"):
        old = target.read_bytes() if target.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write(target, old + json.dumps(asdict(record), sort_keys=True).encode() + b"\n")
    return target


def load(root: Path, model: str) -> list[Record]:
    """Every record of MODEL, oldest first; a line that is not a record is an error naming FILE:LINE."""
    file = path(root, model)
    if not file.exists():
        return []
    records = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            records.append(_parse(line, f"{display(file)}:{number}"))
    return records


def _parse(line: str, where: str) -> Record:
    try:
        data = json.loads(line)
        return Record(**data)
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{where}: not a verification record ({exc})",
                       details=["these files are written by patchkit runs; restore the line from git"]) from None


def newest(records: list[Record]) -> dict[str, dict[str, Record]]:
    """Per device (npu, cuda, cpu, and "any" for apply), the newest record of each check."""
    out: dict[str, dict[str, Record]] = {d: {} for d in (*DEVICES, "any")}
    for record in records:  # oldest first: a later record replaces an earlier one and moves to the end
        checks = out.setdefault(record.device, {})
        checks.pop(record.check, None)
        checks[record.check] = record
    return out


def summary(records: dict[str, Record]) -> str:
    """One device's line for `patchkit list`: the newest record (newest() keeps it last), then each check's
    newest outcome."""
    if not records:
        return "never"
    last = list(records.values())[-1]
    checks = ", ".join(f"{c} {'ok' if records[c].ok else 'FAILED'}" for c in CHECKS if c in records)
    return f"{last.check} {'ok' if last.ok else 'FAILED'} {last.date} (patchkit {last.patchkit}, " \
           f"workspace {last.fingerprint}); {checks}"


def disabled() -> bool:
    """True when PATCHKIT_NO_RECORD turns recording off."""
    return os.environ.get(OFF, "") not in ("", "0")


def record(manifest: Any, model: str, workspace_root: Path, check: str, device: str, ok: bool,
           detail: dict[str, Any] | None = None, workspace: dict[str, Any] | None = None) -> Path | None:
    """Append the record of a run that just ended; None when the port repository cannot be written
    (a read-only checkout: the run itself still counts, it is only not recorded) or recording is off.
    WORKSPACE: the fingerprint the run already took (a training plan's), else taken here."""
    if disabled():
        return None
    if workspace is None:
        from patchkit.train.launch import workspace_fingerprint

        workspace = workspace_fingerprint(manifest, model, workspace_root)
    try:
        return append(manifest.root, make(model, check, device, ok, workspace, detail))
    except OSError:
        return None
