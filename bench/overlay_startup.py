"""Benchmark what overlay activation adds to a process's start-up, and to each call (nothing).

Run it by hand from the repository root (it is not a test):

    python bench/overlay_startup.py              # 15 rounds, prints a table
    python bench/overlay_startup.py --repeat 30  # 30 rounds
    python bench/overlay_startup.py --json       # the numbers as JSON on stdout

It builds, in a temporary folder, the package `benchpkg`: 10 modules `benchpkg.mod_NN`, each with
3 functions and a class with 2 methods (50 targets), plus unreplaced twins of the same code;
`benchpkg/__init__.py` imports all 10 modules. The overlay folder `overlays/bench` holds 10 files
declaring 50 replacements, one per target, with the same bodies as the upstream code.

Start-up, timed (a fresh `python -c` process, the two cases round-robin so that background load
hits them alike; the median of per-round differences and ratios, CPU and wall), every process in a hermetic environment:

  plain      `import benchpkg; benchpkg.mod_00.f0(1)`
  overlays   `activate_from_env()` (PATCHKIT_OVERLAYS=overlays/bench) first, then the same; the
             child prints the activate() time its ActivationReport gives and checks that all 50
             targets were applied on import (by the import hook)

Goal: overlays adds well under 100 ms (PASS/MISS).

Per call, in one process with the overlays active: 1e6 calls of a replaced function and of its
unreplaced twin (same body), and of a replaced method and its twin, best of 5 loops; and, to show
what the measurement would see, the same function behind a one-line `*args, **kwargs` wrapper
(what a wrapping patch costs). A replaced function is installed as it is: it should cost what its
twin costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import Row, Timed, hermetic_env, load, log, paired, report, rounds, sh

MODULES, FUNCS, METHODS = 10, 3, 2
TARGETS = MODULES * (FUNCS + METHODS)
CALLS = 1_000_000
GOAL_MS = 100.0


def make_package(root: Path) -> tuple[Path, Path]:
    """Write benchpkg under ROOT/src and its overlays under ROOT/overlays/bench."""
    pkg = root / "src" / "benchpkg"
    folder = root / "overlays" / "bench"
    pkg.mkdir(parents=True)
    folder.mkdir(parents=True)
    imports = []
    for m in range(MODULES):
        name = f"mod_{m:02d}"
        imports.append(f"from benchpkg import {name}")
        body = ['"""Synthetic upstream module."""', "", "import math", ""]
        over = ["from patchkit.overlay import replace", ""]
        for f in range(FUNCS):
            for fn in (f"f{f}", f"plain_f{f}"):
                body += ["", f"def {fn}(x):", f"    return x * {f + 2} + 1", ""]
            over += ["", f"@replace('benchpkg.{name}:f{f}', upstream='benchpkg')",
                     f"def f{f}(x):", f"    return x * {f + 2} + 1", ""]
        for cls in ("Model", "PlainModel"):
            body += ["", f"class {cls}:", "    def __init__(self, scale=3):", "        self.scale = scale", ""]
            body += [line for k in range(METHODS) for line in
                     (f"    def step{k}(self, x):", f"        return x * self.scale + {k}", "")]
        for k in range(METHODS):
            over += ["", f"@replace('benchpkg.{name}:Model.step{k}', upstream='benchpkg')",
                     f"def step{k}(self, x):", f"    return x * self.scale + {k}", ""]
        (pkg / f"{name}.py").write_text("\n".join(body) + "\n")
        (folder / f"{name}.py").write_text("\n".join(over) + "\n")
    (pkg / "__init__.py").write_text("\n".join(imports) + "\n")
    return root / "src", folder


PLAIN = "import benchpkg; benchpkg.mod_00.f0(1)"
OVERLAYS = f"""\
from patchkit.overlay.runtime import activate_from_env
report = activate_from_env()
import benchpkg
benchpkg.mod_00.f0(1)
import json
applied = sum(e.status == "applied" for e in report.entries)
assert applied == {TARGETS}, report.lines()
print(json.dumps({{"activate_s": report.seconds, "applied": applied}}))
"""

HOT = f"""\
import json, time
from patchkit.overlay.runtime import activate_from_env
report = activate_from_env()
import benchpkg.mod_00 as m
from patchkit.overlay import original
assert m.f0 is not m.plain_f0 and original(m.f0).__module__ == "benchpkg.mod_00"
assert m.Model.step0.__module__.startswith("patchkit_overlays")
plain = m.plain_f0
def wrapper(*args, **kwargs):
    return plain(*args, **kwargs)
