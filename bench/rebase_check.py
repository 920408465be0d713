"""Benchmark `patchkit rebase --check` against a raw `git apply --cached` loop doing the same replay.

Run it by hand from the repository root (it is not a test):

    python bench/rebase_check.py              # best of 3 runs per case, prints a table
    python bench/rebase_check.py --repeat 5   # best of 5
    python bench/rebase_check.py --json       # the numbers as JSON on stdout

It builds, in a temporary folder, 10 bare upstream git repos (branch `main`, 60 Python files of
150 lines each) and, per upstream, a series of 100 stacked `git format-patch` patches in the
layer `npu` (each edits one or two lines of one file, every patch in its own place). The patches
are commits made with `git fast-import` in a scratch repo, on top of the pin, then exported by
one `git format-patch` per upstream; the upstreams never hold them. Each upstream then moves
past the pin: three commits insert a licence header at the top of 20 files (so the patches on
those files become `offset`), and a fourth changes one line each near three patches: the very
line one patch edits (a `conflict`), and a line of context of two others (`merged`: the three-way
merge needs the patch's preimage blob, which the mirror holds only when the patch is the first of
the series on its file, so those two are picked among such patches). A port repo declares the
model `bench` on all 10 upstreams. Every subprocess runs in a hermetic environment (its own HOME
and .gitconfig, no system git config, its own PATCHKIT_CACHE and TMPDIR).

After one `patchkit --quiet fetch`, timed (wall clock, best of N, the cases round-robin so that
background load hits them alike), all with the mirrors cached:

  jobs 1 / 2 / 4    `patchkit --quiet rebase --check --no-fetch --json --jobs N`
  raw loop          a bash script that, per upstream in turn, reads the moved upstream commit into
                    a temporary index and runs one `git apply --cached` per patch, in series order,
                    ignoring failures; new objects go to a temporary object directory (the
                    mirror's objects are an alternate), so the mirror is not written
  ... cpu0          the same under `taskset -c 0` (one core), when taskset exists

Goals: patchkit --jobs 1 within 1.5x of the raw loop on one core (both under taskset -c 0), and
patchkit --jobs 2 faster than the raw loop with the machine's cores. Every patchkit run must exit 0
or 1 (1 here: some patches conflict) and count 1000 patches in its JSON summary. The table ends with
notes, when there are any: outcomes other than the ones built in, a summary that differs between
runs, a raw-loop failure count that disagrees with patchkit, files of the mirror cache the timed
runs wrote or touched, scratch folders left behind in TMPDIR.
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
from dataclasses import dataclass, field
from pathlib import Path

from common import hermetic_env, log, python_lines, sh
from typing import Any

UPSTREAMS = 10
FILES = 60
LINES = 150
PATCHES = 100
MOVED_FILES = 20  # files that get a header at the top upstream: their patches become `offset`
HEADER_COMMITS = 3
LAYER = "npu"
SUBDIRS = ("", "pkg", "pkg/core", "pkg/ops", "tools", "tests")
# Lines 4, 8, 12, ... open a function: `def`, then `total = ...` (the line patches edit), `return`,
# a blank line. Patches edit the `total` line of every third function from the second one on, so
# any two patched places are 12 lines apart and their 3-line contexts never overlap.
SLOTS = [5 + 4 * block for block in range(1, (LINES - 8) // 4, 3)]
WITHIN_ONE_CORE, EPOCH = 1.5, 1_700_000_000
OUTCOMES = ("clean", "offset", "fuzz", "merged", "upstreamed", "conflict", "target-missing", "blocked")

RAW_SCRIPT = r"""#!/bin/bash
# The raw baseline: usage raw.sh PORT UPSTREAM...; prints how many patches did not apply.
set -euo pipefail
port=$1; shift
failed=0
for name in "$@"; do
    mirror=$(echo "$PATCHKIT_CACHE/git/$name"-*.git)
    target=$(git --git-dir="$mirror" rev-parse --verify -q refs/heads/main)
    scratch=$(mktemp -d)
    mkdir "$scratch/objects"
    GIT_INDEX_FILE=$scratch/index GIT_OBJECT_DIRECTORY=$scratch/objects \
        GIT_ALTERNATE_OBJECT_DIRECTORIES=$mirror/objects git --git-dir="$mirror" read-tree "$target"
    while read -r patch; do
        GIT_INDEX_FILE=$scratch/index GIT_OBJECT_DIRECTORY=$scratch/objects \
            GIT_ALTERNATE_OBJECT_DIRECTORIES=$mirror/objects \
            git --git-dir="$mirror" apply --cached "$port/patches/npu/$name/$patch" 2>/dev/null \
            || failed=$((failed + 1))
    done < "$port/patches/npu/$name/series"
    rm -rf "$scratch"
