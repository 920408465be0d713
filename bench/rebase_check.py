"""Benchmark `patchkit rebase --check` against the raw-git floor of the same replay.

Run it by hand from the repository root (it is not a test):

    python bench/rebase_check.py                          # 10 upstreams x 100 patches, overlays, 7 rounds
    python bench/rebase_check.py --patches 1000           # 10 x 1,000
    python bench/rebase_check.py --upstreams 1 --patches 5000
    python bench/rebase_check.py --baseline ../old --json # also time another checkout (A/B), as JSON

It builds, in a temporary folder, UPSTREAMS bare upstream git repos (branch `main`, Python files of
150 lines each, enough files for every patch to have its own place) and, per upstream, a series of
PATCHES stacked `git format-patch` patches in the layer `npu` (each edits one or two lines of one
file). The patches are commits made with `git fast-import` in a scratch repo, on top of the pin,
exported by one `git format-patch` per upstream; the upstreams never hold them. Each upstream then
moves past the pin: three commits insert a licence header at the top of a third of the files (their
patches become `offset`), and a fourth changes one line near three patches: the very line one patch
edits (a `conflict`), and a line of context of two others (`merged`). The model `bench` has an
overlay set `overlays/bench/` with OVERLAYS runtime targets per upstream (functions its series
edits), fingerprinted from the pin with the series: the function after each `merged` patch's
(upstream made its `y` keyword-only: `signature-changed`), the `conflict` patch's function
(`drifted`, with its diff: this needs the pin-side replay) and the rest `holds`. Every subprocess runs
in a hermetic environment (its own HOME and .gitconfig, no system git config, its own PATCHKIT_CACHE
and TMPDIR).

After one `patchkit --quiet fetch`, with the mirrors cached, the cases run round-robin (one untimed
warm-up round, then ROUNDS rounds) and each is reported as the median over rounds of its ratio to
the floor of the same round, CPU (the whole process tree, user + system) and wall:

  raw floor         bench/floor.py: per upstream one rev-parse, one read-tree of the moved commit
                    into a temporary index and one `git apply --cached` per patch (no overlays)
  patchkit --jobs 1 `patchkit --quiet rebase --check --no-fetch --json --jobs 1`, overlays included
  patchkit --jobs 2 the same with two upstreams at once (the wall ratio is the one that counts)
  baseline          with --baseline DIR: --jobs 1 run from that checkout (the code before a change)

Goals (issue 14): --jobs 1 within GOAL times the floor's CPU (1.5 by default; 1.3 for the long
series runs), --jobs 2 faster than the floor in wall time on a machine with two free cores. Every
patchkit run must exit 1 (some patches conflict), count all patches in its JSON summary and find
the outcomes and overlay states built in; the table ends with notes when they differ, when the
floor's failure count disagrees, or when the timed runs wrote to the mirror cache or left scratch
folders behind. Peak memory (the largest process's resident set) is reported per case.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import PYTHON_FLAGS, Row, Timed, baseline_env, hermetic_env, load, log, paired, python_lines, report, rounds, sh
from floor import count_git, floor_case, own_rss_mb
from typing import Any

from patchkit.overlay import fingerprint

UPSTREAMS = 10  # set from the command line
FILES = 60  # at least; more when the series needs more places
LINES = 150
PATCHES = 100
MOVED_FILES = 20  # a third of the files get a header at the top upstream: their patches become `offset`
OVERLAYS = 5  # runtime overlay targets per upstream
HEADER_COMMITS = 3
LAYER = "npu"
SUBDIRS = ("", "pkg", "pkg/core", "pkg/ops", "tools", "tests")
# Lines 4, 8, 12, ... open a function: `def`, then `total = ...` (the line patches edit), `return`,
# a blank line. Patches edit the `total` line of every third function from the second one on, so
# any two patched places are 12 lines apart and their 3-line contexts never overlap.
SLOTS = [5 + 4 * block for block in range(1, (LINES - 8) // 4, 3)]
WITHIN_ONE_CORE, EPOCH = 1.5, 1_700_000_000
OUTCOMES = ("clean", "offset", "fuzz", "merged", "upstreamed", "conflict", "target-missing", "blocked")



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
    overlays: list[tuple[str, str, str]] = field(default_factory=list)  # (target, fingerprint, expected state)


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
    seen: set[str] = set()
    first_on_file = [i for i, (path, _) in enumerate(places) if not (path in seen or seen.add(path))]
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
    overlay = [(places[i][0], places[i][1] + 3, "signature-changed") for i in merged]
    overlay.append((places[conflict][0], places[conflict][1] - 1, "drifted"))
    overlay += [(path, slot - 1, "holds") for i, (path, slot) in enumerate(places)
                if path not in {places[j][0] for j in (*merged, conflict)}][:max(OVERLAYS - 3, 0)]
    for path, line, state in overlay[:OVERLAYS]:
        function = work[path][line].split("def ", 1)[1].split("(", 1)[0]
        module = path[:-3].replace("/", ".")
        value = fingerprint.of_source("\n".join(work[path]) + "\n", function)
        assert value, (path, function)
        result.overlays.append((f"{module}:{function}", value, state))
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
    overlays = port / "overlays" / "bench"  # the model's own set, found by its name
    overlays.mkdir(parents=True)
    for up in ups:
        decls = [f'@replace("{target}", upstream="{up.name}", fingerprint="{value}")\n'
                 f"def f{i}(*args, **kwargs):\n    return original(f{i})(*args, **kwargs)\n"
                 for i, (target, value, _) in enumerate(up.overlays)]
        (overlays / f"{up.name}.py").write_text("from patchkit.overlay import original, replace\n\n\n"
                                                 + "\n\n".join(decls))
    return port, ups


# -- timing -----------------------------------------------------------------------------------

def summaries(case: Timed, total: int) -> list[dict[str, Any]]:
    """The JSON document of every run of a patchkit case, each checked to count all the patches."""
    found = []
    for out in case.outputs:
        doc = json.loads(out)
        if doc["summary"]["patches"] != total:
            sys.exit(f"bench: FAILED: {case.name}: the JSON summary counts {doc['summary']['patches']} patches, "
                     f"expected {total}")
        found.append(doc)
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
    global UPSTREAMS, PATCHES, FILES, MOVED_FILES, OVERLAYS
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--upstreams", type=int, default=UPSTREAMS)
    parser.add_argument("--patches", type=int, default=PATCHES, help="per upstream")
    parser.add_argument("--overlays", type=int, default=OVERLAYS, help="runtime overlay targets per upstream (>= 3)")
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--goal", type=float, help="CPU goal against the floor (default 1.5; 1.3 from 1,000 patches)")
    parser.add_argument("--no-jobs2", action="store_true", help="leave out the --jobs 2 case")
    parser.add_argument("--baseline", type=Path, help="another checkout of patchkit to time as well (A/B)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args()
    UPSTREAMS, PATCHES, OVERLAYS = opts.upstreams, opts.patches, max(opts.overlays, 3)
    FILES = max(FILES, -(-PATCHES // len(SLOTS)) * 3 // 2)
    MOVED_FILES = FILES // 3
    goal = opts.goal or (1.3 if PATCHES >= 1000 else 1.5)
    name = f"rebase-{UPSTREAMS}x{PATCHES}"
    loads_before = load()
    with tempfile.TemporaryDirectory(prefix="patchkit-bench-") as tmp_name:
        tmp = Path(tmp_name).resolve()
        env = hermetic_env(tmp, tmp / "scratch")
        (tmp / "scratch").mkdir()
        log(f"building {UPSTREAMS} upstreams x {PATCHES} patches ({FILES} files each) in {tmp}")
        start = time.perf_counter()
        port, ups = build_port(tmp, env)
        build_s = time.perf_counter() - start
        log(f"built in {build_s:.1f} s; fetching the mirrors")
        patchkit = [sys.executable, *PYTHON_FLAGS, "-m", "patchkit"]
        sh([*patchkit, "--quiet", "fetch"], env, port)
        check = [*patchkit, "--quiet", "rebase", "--check", "--no-fetch", "--json"]
        # one untimed run gives the targets for the floor and patchkit's own peak memory
        own_rss, first = own_rss_mb([sys.executable, *PYTHON_FLAGS], ["--quiet", "rebase", "--check", "--no-fetch",
                                                                      "--json", "--jobs", "1"], port, env)
        cases = [floor_case(tmp, port, tmp / "cache", first, env),
                 Timed("patchkit --jobs 1", lambda _r: [*check, "--jobs", "1"], port, env, codes=(1,))]
        if not opts.no_jobs2:
            cases.append(Timed("patchkit --jobs 2", lambda _r: [*check, "--jobs", "2"], port, env, codes=(1,)))
        if opts.baseline:
            cases.append(Timed("baseline --jobs 1", lambda _r: [*check, "--jobs", "1"], port,
                               baseline_env(env, opts.baseline), codes=(1,)))
        by_command = {c.name: count_git(c.args(0), c.cwd, c.env) for c in cases}  # also the warm-up round
        counts = {name: found["total"] for name, found in by_command.items() if "2" not in name}
        log(f"git processes: {by_command}")
        before = mirror_files(tmp / "cache")
        rounds(cases, opts.repeat, warmup=False)
        notes = mirror_changes(before, mirror_files(tmp / "cache"))
        leftovers = sorted(p.name for p in (tmp / "scratch").iterdir())

    # -- checks and numbers --------------------------------------------------------------------
    total = UPSTREAMS * PATCHES
    docs = {c.name: summaries(c, total) for c in cases[1:]}
    doc = docs["patchkit --jobs 1"][0]
    summary = doc["summary"]
    strip = lambda d: {k: v for k, v in d.items() if k != "checked_at"}  # noqa: E731
    differing = sorted(n for n, found in docs.items() if any(strip(d) != strip(doc) for d in found))
    expected = {k: sum(up.expected[k] for up in ups) for k in OUTCOMES}
    got = {k: summary[k] for k in OUTCOMES}
    states: dict[str, int] = {}
    for o in doc["overlays"]:
        for t in o["targets"]:
            states[t["state"]] = states.get(t["state"], 0) + 1
    expected_states: dict[str, int] = {}
    for up in ups:
        for _, _, state in up.overlays:
            expected_states[state] = expected_states.get(state, 0) + 1
    floor_failed = {int(out) for out in cases[0].outputs}
    not_strict = sum(got[k] for k in OUTCOMES if k not in ("clean", "offset"))
    if got != expected:
        notes.append(f"patchkit's outcomes {_nonzero(got)} differ from the ones built in: {_nonzero(expected)}")
    if states != expected_states:
        notes.append(f"overlay states {states} differ from the ones built in: {expected_states}")
    if differing:
        notes.append(f"the JSON document is not the same in every run: {', '.join(differing)}")
    if floor_failed != {not_strict}:
        notes.append(f"the floor failed {sorted(floor_failed)} patches, patchkit found {not_strict} "
                     "that do not apply strictly")
    if leftovers:
        notes.append(f"{len(leftovers)} entries left in TMPDIR after the runs (e.g. {leftovers[0]})")
    floor, one = cases[0], cases[1]
    rss = {c.name: round(statistics.median(c.rss_kb) / 1024, 1) for c in cases}
    rows = [Row(name, "rebase --check --jobs 1", "raw floor", paired(one, floor), goal,
                extra={"git_processes": counts["patchkit --jobs 1"], "floor_git_processes": counts["raw floor"],
                       "rss_mb": rss[one.name], "own_rss_mb": own_rss})]
    if not opts.no_jobs2:
        rows.append(Row(name, "rebase --check --jobs 2", "raw floor", paired(cases[2], floor), 1.0, on="wall_ratio",
                        extra={"rss_mb": rss["patchkit --jobs 2"]}))
    if opts.baseline:
        old = cases[-1]
        rows += [Row(name, "baseline --jobs 1", "raw floor", paired(old, floor),
                     extra={"git_processes": counts[old.name], "rss_mb": rss[old.name]}),
                 Row(name, "rebase --check --jobs 1", "baseline --jobs 1", paired(one, old))]
    notes.insert(0, f"outcomes: {_nonzero(got)}; overlays: {states}; git processes: "
                    + ", ".join(f"{k} {v}" for k, v in counts.items())
                    + f"; peak memory of patchkit's own process {own_rss} MB, of the largest process in each "
                    "case's tree (MB): " + ", ".join(f"{k} {v}" for k, v in rss.items()))
    report(name, rows, (loads_before, load()), opts.repeat, opts.json, upstreams=UPSTREAMS,
           patches_per_upstream=PATCHES, overlays_per_upstream=OVERLAYS, build_s=round(build_s, 2),
           summary=summary, git_processes=counts, rss_mb=rss, own_rss_mb=own_rss, notes=notes)


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


if __name__ == "__main__":
    main()
