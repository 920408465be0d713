"""`patchkit train`: a real two-process gloo run of a tiny model, and the launcher's decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from patchkit.train import device as device_mod
from tests.gitfixtures import git, make_upstream, patchkit, write_layer, write_one_upstream_port

ROOT = Path(__file__).resolve().parent.parent

TRAIN = '''\
import argparse
import os
import time

import toymod

parser = argparse.ArgumentParser()
parser.add_argument("--config")
parser.add_argument("--max-steps", type=int, default=1000)
parser.add_argument("--crash-rank", type=int, default=-1)
args = parser.parse_args()
cfg = {}
exec(open(args.config).read(), cfg)
batch = cfg["data"]["samples_per_gpu"]
print(f"speed {toymod.SPEED}", flush=True)
if int(os.environ["RANK"]) == args.crash_rank:  # before the process group: the others wait, not fail
    raise SystemExit(3)  # (and before importing torch: that costs seconds of a test's time)

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(args.max_steps):
    start = time.perf_counter()
    x = torch.randn(batch, 8)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {step} loss: {loss.item():.4f} time: {time.perf_counter() - start:.6f}", flush=True)
print("acc: 0.875", flush=True)
dist.barrier()  # ends within a GIL switch of the barrier: the bootstrap's at-exit settle is what keeps this safe
del model, opt  # DDP's reducer holds the group: release it before the group goes
dist.destroy_process_group()
'''

RECIPE = '''\
workdir: toy
entry: train.py
config: cfg.py
args: ["--config", "{config}"]
cards: 2
global_batch: 8
batch: {config_key: data.samples_per_gpu}
performance: {steps: 6, args: ["--max-steps", "6"]}
published: {chip: toy chip, cards: 2, fps: 100, metrics: {acc: 0.9}}
env:
  all: {TOY_ENV: "1"}
  cpu: {GLOO_SOCKET_IFNAME: lo}
log:
  step_time: 'time: (?P<value>[0-9.]+)'
  step_time_unit: s
  warmup_steps: 2
  metrics: {acc: 'acc: (?P<value>[0-9.]+)'}
'''

OVERLAY = '''\
from patchkit.overlay import replace_value

replace_value("toymod:SPEED", 2, upstream="toy")
'''


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    up = tmp_path / "toy"
    pin = make_upstream(up, {"train.py": TRAIN, "cfg.py": "data = dict(samples_per_gpu=4)\n",
                             "toymod.py": "SPEED = 1\n"})
    port = tmp_path / "port"
    write_layer(port, "npu", "toy", {})
    write_one_upstream_port(port, up, pin, name="toy", model="toy")
    (port / "train").mkdir()
    (port / "train/toy.yaml").write_text(RECIPE)
    (port / "overlays/toy").mkdir(parents=True)
    (port / "overlays/toy/speed.py").write_text(OVERLAY)
    return port


def test_needs_an_applied_workspace(toy: Path) -> None:
    run = patchkit(toy, "train", "toy", "--device", "cpu", "--cards", "2")
    assert run.code == 2 and "run `patchkit apply toy`" in run.err


def test_a_dry_run_plans_what_this_machine_cannot_check(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No workspace, no NPU, 2 cores: an 8-card NPU plan all the same, each gap said."""
    monkeypatch.setattr(device_mod, "probe_npu", lambda: 0)
    monkeypatch.setattr(device_mod, "probe_cpu", lambda: 2)
    run = patchkit(toy, "train", "toy", "--device", "npu", "--cards", "8", "--dry-run")
    assert run.code == 0, run.text
    assert "# toy: 8 npu card(s) x 1 node(s), backend hccl" in run.out
    assert "# note: no NPU seen here (--device npu: torch_npu is not importable or sees no NPU): " \
           "this npu plan is not verified on this machine" in run.out
    assert "# note: 8 npu card(s) per node: unchecked, this machine shows 0" in run.out
    assert "# note: workspace not applied and current (toy: not-applied): run `patchkit apply toy`" in run.out
    command = next(line for line in run.out.splitlines() if line.startswith("cd "))
    assert "--nproc_per_node=8" in command and "PATCHKIT_TRAIN_BACKEND=hccl" in command
    assert patchkit(toy, "train", "toy", "--device", "npu", "--cards", "8").code == 2  # a real run is refused


