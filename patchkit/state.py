"""The workspace state file: what was applied where, so a second apply knows what to skip.

`<workspace>/<model>/.patchkit/state.json` records, per upstream repo, the pin, each patch's
content hash and the commit it became, and the repo's status. A repo is marked `building`
before patchkit changes it and `applied` (or `failed`) after, so a run killed midway is seen
by the next one. The file is replaced atomically.

Version 2 adds `env`, the virtual environment `patchkit install` last filled for the model (so
`patchkit train MODEL` uses it without --venv), and `variant`, the variant `patchkit apply MODEL
--variant V` built (null: the model itself). A version-1 file reads as env=None, variant=None; the
next save writes version 2. Saving the repos keeps the env and the variant.

Repos are keyed by upstream name, and each records the pin it was built at: the model's effective
pin (its own in the manifest's long form, else the upstream's). `migrate_names` renames, once, a
repo an older import recorded as `<upstream>-<model>` (its own upstream then) to `<upstream>`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from patchkit.errors import BadInput
from patchkit.paths import atomic_write, display

STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no env and no variant (read as null)
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


@dataclass(frozen=True)
class EnvState:
    """The venv `patchkit install` filled: what train runs with."""

    venv: str  # absolute path
    device: str  # cpu | cuda | npu
    python: str
    torch: str | None
    torchvision: str | None = None
    torch_npu: str | None = None
    installed: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EnvState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class State:
    repos: dict[str, RepoState]
    env: EnvState | None = None
    variant: str | None = None


def meta_dir(model_dir: Path) -> Path:
    return model_dir / ".patchkit"


def state_path(model_dir: Path) -> Path:
    return meta_dir(model_dir) / "state.json"


def load(model_dir: Path) -> dict[str, RepoState]:
    """The repos of the state (empty when nothing was applied)."""
    return load_all(model_dir).repos


def load_all(model_dir: Path) -> State:
    """The whole state, a version-1 file migrated in memory (env and variant null)."""
    path = state_path(model_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") not in READABLE_VERSIONS:
            raise ValueError(f"unknown state version {raw.get('version')!r}")
        repos = {name: RepoState.from_json(entry) for name, entry in raw["repos"].items()}
        env = EnvState.from_json(raw["env"]) if raw.get("env") else None
        return State(repos, env, raw.get("variant"))
    except FileNotFoundError:
        return State({})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadInput(f"{display(path)}: unreadable workspace state ({exc}); "
                       "move it away and run apply --force to rebuild") from None


def save(model_dir: Path, model: str, repos: dict[str, RepoState]) -> None:
    """Write REPOS, keeping the env and variant on disk."""
    _write(model_dir, model, replace(load_all(model_dir), repos=repos))


def save_env(model_dir: Path, model: str, env: EnvState) -> None:
    """Record ENV as the model's environment, keeping the repos on disk."""
    _write(model_dir, model, replace(load_all(model_dir), env=env))


def save_variant(model_dir: Path, model: str, variant: str | None) -> None:
    """Record VARIANT as what the workspace is built as, keeping the repos and env on disk."""
    _write(model_dir, model, replace(load_all(model_dir), variant=variant))


@dataclass(frozen=True)
class Renamed:
    old: str  # the repo's key and folder before
    new: str  # the upstream's name: its key and folder now


def migrate_names(model_dir: Path, model: str, urls: dict[str, tuple[str, str]]) -> list[Renamed]:
    """Rename each repo `<up>-<model>` that URLS (upstream -> (url, effective pin)) says is the model's
    own base of `<up>` (same url, same pin) and that has no `<up>` beside it: the folder first, then the
    state key, each atomic; a run killed between the two is finished by the next. The caller holds the lock."""
    st = load_all(model_dir)
    done = []
    for up, (url, pin) in urls.items():
        old = f"{up}-{model}"
        rec = st.repos.get(old)
        if rec is None or up in st.repos or rec.url != url or rec.pin != pin:
            continue
        source, target = model_dir / old, model_dir / up
        if source.exists() and not target.exists():
            source.rename(target)
        if target.exists() and not source.exists():
            st = replace(st, repos={(up if k == old else k): v for k, v in st.repos.items()})
            _write(model_dir, model, st)
            done.append(Renamed(old, up))
    return done


def _write(model_dir: Path, model: str, st: State) -> None:
    data = {"version": STATE_VERSION, "model": model,
            "repos": {name: st.repos[name].to_json() for name in sorted(st.repos)},
            "env": asdict(st.env) if st.env else None, "variant": st.variant}
    atomic_write(state_path(model_dir), (json.dumps(data, indent=2) + "\n").encode())
