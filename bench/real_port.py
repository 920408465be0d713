"""Benchmark `rebase --check --no-fetch` of this repository's real port against the raw-git floor.

Run it by hand from the repository root once the five models' mirrors are cached (it is not a test):

    export PATCHKIT_MIRROR_TEMPLATE=/srv/mirrors/{owner}+{name}/repo PATCHKIT_CACHE=/tmp/pk-cache
    for m in surroundocc fbocc bevdepth tpvformer sparse4d; do patchkit apply $m --workspace /tmp/pk-ws; done
    python bench/real_port.py [--repeat 9] [--baseline ../old-checkout] [--port DIR] [--json]

`--port DIR` checks another port repository instead, e.g. the DrivingSDK fleet `patchkit import --all` made
(its mirrors in the same PATCHKIT_CACHE).

Cases, round-robin (floor, patchkit, [baseline]) and reported as the median of per-round ratios:

  floor      bench/floor.py's raw loop over the same series and targets (no overlays)
  patchkit   `patchkit --quiet rebase --check --no-fetch --json --jobs 1`, overlays included
  baseline   the same command run from another checkout (`--baseline DIR`: the code before a change)

Goals (issue 14): patchkit within 1.5x the floor's CPU, and within 1.5x its number of git processes
(counted once per case with a logging `git` first on PATH). Without PATCHKIT_CACHE holding the
mirrors it says so and exits 0 with nothing measured (bench/all.py then leaves it out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from common import PYTHON_FLAGS, Row, Timed, baseline_env, load, log, paired, report, rounds
from floor import count_git, floor_case

ROOT = Path(__file__).resolve().parent.parent
GOAL_CPU, GOAL_PROCESSES = 1.5, 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeat", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--baseline", type=Path, help="another checkout of patchkit to time as well (A/B); its "
                        "upstreams.yaml, patches and overlays are then the port every case checks (older code may "
                        "not read a newer manifest)")
    parser.add_argument("--port", type=Path, help="another port repository to check (its upstreams.yaml, patches, "
                        "overlays), e.g. the fleet `patchkit import --all` made; default: this repository")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    cache_root = os.environ.get("PATCHKIT_CACHE")
    if not cache_root or not (Path(cache_root) / "git").is_dir():
        print("real_port: skipped: set PATCHKIT_CACHE to a cache holding the five models' mirrors "
              "(see the module docstring)", file=sys.stderr)
        return
    # bytecode written and read as on a user's machine (a shell that sets PYTHONDONTWRITEBYTECODE
    # would make every run compile patchkit again)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "LC_ALL": "C"}
    check = [sys.executable, *PYTHON_FLAGS, "-m", "patchkit", "--quiet", "rebase", "--check", "--no-fetch", "--json", "--jobs", "1"]
    port = (opts.port or opts.baseline or ROOT).resolve()
    first = Timed("patchkit", lambda _r: check, port, env, codes=(0, 1))
    loads_before = load()
    rounds([first], 1, "targets: ")
    with tempfile.TemporaryDirectory(prefix="patchkit-floor-") as tmp:
        cases = [floor_case(Path(tmp), port, Path(cache_root), first.outputs[0], env),
                 Timed("patchkit", lambda _r: check, port, env, codes=(0, 1))]
        if opts.baseline:
            cases.append(Timed("baseline", lambda _r: check, port, baseline_env(env, opts.baseline), codes=(0, 1)))
        counts = {c.name: count_git(c.args(0), c.cwd, c.env) for c in cases}
        log("git processes: " + ", ".join(f"{name} {n['total']}" for name, n in counts.items()))
        rounds(cases, opts.repeat)
    floor, new = cases[0], cases[1]
    rows = [Row("real-port", "rebase --check (patchkit)", "raw floor", paired(new, floor), GOAL_CPU,
                extra={"git_processes": counts["patchkit"]["total"], "floor_git_processes": counts["raw floor"]["total"],
                       "process_ratio": round(counts["patchkit"]["total"] / counts["raw floor"]["total"], 3)})]
    if opts.baseline:
        old = cases[2]
        rows += [Row("real-port", "rebase --check (baseline)", "raw floor", paired(old, floor),
                     extra={"git_processes": counts["baseline"]["total"]}),
                 Row("real-port", "rebase --check (patchkit)", "baseline", paired(new, old))]
    notes = [f"git processes: patchkit {counts['patchkit']['total']}, raw floor {counts['raw floor']['total']} "
             f"({rows[0].extra['process_ratio']}x, goal <= {GOAL_PROCESSES}x "
             f"{'PASS' if rows[0].extra['process_ratio'] <= GOAL_PROCESSES else 'MISS'})"]
    if opts.baseline:
        notes.append(f"git processes of the baseline: {counts['baseline']['total']}")
    documents = {json.dumps({k: v for k, v in json.loads(out).items() if k != "checked_at"}, sort_keys=True)
                 for c in cases[1:] for out in c.outputs}
    if len(documents) != 1:
        notes.append("the JSON documents differ between runs or between patchkit and the baseline")
    else:
        notes.append("every run of patchkit and of the baseline printed the same JSON document (but its time stamp)")
    report("real-port", rows, (loads_before, load()), opts.repeat, opts.json, git_processes=counts, notes=notes)


if __name__ == "__main__":
    main()
