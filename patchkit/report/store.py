"""Where checks are kept: the newest `rebase --check` document, and the history of checks.

- Every `rebase --check` writes its JSON document (docs/rebase-check.md) to
  `<workspace>/.patchkit/checks/latest.json`, atomically, whatever it printed; `patchkit report` reads it
  from there (or from `--check FILE`, e.g. shards merged in CI).
- `rebase --check --history DIR` also appends one line to `DIR/history.jsonl`: a summary of the check
  (per upstream: the target commit, the distinct patches that hold and that break, by id; per model the
  counts). Lines of one run (`run`: PATCHKIT_RUN_ID, else GITHUB_RUN_ID) are the shards of one check
  (`rebase --check --shard K/N`) and are read back as one. The append is atomic: under a lock on `DIR/.history.lock` the file is rewritten with the new
  line through a temporary file and a rename, so a reader sees the history before or after, never a torn
  line, and two checks appending at once both land.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from patchkit.errors import BadInput, Diagnostic, InvalidInput
from patchkit.lock import FileLock
from patchkit import jsonstream
from patchkit.paths import atomic_write, atomic_writer, display
from patchkit.shard import label

CHECK_SCHEMA = "patchkit/rebase-check/"
HISTORY_SCHEMA = "patchkit/check-history/1"
HISTORY_FILE = "history.jsonl"


def latest_path(workspace: Path) -> Path:
    return workspace / ".patchkit" / "checks" / "latest.json"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def keep(workspace: Path, document: dict[str, Any]) -> Path:
    """Write DOCUMENT as the workspace's newest check; return where."""
    path = latest_path(workspace)
    with atomic_writer(path) as fh:  # written piece by piece: a long check's document is never whole in memory
        jsonstream.write(lambda text: fh.write(text.encode()), document, indent=1)
    return path


def load_check(path: Path) -> dict[str, Any]:
    """A `rebase --check --json` document from PATH, checked for its schema."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{display(path)}: no such check result (run `patchkit rebase --check` first)") from None
    except ValueError as exc:
        raise BadInput(f"{display(path)}:{getattr(exc, 'lineno', 0)}: not JSON ({exc}); "
                       "run `patchkit rebase --check` again to rewrite it") from None
    except OSError as exc:
        raise BadInput(f"{display(path)}: cannot read: {exc}") from None
    schema = data.get("schema", "") if isinstance(data, dict) else ""
    if not str(schema).startswith(CHECK_SCHEMA) or not isinstance(data.get("series"), list):
        raise BadInput(f"{display(path)}: not a rebase --check document (schema {schema!r}; expected "
                       f"{CHECK_SCHEMA}1, see docs/rebase-check.md)")
    return data


def run_id() -> str:
    """What ties the shards of one check run together: PATCHKIT_RUN_ID, else GITHUB_RUN_ID (the same in every
    job of one workflow run), else this check alone."""
    return os.environ.get("PATCHKIT_RUN_ID") or os.environ.get("GITHUB_RUN_ID") or uuid.uuid4().hex[:16]


def history_entry(document: dict[str, Any], run: str | None = None) -> dict[str, Any]:
    """One history line: per upstream the target and the distinct patches that hold and that break (by id,
    so the lines of shards of one run merge exactly), overlay counts; per model the patches holding/breaking."""
    ups: dict[str, dict[str, Any]] = {}
    for name, target in document.get("upstreams", {}).items():
        ups[name] = _new_upstream(target)
    models: dict[str, dict[str, int]] = {}
    for series in document.get("series", []):  # counted by target (`up@pin12` for a model's own pin of up)
        up = ups.setdefault(series.get("target") or series["upstream"], _new_upstream({}))
        counts = models.setdefault(label(series), {"holding": 0, "breaking": 0})
        for p in series["patches"]:
            up["broken" if p["broken"] else "held"].append(p["patch"])
            counts["breaking" if p["broken"] else "holding"] += 1
    for o in document.get("overlays", []):
        up = ups.setdefault(o.get("target") or o["upstream"], _new_upstream({}))
        states = [t["state"] for t in o.get("targets", [])] + [f["state"] for f in o.get("files", [])]
        bad = sum(s not in ("holds", "merged") for s in states)
        up["overlays_holding"] += len(states) - bad
        up["overlays_breaking"] += bad
    return {"schema": HISTORY_SCHEMA, "run": run or run_id(), "checked_at": document.get("checked_at") or now(),
            "ok": bool(document.get("ok")), "upstreams": {n: _finish(u) for n, u in ups.items()}, "models": models}


def _new_upstream(target: dict[str, Any]) -> dict[str, Any]:
    return {"ref": target.get("ref"), "commit": target.get("commit"), "pin": target.get("pin"),
            "commits_since_pin": target.get("commits_since_pin"), "held": [], "broken": [],
            "overlays_holding": 0, "overlays_breaking": 0}


def _finish(up: dict[str, Any]) -> dict[str, Any]:
    """Distinct patches: one broken for any model breaks; the counts follow from the id lists."""
    broken = set(up["broken"])
    held = set(up["held"]) - broken
    return {**up, "held": sorted(held), "broken": sorted(broken), "patches": len(held) + len(broken),
            "holding": len(held), "breaking": len(broken)}


def merge_entries(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The lines of one run's shards as one line."""
    ups: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, int]] = {}
    for e in entries:
        for name, u in e.get("upstreams", {}).items():
            into = ups.setdefault(name, _new_upstream(u))
            for key in ("held", "broken"):
                into[key] += u.get(key, [])
            for key in ("overlays_holding", "overlays_breaking"):
                into[key] += u.get(key, 0)
        for name, counts in e.get("models", {}).items():
            into_m = models.setdefault(name, {"holding": 0, "breaking": 0})
            for key in into_m:
                into_m[key] += counts.get(key, 0)
    return {**entries[0], "checked_at": max(e["checked_at"] for e in entries), "ok": all(e["ok"] for e in entries),
            "upstreams": {n: _finish(u) for n, u in ups.items()}, "models": models, "shards": len(entries)}


