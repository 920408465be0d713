"""The workspace state file: what was applied where, so a second apply knows what to skip.

`<workspace>/<model>/.patchkit/state.json` records, per upstream repo, the pin, each patch's
content hash and the commit it became, and the repo's status. A repo is marked `building`
before patchkit changes it and `applied` (or `failed`) after, so a run killed midway is seen
by the next one. The file is replaced atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from patchkit.errors import BadInput
from patchkit.paths import atomic_write, display

STATE_VERSION = 1
APPLIED, BUILDING, FAILED = "applied", "building", "failed"


@dataclass(frozen=True)
class AppliedPatch:
    id: str  # layer/name
    sha256: str
    commit: str


@dataclass(frozen=True)
class RepoState:
    status: str
    url: str
    pin: str
    branch: str
    head: str
    patches: tuple[AppliedPatch, ...] = ()
    failed_patch: str | None = None
    updated: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["patches"] = [asdict(p) for p in self.patches]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepoState:
        patches = tuple(AppliedPatch(**p) for p in data.get("patches", []))
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "patches"}
        return cls(patches=patches, **fields)


def meta_dir(model_dir: Path) -> Path:
    return model_dir / ".patchkit"


def state_path(model_dir: Path) -> Path:
    return meta_dir(model_dir) / "state.json"


def load(model_dir: Path) -> dict[str, RepoState]:
    path = state_path(model_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != STATE_VERSION:
            raise ValueError(f"unknown state version {raw.get('version')!r}")
        return {name: RepoState.from_json(entry) for name, entry in raw["repos"].items()}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"{display(path)}: unreadable workspace state ({exc}); "
                       "move it away and run apply --force to rebuild") from None


def save(model_dir: Path, model: str, repos: dict[str, RepoState]) -> None:
    data = {"version": STATE_VERSION, "model": model,
            "repos": {name: repos[name].to_json() for name in sorted(repos)}}
    atomic_write(state_path(model_dir), (json.dumps(data, indent=2) + "\n").encode())
