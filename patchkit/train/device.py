"""Which accelerator a run uses: NPU when torch_npu sees devices (HCCL), CUDA (NCCL), else CPU (gloo).

The probes (patchkit.train.probe) are the only code that imports torch; tests replace them here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from patchkit import settings
from patchkit.errors import BadInput
from patchkit.paths import atomic_write
from patchkit.train import probe

BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class Device:
    kind: str  # npu | cuda | cpu
    count: int  # cards (CPU: cores) this machine has
    backend: str


def probe_npu() -> int:
    """NPUs visible to torch_npu here (tests replace the probes at this boundary)."""
    return remembered(sys.executable, lambda: {"npu": probe.npu(), "cuda": probe.cuda()})["npu"]


def probe_cuda() -> int:
    return remembered(sys.executable, lambda: {"npu": probe.npu(), "cuda": probe.cuda()})["cuda"]


def probe_cpu() -> int:
    return os.cpu_count() or 1


def probe_in(python: str) -> dict[str, int]:
    """NPU and CUDA counts as another interpreter sees them (a training venv's: its torch, its
    torch_npu), from one run of the probe; zeros when that Python cannot tell."""
    return remembered(python, lambda: _run_probe(python))


def _run_probe(python: str) -> dict[str, int] | None:
    code = Path(probe.__file__).read_text(encoding="utf-8")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        counts = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else None
        return {kind: int(counts.get(kind, 0)) for kind in ("npu", "cuda")} if isinstance(counts, dict) else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


# -- probing once per interpreter and machine ------------------------------------------------------
# A probe imports torch (about a second). Its answer depends on the interpreter and what is installed
# beside it, on the machine (and its boot: drivers change with a reboot) and on the variables that
# hide devices; it is kept in the cache under a key of exactly those, so `train --device auto` probes
# once, and again only when one of them changes. A probe that could not run is not kept.
_VISIBILITY = ("CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES", "NPU_VISIBLE_DEVICES",
               "HIP_VISIBLE_DEVICES", "LD_LIBRARY_PATH")


def probe_key(python: str) -> str:
    """What a probe's answer depends on, hashed (see above)."""
    exe = Path(python)
    if python == sys.executable:
        sites = [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    else:  # a venv's interpreter: <prefix>/bin/python, its packages under <prefix>/lib/python*/site-packages
        sites = sorted(exe.parent.parent.glob("lib/python*/site-packages"))
    stamps = []
    for path in [exe, exe.resolve(), *sites, *[s / name for s in sites for name in ("torch", "torch_npu")]]:
        try:
            stamps.append([str(path), path.stat().st_mtime_ns])
        except OSError:
            stamps.append([str(path), None])
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    facts = [stamps, boot, platform.node(), {k: os.environ.get(k) for k in _VISIBILITY}]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


def remembered(python: str, run: Callable[[], dict[str, int] | None]) -> dict[str, int]:
    """The probe's answer for PYTHON on this machine: kept from an earlier run when nothing it depends
    on changed, else RUN's (kept for the next time)."""
    path = settings.cache_root() / "device-probes.json"
    key = probe_key(python)
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    hit = known.get(key)
    if isinstance(hit, dict) and all(isinstance(hit.get(k), int) for k in ("npu", "cuda")):
        return {"npu": hit["npu"], "cuda": hit["cuda"]}
    counts = run()
    if counts is None:
        return {"npu": 0, "cuda": 0}
    known[key] = {**counts, "python": python}
    try:
        atomic_write(path, json.dumps(known, indent=1, sort_keys=True).encode())
    except OSError:  # a read-only cache: the next run probes again
        pass
    return counts


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
