"""Benchmark `patchkit apply` against the same work done by a plain git shell script.

Run it by hand from the repository root (it is not a test):

    python bench/apply.py              # best of 3 runs per case, prints a table
    python bench/apply.py --repeat 5   # best of 5
    python bench/apply.py --json       # the numbers as JSON on stdout

It builds, in a temporary folder, 4 upstream git repos (40 Python files of ~200 lines each)
and 25 stacked `git format-patch` patches per upstream, split into the layers `shared`
(10 patches) and `model` (15), plus a port repo whose upstreams.yaml declares the model
`bench`. Every subprocess runs in a hermetic environment (its own HOME and .gitconfig, no
system git config, its own PATCHKIT_CACHE). Timed, wall clock, best of N:

  cold    `patchkit apply bench` with no mirror cache and no workspace
  warm    `patchkit apply bench` with the mirrors cached, no workspace
  no-op   `patchkit apply bench` on a workspace that is already applied

against a bash script of raw git commands (mirror clone, local clone, checkout, `git am -3`),
one upstream after the other. The cases run round-robin, one run of each per round, so that
background load hits them alike. Goals: warm within 1.5x of raw git; no-op under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import hermetic_env, log, python_lines, sh

UPSTREAMS = 4
FILES = 40
LINES = 200
LAYERS = (("shared", 10), ("model", 15))
PATCHES = sum(n for _, n in LAYERS)
SUBDIRS = ("", "pkg", "pkg/core", "pkg/ops", "tools", "tests")
WARM_GOAL, NOOP_GOAL = 1.5, 0.5


def python_file(rng: random.Random, tag: str, length: int = LINES) -> str:
    return "\n".join(python_lines(rng, tag, length)) + "\n"


def make_upstream(root: Path, name: str, patch_root: Path, env: dict[str, str]) -> str:
    """Create upstream NAME with one commit and its 25 layered patches; return the pin."""
    rng = random.Random(name)
    repo = root / "upstream" / name
    files = []
    for i in range(FILES):
        path = Path(SUBDIRS[i % len(SUBDIRS)]) / f"mod_{i:02d}.py"
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(python_file(rng, f"{name}_m{i}"))
        files.append(path)
    sh(["git", "init", "-q", "-b", "main", str(repo)], env)
    sh(["git", "add", "-A"], env, repo)
    sh(["git", "commit", "-q", "-m", f"{name}: initial import"], env, repo)
    pin = sh(["git", "rev-parse", "HEAD"], env, repo).strip()
    scratch = root / "scratch" / name
    sh(["git", "clone", "-q", str(repo), str(scratch)], env)
    layers = [layer for layer, n in LAYERS for _ in range(n)]
    series: dict[str, list[str]] = {layer: [] for layer, _ in LAYERS}
    for i, layer in enumerate(layers, 1):
        for path in rng.sample(files, rng.randint(1, 3)):
            lines = (scratch / path).read_text().splitlines(keepends=True)
            at = rng.randrange(4, len(lines) - 4)
            lines[at] = f"    # patched by {layer} #{i}\n" + lines[at].replace("+ y", f"+ y + {i}")
            (scratch / path).write_text("".join(lines))
        if i % 5 == 0:
            new = Path(SUBDIRS[i % len(SUBDIRS)]) / f"npu_{i:02d}.py"
            (scratch / new).write_text(python_file(rng, f"{name}_npu{i}", 40))
            files.append(new)
        sh(["git", "add", "-A"], env, scratch)
        sh(["git", "commit", "-q", "-m", f"{layer}: change {i:02d} for {name}"], env, scratch)
        patch_name = f"{i:04d}-{layer}-change-{i:02d}.patch"
        folder = patch_root / layer / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / patch_name).write_text(sh(["git", "format-patch", "-1", "--stdout", "HEAD"], env, scratch))
        series[layer].append(patch_name)
    for layer, names in series.items():
        (patch_root / layer / name / "series").write_text("".join(f"{n}\n" for n in names))
    return pin


def build_model(tmp: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    port = tmp / "port"
    names = [f"up{i}" for i in range(UPSTREAMS)]
    pins = {name: make_upstream(tmp, name, port / "patches", env) for name in names}
    lines = ["upstreams:"]
    for name, pin in pins.items():
        lines += [f"  {name}:", f"    url: {tmp / 'upstream' / name}", f"    pin: {pin}", "    track: main"]
    lines += ["models:", "  bench:", "    upstreams:"]
    lines += [f"      {name}: [{', '.join(layer for layer, _ in LAYERS)}]" for name in names]
    (port / "upstreams.yaml").write_text("\n".join(lines) + "\n")
    return port, pins


def raw_script(tmp: Path, port: Path, pins: dict[str, str], *, cold: bool) -> Path:
    """The naive shell script doing patchkit's work with raw git, one upstream at a time."""
    raw = tmp / "raw"
    lines = ["#!/bin/bash", "set -euo pipefail", f"cd {raw}"]
    if cold:
        lines += [f"git clone -q --mirror {tmp / 'upstream' / name} cache/{name}.git" for name in pins]
    for name, pin in pins.items():
        patches = [str(port / "patches" / layer / name / entry) for layer, _ in LAYERS
                   for entry in (port / "patches" / layer / name / "series").read_text().split()]
        lines += [f"git clone -q --local --no-checkout cache/{name}.git work/{name}",
                  f"git -C work/{name} checkout -q -B patchkit/bench {pin}",
                  f"git -C work/{name} am -3 --keep-cr -q " + " ".join(patches)]
    script = tmp / f"raw-{'cold' if cold else 'warm'}.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


