"""Which accelerator a run uses: NPU when torch_npu sees devices (HCCL), CUDA (NCCL), else CPU (gloo).

The probes are the only functions that import torch; tests replace them at this boundary.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from patchkit.errors import BadInput

BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class Device:
    kind: str  # npu | cuda | cpu
    count: int  # cards (CPU: cores) this machine has
    backend: str


def probe_npu() -> int:
    """NPUs visible to torch_npu, 0 when torch_npu is not importable or sees none."""
    try:
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)

        return int(torch.npu.device_count())  # type: ignore[attr-defined]
    except Exception:  # an absent or broken torch_npu means: no NPU here
        return 0


def probe_cuda() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


def probe_cpu() -> int:
    return os.cpu_count() or 1


_PROBE_CODE = {
    "npu": "import torch, torch_npu\nprint(int(torch.npu.device_count()))",
    "cuda": "import torch\nprint(int(torch.cuda.device_count()) if torch.cuda.is_available() else 0)",
}


def probe_in(python: str, kind: str) -> int:
    """The probe of KIND run by another interpreter (a training venv's: its torch, its torch_npu)."""
    if kind == "cpu":
        return probe_cpu()
    try:
        out = subprocess.run([python, "-c", _PROBE_CODE[kind]], capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def detect(requested: str = "auto", python: str | None = None) -> Device:
    """The device to train on; asking for a kind the machine does not have is an error. With PYTHON,
    the probes run in that interpreter (the environment the workers will run in)."""
    if requested not in ("auto", *BACKENDS):
        raise BadInput(f"unknown device {requested!r} (auto, npu, cuda or cpu)")
    probes = {"npu": probe_npu, "cuda": probe_cuda, "cpu": probe_cpu}
    if python is not None:
        probes = {kind: (lambda k=kind: probe_in(python, k)) for kind in probes}
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
