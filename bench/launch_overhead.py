"""Benchmark what `patchkit train` adds to a plain torchrun launch of the same entry script.

Run it by hand from the repository root (it is not a test):

    python bench/launch_overhead.py                      # 7 rounds, 2 workers, prints a table
    python bench/launch_overhead.py --repeat 11 --cards 2 --baseline ../old --json

It builds, in a temporary folder, an upstream git repo `toy` whose `train.py` is trivial (import
torch, `init_process_group("gloo")`, one all_reduce, print `step 0 time: 0.001`, destroy the
group), a port repo whose upstreams.yaml declares the model `toy` on it (one empty patch layer)
with the recipe `train/toy.yaml`, and runs `patchkit apply toy`. Every subprocess runs in a hermetic
environment (its own HOME and .gitconfig, no system git config, its own PATCHKIT_CACHE) plus
GLOO_SOCKET_IFNAME=lo. The cases run round-robin (an untimed warm-up round, then ROUNDS rounds) and
each is reported as the median over rounds of its ratio to torchrun in the same round, wall and CPU:

  torchrun     `python -m torch.distributed.run --nproc_per_node=N ... train.py` in the workspace repo
  device-auto  `patchkit --quiet train toy --device auto --cards N --work-dir <fresh folder>` (the
               default device: the probe runs in the warm-up round and is remembered after it)
  device-cpu   the same with `--device cpu` (no probe at all)
  dry-run      `patchkit --quiet train toy --device cpu --cards N --dry-run` (planning, no workers)
  baseline     with --baseline DIR: device-auto run from that checkout (the code before a change)

Goal (issue 14): both real launches within 1.10x torchrun's wall time. Every launch must exit 0
and show every rank's step line (the benchmark stops loudly otherwise).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import PYTHON_FLAGS, Row, Timed, baseline_env, hermetic_env, load, log, paired, report, rounds, sh

STEP_LINE = "step 0 time: 0.001"
GOAL = 1.10  # issue 14: a launch within 1.10x plain torchrun (wall), --device auto included

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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--cards", type=int, default=2, help="worker processes per launch (default 2)")
    parser.add_argument("--baseline", type=Path, help="another checkout of patchkit to time as well (A/B)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args()
    if opts.repeat < 1 or opts.cards < 1:
        sys.exit("bench: --repeat and --cards must be at least 1")
    patchkit = [sys.executable, *PYTHON_FLAGS, "-m", "patchkit"]
    loads_before = load()
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

        def train(device: str) -> list[str]:
            return [*patchkit, "--quiet", "train", "toy", "--device", device, "--cards", str(opts.cards)]

        def work_dir(case: str, round_no: int) -> Path:
            return runs / f"{case}-{round_no}"

        def check_patchkit(case: str) -> Callable[[int, str], None]:
            def check(_code: int, _stdout: str) -> None:
                folder = sorted(runs.glob(f"{case}-*"))[-1]
                for rank in range(opts.cards):
                    log_file = folder / f"rank{rank}.log"
                    text = log_file.read_text() if log_file.exists() else "(no log)"
                    if STEP_LINE not in text:
                        sys.exit(f"bench: FAILED: patchkit train: no {STEP_LINE!r} in {log_file}:\n{text}")
                steps = json.loads((folder / "results.json").read_text())["steps_seen"]
                if steps != 1:
                    sys.exit(f"bench: FAILED: patchkit train: results.json has steps_seen={steps}, expected 1")
                shutil.rmtree(folder)
            return check

        def check_torchrun(_code: int, stdout: str) -> None:
            count = stdout.count(STEP_LINE)
            if count != opts.cards:
                sys.exit(f"bench: FAILED: torchrun: {count} {STEP_LINE!r} lines, expected {opts.cards}:\n{stdout}")

        def check_dry_run(_code: int, stdout: str) -> None:
            if "-m patchkit.train.bootstrap train.py" not in stdout:
                sys.exit(f"bench: FAILED: patchkit train --dry-run printed no launch line:\n{stdout}")

        def launch(case: str, device: str, case_env: dict[str, str]) -> Timed:
            return Timed(case, lambda r: [*train(device), "--work-dir", str(work_dir(case, r))], port, case_env,
                         check_patchkit(case))

        torchrun = Timed("torchrun", lambda _r: [sys.executable, "-m", "torch.distributed.run",
                                                  f"--nproc_per_node={opts.cards}", "--nnodes=1", "--node_rank=0",
                                                  "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                                                  "train.py"], repo, env, check_torchrun)
        cases = [torchrun, launch("device-cpu", "cpu", env), launch("device-auto", "auto", env),
                 Timed("dry-run", lambda _r: [*train("cpu"), "--dry-run"], port, env, check_dry_run)]
        if opts.baseline:  # its own port and workspace, applied by that code (older code may not read ours)
            (tmp / "base").mkdir()
            base_env = baseline_env(env, opts.baseline)
            base_port = build_port(tmp / "base", env)
            sh([*patchkit, "--quiet", "apply", "toy"], base_env, base_port)
            cases.append(Timed("baseline-auto", lambda r: [*train("auto"), "--work-dir", str(work_dir("baseline-auto", r))],
                               base_port, base_env, check_patchkit("baseline-auto")))
        log(f"timing {opts.repeat} rounds, {opts.cards} workers per launch")
        rounds(cases, opts.repeat)
    by = {c.name: c for c in cases}
    rows = [Row("launch", "train --device auto", "torchrun", paired(by["device-auto"], torchrun), GOAL, on="wall_ratio"),
            Row("launch", "train --device cpu", "torchrun", paired(by["device-cpu"], torchrun), GOAL, on="wall_ratio"),
            Row("launch", "train --dry-run (no workers)", "torchrun", paired(by["dry-run"], torchrun))]
    if opts.baseline:
        rows.append(Row("launch", "baseline --device auto", "torchrun", paired(by["baseline-auto"], torchrun)))
    notes = ["--device auto probes the device once per interpreter and machine and remembers it (the warm-up "
             "round probes; the timed rounds read the answer)"]
    report("launch", rows, (loads_before, load()), opts.repeat, opts.json, cards=opts.cards, notes=notes)


if __name__ == "__main__":
    main()