done
echo "$failed"
"""


def python_file(rng: random.Random, tag: str) -> list[str]:
    return python_lines(rng, tag, LINES)


class FastImport:
    """A `git fast-import` stream of commits on refs/heads/main, with fixed dates (so fixed SHAs)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.commits = 0

    def commit(self, message: str, files: dict[str, list[str]]) -> None:
        date = f"{EPOCH + self.commits * 60} +0000"
        msg = message.encode()
        self.chunks.append(b"commit refs/heads/main\n"
                           + f"author Bench <bench@example.invalid> {date}\n"
                             f"committer Bench <bench@example.invalid> {date}\n".encode()
                           + b"data %d\n%s\n" % (len(msg), msg))
        for path, lines in files.items():
            data = ("\n".join(lines) + "\n").encode()
            self.chunks.append(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))
        self.commits += 1

    def run(self, repo: Path, env: dict[str, str]) -> str:
        """Import the stream into a new bare repo REPO; return the tip of main."""
        sh(["git", "init", "-q", "--bare", "-b", "main", str(repo)], env)
        sh(["git", "--git-dir", str(repo), "fast-import", "--quiet"], env, stdin=b"".join(self.chunks) + b"done\n")
        return sh(["git", "--git-dir", str(repo), "rev-parse", "refs/heads/main"], env).strip()


@dataclass
class Upstream:
    name: str
    pin: str
    expected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))