def merge_checks(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """Several check documents (the shards of one run) shown as one: series and overlays side by side."""
    if len(documents) == 1:
        return documents[0]
    summary: dict[str, int] = {}
    for doc in documents:
        for key, value in (doc.get("summary") or {}).items():
            summary[key] = summary.get(key, 0) + value
    stamps = [doc["checked_at"] for doc in documents if doc.get("checked_at")]
    return {**documents[0], "checked_at": max(stamps) if stamps else None, "ok": all(doc["ok"] for doc in documents),
            "allow_fuzz": any(doc.get("allow_fuzz") for doc in documents),
            "upstreams": {k: v for doc in documents for k, v in doc.get("upstreams", {}).items()},
            "series": [s for doc in documents for s in doc["series"]],
            "overlays": [o for doc in documents for o in doc.get("overlays", [])], "summary": summary}


def append_history(folder: Path, document: dict[str, Any], run: str | None = None) -> Path:
    """Append DOCUMENT's history line to FOLDER/history.jsonl (atomically, see the module docstring)."""
    path = folder / HISTORY_FILE
    line = json.dumps(history_entry(document, run), sort_keys=True, separators=(",", ":")) + "\n"
    with FileLock(folder / ".history.lock"):
        try:
            before = path.read_bytes()
        except FileNotFoundError:
            before = b""
        if before and not before.endswith(b"\n"):
            before += b"\n"
        atomic_write(path, before + line.encode())
    return path


@dataclass
class History:
    path: Path
    entries: list[dict[str, Any]]


def load_history(folder: Path) -> History:
    """The history lines of FOLDER (or of the history.jsonl file FOLDER names), oldest first."""
    path = folder if folder.is_file() else folder / HISTORY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{display(path)}: no check history there (`patchkit rebase --check --history "
                       f"{display(folder)}` starts one)") from None
    entries, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            problems.append(Diagnostic(display(path), n, f"not a JSON line ({exc.msg}): delete the line"))
            continue
        if not _entry_ok(entry):
            problems.append(Diagnostic(display(path), n, f"not a {HISTORY_SCHEMA} line (schema, checked_at, "
                                                         "upstreams): delete the line"))
            continue
        entries.append(entry)
    if problems:
        raise InvalidInput(problems)
    runs: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        runs.setdefault(entry.get("run") or entry["checked_at"], []).append(entry)
    merged = [merge_entries(shards) if len(shards) > 1 else shards[0] for shards in runs.values()]
    merged.sort(key=lambda e: e["checked_at"])
    return History(path, merged)


def _entry_ok(entry: object) -> bool:
    if not isinstance(entry, dict) or entry.get("schema") != HISTORY_SCHEMA:
        return False
    if not isinstance(entry.get("upstreams"), dict) or not all(isinstance(u, dict) for u in entry["upstreams"].values()):
        return False
    try:
        parse_time(entry["checked_at"])
    except (KeyError, TypeError, ValueError):
        return False
    return True


def parse_time(stamp: str) -> datetime:
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
