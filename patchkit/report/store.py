"""Where checks are kept: the newest `rebase --check` document, and the history of checks.

- Every `rebase --check` writes its JSON document (docs/rebase-check.md) to
  `<workspace>/.patchkit/checks/latest.json`, atomically, whatever it printed; `patchkit report` reads it
  from there (or from `--check FILE`, e.g. shards merged in CI).
- `rebase --check --history DIR` also appends one line to `DIR/history.jsonl`: a summary of the check
  (per upstream: the target commit, how many distinct patches hold and break, which break; per model the
  same counts). The append is atomic: under a lock on `DIR/.history.lock` the file is rewritten with the new
  line through a temporary file and a rename, so a reader sees the history before or after, never a torn
  line, and two checks appending at once both land.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from patchkit.errors import BadInput, Diagnostic, InvalidInput
from patchkit.lock import FileLock
from patchkit.paths import atomic_write, display

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
    atomic_write(path, (json.dumps(document, indent=1) + "\n").encode())
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


def history_entry(document: dict[str, Any]) -> dict[str, Any]:
    """One history line: distinct patches holding and breaking per upstream, and per model."""
    ups: dict[str, dict[str, Any]] = {}
    for name, target in document.get("upstreams", {}).items():
        ups[name] = {"ref": target.get("ref"), "commit": target.get("commit"), "pin": target.get("pin"),
                     "commits_since_pin": target.get("commits_since_pin")}
    broken: dict[str, dict[str, bool]] = {}
    models: dict[str, dict[str, int]] = {}
    for series in document.get("series", []):
        seen = broken.setdefault(series["upstream"], {})
        counts = models.setdefault(series["model"], {"holding": 0, "breaking": 0})
        for p in series["patches"]:
            seen[p["patch"]] = seen.get(p["patch"], False) or bool(p["broken"])
            counts["breaking" if p["broken"] else "holding"] += 1
    for name, seen in broken.items():
        up = ups.setdefault(name, {})
        up.update(patches=len(seen), breaking=sum(seen.values()), holding=len(seen) - sum(seen.values()),
                  broken=sorted(p for p, b in seen.items() if b))
    for o in document.get("overlays", []):
        up = ups.setdefault(o["upstream"], {})
        states = [t["state"] for t in o.get("targets", [])] + [f["state"] for f in o.get("files", [])]
        bad = sum(s not in ("holds", "merged") for s in states)
        up["overlays_holding"] = up.get("overlays_holding", 0) + len(states) - bad
        up["overlays_breaking"] = up.get("overlays_breaking", 0) + bad
    return {"schema": HISTORY_SCHEMA, "checked_at": document.get("checked_at") or now(),
            "ok": bool(document.get("ok")), "upstreams": ups, "models": models}


def append_history(folder: Path, document: dict[str, Any]) -> Path:
    """Append DOCUMENT's history line to FOLDER/history.jsonl (atomically, see the module docstring)."""
    path = folder / HISTORY_FILE
    line = json.dumps(history_entry(document), sort_keys=True, separators=(",", ":")) + "\n"
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
        if not isinstance(entry, dict) or entry.get("schema") != HISTORY_SCHEMA:
            problems.append(Diagnostic(display(path), n, f"not a {HISTORY_SCHEMA} line: delete the line"))
            continue
        entries.append(entry)
    if problems:
        raise InvalidInput(problems)
    entries.sort(key=lambda e: e["checked_at"])
    return History(path, entries)


def parse_time(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