def test_train_uses_the_venv_install_recorded(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After `patchkit install MODEL --venv DIR` (its state entry), train runs the workers with DIR's
    Python; without torch anywhere it says what to run."""
    from patchkit import state
    from patchkit.train import workers

    assert patchkit(toy, "apply", "toy").code == 0
    monkeypatch.setattr(workers.importlib.util, "find_spec", lambda name: None)  # no torch in this Python
    bare = patchkit(toy, "train", "toy", "--device", "cpu", "--cards", "1")
    assert bare.code == 2 and "no torch in this Python" in bare.err and "patchkit install toy --venv DIR" in bare.err
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/python").write_text("#!/bin/sh\n")
    state.save_env(toy / "work/toy", "toy", state.EnvState(str(venv), "cpu", "3.11.7", "2.13.0+cpu"))
    run = patchkit(toy, "train", "toy", "--device", "cpu", "--cards", "1", "--dry-run")
    assert run.code == 0, run.text
    assert f" {venv}/bin/python -m torch.distributed.run" in run.out
    assert "recorded by `patchkit install toy`: torch 2.13.0+cpu, cpu" in run.out
    assert f"PATCHKIT_TRAIN_LOG_DIR={toy / 'work/toy/runs'}" in run.out  # runs live in the workspace, untracked


@pytest.mark.processes
def test_two_gloo_processes_really_train(toy: Path) -> None:
    pytest.importorskip("torch", reason="torch is needed to train (pip install torch==2.13.0)")
    assert patchkit(toy, "apply", "toy").code == 0
    work = toy / "run1"
    run = patchkit(toy, "train", "toy", "--device", "cpu", "--cards", "2", "--performance", "--work-dir", str(work))
    assert run.code == 0, run.text + "".join(p.read_text() for p in work.glob("*.log"))
    logs = {r: (work / f"rank{r}.log").read_text() for r in (0, 1)}
    for rank, text in logs.items():
        assert f"patchkit-bootstrap: rank={rank} local_rank={rank} world_size=2 device=cpu backend=gloo" in text
        assert "speed 2" in text  # the overlay was active in both workers
        assert text.count(" time: ") == 6  # the performance bound stopped it
    assert "patchkit-overlay: at exit: 1 applied, 0 never imported" in logs[0]
    results = json.loads((work / "results.json").read_text())
    assert results["steps_seen"] == 6 and results["warmup_steps"] == 2
    assert results["per_card_batch"] == 4 and results["global_batch"] == 8
    assert results["batch_source"].startswith("data.samples_per_gpu in ")
    assert results["mean_step_ms"] > 0
    assert results["fps"] == pytest.approx(8 / (results["mean_step_ms"] / 1000), rel=1e-3)
    assert results["metrics"] == {"acc": 0.875}
    # schema 2: the curve of every logged step (its `loss:` the total) and the recipe's published figures
    assert results["schema"] == 2 and results["kind"] == "performance" and results["overfit"] is None
    series = results["series"]
    assert series["step"] == [1, 2, 3, 4, 5, 6]  # the recipe has no `log: step` pattern: counted
    assert len(series["loss"]) == 6 and all(v > 0 for v in series["loss"]) and series["terms"] == {}
    assert len(series["step_s"]) == 6 and all(v > 0 for v in series["step_s"])
    assert results["published"] == {"chip": "toy chip", "cards": 2, "step_ms": None, "fps": 100.0,
                                    "metrics": {"acc": 0.9}}
    head = git(toy / "work/toy/toy", "rev-parse", "HEAD")
    assert results["fingerprint"]["repos"]["toy"]["head"] == head
    assert results["fingerprint"]["overlays"]
    assert "patchkit-fingerprint: " in logs[0]
    assert "cards | global batch | step time (ms) | FPS" in run.out and "| 8 " in run.out


@pytest.mark.processes
def test_a_crashing_worker_is_named(toy: Path) -> None:
    pytest.importorskip("torch", reason="torch is needed to train")
    assert patchkit(toy, "apply", "toy").code == 0
    run = patchkit(toy, "train", "toy", "--device", "cpu", "--cards", "2", "--performance",
                   "--work-dir", str(toy / "run2"), "--", "--crash-rank", "1")
    assert run.code == 1, run.text
    assert "training failed" in run.err and "rank 1 exited with code 3" in run.err
    assert "speed 2" in run.err  # the tail of that rank's log


SETTLE = """\
import sys
from patchkit.train.bootstrap import settle_collective_threads
print(settle_collective_threads(0.01))  # torch.distributed not imported: nothing to wait for
import torch.distributed as dist
print(settle_collective_threads(0.01))  # imported, no group: no gloo threads
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
dist.barrier()
print(settle_collective_threads(0.01))
dist.destroy_process_group()
"""


@pytest.mark.processes
def test_the_bootstrap_waits_only_when_gloo_threads_exist(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is needed for a process group")
    if not Path("/proc/self/task").is_dir():
        pytest.skip("thread names are read from /proc (Linux)")
    out = subprocess.run([sys.executable, "-c", SETTLE, str(tmp_path / "store")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"]


@pytest.mark.parametrize(("npu", "cuda", "expected"), [
    (8, 2, ("npu", 8, "hccl")), (0, 2, ("cuda", 2, "nccl")), (0, 0, ("cpu", 16, "gloo")),
])
def test_device_detection(monkeypatch: pytest.MonkeyPatch, npu: int, cuda: int, expected: tuple[str, int, str]) -> None:
    monkeypatch.setattr(device_mod, "probe_npu", lambda: npu)
    monkeypatch.setattr(device_mod, "probe_cuda", lambda: cuda)
    monkeypatch.setattr(device_mod, "probe_cpu", lambda: 16)
    found = device_mod.detect("auto")
    assert (found.kind, found.count, found.backend) == expected


def test_a_venv_is_probed_once_for_both_kinds(tmp_path: Path) -> None:
    """With --venv the probe runs in that interpreter: one run of patchkit/train/probe.py's text gives
    both counts (each run imports torch: seconds), none at all for --device cpu, zeros from a bad Python."""
    calls = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$2" >> {calls}\necho \'{{"npu": 2, "cuda": 0}}\'\n')
    fake.chmod(0o755)
    found = device_mod.detect("auto", python=str(fake))
    assert (found.kind, found.count, found.backend) == ("npu", 2, "hccl")
    assert calls.read_text().count('print(json.dumps({"npu": npu(), "cuda": cuda()}))') == 1
    calls.unlink()
    assert device_mod.detect("cpu", python=str(fake)).kind == "cpu" and not calls.exists()
    assert device_mod.probe_in(str(tmp_path / "missing")) == {"npu": 0, "cuda": 0}
    with pytest.raises(Exception, match="torch sees no CUDA device"):
        device_mod.detect("cuda", python=str(fake))


def test_the_probe_is_remembered_per_interpreter_and_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --device auto` probes (imports torch) once: the answer is kept under a key of the
    interpreter, what is installed beside it, the machine's boot and the device-hiding variables, and
    probed again when one of them changes; a probe that failed is not kept."""
    calls = tmp_path / "calls"
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho x >> {calls}\necho \'{{"npu": 0, "cuda": 2}}\'\n')
    fake.chmod(0o755)

    def probes() -> int:
        return len(calls.read_text().split()) if calls.exists() else 0

    assert device_mod.detect("auto", python=str(fake)).kind == "cuda" and probes() == 1
    assert device_mod.detect("auto", python=str(fake)) == device_mod.detect("cuda", python=str(fake))
    assert probes() == 1
    (site / "torch").mkdir()  # torch installed (or reinstalled) beside it
    assert device_mod.detect("auto", python=str(fake)).count == 2 and probes() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    device_mod.detect("auto", python=str(fake))
    device_mod.detect("auto", python=str(fake))
    assert probes() == 3
    broken = tmp_path / "broken"
    broken.write_text(f"#!/bin/sh\necho x >> {calls}\nexit 1\n")
    broken.chmod(0o755)
    assert device_mod.probe_in(str(broken)) == {"npu": 0, "cuda": 0} == device_mod.probe_in(str(broken))
    assert probes() == 5


