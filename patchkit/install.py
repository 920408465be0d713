"""`patchkit install MODEL`: install a model's stack from its workspace, in dependency order.

Each upstream may say how it installs (`install:` in upstreams.yaml):

    install:
      after: [mmcv]                    # upstreams of the model installed before this one
      build: wheel                     # wheel (built once, then cached) | editable | command
      env: {MMCV_WITH_OPS: "1", MAX_JOBS: "2"}
      npu_env: {FORCE_NPU: "1"}        # added when installing for an NPU
      constraints: ["numpy<2", "setuptools>=77.0.3,<81"]
      pip_args: ["--no-build-isolation"]
      command: "python setup.py develop"   # with build: command

A wheel is cached under `<cache>/wheels/<upstream>/<key>`, the key hashing the workspace commit
(pin plus series), the recipe, the Python and torch versions and the device, so a second install
of the same stack skips the build.

The venv itself is prepared by patchkit.toolchain: a new one gets the device's `toolchain:` first,
every pip call here is constrained to the torch it holds, and a step that changes torch fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchkit import git, settings, state, toolchain
from patchkit.errors import BadInput, PatchkitError
from patchkit.manifest import Effective, Manifest
from patchkit.paths import display
from patchkit.status import model_status, workspace_view

Progress = Callable[[str], None]


@dataclass
class Step:
    upstream: str
    action: str  # built | cached | installed | ran
    seconds: float
    wheel: str | None = None
    log: str = ""


@dataclass
class InstallReport:
    model: str
    python: str
    device: str = "cpu"
    device_reason: str = ""  # how --device auto chose
    venv_created: bool = False
    toolchain_installed: bool = False
    versions: dict[str, str | None] = field(default_factory=dict)  # python, torch, torchvision, torch_npu
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what `pip check` says is missing (wheels go in --no-deps)


def order(model: Effective) -> list[str]:
    """The model's upstreams that install, each after those it names in `after`."""
    todo = [up for up in model.layers if model.upstreams[up].install is not None]
    done: list[str] = []
    visiting: list[str] = []

    def visit(up: str) -> None:
        if up in done:
            return
        if up in visiting:
            raise BadInput(f"install order of {model.name} has a cycle: {' -> '.join(visiting + [up])}")
        visiting.append(up)
        recipe: dict[str, Any] = model.upstreams[up].install or {}
        for dep in recipe.get("after", []):
            if dep not in model.layers:
                raise BadInput(f"upstream {up!r} installs after {dep!r}, which model {model.name!r} does not have")
            if model.upstreams[dep].install is not None:
                visit(dep)
        visiting.pop()
        done.append(up)

    for up in todo:
        visit(up)
    return done


def _view(manifest: Manifest, model: str, workspace_root: Path, variant: str | None) -> Effective:
    """The model as its workspace is built; --variant V only confirms it (installing another variant's
    requirements over a workspace built without its layers would train neither)."""
    view = workspace_view(manifest, model, workspace_root)
    if variant is not None and variant != view.variant:
        manifest.effective(view.model, variant)  # an unknown variant is named as such
        built = f"variant {view.variant!r}" if view.variant else "the model itself (no variant)"
        raise BadInput(f"{display(workspace_root / model)} is built as {built}, not variant {variant!r}",
                       details=[f"run `patchkit apply {model} --variant {variant}` first (with --force to switch)"])
    return view


def _variant_step(model: Effective, env: toolchain.Venv, device: str, log: Path, where: Path,
                  progress: Progress) -> Step:
    """The variant's own requirements, held to the venv's torch like every other step."""
    start = time.monotonic()
    name = f"variant {model.variant}"
    step = _step(name, {"build": "none", "requires": list(model.requires)},
                 _Source(where, None), env, device, log, None, progress)
    toolchain.check_unchanged(env, name, log)
    step.seconds = round(time.monotonic() - start, 2)
    progress(f"installed {', '.join(model.requires)} in {step.seconds:.1f} s")
    return step


def resolve_device(device: str) -> tuple[str, str]:
    """(kind, why): auto looks at the machine's drivers (a new venv has no torch to ask)."""
    if device != "auto":
        return device, "asked for"
    from patchkit.train.device import machine_kind

    return machine_kind()


def cache_key(upstream: str, head: str, recipe: dict[str, object], versions: dict[str, str], device: str) -> str:
    """What the wheel is built from. `requires` is left out: run-time requirements go in after the
    wheel and change nothing in it (adding one must not cost an 18-minute mmcv-full rebuild)."""
    recipe = {k: v for k, v in recipe.items() if k != "requires"}
    data = json.dumps({"upstream": upstream, "head": head, "recipe": recipe, "versions": versions,
                       "device": device}, sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:20]


