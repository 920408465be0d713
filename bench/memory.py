"""Peak memory of `patchkit rebase --check` as the series grow: is the working memory flat in their length?

    python bench/memory.py                          # 1x1000, 1x5000, 10x100, 10x1000 (a few minutes)
    python bench/memory.py --quick                  # 1x200, 1x1000, 5x40, 5x200
    python bench/memory.py --baseline ../old        # the same for another checkout (A/B)
    python bench/memory.py --json                   # as JSON (what bench/all.py reads)

Each size is the synthetic port of bench/rebase_check.py (UPSTREAMS upstreams x PATCHES patches, overlays,
clean/offset/merged/conflict outcomes), built in a temporary folder and fetched once. For every checkout
`rebase --check --no-fetch --json --jobs 1` runs twice: cold (the cache's memos of manifests and parses
removed first, as on a fresh CI runner; the mirrors stay) and warm (right after). The number is VmHWM, the
peak resident memory of patchkit's own process (not its git children), in MB. For each pair of sizes of
the same shape (1 x 1,000 -> 1 x 5,000 and 10 x 100 -> 10 x 1,000) it reports the growth in MB, in bytes
per added patch, and against the smaller run's total; the goal (issue 14, "flat in the series length") is
a growth of at most 10% of that total (GOAL). The check's --json documents of the checkouts are compared
(less checked_at) and a note says when they differ.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import rebase_check as rc
from common import PYTHON_FLAGS, baseline_env, hermetic_env, load, log, sh
from floor import own_rss_mb

SIZES = ["1x1000", "1x5000", "10x100", "10x1000"]
QUICK = ["1x200", "1x1000", "5x40", "5x200"]
GOAL = 0.10  # growth at most this share of the smaller size's peak


def build(tmp: Path, upstreams: int, patches: int) -> tuple[Path, dict[str, str]]:
    """The synthetic port of UPSTREAMS x PATCHES in TMP, its mirrors fetched; (port, environment)."""
    rc.UPSTREAMS, rc.PATCHES = upstreams, patches
    rc.FILES = max(60, -(-patches // len(rc.SLOTS)) * 3 // 2)
    rc.MOVED_FILES = rc.FILES // 3
    (tmp / "scratch").mkdir(parents=True)
    env = hermetic_env(tmp, tmp / "scratch")
    port, _ = rc.build_port(tmp, env)
    sh([sys.executable, *PYTHON_FLAGS, "-m", "patchkit", "--quiet", "fetch"], env, port)
    return port, env


def forget_memos(cache: Path) -> None:
    """The cache as a fresh runner has it after a fetch: the mirrors, no memo of a manifest or parse."""
    for path in cache.glob("*"):
        if path.name != "git":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def peaks(port: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(cold MB, warm MB, the warm run's document without checked_at)."""
    args = ["--quiet", "rebase", "--check", "--no-fetch", "--json", "--jobs", "1"]
    forget_memos(Path(env["PATCHKIT_CACHE"]))
    cold, _ = own_rss_mb([sys.executable, *PYTHON_FLAGS], args, port, env)
    warm, out = own_rss_mb([sys.executable, *PYTHON_FLAGS], args, port, env)
    doc = json.loads(out) if out.strip() else {}
    doc.pop("checked_at", None)
    return cold, warm, json.dumps(doc, sort_keys=True)


def growth(small: dict[str, Any], large: dict[str, Any], run: str) -> dict[str, Any]:
    added = large["patches"] - small["patches"]
    mb = large[run] - small[run]
    return {"from": small["size"], "to": large["size"], "run": run, "growth_mb": round(mb, 1),
            "bytes_per_patch": round(mb * 1024 * 1024 / added), "share": round(mb / small[run], 3),
            "goal": GOAL, "passed": mb / small[run] <= GOAL}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", nargs="+", help=f"UPSTREAMSxPATCHES, in pairs of one shape (default {SIZES})")
    parser.add_argument("--quick", action="store_true", help=f"the sizes {QUICK}")
    parser.add_argument("--baseline", type=Path, help="another checkout of patchkit to measure as well (A/B)")
    parser.add_argument("--repeat", type=int, help="ignored (bench/all.py's interface)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args()
    sizes = opts.sizes or (QUICK if opts.quick else SIZES)
    checkouts = {"patchkit": None, **({"baseline": opts.baseline} if opts.baseline else {})}
    loads_before = load()
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    for size in sizes:
        upstreams, patches = map(int, size.split("x"))
        with tempfile.TemporaryDirectory(prefix="patchkit-memory-") as tmp_name:
            log(f"{size}: building")
            port, env = build(Path(tmp_name).resolve(), upstreams, patches)
            docs = {}
            for name, checkout in checkouts.items():
                cold, warm, docs[name] = peaks(port, baseline_env(env, checkout))
                log(f"{size} {name}: VmHWM cold {cold} MB, warm {warm} MB (load {load()[0]})")
                runs.append({"size": size, "checkout": name, "patches": upstreams * patches, "cold": cold, "warm": warm})
            if len(set(docs.values())) > 1:
                notes.append(f"{size}: the --json documents of {' and '.join(docs)} differ")
    growths = []
    for name in checkouts:
        mine = [r for r in runs if r["checkout"] == name]
        for small, large in zip(mine[::2], mine[1::2]):
            growths += [{**growth(small, large, run), "checkout": name} for run in ("cold", "warm")]
    lines = [f"{'checkout':<9} {'size':<8} {'patches':>7} {'cold MB':>8} {'warm MB':>8}"]
    lines += [f"{r['checkout']:<9} {r['size']:<8} {r['patches']:>7} {r['cold']:>8.1f} {r['warm']:>8.1f}" for r in runs]
    lines.append(f"{'checkout':<9} {'growth':<17} {'run':<5} {'MB':>5} {'B/patch':>8} {'of total':>8}  goal")
    lines += [f"{g['checkout']:<9} {g['from'] + ' -> ' + g['to']:<17} {g['run']:<5} {g['growth_mb']:>5.1f} "
              f"{g['bytes_per_patch']:>8} {g['share']:>8.1%}  <= {GOAL:.0%} {'PASS' if g['passed'] else 'MISS'}"
              for g in growths]
    doc = {"bench": "memory", "load_before": loads_before, "load_after": load(), "rows": [], "runs": runs,
           "growth": growths, "memory_table": lines, "notes": notes}
    if opts.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"memory: VmHWM of patchkit's process, load average before {' '.join(map(str, loads_before))}, "
          f"after {' '.join(map(str, doc['load_after']))}")
    for line in lines + [f"note: {n}" for n in notes]:
        print(line)


if __name__ == "__main__":
    main()
