"""Benchmark `patchkit apply` against the same work done by a plain git shell script.

Run it by hand from the repository root (it is not a test):

    python bench/apply.py              # 5 rounds, prints a table
    python bench/apply.py --repeat 9 --baseline ../old   # 9 rounds, also time another checkout
    python bench/apply.py --json       # the numbers as JSON on stdout

It builds, in a temporary folder, 4 upstream git repos (40 Python files of ~200 lines each)
and 25 stacked `git format-patch` patches per upstream, split into the layers `shared`
(10 patches) and `model` (15), plus a port repo whose upstreams.yaml declares the model
`bench`. Every subprocess runs in a hermetic environment (its own HOME and .gitconfig, no
system git config, its own PATCHKIT_CACHE). Timed:

  cold    `patchkit apply bench` with no mirror cache and no workspace
  warm    `patchkit apply bench` with the mirrors cached, no workspace
  no-op   `patchkit apply bench` on a workspace that is already applied

against a bash script of raw git commands (mirror clone, local clone, checkout, `git am -3`),
one upstream after the other. The cases run round-robin, one run of each per round, so that
background load hits them alike; each is reported as the median over rounds of its ratio to raw git
in the same round (CPU of the whole process tree and wall). Goals: warm within 1.5x of raw git (wall);
no-op under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import PYTHON_FLAGS, Row, Timed, baseline_env, hermetic_env, load, log, paired, python_lines, report, rounds, sh

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


def rm(*paths: Path) -> Callable[[], None]:
    """A `prepare` step deleting PATHS before a timed run."""
    def prepare() -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
    return prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--baseline", type=Path, help="another checkout of patchkit to time as well (A/B)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args()
    patchkit = [sys.executable, *PYTHON_FLAGS, "-m", "patchkit"]
    loads_before = load()
    with tempfile.TemporaryDirectory(prefix="patchkit-bench-") as name:
        tmp = Path(name).resolve()
        env = hermetic_env(tmp)
        log(f"building {UPSTREAMS} upstreams x {PATCHES} patches in {tmp}")
        port, pins = build_model(tmp, env)
        cache, work, raw = tmp / "cache", port / "work" / "bench", tmp / "raw"
        raw.mkdir()
        apply = [*patchkit, "--quiet", "apply", "bench"]
        heads: dict[str, str] = {}

        def check_applied(_code: int = 0, _out: str = "") -> None:
            verify(work, pins, env)
            heads.update({n: sh(["git", "rev-parse", "HEAD"], env, work / n) for n in pins})

        def check_noop(_code: int, _out: str) -> None:
            before = dict(heads)
            check_applied()
            if heads != before:
                sys.exit("bench: FAILED: the no-op re-apply moved a workspace HEAD")

        cold_sh, warm_sh = raw_script(tmp, port, pins, cold=True), raw_script(tmp, port, pins, cold=False)

        def check_raw(_code: int, _out: str) -> None:
            verify(raw / "work", pins, env)

        def case(label: str, args: list[str], cwd: Path, prepare: Callable[[], None],
                 check: Callable[[int, str], None], case_env: dict[str, str] = env) -> Timed:
            return Timed(label, lambda _r: args, cwd, case_env, check, prepare=prepare)

        cases = [case("raw cold", ["bash", str(cold_sh)], raw, rm(raw / "cache", raw / "work"), check_raw),
                 case("cold", apply, port, rm(cache, port / "work"), check_applied),
                 case("raw warm", ["bash", str(warm_sh)], raw, rm(raw / "work"), check_raw),
                 case("warm", apply, port, rm(port / "work"), check_applied),
                 case("no-op", apply, port, lambda: None, check_noop)]
        if opts.baseline:
            cases += [case("baseline warm", apply, port, rm(port / "work"), check_applied,
                           baseline_env(env, opts.baseline)),
                      case("baseline no-op", apply, port, lambda: None, check_noop, baseline_env(env, opts.baseline))]
        rounds(cases, opts.repeat)
        if not json.loads(sh([*apply, "--json"], env, port))["noop"]:
            sys.exit("bench: FAILED: a re-apply on an applied workspace is not reported as a no-op")
    by = {c.name: c for c in cases}
    rows = [Row("apply", "apply, warm mirrors", "raw git, warm", paired(by["warm"], by["raw warm"]), WARM_GOAL,
                on="wall_ratio"),
            Row("apply", "apply, cold", "raw git, cold", paired(by["cold"], by["raw cold"])),
            Row("apply", "apply, no-op", "raw git, warm", paired(by["no-op"], by["raw warm"]))]
    if opts.baseline:
        rows += [Row("apply", "apply, warm (baseline)", "raw git, warm", paired(by["baseline warm"], by["raw warm"])),
                 Row("apply", "apply, no-op (baseline)", "raw git, warm",
                     paired(by["baseline no-op"], by["raw warm"]))]
    noop_s = statistics.median(by["no-op"].walls)
    notes = [f"no-op re-apply: median {noop_s:.3f} s wall (goal under {NOOP_GOAL} s: "
             f"{'PASS' if noop_s < NOOP_GOAL else 'MISS'}, an absolute time: read it with the load)"]
    report("apply", rows, (loads_before, load()), opts.repeat, opts.json, upstreams=UPSTREAMS,
           patches_per_upstream=PATCHES, notes=notes)


if __name__ == "__main__":
    main()