def make_upstream(tmp: Path, name: str, series_dir: Path, env: dict[str, str]) -> Upstream:
    """Upstream NAME (pin, then moved past it) and its series of PATCHES patches in SERIES_DIR."""
    rng = random.Random(f"rebase-check-{name}")
    pin_files = {str(Path(SUBDIRS[i % len(SUBDIRS)]) / f"mod_{i:02d}.py"): python_file(rng, f"{name}_m{i}")
                 for i in range(FILES)}
    paths = list(pin_files)
    initial = ("initial import", pin_files)

    # The series: PATCHES commits on top of the pin, each editing one or two lines in its own place.
    places = rng.sample([(path, slot) for path in paths for slot in SLOTS], PATCHES)
    work = {path: list(lines) for path, lines in pin_files.items()}
    series = FastImport()
    series.commit(*initial)
    for i, (path, slot) in enumerate(places, 1):
        lines = work[path]
        lines[slot] = lines[slot].replace("+ y", f"+ y * {i}")
        if rng.random() < 0.5:
            lines[slot + 1] = lines[slot + 1].replace("abs(total)", f"abs(total) + {i}")
        series.commit(f"{LAYER}: change {i:03d} of {name}\n\nAdapt {path} for the NPU.\n\n"
                      f"Upstream-Status: Inappropriate [bench]\n", {path: lines})
    scratch = tmp / "scratch-series" / name
    series.run(scratch, env)
    pin = sh(["git", "--git-dir", str(scratch), "rev-parse", f"main~{PATCHES}"], env).strip()
    series_dir.mkdir(parents=True)
    sh(["git", "--git-dir", str(scratch), "format-patch", "-q", "-o", str(series_dir), f"{pin}..main"], env)
    names = sorted(p.name for p in series_dir.glob("*.patch"))
    if len(names) != PATCHES:
        sys.exit(f"bench: FAILED: {series_dir} holds {len(names)} patches, expected {PATCHES}")
    (series_dir / "series").write_text("".join(f"{n}\n" for n in names))

    # The upstream: the pin, then headers on top of MOVED_FILES files, then three lines changed.
    first_on_file = [i for i, (path, _) in enumerate(places) if all(p != path for p, _ in places[:i])]
    merged = rng.sample(first_on_file, 2)
    conflict = rng.choice([i for i in range(PATCHES) if i not in merged and places[i][0] not in
                           {places[m][0] for m in merged}])
    moved = rng.sample(paths, MOVED_FILES)
    files = {path: list(lines) for path, lines in pin_files.items()}
    upstream = FastImport()
    upstream.commit(*initial)
    for c in range(HEADER_COMMITS):
        batch = moved[c::HEADER_COMMITS]
        for path in batch:
            files[path][:0] = [f"# SPDX-License-Identifier: Apache-2.0 (header {c})",
                               f"# Copyright {2020 + c} the {name} authors", ""]
        upstream.commit(f"add licence headers ({c + 1}/{HEADER_COMMITS})", {p: files[p] for p in batch})
    touched: dict[str, list[str]] = {}
    shift = {path: (3 if path in moved else 0) for path in paths}
    for i in merged:  # a context line two below the patched one (past a line nobody changes)
        path, slot = places[i]
        at = slot + 3 + shift[path]
        files[path][at] = files[path][at].replace("(x, y=", "(x, *, y=")
        touched[path] = files[path]
    path, slot = places[conflict]  # the very line the patch edits
    files[path][slot + shift[path]] = files[path][slot + shift[path]].replace("+ y", "- y")
    touched[path] = files[path]
    upstream.commit("use keyword-only y; subtract y", touched)
    if upstream.run(tmp / "upstream" / name, env) == pin:
        sys.exit(f"bench: FAILED: upstream {name} did not move")
    if sh(["git", "--git-dir", str(tmp / "upstream" / name), "rev-parse", f"main~{HEADER_COMMITS + 1}"],
          env).strip() != pin:
        sys.exit(f"bench: FAILED: upstream {name} and its series do not share the pin commit")

    result = Upstream(name, pin)
    for i, (path, _) in enumerate(places):
        outcome = ("merged" if i in merged else "conflict" if i == conflict
                   else "offset" if path in moved else "clean")
        result.expected[outcome] += 1
    return result


def build_port(tmp: Path, env: dict[str, str]) -> tuple[Path, list[Upstream]]:
    port = tmp / "port"
    ups = [make_upstream(tmp, f"up{i}", port / "patches" / LAYER / f"up{i}", env) for i in range(UPSTREAMS)]
    lines = ["upstreams:"]
    for up in ups:
        lines += [f"  {up.name}:", f"    url: {tmp / 'upstream' / up.name}", f"    pin: {up.pin}",
                  "    track: main"]
    lines += ["models:", "  bench:", "    upstreams:"] + [f"      {up.name}: [{LAYER}]" for up in ups]
    (port / "upstreams.yaml").write_text("\n".join(lines) + "\n")
    return port, ups


# -- timing -----------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    args: list[str]
    raw: bool  # the raw loop (prints its failure count) rather than patchkit (prints JSON)
    one_core: bool
    times: list[float] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)


