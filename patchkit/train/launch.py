"""Planning and running a training launch through torchrun.

`plan` is pure: it turns the recipe, the workspace and the options into the exact command line
and environment of every node, which `--dry-run` prints. `run` starts torchrun for this node,
follows rank 0's log for progress, and turns the end into results or a clear failure.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from patchkit import state
from patchkit.errors import BadInput, PatchkitError
from patchkit.manifest import Effective, Manifest, Model
from patchkit.paths import display
from patchkit.report import curves
from patchkit.status import model_status, recorded_view, workspace_view
from patchkit.train import overfit as overfit_mod, results as results_mod
from patchkit.train.device import Device
from patchkit.train.recipe import OverfitRun, Recipe, Smoke

Progress = Callable[[str], None]
PATH_LINK = ".patchkit-path"  # under the work dir: a folder holding a link to this patchkit package
# The lines patchkit/train/smoke.py run() prints (here, not there: planning must not import torch).
SMOKE_STEP_TIME = r"patchkit-smoke: step \d+/\d+ loss \S+ time (?P<value>[0-9.]+) s"
SMOKE_STEP = r"patchkit-smoke: step (?P<value>\d+)/\d+ "
SMOKE_LOSS = r"patchkit-smoke: step \d+/\d+ loss (?P<value>\S+) "
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4",
            "/usr/lib64/libtcmalloc.so.4", "/usr/local/lib/libtcmalloc.so", "/usr/lib/libtcmalloc.so.4")


@dataclass
class Options:
    cards: int | None = None
    performance: bool = False
    work_dir: Path | None = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    extra: tuple[str, ...] = ()
    smoke: bool = False
    steps: int | None = None  # smoke steps (default: the recipe's)
    overfit: bool = False  # a smoke run on one fixed batch that must learn it (patchkit/train/overfit.py)
    seed: int | None = None  # a smoke run's seed (weights, synthetic batch, the upstream's own draws); default 0
    python: str | None = None  # the workers' interpreter (a venv's); default: the one running patchkit
    dry_run: bool = False  # plan only: what this machine cannot check becomes a note, not an error


@dataclass
class Plan:
    model: str
    recipe: Recipe
    device: Device
    cards: int
    options: Options
    repo: Path
    work_dir: Path
    args: list[str]
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)
    fingerprint: dict[str, object] = field(default_factory=dict)

    def argv(self, node_rank: int | None = None) -> list[str]:
        o = self.options
        return [o.python or sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.cards}",
                f"--nnodes={o.nnodes}", f"--node_rank={o.node_rank if node_rank is None else node_rank}",
                f"--master_addr={o.master_addr}", f"--master_port={o.master_port}",
                "-m", "patchkit.train.bootstrap", self.recipe.entry, *self.args]


def workspace_fingerprint(manifest: Manifest, model: str | Model | Effective,
                          workspace_root: Path) -> dict[str, object]:
    """What code a run trains: upstream pins and heads, series and overlay hashes, and the variant the
    workspace is built as (only when it is one: a model's own fingerprint is what it always was)."""
    model, _ = recorded_view(manifest, model, workspace_root)
    recorded = state.load(workspace_root / model.name)
    repos = {}
    for up, rec in recorded.items():
        series = hashlib.sha256("".join(p.sha256 for p in rec.patches).encode()).hexdigest()[:16]
        repos[up] = {"pin": rec.pin, "head": rec.head, "patches": len(rec.patches), "series": series}
    digest = hashlib.sha256()
    for name in model.overlays:
        for file in sorted((manifest.root / "overlays" / name).rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(manifest.root)).encode() + b"\0" + file.read_bytes())
    found: dict[str, object] = {"model": model.name, "repos": repos,
                                "overlays": digest.hexdigest()[:16] if model.overlays else None}
    if model.variant:
        found["variant"] = model.variant
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def smoke_recipe(manifest: Manifest, recipe: Recipe) -> Recipe:
    """The recipe of a smoke run: the recipe's `smoke:` script as the entry, its arguments, the
    synthetic batch as the per-card batch, and the smoke loop's own log lines (patchkit/train/smoke.py)."""
    if recipe.smoke is None:
        raise BadInput(f"{display(recipe.path)}: no `smoke:` section, so no smoke run for {recipe.model}",
                       details=["add smoke: {script: train/smoke/<model>.py} (see patchkit/train/recipe.py)"])
    script = manifest.root / recipe.smoke.script
    if not script.is_file():
        raise BadInput(f"{display(recipe.path)}:{recipe.smoke.line}: smoke script {recipe.smoke.script} not found")
    return dataclasses.replace(
        recipe, entry=str(script), published=None, args=recipe.smoke.args, global_batch=None, epochs=None,
        batch=("value", str(recipe.smoke.batch)), performance_steps=None, performance_args=(),
        env=_merge_env(recipe.env, recipe.smoke.env), step_time=SMOKE_STEP_TIME, step=SMOKE_STEP,
        step_time_unit="s", warmup_steps=1, metrics={"loss": SMOKE_LOSS})


