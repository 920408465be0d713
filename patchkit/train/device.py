"""Which accelerator a run uses: NPU when torch_npu sees devices (HCCL), CUDA (NCCL), else CPU (gloo).

The probes (patchkit.train.probe) are the only code that imports torch; tests replace them here.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from patchkit.errors import BadInput
from patchkit.train import probe

BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class Device:
    kind: str  # npu | cuda | cpu
    count: int  # cards (CPU: cores) this machine has
    backend: str


def probe_npu() -> int:
    """NPUs visible to torch_npu here (tests replace the probes at this boundary)."""
    return probe.npu()


def probe_cuda() -> int:
    return probe.cuda()


def probe_cpu() -> int:
    return os.cpu_count() or 1


def probe_in(python: str) -> dict[str, int]:
    """NPU and CUDA counts as another interpreter sees them (a training venv's: its torch, its
    torch_npu), from one run of the probe; zeros when that Python cannot tell."""
    code = Path(probe.__file__).read_text(encoding="utf-8")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        counts = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else {}
        return {kind: int(counts.get(kind, 0)) for kind in ("npu", "cuda")}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {"npu": 0, "cuda": 0}


def detect(requested: str = "auto", python: str | None = None) -> Device:
    """The device to train on; asking for a kind the machine does not have is an error. With PYTHON,
    the probes run in that interpreter (the environment the workers will run in)."""
    if requested not in ("auto", *BACKENDS):
        raise BadInput(f"unknown device {requested!r} (auto, npu, cuda or cpu)")
    probes = {"npu": probe_npu, "cuda": probe_cuda, "cpu": probe_cpu}
    if python is not None:
        counts = functools.cache(lambda: probe_in(python))  # one subprocess for both kinds, and only if asked
        probes = {"npu": lambda: counts()["npu"], "cuda": lambda: counts()["cuda"], "cpu": probe_cpu}
    if requested != "auto":
        count = probes[requested]()
        if count == 0:
            why = "torch_npu is not importable or sees no NPU" if requested == "npu" else "torch sees no CUDA device"
            raise BadInput(f"--device {requested}: {why}")
        return Device(requested, count, BACKENDS[requested])
    for kind in ("npu", "cuda"):
        count = probes[kind]()
        if count:
            return Device(kind, count, BACKENDS[kind])
    return Device("cpu", probe_cpu(), "gloo")


# -- the machine's accelerator without torch (what `patchkit install --device auto` builds for: a new venv
#    has no torch to probe with). Driver files only; separate from the torch probes above.
NPU_SIGNS = ("/dev/davinci0", "/dev/davinci_manager", "/usr/local/Ascend/driver")
CUDA_SIGNS = ("/proc/driver/nvidia/version", "/dev/nvidiactl")


def machine_kind(root: str = "/") -> tuple[str, str]:
    """(npu|cuda|cpu, why): the Ascend driver's device files or install folder, else NVIDIA's driver
    files or an `nvidia-smi` on PATH, else cpu. ROOT: where the file system starts (tests)."""
    for kind, signs in (("npu", NPU_SIGNS), ("cuda", CUDA_SIGNS)):
        seen = next((s for s in signs if os.path.exists(os.path.join(root, s.lstrip("/")))), None)
        if seen:
            return kind, f"{seen} exists"
    smi = shutil.which("nvidia-smi")
    if smi and root == "/":
        return "cuda", f"{smi} is on PATH"
    return "cpu", "no Ascend (/dev/davinci*, /usr/local/Ascend/driver) or NVIDIA driver (/proc/driver/nvidia) seen"
