"""What the benchmarks share: a hermetic environment, a checked subprocess, synthetic modules."""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def hermetic_env(tmp: Path, tmpdir: Path | None = None) -> dict[str, str]:
    """Its own HOME and .gitconfig, no system git config, its own patchkit cache (PYTHONPATH is kept)."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / ".gitconfig").write_text("[user]\n\tname = Bench\n\temail = bench@example.invalid\n"
                                     "[init]\n\tdefaultBranch = main\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
           "PATCHKIT_CACHE": str(tmp / "cache"), "LC_ALL": "C", "TMPDIR": str(tmpdir or tmp)}
    if os.environ.get("PYTHONPATH"):  # the checkout being measured (a frozen copy while its worktree moves on)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def sh(args: list[str], env: dict[str, str], cwd: Path | None = None, stdin: bytes | None = None) -> str:
    """Stdout of a command that must succeed; the benchmark stops with its output otherwise."""
    proc = subprocess.run(args, check=False, cwd=cwd, env=env, input=stdin, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"bench: FAILED ({proc.returncode}): {' '.join(args)}\n"
                 f"{proc.stdout.decode(errors='replace')}{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def python_lines(rng: random.Random, tag: str, length: int) -> list[str]:
    """LENGTH lines of a module: a 4-line preamble, then 4-line functions (def, total, return, blank)."""
    lines = [f'"""Synthetic module {tag}."""', "", "import math", ""]
    while len(lines) < length:
        n = len(lines)
        lines += [f"def {tag}_f{n}(x, y={rng.randint(0, 999)}):",
                  f"    total = x * {rng.randint(1, 99)} + y  # step {n}",
                  "    return math.sqrt(abs(total))", ""]
    return lines[:length]


# -- paired timing ------------------------------------------------------------------------------
# The machine is shared and noisy: absolute times and best-of-N minima of each side swing with the
# load. Every benchmark runs its cases round-robin (A, B, A, B ...) and reports, for each case, the
# median over rounds of its ratio to the baseline case of the same round, for wall time and CPU time
# (user + system of the command and all its children), with the load average before and after.


@dataclass
class Timed:
    """One command timed once per round. ARGS may depend on the round; CHECK(code, stdout) runs untimed."""

    name: str
    args: Callable[[int], list[str]]
    cwd: Path
    env: dict[str, str]
    check: Callable[[int, str], None] | None = None
    codes: tuple[int, ...] = (0,)
    prepare: Callable[[], None] | None = None  # untimed, before each run
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)  # peak resident memory of the largest process in the tree


def run_once(case: Timed, round_no: int) -> None:
    """One run of CASE: wall time, and CPU time and peak memory of its process tree (wait4)."""
    args = case.args(round_no)
    if case.prepare:
        case.prepare()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=case.cwd, env=case.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode not in case.codes:
        sys.exit(f"bench: FAILED: {case.name}: {' '.join(args)} exited {proc.returncode}\n"
                 f"{stdout[-3000:]}{stderr[-3000:]}")
    if case.check:
        case.check(proc.returncode, stdout)
    case.walls.append(wall)
    case.cpus.append(usage.ru_utime + usage.ru_stime)
    case.rss_kb.append(usage.ru_maxrss)
    case.outputs.append(stdout)


def rounds(cases: list[Timed], repeat: int, label: str = "", warmup: bool = True) -> None:
    """Every case once per round, REPEAT rounds (one untimed warm-up round first, unless the caller warmed
    them up another way). Each round starts one case later than the one before (A B C, B C A, C A B, ...), so no
    case always runs in one place: a fixed order moved the real port's ratios by a fifth and more."""
    for case in cases if warmup else []:
        run_once(case, -1)
        case.walls.clear(), case.cpus.clear(), case.outputs.clear(), case.rss_kb.clear()
    for round_no in range(repeat):
        for i in range(len(cases)):
            run_once(cases[(round_no + i) % len(cases)], round_no)
        log(f"{label}round {round_no + 1}/{repeat}: "
            + ", ".join(f"{c.name} {c.walls[-1]:.2f}s/{c.cpus[-1]:.2f}s cpu" for c in cases))


def paired(case: Timed, base: Timed) -> dict[str, float]:
    """Median of the per-round ratios CASE/BASE, wall and CPU, and the medians of each side."""
    return {"wall_ratio": round(statistics.median(a / b for a, b in zip(case.walls, base.walls)), 3),
            "cpu_ratio": round(statistics.median(a / b for a, b in zip(case.cpus, base.cpus)), 3),
            "wall_s": round(statistics.median(case.walls), 4), "cpu_s": round(statistics.median(case.cpus), 4),
            "base_wall_s": round(statistics.median(base.walls), 4), "base_cpu_s": round(statistics.median(base.cpus), 4)}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Row:
    """One line of a benchmark's result: CASE against BASE, and the goal on one of the ratios."""

    bench: str
    case: str
    base: str
    numbers: dict[str, float]
    goal: float | None = None
    on: str = "cpu_ratio"  # the ratio the goal is about
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        return None if self.goal is None else self.numbers[self.on] <= self.goal

    def as_dict(self) -> dict[str, Any]:
        return {"bench": self.bench, "case": self.case, "base": self.base, **self.numbers, "goal": self.goal,
                "goal_on": self.on, "passed": self.passed, **self.extra}


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The table the README quotes: one line per row, the goal checked on its ratio."""
    lines = [f"{'bench':<13} {'case':<34} {'vs':<22} {'cpu x':>6} {'wall x':>7}  goal"]
    for r in rows:
        goal = "" if r["goal"] is None else \
            f"{r['goal_on'].split('_')[0]} <= {r['goal']}x {'PASS' if r['passed'] else 'MISS'}"
        lines.append(f"{r['bench']:<13} {r['case']:<34} {r['base']:<22} {r['cpu_ratio']:>6.2f} {r['wall_ratio']:>7.2f}  {goal}")
    return lines


def report(name: str, rows: list[Row], loads: tuple[list[float], list[float]], repeat: int, as_json: bool,
           **facts: Any) -> None:
    """Print the rows as a table, or as JSON (what bench/all.py reads)."""
    doc = {"bench": name, "repeat": repeat, "cpus": os.cpu_count(), "load_before": loads[0], "load_after": loads[1],
           "rows": [r.as_dict() for r in rows], **facts}
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{name}: median of {repeat} paired ratios, {os.cpu_count()} CPUs, load average before "
          f"{' '.join(map(str, loads[0]))}, after {' '.join(map(str, loads[1]))}")
    for line in table(doc["rows"]):
        print(line)
    for note in facts.get("notes", []):
        print(f"note: {note}")


# -P (Python 3.11+): the current folder is not put first on sys.path, so `python -m patchkit` run in
# the port's root imports the patchkit on PYTHONPATH (a baseline checkout), not the one there.
PYTHON_FLAGS = ["-P"] if sys.version_info >= (3, 11) else []


def baseline_env(env: dict[str, str], checkout: Path | None) -> dict[str, str]:
    """ENV running patchkit from another checkout (`--baseline DIR`: the code before a change), for A/B."""
    return env if checkout is None else {**env, "PYTHONPATH": str(checkout.resolve())}