m.wrapped_f0 = wrapper
a, b = m.Model(), m.PlainModel()
N = {CALLS}

def loop_f0():
    for i in range(N): m.f0(i)
def loop_plain_f0():
    for i in range(N): m.plain_f0(i)
def loop_wrapped_f0():
    for i in range(N): m.wrapped_f0(i)
def loop_step():
    for i in range(N): a.step0(i)
def loop_plain_step():
    for i in range(N): b.step0(i)

loops = {{"replaced function": loop_f0, "unreplaced twin": loop_plain_f0,
          "replaced method": loop_step, "unreplaced method twin": loop_plain_step,
          "wrapper around the twin": loop_wrapped_f0}}
best = {{name: float("inf") for name in loops}}
for _ in range(5):
    for name, loop in loops.items():
        t = time.perf_counter(); loop(); best[name] = min(best[name], time.perf_counter() - t)
print(json.dumps({{name: s / N * 1e9 for name, s in best.items()}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args()
    loads_before = load()
    with tempfile.TemporaryDirectory(prefix="patchkit-bench-overlay-") as tmp_name:
        tmp = Path(tmp_name)
        src, folder = make_package(tmp)
        env = hermetic_env(tmp)
        env["PYTHONPATH"] = str(src)
        over_env = {**env, "PATCHKIT_OVERLAYS": str(folder)}
        python = [sys.executable, "-c"]
        log(f"{MODULES} modules, {TARGETS} targets")
        activate_s: list[float] = []
        plain = Timed("plain", lambda _r: [*python, PLAIN], tmp, env)
        over = Timed("overlays", lambda _r: [*python, OVERLAYS], tmp, over_env,
                     lambda _c, out: activate_s.append(json.loads(out)["activate_s"]))
        rounds([plain, over], opts.repeat)
        log(f"hot loops: {CALLS:.0e} calls each, best of 5")
        per_call = json.loads(sh([*python, HOT], over_env))
    added_ms = statistics.median((b - a) * 1000 for a, b in zip(plain.walls, over.walls))
    ratio = per_call["replaced function"] / per_call["unreplaced twin"]
    mratio = per_call["replaced method"] / per_call["unreplaced method twin"]
    notes = [f"added at start-up: median {added_ms:.1f} ms per pair (goal < {GOAL_MS:.0f} ms: "
             f"{'PASS' if added_ms < GOAL_MS else 'MISS'}); activate() per its report: median "
             f"{statistics.median(activate_s[-opts.repeat:]) * 1000:.2f} ms",
             "per call (ns): " + ", ".join(f"{k} {v:.1f}" for k, v in per_call.items())
             + f"; replaced / twin: function {ratio:.2f}x, method {mratio:.2f}x (1.00x = nothing added per call)"]
    rows = [Row("overlays", f"start-up, {TARGETS} targets", "plain interpreter", paired(over, plain),
                extra={"added_ms": round(added_ms, 2)})]
    report("overlay-startup", rows, (loads_before, load()), opts.repeat, opts.json, targets=TARGETS,
           added_ms=round(added_ms, 2), per_call_ns={k: round(v, 2) for k, v in per_call.items()}, notes=notes)


if __name__ == "__main__":
    main()