def test_asked_device_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "probe_npu", lambda: 0)
    with pytest.raises(Exception, match="torch_npu is not importable or sees no NPU"):
        device_mod.detect("npu")


def test_multi_node_dry_run(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert patchkit(toy, "apply", "toy").code == 0
    monkeypatch.setattr(device_mod, "probe_npu", lambda: 8)
    run = patchkit(toy, "train", "toy", "--cards", "8", "--nnodes", "2", "--master-addr", "10.1.2.3",
                   "--dry-run")
    assert run.code == 0, run.text
    commands = [line for line in run.out.splitlines() if line.startswith("cd ")]
    assert len(commands) == 2
    for rank, line in enumerate(commands):
        assert f"--node_rank={rank}" in line and "--nnodes=2" in line and "--nproc_per_node=8" in line
        assert "--master_addr=10.1.2.3" in line and "--master_port=29500" in line
        assert "PATCHKIT_TRAIN_DEVICE=npu" in line and "PATCHKIT_TRAIN_BACKEND=hccl" in line
        assert "-m patchkit.train.bootstrap train.py --config cfg.py" in line
        assert "TOY_ENV=1" in line and "GLOO_SOCKET_IFNAME" not in line  # the cpu env is not the npu env
    assert "does not say toy supports several nodes" in run.out
    too_many = patchkit(toy, "train", "toy", "--cards", "9", "--dry-run")
    assert too_many.code == 0 and "9 npu card(s) per node: unchecked, this machine shows 8" in too_many.out
    alone = patchkit(toy, "train", "toy", "--nnodes", "2", "--dry-run")
    assert alone.code == 2 and "--master-addr" in alone.err


def test_recipe_errors(toy: Path) -> None:
    (toy / "train/toy.yaml").write_text(
        "workdir: toy\ncards: eight\nbatch: {arg: -b, value: 2}\nlog:\n  step_time: 'time: ([0-9.]+)'\n"
        "  step_time_unit: minutes\nextra: 1\n")
    run = patchkit(toy, "train", "toy", "--dry-run")
    assert run.code == 2
    for expected in ("train/toy.yaml:1: recipe: missing required key 'entry'",
                     "train/toy.yaml:2: cards must be a positive whole number",
                     "train/toy.yaml:3: batch: give exactly one of config_key, arg, value",
                     "train/toy.yaml:5: log: step_time: the regular expression needs a (?P<value>...) group",
                     "train/toy.yaml:6: log: step_time_unit must be one of s, ms, it/s",
                     "train/toy.yaml:7: recipe: unknown key 'extra'"):
        assert expected in run.err, run.err
    assert patchkit(toy, "train", "nope").code == 2


def _training_two_workers(toy: Path, work: Path, timeout: float) -> tuple[subprocess.Popen[bytes], list[int]]:
    """`patchkit train toy` on 2 CPU workers logging into WORK, once both workers said their pids and rank 0
    logged a step: (the patchkit process, the workers' pids)."""
    import re
    import time

    from tests.gitfixtures import patchkit_process

    pytest.importorskip("torch", reason="torch is needed to train")
    assert patchkit(toy, "apply", "toy").code == 0
    proc = patchkit_process(toy, "train", "toy", "--device", "cpu", "--cards", "2", "--work-dir", str(work),
                            "--", "--max-steps", "100000000")
    deadline = time.monotonic() + timeout
    pids: list[int] = []
    while len(pids) < 2 or " time: " not in (work / "rank0.log").read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
        pids = [int(m) for r in (0, 1) if (work / f"rank{r}.log").exists()
                for m in re.findall(r"patchkit-bootstrap: .* pid=(\d+)", (work / f"rank{r}.log").read_text())]
    return proc, pids


@pytest.mark.processes
def test_ctrl_c_stops_every_worker(toy: Path) -> None:
    import os
    import signal
    import time

    proc, pids = _training_two_workers(toy, toy / "run3", timeout=60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err
    for pid in pids:
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker {pid} still runs after Ctrl-C")


def _running(pid: int) -> bool:
    """PID exists and is not a zombie (an orphan's zombie waits for a reaper that a container may not have)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.processes
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_sigkill_of_train_takes_torchrun_and_its_workers_with_it(toy: Path) -> None:
    """torchrun runs in its own session: a `patchkit train` killed by SIGKILL (no handler runs) used to leave it
    and its workers training. Now the kernel sends torchrun SIGTERM when patchkit dies, and it stops its workers."""
    import os
    import re
    import signal
    import time

    from tests.gitfixtures import patchkit_process

    proc, workers = _training_two_workers(toy, toy / "killed", timeout=90)
    with open(f"/proc/{workers[0]}/stat") as fh:
        torchrun = int(fh.read().rsplit(")", 1)[1].split()[1])  # the worker's parent
    with open(f"/proc/{torchrun}/stat") as fh:
        assert int(fh.read().rsplit(")", 1)[1].split()[1]) == proc.pid  # ... is patchkit's child
    proc.kill()
    proc.communicate(timeout=30)
    tree = [torchrun, *workers]
    deadline = time.monotonic() + 60
    while any(_running(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in tree if _running(pid)]
    for pid in left:  # do not leave them training in the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after patchkit was SIGKILLed: {left} (torchrun {torchrun}, workers {workers})"


@pytest.mark.processes
def test_performance_bound_from_the_log(toy: Path) -> None:
    """An entry script that cannot bound itself: patchkit stops the run when the log reaches the bound."""
    pytest.importorskip("torch", reason="torch is needed to train")
    recipe = toy / "train/toy.yaml"
    recipe.write_text(recipe.read_text().replace('performance: {steps: 6, args: ["--max-steps", "6"]}',
                                                 "performance: {steps: 4}"))
    assert patchkit(toy, "apply", "toy").code == 0
    work = toy / "run4"
    run = patchkit(toy, "train", "toy", "--device", "cpu", "--cards", "1", "--performance", "--work-dir", str(work),
                   "--", "--max-steps", "100000000")
    assert run.code == 0, run.text
    assert "patchkit stops it once the log reaches step 4" in run.text
    results = json.loads((work / "results.json").read_text())
    assert results["steps_seen"] >= 4 and results["mean_step_ms"] > 0
    assert "stopped by patchkit at step 4 (the performance bound)" in results["notes"]


def test_torchvision_compat_only_on_the_failing_import(tmp_path: Path) -> None:
    """The bootstrap's torchvision step imports nothing up front; a first `import torchvision` that
    stops for want of its compiled ops gets the op schemas and runs again; a working one is untouched.
    Stand-in torch/torchvision packages keep it to a subprocess of milliseconds."""
    import subprocess
    import sys

    fakes = tmp_path / "fakes"
    (fakes / "torch").mkdir(parents=True)
    (fakes / "torch/__init__.py").write_text("from . import library\n")
    (fakes / "torch/library.py").write_text(
        "DEFINED = []\nclass Library:\n    def __init__(self, ns, kind):\n        self.ns = ns\n"
        "    def define(self, schema):\n        DEFINED.append(f'{self.ns}::{schema.split(\"(\")[0]}')\n")
    (fakes / "torchvision").mkdir()
    (fakes / "torchvision/ops.py").write_text("LOADED = True\n")
    (fakes / "torchvision/__init__.py").write_text(
        "import torch\nfrom torchvision import ops\n"
        "if 'torchvision::nms' not in torch.library.DEFINED:\n"
        "    raise RuntimeError('operator torchvision::nms does not exist')\n")
    program = ("import sys\nfrom patchkit.train.bootstrap import torchvision_compat\n"
               "torchvision_compat(lambda note: print('said:', note[:40]))\n"
               "import importlib.util\nassert importlib.util.find_spec('torchvision')  # a lookup (torchmetrics does)\n"
               "print('before:', 'torch' in sys.modules, 'torchvision' in sys.modules)\n"
               "import torchvision, torch\nprint('after:', torch.library.DEFINED, torchvision.ops.LOADED)\n")
    env = {**os.environ, "PYTHONPATH": f"{fakes}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "before: False False", "said: torchvision's compiled ops do not load w",
        "after: ['torchvision::nms', 'torchvision::qnms'] True"]
    # a torchvision that imports fine is left alone: nothing defined, nothing said
    (fakes / "torchvision/__init__.py").write_text("from torchvision import ops\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env)
    assert out.stdout.splitlines()[1:] == ["after: [] True"], out.stderr
    # another import error is not swallowed
    (fakes / "torchvision/__init__.py").write_text("raise RuntimeError('something else')\n")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "RuntimeError: something else" in out.stderr
