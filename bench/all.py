"""Run every benchmark and print the one table the README quotes.

    python bench/all.py                      # the standard set (tens of minutes on a quiet 2-core machine)
    python bench/all.py --quick              # smaller sizes and fewer rounds: a smoke run of the benches
    python bench/all.py --baseline ../old    # every bench also times that checkout (A/B, same rounds)
    python bench/all.py --only fleet launch  # some of them
    python bench/all.py --json OUT.json      # also keep every bench's JSON document

Each benchmark runs its cases round-robin against its own baseline (the raw-git floor, plain
torchrun, a plain interpreter) and reports medians of per-round ratios, CPU and wall, with the load
average noted: on a shared machine the absolute times mean little, the paired ratios much more.
`real-port` needs PATCHKIT_CACHE holding the five models' mirrors (see bench/real_port.py) and is
left out without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import load, log, table

HERE = Path(__file__).resolve().parent

# name -> (script, arguments, arguments with --quick)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "rebase-10x100": ("rebase_check.py", ["--repeat", "5"], ["--upstreams", "3", "--patches", "50", "--repeat", "3"]),
    "rebase-10x1000": ("rebase_check.py", ["--patches", "1000", "--repeat", "3", "--no-jobs2"],
                       ["--upstreams", "2", "--patches", "500", "--repeat", "2", "--no-jobs2"]),
    "rebase-1x5000": ("rebase_check.py", ["--upstreams", "1", "--patches", "5000", "--repeat", "3", "--no-jobs2"],
                      ["--upstreams", "1", "--patches", "2000", "--repeat", "2", "--no-jobs2"]),
    "fleet": ("fleet.py", ["--repeat", "4"], ["--models", "12", "--repeat", "2"]),
    "real-port": ("real_port.py", ["--repeat", "7"], ["--repeat", "3"]),
    "launch": ("launch_overhead.py", ["--repeat", "5"], ["--repeat", "3"]),
    "apply": ("apply.py", ["--repeat", "4"], ["--repeat", "2"]),
    "overlay-startup": ("overlay_startup.py", ["--repeat", "15"], ["--repeat", "5"]),
    "memory": ("memory.py", [], ["--quick"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds")
    parser.add_argument("--baseline", type=Path, help="a checkout of patchkit to time as well, in every bench")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every bench's JSON document here")
    opts = parser.parse_args()
    docs, failed = [], []
    loads_before = load()
    for name in opts.only or BENCHES:
        script, args, quick = BENCHES[name]
        cmd = [sys.executable, str(HERE / script), *(quick if opts.quick else args), "--json"]
        if opts.baseline and script != "overlay_startup.py":
            cmd += ["--baseline", str(opts.baseline)]
        log(f"{name}: {' '.join(cmd[1:])}")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ)
        if proc.returncode != 0:
            failed.append(f"{name}: exit {proc.returncode}")
            continue
        if not proc.stdout.strip():
            log(f"{name}: skipped")
            continue
        doc = json.loads(proc.stdout)
        doc["name"] = name
        docs.append(doc)
    rows = [row for doc in docs for row in doc["rows"]]
    print(f"patchkit benchmarks: median of per-round paired ratios, {os.cpu_count()} CPUs, "
          f"load average before {' '.join(map(str, loads_before))}, after {' '.join(map(str, load()))}")
    for line in table(rows):
        print(line)
    for doc in docs:  # the memory bench's own table: peaks and their growth, not ratios
        for line in doc.get("memory_table", []):
            print(line)
    for doc in docs:
        for note in doc.get("notes", []):
            print(f"note ({doc['name']}): {note}")
    for line in failed:
        print(f"FAILED {line}")
    if opts.json:
        opts.json.write_text(json.dumps(docs, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
