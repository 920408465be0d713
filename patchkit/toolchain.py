"""The environment `patchkit install` owns: a virtual environment whose torch is the manifest's.

A new venv gets the device's `toolchain:` (upstreams.yaml) first, in one pip call: torch, torchvision,
torch_npu at their exact versions and the build tools (setuptools<81, wheel, ninja, numpy<2). From then
on every pip call is constrained to the torch packages installed (`guard.constraints`), and their
versions are read again after every step: a step that would change torch fails, naming the requirement
that asked for another one. A venv that already holds another torch is refused unless forced.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from patchkit.errors import BadInput, PatchkitError
from patchkit.manifest import Manifest, Toolchain
from patchkit.paths import display

Progress = Callable[[str], None]
PINNED = ("torch", "torchvision", "torch_npu")  # the packages no install step may change
_READ = ("import json, sys\nfrom importlib import metadata\nv = {'python': sys.version.split()[0]}\n"
         "for name in %r:\n    try:\n        v[name] = metadata.version(name)\n"
         "    except metadata.PackageNotFoundError:\n        v[name] = None\nprint(json.dumps(v))") % (PINNED,)


class TorchChanged(PatchkitError):
    """An install step asked for another torch than the one the venv was built around."""


def versions(python: str) -> dict[str, str | None]:
    """Python's version and those of PINNED in that interpreter, from installed metadata (importing
    torch costs seconds)."""
    out = subprocess.run([python, "-c", _READ], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def matches(installed: str | None, declared: str) -> bool:
    """`2.13.0+cpu` is the declared `2.13.0` (a local build label does not count)."""
    try:
        return installed is not None and Version(installed) in SpecifierSet(f"=={declared}")
    except InvalidVersion:
        return False


@dataclass
class Venv:
    python: str
    created: bool
    versions: dict[str, str | None]
    toolchain_installed: bool = False

    def constraints(self) -> list[str]:
        """What every later pip call is held to: the torch packages exactly as installed."""
        return [f"{name}=={v}" for name in PINNED if (v := self.versions.get(name))]


def prepare(manifest: Manifest, venv: Path | None, device: str, *, force: bool, log: Path,
            progress: Progress) -> Venv:
    """The interpreter to install into, with the device's toolchain: a new venv is created and gets it;
    one without torch gets it; one with another torch is refused unless FORCE (then its torch stays)."""
    python, created = _interpreter(venv, progress)
    env = Venv(python, created, versions(python))
    tc = manifest.toolchain.get(device)
    where = display(venv) if venv else f"this Python ({sys.prefix})"
    if env.versions.get("torch") is None:
        if tc is None:
            raise BadInput(f"{where} has no torch and {display(manifest.path)} declares no toolchain for {device}",
                           details=[f"add `toolchain: {device}: {{torch: VERSION, tools: [...]}}` to "
                                    f"{display(manifest.path)}, or install torch there yourself"])
        _install_toolchain(env, tc, log, progress)
    elif tc is not None:
        wrong = _wrong(env, tc)
        if wrong and not force:
            raise BadInput(f"{where} holds {_describe(wrong)}; the {device} toolchain of "
                           f"{display(manifest.path)}:{tc.line} declares otherwise",
                           details=["give a new --venv DIR (patchkit creates it with the toolchain)",
                                    "or --force to build the stack against the torch it has (it is never replaced)"])
        if wrong:
            progress(f"--force: keeping {_describe(wrong)}; the stack is built against it")
    return env


def _wrong(env: Venv, tc: Toolchain) -> dict[str, tuple[str | None, str]]:
    """The toolchain's packages the venv holds at another version: name -> (installed, declared)."""
    return {n: (env.versions.get(n), v) for n, v in tc.pins.items() if not matches(env.versions.get(n), v)}


def _describe(wrong: dict[str, tuple[str | None, str]]) -> str:
    return ", ".join(f"{n} {have or 'none'} (declared {want})" for n, (have, want) in wrong.items())


def _interpreter(venv: Path | None, progress: Progress) -> tuple[str, bool]:
    if venv is None:
        return sys.executable, False
    python = venv / "bin" / "python"
    if python.exists():
        return str(python.absolute()), False
    if venv.exists() and any(venv.iterdir()):
        raise BadInput(f"--venv {display(venv)}: a non-empty folder that is not a virtual environment (no bin/python)")
    progress(f"creating the virtual environment {display(venv)}")
    proc = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if proc.returncode:
        raise PatchkitError(f"cannot create a virtual environment in {display(venv)}",
                            details=(proc.stderr or proc.stdout).strip().splitlines()[-5:])
    return str(python.absolute()), True


def _install_toolchain(env: Venv, tc: Toolchain, log: Path, progress: Progress) -> None:
    progress(f"installing the {tc.device} toolchain: {' '.join(tc.requirements())} "
             f"(upstreams.yaml:{tc.line}; torch is large: minutes on a cold pip cache)")
    from patchkit.install import run_step  # (install imports this module)

    cmd = [env.python, "-m", "pip", "--disable-pip-version-check", "install", *tc.pip_args, *tc.requirements()]
    start = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        run_step("toolchain", cmd, log.parent, dict(os.environ), out, log, progress)
    env.versions = versions(env.python)
    env.toolchain_installed = True
    progress(f"toolchain installed in {time.monotonic() - start:.1f} s: "
             + ", ".join(f"{n} {env.versions[n]}" for n in PINNED if env.versions.get(n)))
    wrong = _wrong(env, tc)
    if wrong:
        raise PatchkitError(f"the {tc.device} toolchain went in but the venv holds {_describe(wrong)}",
                            details=[f"see {display(log)}; pip's configuration (constraints, find-links) may cap it"])


def check_unchanged(env: Venv, step: str, log: Path) -> None:
    """After STEP: the torch packages are still the ones installed before, or the step is named."""
    after = versions(env.python)
    changed = {n: (env.versions.get(n), after.get(n)) for n in PINNED if after.get(n) != env.versions.get(n)}
    if changed:
        what = ", ".join(f"{n} {a or 'none'} -> {b or 'none'}" for n, (a, b) in changed.items())
        raise TorchChanged(f"install step {step!r} changed {what}",
                           details=[*asked_for(log), f"see {display(log)}; reinstall the toolchain or use a new --venv"])


_DEPENDS = re.compile(r"^\s*(?P<who>\S+ \S+) depends on (?P<req>(?:%s)\b.*)$" % "|".join(PINNED), re.M)
_FROM = re.compile(r"requirement (?P<req>(?:%s)\b[^ ]*) \(from (?P<who>[^)]+)\)" % "|".join(PINNED))


def asked_for(log: Path) -> list[str]:
    """pip's words for who wanted another torch: `X 1.0 depends on torch>=2.14` (a resolution conflict)
    or `requirement torch>=2.14 (from X)`."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    found = [f"{m['who']} asks for {m['req'].strip()}" for m in _DEPENDS.finditer(text)]
    found += [f"{m['who']} asks for {m['req']}" for m in _FROM.finditer(text)]
    return list(dict.fromkeys(found))