def install(manifest: Manifest, model_name: str, workspace_root: Path, *, venv: Path | None = None,
            device: str = "auto", force: bool = False, variant: str | None = None,
            progress: Progress = lambda _m: None) -> InstallReport:
    """Install the stack of MODEL's workspace, as the variant it is built as (VARIANT, when given, must
    be that one); a variant's `requires` go in last."""
    model = _view(manifest, model_name, workspace_root, variant)
    status = {r.upstream: r for r in model_status(manifest, model, workspace_root).repos}
    steps = order(model)
    bad = [f"{up}: {status[up].state}" for up in steps if status[up].state not in ("clean", "edited")]
    if bad:
        raise BadInput(f"{model.name}: the workspace is not applied and current", details=bad +
                       [f"run `patchkit apply {model.name}`"])
    device, why = resolve_device(device)
    progress(f"device {device} ({why})")
    logs = workspace_root / model.name / ".patchkit" / "install"
    logs.mkdir(parents=True, exist_ok=True)
    env = toolchain.prepare(manifest, venv, device, force=force, log=logs / "00-toolchain.log", progress=progress)
    python = env.python
    versions = {"python": env.versions["python"], "torch": env.versions["torch"]}  # the wheel key's (unchanged)
    report = InstallReport(model.name, python, device, why, env.created, env.toolchain_installed, dict(env.versions))
    total = len(steps) + bool(model.requires)
    for i, up in enumerate(steps, 1):
        recipe: dict[str, Any] = model.upstreams[up].install or {}
        repo = workspace_root / model.name / up
        head = git.out(["rev-parse", "HEAD"], repo)
        clean = status[up].state == "clean"
        key = cache_key(up, head, recipe, versions, device)
        label = f"[{i}/{total}] {up}"
        progress(f"{label}: {recipe.get('build')}" +
                 ("" if clean or recipe.get("build") != "wheel" else " (local edits: built from the work tree, not cached)"))
        start = time.monotonic()
        source = _Source(repo, head if clean else None, model.upstreams[up].exclude)
        log = logs / f"{i:02d}-{up}.log"
        step = _step(up, recipe, source, env, device, log,
                     settings.cache_root() / "wheels" / up / key if clean else None, _prefixed(progress, label))
        toolchain.check_unchanged(env, up, log)
        step.seconds = round(time.monotonic() - start, 2)
        progress(f"{label}: {step.action} in {step.seconds:.1f} s")
        report.steps.append(step)
    if model.requires:
        report.steps.append(_variant_step(model, env, device, logs / f"{total:02d}-variant.log",
                                          workspace_root / model.name,
                                          _prefixed(progress, f"[{total}/{total}] variant {model.variant}")))
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    if check.returncode:
        report.warnings = [line for line in check.stdout.splitlines() if line.strip()]
    state.save_env(workspace_root / model.name, model.name, state.EnvState(
        str(venv.absolute()) if venv is not None else sys.prefix, device, str(env.versions["python"]), env.versions["torch"], env.versions["torchvision"],
        env.versions["torch_npu"]))
    return report


def _pathspec(pattern: str) -> str:
    """A sparse-checkout (gitignore-style) pattern as a git pathspec."""
    pattern = pattern.lstrip("/")
    if pattern.endswith("/"):
        return pattern.rstrip("/")  # a folder and everything in it
    return f":(glob)**/{pattern}" if "/" not in pattern else f":(glob){pattern}"


def _prefixed(progress: Progress, label: str) -> Progress:
    return lambda message: progress(f"{label}: {message}")


