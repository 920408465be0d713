"""Benchmark what `patchkit train` adds to a plain torchrun launch of the same entry script.

Run it by hand from the repository root (it is not a test):

    python bench/launch_overhead.py              # best of 5 runs per case, prints a table
    python bench/launch_overhead.py --repeat 10  # best of 10
    python bench/launch_overhead.py --cards 2    # worker processes per run (default 2)
    python bench/launch_overhead.py --json       # the numbers as JSON on stdout

It builds, in a temporary folder, an upstream git repo `toy` whose `train.py` is trivial (import
torch, `init_process_group("gloo")`, one all_reduce, print `step 0 time: 0.001`, destroy the
group), a port repo whose upstreams.yaml declares the model `toy` on it (one empty patch layer)
with the recipe `train/toy.yaml` (no performance section), and runs `patchkit apply toy`. Every
subprocess runs in a hermetic environment (its own HOME and .gitconfig, no system git config,
its own PATCHKIT_CACHE) plus GLOO_SOCKET_IFNAME=lo. Timed, wall clock, best of N, the cases
round-robin (one run of each per round) so that background load hits them alike:

  patchkit   `patchkit --quiet train toy --device cpu --cards N --work-dir <fresh folder>`
  torchrun   `python -m torch.distributed.run --nproc_per_node=N --nnodes=1 --node_rank=0
             --master_addr=127.0.0.1 --master_port=<free port> train.py` in the same workspace repo
  dry-run    `patchkit --quiet train toy --device cpu --cards N --dry-run` (the launcher's own
             start-up and planning, no workers)

Both real launches must exit 0 and show every rank's step line (the benchmark stops loudly
otherwise). patchkit runs as the console script next to this interpreter (not a pyenv shim,
which would add its own start-up), so both launches start the same Python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import hermetic_env, log, sh

STEP_LINE = "step 0 time: 0.001"

TRAIN = f'''\
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.ones(1)
dist.all_reduce(value)
assert int(value.item()) == dist.get_world_size(), value
print("{STEP_LINE}", flush=True)
dist.destroy_process_group()
'''

RECIPE = '''\
workdir: toy
entry: train.py
cards: 2
env:
  cpu: {GLOO_SOCKET_IFNAME: lo}
log:
  step_time: 'time: (?P<value>[0-9.]+)'
  step_time_unit: s
'''


def build_port(tmp: Path, env: dict[str, str]) -> Path:
    """The upstream `toy` (one commit), and a port with one empty layer and the recipe."""
    up = tmp / "upstream" / "toy"
    up.mkdir(parents=True)
    (up / "train.py").write_text(TRAIN)
    sh(["git", "init", "-q", "-b", "main", str(up)], env)
    sh(["git", "add", "-A"], env, up)
    sh(["git", "commit", "-q", "-m", "toy: initial import"], env, up)
    pin = sh(["git", "rev-parse", "HEAD"], env, up).strip()
    port = tmp / "port"
    layer = port / "patches" / "npu" / "toy"
    layer.mkdir(parents=True)
    (layer / "series").write_text("# no patches: the launch is what is measured\n")
    (port / "upstreams.yaml").write_text(f"upstreams:\n  toy:\n    url: {up}\n    pin: {pin}\n    track: main\n"
                                         "models:\n  toy:\n    upstreams:\n      toy: [npu]\n")
    (port / "train").mkdir()
    (port / "train" / "toy.yaml").write_text(RECIPE)
    return port


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def patchkit_command() -> list[str]:
    """The console script beside this interpreter; `python -m patchkit` where there is none."""
    script = Path(sys.executable).parent / "patchkit"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "patchkit"]


@dataclass
class Case:
    """One timed command: ARGS() builds it fresh each run; CHECK(stdout) runs untimed after it."""

    name: str
    args: Callable[[int], list[str]]
    cwd: Path
    check: Callable[[int, str], None]
    times: list[float] = field(default_factory=list)


def run_rounds(cases: list[Case], repeat: int, env: dict[str, str]) -> None:
    for round_no in range(repeat):
        for case in cases:
            args = case.args(round_no)
            start = time.perf_counter()
            proc = subprocess.run(args, check=False, cwd=case.cwd, env=env, capture_output=True, text=True)
            case.times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                sys.exit(f"bench: FAILED: {case.name}: {' '.join(args)} exited {proc.returncode}\n"
                         f"{proc.stdout}{proc.stderr}")
            case.check(round_no, proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; the best is kept (default 5)")
    parser.add_argument("--cards", type=int, default=2, help="worker processes per launch (default 2)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args()
    if opts.repeat < 1 or opts.cards < 1:
        sys.exit("bench: --repeat and --cards must be at least 1")
    patchkit = patchkit_command()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="patchkit-bench-") as name:
        tmp = Path(name).resolve()
        env = {**hermetic_env(tmp), "GLOO_SOCKET_IFNAME": "lo"}
        log(f"building the port in {tmp}")
        port = build_port(tmp, env)
        sh([*patchkit, "--quiet", "apply", "toy"], env, port)
        repo = port / "work" / "toy" / "toy"
        if not (repo / "train.py").is_file():
            sys.exit(f"bench: FAILED: `patchkit apply toy` made no {repo / 'train.py'}")
        runs = tmp / "runs"
        train = [*patchkit, "--quiet", "train", "toy", "--device", "cpu", "--cards", str(opts.cards)]

        def work_dir(round_no: int) -> Path:
            return runs / f"patchkit-{round_no}"

        def check_patchkit(round_no: int, _stdout: str) -> None:
            folder = work_dir(round_no)
            for rank in range(opts.cards):
                log_file = folder / f"rank{rank}.log"
                text = log_file.read_text() if log_file.exists() else "(no log)"
                if STEP_LINE not in text:
                    sys.exit(f"bench: FAILED: patchkit train: no {STEP_LINE!r} in {log_file}:\n{text}")
            steps = json.loads((folder / "results.json").read_text())["steps_seen"]
            if steps != 1:
                sys.exit(f"bench: FAILED: patchkit train: results.json has steps_seen={steps}, expected 1")
            shutil.rmtree(folder)

        def check_torchrun(_round: int, stdout: str) -> None:
            count = stdout.count(STEP_LINE)
            if count != opts.cards:
                sys.exit(f"bench: FAILED: torchrun: {count} {STEP_LINE!r} lines, expected {opts.cards}:\n{stdout}")

        def check_dry_run(_round: int, stdout: str) -> None:
            if "-m patchkit.train.bootstrap train.py" not in stdout:
                sys.exit(f"bench: FAILED: patchkit train --dry-run printed no launch line:\n{stdout}")

        cases = [
            Case("patchkit", lambda r: [*train, "--work-dir", str(work_dir(r))], port, check_patchkit),
            Case("torchrun", lambda _r: [sys.executable, "-m", "torch.distributed.run",
                                         f"--nproc_per_node={opts.cards}", "--nnodes=1", "--node_rank=0",
                                         "--master_addr=127.0.0.1", f"--master_port={free_port()}", "train.py"],
                 repo, check_torchrun),
            Case("dry-run", lambda _r: [*train, "--dry-run"], port, check_dry_run),
        ]
        log(f"timing, best of {opts.repeat}, {opts.cards} workers per launch, "
            f"load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
        run_rounds(cases, opts.repeat, env)
    load_after = os.getloadavg()
    best = {c.name: min(c.times) for c in cases}
    diff, ratio = best["patchkit"] - best["torchrun"], best["patchkit"] / best["torchrun"]
    if opts.json:
        print(json.dumps({
            "repeat": opts.repeat, "cards": opts.cards, "cpus": os.cpu_count(), "patchkit": patchkit,
            "best_s": {k: round(v, 4) for k, v in best.items()},
            "difference_s": round(diff, 4), "ratio": round(ratio, 3),
            "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
            "runs_s": {c.name: [round(t, 4) for t in c.times] for c in cases}}, indent=2))
        return
    print(f"patchkit train vs torchrun: {opts.cards} gloo workers, trivial entry, best of {opts.repeat}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'case':<10} {'best s':>8} {'median s':>9}")
    for case in cases:
        median = sorted(case.times)[len(case.times) // 2]
        print(f"{case.name:<10} {best[case.name]:>8.3f} {median:>9.3f}")
    print(f"patchkit - torchrun: {diff:+.3f} s   patchkit / torchrun: {ratio:.2f}x   "
          f"(dry-run alone: {best['dry-run']:.3f} s)")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}   "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}")


if __name__ == "__main__":
    main()