def _merge_env(base: dict[str, dict[str, str]], over: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {kind: {**base.get(kind, {}), **over.get(kind, {})} for kind in {*base, *over}}


def plan(manifest: Manifest, recipe: Recipe, device: Device, workspace_root: Path, options: Options) -> Plan:
    model = workspace_view(manifest, recipe.model, workspace_root)  # with the variant the workspace is built as
    if options.smoke:
        if options.performance:
            raise BadInput("--smoke and --performance are two different runs: give one")
        recipe = smoke_recipe(manifest, recipe)
    elif options.steps or options.overfit or options.seed is not None:
        flag = "--steps" if options.steps else "--overfit" if options.overfit else "--seed"
        raise BadInput(f"{flag} belongs to a --smoke run; a performance run's bound is in the recipe")
    if options.overfit and (options.steps or 0) > overfit_mod.MAX_STEPS:
        raise BadInput(f"--steps {options.steps}: an overfit run takes at most {overfit_mod.MAX_STEPS} steps")
    if recipe.workdir not in model.layers:
        raise BadInput(f"{display(recipe.path)}: workdir {recipe.workdir!r} is not an upstream of {model.name}")
    status = model_status(manifest, model, workspace_root)
    bad = [r for r in status.repos if r.state not in ("clean", "edited")]
    notes = []
    if bad and options.dry_run:
        notes.append(f"workspace not applied and current ({', '.join(f'{r.upstream}: {r.state}' for r in bad)}): "
                     f"run `patchkit apply {model.name}` before the real run; not verified here")
    elif bad:
        raise BadInput(f"{model.name}: the workspace is not applied and current",
                       details=[f"{r.upstream}: {r.state}" for r in bad] + [f"run `patchkit apply {model.name}`"])
    notes += [f"{r.upstream} has local edits: the fingerprint names its head, not the edits"
              for r in status.repos if r.state == "edited"]
    cards = options.cards or (1 if options.smoke else recipe.cards)
    if cards > device.count and options.dry_run:
        notes.append(f"{cards} {device.kind} card(s) per node: unchecked, this machine shows {device.count}")
    elif cards > device.count:
        raise BadInput(f"asked for {cards} cards but this machine has {device.count} ({device.kind})",
                       details=["--dry-run plans it anyway (for another machine)"])
    if options.nnodes > 1 and not recipe.multinode:
        notes.append(f"the recipe does not say {model.name} supports several nodes (multinode: true)")
    if options.nnodes > 1 and options.master_addr in ("127.0.0.1", "localhost"):
        raise BadInput("several nodes need --master-addr, the address of node 0 that every node can reach")
    if not 0 <= options.node_rank < options.nnodes:
        raise BadInput(f"--node-rank {options.node_rank} is not in 0..{options.nnodes - 1}")
    options.master_port = options.master_port or (29500 if options.nnodes > 1 else _free_port())
    repo = workspace_root / model.name / recipe.workdir
    kind = results_mod.kind_of(options.smoke, options.performance, options.overfit)
    stamp = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    work_dir = (options.work_dir or workspace_root / model.name / "runs" / stamp).resolve()  # untracked, beside the repos
    subst = {"config": recipe.config or "", "work_dir": str(work_dir), "cards": str(cards),
             "nnodes": str(options.nnodes), "world_size": str(cards * options.nnodes), "device": device.kind}
    args = [a.format(**subst) for a in recipe.args]
    if options.performance:
        if not recipe.performance_args and not recipe.performance_steps:
            raise BadInput(f"{display(recipe.path)}: no `performance:` section, so no bounded run")
        args += [a.format(**subst) for a in recipe.performance_args]
        if not recipe.performance_args:
            notes.append(f"the entry script cannot bound the run itself: patchkit stops it once the log "
                         f"reaches step {recipe.performance_steps}")
    args += list(options.extra)
    fingerprint = workspace_fingerprint(manifest, model, workspace_root)
    env = {**recipe.env.get("all", {}), **recipe.env.get(device.kind, {})}
    env.update({
        "PATCHKIT_TRAIN_DEVICE": device.kind, "PATCHKIT_TRAIN_BACKEND": device.backend,
        "PATCHKIT_TRAIN_LOG_DIR": str(work_dir), "PATCHKIT_TRAIN_BATCH": ":".join(recipe.batch or ()),
        "PATCHKIT_TRAIN_CONFIG": str(repo / recipe.config) if recipe.config else "",
        "PATCHKIT_TRAIN_FINGERPRINT": json.dumps(fingerprint, sort_keys=True),
    })
    if model.variant:  # the workspace's variant, for the entry script (and the recipe, should it key on it)
        env["PATCHKIT_TRAIN_VARIANT"] = model.variant
    if options.smoke and recipe.smoke:
        env.update(_smoke_env(recipe.smoke, options, notes))
    if options.python:
        # the workers import this patchkit (the bootstrap, the smoke loop, the overlay runtime: standard library
        # and torch only), whatever the venv holds: a link to this package, first on their path (run() makes it)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work_dir / PATH_LINK), os.environ.get("PYTHONPATH")]))
    if model.overlays:
        env["PATCHKIT_OVERLAYS"] = os.pathsep.join(str(manifest.root / "overlays" / s) for s in model.overlays)
    if "OMP_NUM_THREADS" not in os.environ:  # the user's own setting wins, then the recipe's
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cards)))
    tcmalloc = next((p for p in TCMALLOC if os.path.exists(p)), None)
    if tcmalloc:
        env["LD_PRELOAD"] = ":".join(filter(None, [os.environ.get("LD_PRELOAD"), tcmalloc]))
    else:
        notes.append("tcmalloc not found: LD_PRELOAD left alone (apt install libgoogle-perftools4 for it)")
    return Plan(model.name, recipe, device, cards, options, repo, work_dir, args, env, notes, fingerprint)