def run_rounds(cases: list[Case], repeat: int, port: Path, env: dict[str, str]) -> None:
    """Run every case once per round, in order, so that background load hits all of them alike."""
    for round_no in range(repeat):
        for case in cases:
            start = time.perf_counter()
            proc = subprocess.run(case.args, check=False, cwd=port, env=env, capture_output=True, text=True)
            case.times.append(time.perf_counter() - start)
            if proc.returncode not in ((0,) if case.raw else (0, 1)):
                sys.exit(f"bench: FAILED: {' '.join(case.args)} exited {proc.returncode}\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
            case.codes.append(proc.returncode)
            case.outputs.append(proc.stdout)
        log(f"round {round_no + 1}/{repeat}: " + ", ".join(f"{c.name} {c.times[-1]:.2f}s" for c in cases))


def summaries(case: Case) -> list[dict[str, Any]]:
    """The JSON summary of every run of a patchkit case, each checked to count all the patches."""
    found = []
    for out, code in zip(case.outputs, case.codes):
        doc = json.loads(out)
        summary = doc["summary"]
        if summary["patches"] != UPSTREAMS * PATCHES:
            sys.exit(f"bench: FAILED: {case.name}: the JSON summary counts {summary['patches']} patches, "
                     f"expected {UPSTREAMS * PATCHES}")
        if code != (0 if doc["ok"] else 1):
            sys.exit(f"bench: FAILED: {case.name}: exit code {code} but \"ok\": {doc['ok']}")
        found.append(summary)
    return found


def mirror_files(cache: Path) -> dict[str, tuple[int, float]]:
    """Size and mtime of every file in the mirror cache, to see whether the timed runs wrote there."""
    root = cache / "git"
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*")
            if p.is_file()}