def verify(work: Path, pins: dict[str, str], env: dict[str, str]) -> None:
    for name, pin in pins.items():
        count = sh(["git", "rev-list", "--count", f"{pin}..HEAD"], env, work / name).strip()
        if count != str(PATCHES):
            sys.exit(f"bench: FAILED: {work / name} has {count} commits above the pin, expected {PATCHES}")


@dataclass
class Case:
    """One timed command; PREPARE runs untimed before it, CHECK untimed after it."""

    name: str
    tool: str  # "patchkit" or "raw"
    args: list[str]
    cwd: Path
    prepare: Callable[[], None]
    check: Callable[[], None]
    times: list[float] = field(default_factory=list)


def run_rounds(cases: list[Case], repeat: int, env: dict[str, str]) -> None:
    """Run every case once per round, in order, so that background load hits all of them alike."""
    for _ in range(repeat):
        for case in cases:
            case.prepare()
            start = time.perf_counter()
            proc = subprocess.run(case.args, check=False, cwd=case.cwd, env=env, capture_output=True, text=True)
            case.times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                sys.exit(f"bench: FAILED: {' '.join(case.args)} exited {proc.returncode}\n"
                         f"{proc.stdout}{proc.stderr}")
            case.check()


def rm(*paths: Path) -> Callable[[], None]:
    """A `prepare` step deleting PATHS before a timed run."""
    def prepare() -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
    return prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is kept (default 3)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args()
    exe = shutil.which("patchkit")
    patchkit = [exe] if exe else [sys.executable, "-m", "patchkit"]
    with tempfile.TemporaryDirectory(prefix="patchkit-bench-") as name:
        tmp = Path(name).resolve()
        env = hermetic_env(tmp)
        log(f"building {UPSTREAMS} upstreams x {PATCHES} patches in {tmp}")
        start = time.perf_counter()
        port, pins = build_model(tmp, env)
        log(f"built in {time.perf_counter() - start:.1f} s; timing, best of {opts.repeat}")
        cache, work, raw = tmp / "cache", port / "work" / "bench", tmp / "raw"
        raw.mkdir()
        apply = [*patchkit, "--quiet", "apply", "bench"]
        heads: dict[str, str] = {}

        def check_applied() -> None:
            verify(work, pins, env)
            heads.update({n: sh(["git", "rev-parse", "HEAD"], env, work / n) for n in pins})

        def check_noop() -> None:
            before = dict(heads)
            check_applied()
            if heads != before:
                sys.exit("bench: FAILED: the no-op re-apply moved a workspace HEAD")

        cold_sh, warm_sh = raw_script(tmp, port, pins, cold=True), raw_script(tmp, port, pins, cold=False)

        def check_raw() -> None:
            verify(raw / "work", pins, env)

        cases = [Case("cold", "patchkit", apply, port, rm(cache, port / "work"), check_applied),
                 Case("warm", "patchkit", apply, port, rm(port / "work"), check_applied),
                 Case("no-op", "patchkit", apply, port, lambda: None, check_noop),
                 Case("cold", "raw", ["bash", str(cold_sh)], raw, rm(raw / "cache", raw / "work"), check_raw),
                 Case("warm", "raw", ["bash", str(warm_sh)], raw, rm(raw / "work"), check_raw)]
        run_rounds(cases, opts.repeat, env)
        if not json.loads(sh([*apply, "--json"], env, port))["noop"]:
            sys.exit("bench: FAILED: a re-apply on an applied workspace is not reported as a no-op")
    pk = {c.name: min(c.times) for c in cases if c.tool == "patchkit"}
    rawt = {c.name: min(c.times) for c in cases if c.tool == "raw"}  # no raw no-op: nothing to compare
    rows = {case: {"patchkit_s": round(pk[case], 4), "raw_git_s": _round(rawt.get(case), 4),
                   "ratio": _round(pk[case] / rawt[case] if case in rawt else None, 3)} for case in pk}
    warm_ratio = pk["warm"] / rawt["warm"]
    goals = {"warm_within_1.5x_raw": warm_ratio <= WARM_GOAL, "noop_under_0.5s": pk["no-op"] < NOOP_GOAL}
    if opts.json:
        print(json.dumps({"upstreams": UPSTREAMS, "patches_per_upstream": PATCHES, "repeat": opts.repeat,
                          "cpus": os.cpu_count(), "cases": rows, "goals": goals,
                          "runs_s": {f"{c.tool} {c.name}": [round(t, 4) for t in c.times] for c in cases}},
                         indent=2))
        return
    print(f"patchkit apply: {UPSTREAMS} upstreams x {PATCHES} patches, best of {opts.repeat}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'case':<8} {'patchkit s':>11} {'raw git s':>10} {'ratio':>7}")
    for case, seconds in pk.items():
        raw_s = f"{rawt[case]:.3f}" if case in rawt else "-"
        ratio = f"{seconds / rawt[case]:.2f}x" if case in rawt else "-"
        print(f"{case:<8} {seconds:>11.3f} {raw_s:>10} {ratio:>7}")
    print(f"goal: warm apply within {WARM_GOAL}x of raw git: {warm_ratio:.2f}x  "
          f"{'PASS' if goals['warm_within_1.5x_raw'] else 'MISS'}")
    print(f"goal: no-op re-apply under {NOOP_GOAL} s: {pk['no-op']:.3f} s  "
          f"{'PASS' if goals['noop_under_0.5s'] else 'MISS'}")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    main()