@dataclass
class _Source:
    """Where a step builds: a clean export of HEAD (the workspace stays untouched; build artefacts
    never show up as local edits) or, for a repo with local edits, its work tree."""

    repo: Path
    head: str | None
    exclude: tuple[str, ...] = ()

    def export(self, into: Path) -> Path:
        if self.head is None:
            return self.repo
        treeish = self._tree()
        archive = git.output_bytes(["archive", "--format=tar", treeish], self.repo)
        into.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(into, filter="tar")
        return into

    def _tree(self) -> str:
        """HEAD's tree without the left-out paths (whose blobs the mirror may not have)."""
        assert self.head is not None
        if not self.exclude:
            return self.head
        with tempfile.TemporaryDirectory(prefix="patchkit-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            git.run(["read-tree", self.head], self.repo, env=env)
            git.run(["rm", "-r", "-q", "--cached", "--sparse", "--ignore-unmatch", "--",
                     *[_pathspec(p) for p in self.exclude]],
                    self.repo, env=env)
            return git.out(["write-tree", "--missing-ok"], self.repo, env=env)


def _step(up: str, recipe: dict[str, Any], source: _Source, venv: toolchain.Venv, device: str, log: Path,
          cached: Path | None, progress: Progress) -> Step:
    env = {**os.environ, **recipe.get("env", {}), **(recipe.get("npu_env", {}) if device == "npu" else {})}
    bin_dir = str(Path(venv.python).parent)  # a `command` step's python and pip are the venv's, as if activated
    env.update(PATH=os.pathsep.join([bin_dir, env.get("PATH", "")]), VIRTUAL_ENV=str(Path(bin_dir).parent))
    constraints = log.with_suffix(".constraints.txt")  # the recipe's, and the venv's torch exactly as installed
    constraints.write_text("".join(f"{c}\n" for c in [*recipe.get("constraints", []), *venv.constraints()]))
    pip = [venv.python, "-m", "pip", "--disable-pip-version-check"]
    pip_args = list(recipe.get("pip_args", []))
    with open(log, "wb") as out:
        try:
            step = _build(up, recipe, source, pip, pip_args, constraints, env, out, log, cached, progress)
            if recipe.get("requires"):  # what the repo needs at run time: wheels go in --no-deps
                run_step(up, [*pip, "install", "-c", str(constraints), *recipe["requires"]], source.repo, env, out, log,
                     progress)
        except PatchkitError as exc:
            out.flush()
            asked = toolchain.asked_for(log)
            if asked:  # pip refused: a requirement wants another torch than the venv's
                raise toolchain.TorchChanged(
                    f"install step {up!r} needs another torch than this venv's "
                    f"({', '.join(venv.constraints())}): {asked[0]}",
                    details=[*asked[1:], "the venv's torch is kept; relax that requirement (upstreams.yaml "
                             "install: requires/constraints) or change the toolchain", *exc.details]) from None
            raise
    return step


def _build(up: str, recipe: dict[str, Any], source: _Source, pip: list[str], pip_args: list[str], constraints: Path,
           env: dict[str, str], out: Any, log: Path, cached: Path | None, progress: Progress) -> Step:
    repo = source.repo
    if recipe.get("build") == "none":  # run from the workspace: nothing to build, only its requirements
        return Step(up, "installed" if recipe.get("requires") else "nothing to build", 0, log=display(log))
    if recipe.get("build") == "command":
        run_step(up, ["sh", "-c", recipe["command"]], repo, env, out, log, progress)
        return Step(up, "ran", 0, log=display(log))
    if recipe.get("build") == "editable":
        run_step(up, [*pip, "install", "-c", str(constraints), *pip_args, "-e", "."], repo, env, out, log, progress)
        return Step(up, "installed", 0, log=display(log))
    action = "cached"
    wheels = sorted(cached.glob("*.whl")) if cached and cached.is_dir() else []
    with tempfile.TemporaryDirectory(prefix="patchkit-build-") as tmp:
        if not wheels:
            action = "built"
            target = Path(tmp) / "wheels"
            where = source.export(Path(tmp) / "src")
            run_step(up, [*pip, "wheel", "-v", "--no-deps", "-c", str(constraints), *pip_args, "-w", str(target), "."],
                 where, env, out, log, progress)
            wheels = sorted(target.glob("*.whl"))
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                staging = cached.parent / f".{cached.name}.tmp"
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(target, staging)
                os.replace(staging, cached)
                wheels = sorted(cached.glob("*.whl"))
        run_step(up, [*pip, "install", "--no-deps", "--force-reinstall", "-c", str(constraints),
                  *[str(w) for w in wheels]], repo, env, out, log, progress)
    return Step(up, action, 0, wheel=wheels[0].name if wheels else None, log=display(log))


def run_step(up: str, cmd: list[str], cwd: Path, env: dict[str, str], out: Any, log: Path,
         progress: Progress = lambda _m: None) -> None:
    """Run CMD into LOG; every 30 s of a long build say it is still going (and how far the log got)."""
    out.write(f"$ {' '.join(cmd)}\n".encode())
    out.flush()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    start = time.monotonic()
    while True:
        try:
            proc.wait(timeout=30)
            break
        except subprocess.TimeoutExpired:
            lines = log.read_bytes().count(b"\n")
            progress(f"still running after {time.monotonic() - start:.0f} s ({lines} log lines in {display(log)})")
    if proc.returncode:
        out.flush()
        raise PatchkitError(f"install step {up!r} failed (exit {proc.returncode}): {' '.join(cmd)}",
                            details=log_excerpt(log))


def log_excerpt(log: Path, tail: int = 40) -> list[str]:
    """The end of LOG, after the earlier lines that say error (pip -v puts a build's own error
    message before pages of its command line)."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    early = [line for line in lines[:-tail] if re.search(r"error|cannot|failed|not found", line, re.I)][-10:]
    return ([f"what {display(log)} says earlier:", *[f"  {line}" for line in early]] if early else []) + \
        [f"the end of {display(log)}:", *[f"  {line}" for line in lines[-tail:]]]