def mirror_changes(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]) -> list[str]:
    """Notes on files of the mirror cache added, removed, rewritten, or only touched (mtime)."""
    added, removed = after.keys() - before.keys(), before.keys() - after.keys()
    both = before.keys() & after.keys()
    resized = [p for p in both if before[p][0] != after[p][0]]
    touched = [p for p in both if before[p][0] == after[p][0] and before[p][1] != after[p][1]]
    notes = [f"the timed runs {verb} {len(paths)} files in the mirror cache (e.g. {sorted(paths)[0]})"
             for verb, paths in (("added", added), ("removed", removed), ("changed the size of", resized))
             if paths]
    if touched:
        notes.append(f"the timed runs changed only the mtime of {len(touched)} files in the mirror cache "
                     f"(git freshening objects it found there, e.g. {sorted(touched)[0]})")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is kept (default 3)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args()
    exe = shutil.which("patchkit")
    patchkit = [exe] if exe else [sys.executable, "-m", "patchkit"]
    taskset = shutil.which("taskset")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="patchkit-bench-") as name:
        tmp = Path(name).resolve()
        env = hermetic_env(tmp, tmp / "scratch")
        (tmp / "scratch").mkdir()
        log(f"building {UPSTREAMS} upstreams x {PATCHES} patches in {tmp}")
        start = time.perf_counter()
        port, ups = build_port(tmp, env)
        build_s = time.perf_counter() - start
        log(f"built in {build_s:.1f} s; fetching the mirrors")
        sh([*patchkit, "--quiet", "fetch"], env, port)
        names = [up.name for up in ups]
        raw_sh = tmp / "raw.sh"
        raw_sh.write_text(RAW_SCRIPT)
        check = [*patchkit, "--quiet", "rebase", "--check", "--no-fetch", "--json"]
        raw = ["bash", str(raw_sh), str(port), *names]
        cases = [Case("patchkit --jobs 1", [*check, "--jobs", "1"], False, False),
                 Case("patchkit --jobs 2", [*check, "--jobs", "2"], False, False),
                 Case("patchkit --jobs 4", [*check, "--jobs", "4"], False, False),
                 Case("raw loop", raw, True, False)]
        if taskset:
            one = [taskset, "-c", "0"]
            cases += [Case("patchkit --jobs 1, cpu0", [*one, *check, "--jobs", "1"], False, True),
                      Case("raw loop, cpu0", [*one, *raw], True, True)]
        else:
            log("taskset not found: no one-core cases")
        before = mirror_files(tmp / "cache")
        log(f"timing, best of {opts.repeat}")
        run_rounds(cases, opts.repeat, port, env)
        mirror_notes = mirror_changes(before, mirror_files(tmp / "cache"))
        leftovers = sorted(p.name for p in (tmp / "scratch").iterdir())
    load_after = os.getloadavg()

    # -- checks and numbers --------------------------------------------------------------------
    runs = {c.name: summaries(c) for c in cases if not c.raw}
    summary = next(iter(runs.values()))[0]
    differing = sorted(name for name, found in runs.items() if any(s != summary for s in found))
    expected = {k: sum(up.expected[k] for up in ups) for k in OUTCOMES}
    got = {k: summary[k] for k in OUTCOMES}
    raw_failed = {int(out) for c in cases if c.raw for out in c.outputs}
    not_strict = sum(got[k] for k in OUTCOMES if k not in ("clean", "offset"))
    notes = []
    if got != expected:
        notes.append(f"patchkit's outcomes differ from the ones built in: expected {_nonzero(expected)}")
    if differing:
        notes.append(f"the JSON summary is not the same in every run: {', '.join(differing)}")
    if raw_failed != {not_strict}:
        notes.append(f"the raw loop failed {sorted(raw_failed)} patches, patchkit found {not_strict} "
                     "that do not apply strictly")
    notes += mirror_notes
    if leftovers:
        notes.append(f"{len(leftovers)} entries left in TMPDIR after the runs (e.g. {leftovers[0]})")

    best = {c.name: min(c.times) for c in cases}
    raw_best = {False: best["raw loop"], True: best.get("raw loop, cpu0", float("nan"))}
    rows = [{"case": c.name, "seconds": round(best[c.name], 4),
             "vs_raw": round(best[c.name] / raw_best[c.one_core], 3)} for c in cases]
    one_core = best["patchkit --jobs 1, cpu0"] / raw_best[True] if taskset else None
    two = best["patchkit --jobs 2"] / raw_best[False]
    speedup = best["patchkit --jobs 1"] / best["patchkit --jobs 2"]
    goals = {"within_1.5x_raw_on_one_core": None if one_core is None else one_core <= WITHIN_ONE_CORE,
             "faster_than_raw_with_two": two < 1.0}
    if opts.json:
        print(json.dumps({"upstreams": UPSTREAMS, "patches_per_upstream": PATCHES, "repeat": opts.repeat,
                          "cpus": os.cpu_count(), "build_s": round(build_s, 2),
                          "loadavg_before": load_before, "loadavg_after": load_after,
                          "cases": rows, "runs_s": {c.name: [round(t, 4) for t in c.times] for c in cases},
                          "ratios": {"one_core": _round(one_core), "two_cores": round(two, 3),
                                     "jobs1_over_jobs2": round(speedup, 3)},
                          "goals": goals, "summary": summary, "expected": expected,
                          "exit_codes": sorted({code for c in cases if not c.raw for code in c.codes}),
                          "raw_failed": sorted(raw_failed), "notes": notes}, indent=2))
        return
    print(f"patchkit rebase --check: {UPSTREAMS} upstreams x {PATCHES} patches, best of {opts.repeat}, "
          f"{os.cpu_count()} CPUs, built in {build_s:.1f} s")
    print(f"load average before {_load(load_before)}, after {_load(load_after)}")
    print(f"outcomes: {_nonzero(got)}; broken {summary['broken']}; exit code "
          f"{'/'.join(str(c) for c in sorted({code for c in cases if not c.raw for code in c.codes}))}; "
          f"raw loop failures {'/'.join(str(n) for n in sorted(raw_failed))}")
    print(f"{'case':<24} {'seconds':>8} {'vs raw loop':>12}")
    for row in rows:
        print(f"{row['case']:<24} {row['seconds']:>8.3f} {row['vs_raw']:>11.2f}x")
    if one_core is None:
        print("goal: within 1.5x of the raw loop on one core: not measured (no taskset)")
    else:
        print(f"goal: within {WITHIN_ONE_CORE}x of the raw loop on one core (jobs 1 vs raw, taskset -c 0): "
              f"{one_core:.2f}x  {'PASS' if goals['within_1.5x_raw_on_one_core'] else 'MISS'}")
    print(f"goal: faster than the raw loop with two (jobs 2 vs raw): {two:.2f}x  "
          f"{'PASS' if goals['faster_than_raw_with_two'] else 'MISS'}")
    print(f"speed-up from parallelism (jobs 1 / jobs 2): {speedup:.2f}x")
    for note in notes:
        print(f"note: {note}")


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    main()