def _smoke_env(smoke: Smoke, options: Options, notes: list[str]) -> dict[str, str]:
    """The smoke loop's settings (patchkit/train/smoke.py reads them), and the note saying what the run is."""
    env = {"PATCHKIT_SMOKE_BATCH": str(smoke.batch)}
    source = smoke.script
    if options.seed is not None:
        env["PATCHKIT_SMOKE_SEED"] = str(options.seed)
        source += f", seed {options.seed}"
    if not options.overfit:
        steps = options.steps or smoke.steps
        notes.append(f"smoke run: the real model on a synthetic batch for {steps} steps ({source})")
        return {**env, "PATCHKIT_SMOKE_STEPS": str(steps)}
    steps, run = options.steps or smoke.overfit.steps, smoke.overfit
    notes.append(f"overfit run: the real model on one fixed synthetic batch, up to {steps} steps at lr "
                 f"{run.lr:g}{overfit_setup(run)}, until {overfit_mod.BAR} ({source})")
    return {**env, "PATCHKIT_SMOKE_STEPS": str(steps), "PATCHKIT_SMOKE_OVERFIT": "1",
            "PATCHKIT_SMOKE_LR": repr(run.lr), "PATCHKIT_SMOKE_WARMUP": f"{run.warmup_steps}:{run.warmup_ratio!r}",
            "PATCHKIT_SMOKE_SCHEDULE": run.schedule,
            **({"PATCHKIT_SMOKE_CFG_OPTIONS": json.dumps(run.cfg_options, sort_keys=True)} if run.cfg_options else {})}


def overfit_setup(run: OverfitRun) -> str:
    """The recipe's overfit settings beyond the lr, as the run's note says them ("" when there are none)."""
    parts = [f"warmup {run.warmup_steps} steps from {run.warmup_ratio:g} x lr"] if run.warmup_steps else []
    parts += [f"{run.schedule} schedule"] if run.schedule != "constant" else []
    parts += [f"config {k}={v!r}" for k, v in run.cfg_options.items()]
    return f" ({', '.join(parts)})" if parts else ""


def dry_run(plan: Plan) -> list[str]:
    """The exact command line and environment of every node."""
    lines = [f"# {plan.model}: {plan.cards} {plan.device.kind} card(s) x {plan.options.nnodes} node(s), "
             f"backend {plan.device.backend}, in {plan.repo}"]
    lines += [f"# note: {n}" for n in plan.notes]
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(plan.env.items()))
    for rank in range(plan.options.nnodes):
        lines.append(f"# node {rank}:")
        lines.append(f"cd {shlex.quote(str(plan.repo))} && env {env} " + " ".join(shlex.quote(a) for a in plan.argv(rank)))
    return lines


class TrainFailed(PatchkitError):
    pass


def _link_package(work_dir: Path) -> None:
    folder = work_dir / PATH_LINK
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "patchkit"
    target = Path(__file__).resolve().parent.parent
    if link.is_symlink() and link.resolve() == target:
        return
    staging = folder / f".patchkit.{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(target, target_is_directory=True)
    os.replace(staging, link)


def run(plan: Plan, progress: Progress = lambda _m: None) -> results_mod.Results:
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    if plan.options.python:
        _link_package(plan.work_dir)
    rank0 = plan.options.node_rank * plan.cards
    log = plan.work_dir / f"rank{rank0}.log"
    launcher_log = plan.work_dir / f"torchrun-node{plan.options.node_rank}.log"
    argv = plan.argv()
    progress(f"{plan.model}: {plan.cards} {plan.device.kind} worker(s) on node {plan.options.node_rank}, "
             f"logs in {display(plan.work_dir)}")
    for note in plan.notes:
        progress(f"note: {note}")
    start = time.monotonic()
    with open(launcher_log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=plan.repo, env={**os.environ, **plan.env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent())
        try:
            bounded = _follow(proc, plan, log, progress)
        except KeyboardInterrupt:
            _stop(proc)
            raise
    o = plan.options
    res = results_mod.Results(plan.model, plan.device.kind, plan.device.backend, plan.cards, o.nnodes,
                              o.performance, o.smoke, kind=results_mod.kind_of(o.smoke, o.performance, o.overfit),
                              published_global_batch=plan.recipe.global_batch,
                              published=dataclasses.asdict(plan.recipe.published) if plan.recipe.published else None,
                              fingerprint=plan.fingerprint, command=argv, seconds=round(time.monotonic() - start, 3),
                              exit_code=proc.returncode)
    res.notes += plan.notes
    if bounded:
        res.exit_code = 0
        res.notes.append(f"stopped by patchkit at step {plan.recipe.performance_steps} (the performance bound)")
    elif proc.returncode != 0:
        raise _failure(plan, proc.returncode, launcher_log)
    results_mod.fill(res, plan.recipe, log)
    results_mod.write(res, plan.work_dir / "results.json")
    curves.write_curve(res, plan.work_dir / "curve.svg")  # loss and step time, beside results.json
    return res


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn for torchrun: Linux sends it SIGTERM when this process dies, even by SIGKILL (prctl
    PR_SET_PDEATHSIG), and torchrun then stops its workers as on Ctrl-C. It runs in its own session (so a
    terminal's Ctrl-C reaches patchkit alone), so nothing else would stop it. None where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0 and os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)  # patchkit died before the signal was armed
    return arm


def _follow(proc: subprocess.Popen[bytes], plan: Plan, log: Path, progress: Progress) -> bool:
    """Wait for torchrun, reporting rank 0's steps (reading only what is new). True when patchkit
    stopped the run itself because a performance run reached its bound in the log."""
    recipe = plan.recipe
    bound = recipe.performance_steps if plan.options.performance and not recipe.performance_args else None
    seen, step, offset, pending = 0, 0, 0, b""
    while True:
        try:
            proc.wait(timeout=0.5 if bound else 2)
            return False
        except subprocess.TimeoutExpired:
            pass
        if not log.exists():
            continue
        with open(log, "rb") as fh:
            fh.seek(offset)
            chunk = pending + fh.read()
        offset += len(chunk) - len(pending)
        raw, _, pending = chunk.rpartition(b"\n")
        text = raw.decode("utf-8", "replace")
        times = results_mod.step_seconds(recipe, text)
        seen += len(times)
        step = max([step, *results_mod.steps(recipe, text)]) if recipe.step else seen
        if times:
            progress(f"{plan.model}: step {step}, last step {1000 * times[-1]:.1f} ms")
        if bound and step >= bound:
            _stop(proc)
            return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C: torchrun stops its workers on SIGTERM; anything left is killed after a grace period."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue


def _failure(plan: Plan, code: int, launcher_log: Path) -> TrainFailed:
    text = launcher_log.read_text(encoding="utf-8", errors="replace") if launcher_log.exists() else ""
    cause = text[text.find("Root Cause"):] if "Root Cause" in text else text  # torchrun names the first failure
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", cause, re.M)
    exit_code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)", cause, re.M)
    details = []
    if rank:
        log = plan.work_dir / f"rank{rank.group(1)}.log"
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.exists() else []
        details.append(f"rank {rank.group(1)} exited with code {exit_code.group(1) if exit_code else '?'}; "
                       f"the end of {display(log)}:")
        details += [f"  {line}" for line in tail]
    else:
        details += [f"  {line}" for line in text.splitlines()[-15:]]
    return TrainFailed(f"{plan.model}: training failed (torchrun exit code {code})", details=details)
