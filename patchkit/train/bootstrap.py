"""The first thing every training worker runs (`-m patchkit.train.bootstrap ENTRY ARGS...`).

It sends the worker's output to its rank's log, sets the worker's device, activates the model's
overlays, says what it did (the launcher reads these `patchkit-...:` lines), then runs ENTRY as
`__main__` with ARGS. Standard library only until the device is set: it runs before torch.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import os
import runpy
import sys
import time
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from types import ModuleType


def _redirect(log_dir: str, rank: int) -> None:
    os.makedirs(log_dir, exist_ok=True)
    fd = os.open(os.path.join(log_dir, f"rank{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115


def set_device(kind: str, local_rank: int) -> None:
    if kind == "npu":
        import torch
        import torch_npu  # noqa: F401

        torch.npu.set_device(local_rank)  # type: ignore[attr-defined]
    elif kind == "cuda":
        import torch

        torch.cuda.set_device(local_rank)


_KEEP: list[object] = []  # torch.library handles must outlive the import they make possible
_TORCHVISION_OPS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
COMPAT_NOTE = ("torchvision's compiled ops do not load with this torch (a CUDA build on a CPU torch?): defined "
               "the torchvision::nms/qnms schemas so it imports; its C++ ops stay unavailable, mmcv.ops has its own")


class _TorchvisionCompat(importlib.abc.MetaPathFinder):
    """Makes a torchvision whose compiled ops cannot load importable, on its first import.

    PyPI has only CUDA builds of torchvision for recent torch: on a CPU-only torch its `_C` does not
    load and `import torchvision` stops with "operator torchvision::nms does not exist" while it
    registers fake kernels. mmcv 1.x imports torchvision at module level, so nothing trains. When the
    import fails that way (and only then) the two operator schemas are defined and the import is run
    again; torchvision.ops kernels stay unavailable (mmcv.ops has its own). Nothing happens, and
    nothing is imported, until the worker's own code imports torchvision.
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name != "torchvision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name)  # the real finder (a lookup alone execs nothing)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        real = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            if self in sys.meta_path:  # one shot: the first import that really runs torchvision
                sys.meta_path.remove(self)
            try:
                real(module)
            except RuntimeError as exc:
                if "torchvision::nms" not in str(exc):
                    raise
                for sub in [m for m in sys.modules if m.startswith("torchvision.")]:
                    del sys.modules[sub]
                import torch

                lib = torch.library.Library("torchvision", "DEF")
                for schema in _TORCHVISION_OPS:
                    lib.define(schema)
                _KEEP.append(lib)
                real(module)
                self.say(COMPAT_NOTE)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def torchvision_compat(say: Callable[[str], None] = lambda _m: None) -> None:
    """From now on, a first `import torchvision` that fails for want of its compiled ops still works
    (see _TorchvisionCompat); SAY hears when that was needed."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionCompat) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionCompat(say))


def _lookup(data: object, dotted: str) -> object:
    for part in dotted.split("."):
        data = data[part] if isinstance(data, dict) else getattr(data, part)
    return data


def per_card_batch(spec: str, config: str | None, args: list[str]) -> tuple[int | None, str]:
    """The per-card batch size of this run and where it came from (never a hard-coded guess)."""
    kind, _, what = spec.partition(":")
    if kind == "value":
        return int(what), "the recipe"
    if kind == "arg":
        for i, arg in enumerate(args):
            if arg == what and i + 1 < len(args):
                return int(args[i + 1]), f"the argument {what}"
            if arg.startswith(what + "="):
                return int(arg.split("=", 1)[1]), f"the argument {what}"
        return None, f"the argument {what} is not given"
    if kind == "config_key" and config:
        for i, arg in enumerate(args):  # --cfg-options / --options overrides win over the file
            if arg in ("--cfg-options", "--options"):
                for item in args[i + 1:]:
                    if item.startswith("--"):
                        break
                    key, _, value = item.partition("=")
                    if key == what:
                        return int(value), f"{arg} {item}"
        try:
            try:
                from mmcv import Config  # the model's own config reader, where it has one
            except ImportError:
                Config = None  # noqa: N806
            data: object = Config.fromfile(config) if Config else runpy.run_path(config)
            return int(str(_lookup(data, what))), f"{what} in {config}" + ("" if Config else " (read without mmcv)")
        except Exception as exc:  # a config we cannot read leaves the batch unknown, said so
            return None, f"cannot read {what} from {config}: {exc}"
    return None, "no batch rule in the recipe"


def _say_on(rank: int, prefix: str) -> Callable[[str], None]:
    """A function printing `prefix: message` lines on rank 0 (the one the launcher reads), silent elsewhere."""
    def say(message: str) -> None:
        if rank == 0:
            print(f"{prefix}: {message}", flush=True)
    return say


def _overlay_summary(report: object) -> None:
    """At exit, what became of the targets that were pending at start (their modules imported later)."""
    entries = getattr(report, "entries", [])
    never = [e.target for e in entries if e.status == "pending"]
    applied = sum(1 for e in entries if e.status == "applied")
    print(f"patchkit-overlay: at exit: {applied} applied, {len(never)} never imported"
          + (f" ({', '.join(never)})" if never else ""), flush=True)


def _gloo_threads() -> int:
    """How many of torch's gloo work threads this process has (Linux: /proc; elsewhere 0)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    count = 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as comm:
                count += comm.read().strip() == "pt_gloo_runloop"
        except OSError:
            continue
    return count


def settle_collective_threads(wait_s: float = 0.2) -> bool:
    """Let gloo's work threads finish freeing their last works before the interpreter finalizes.

    torch 2.13 frees a finished collective's work on the gloo thread that ran it, and that free
    takes the GIL (the work holds a Python object). A script that ends within a GIL switch
    interval of its last collective (a `barrier()` then `destroy_process_group()`, say) leaves
    that thread waiting for the GIL; once finalization starts, CPython ends such a thread with a
    forced unwind through a noexcept destructor: "terminate called without an active exception",
    SIGABRT, a failed run after a finished training (seen in about 1 run in 10 on 2 busy cores).
    DDP keeps the group alive past `destroy_process_group`, so the threads cannot be joined;
    sleeping hands them the GIL. Runs as the last at-exit handler; returns whether it waited.
    """
    if "torch.distributed" not in sys.modules or not _gloo_threads():
        return False
    time.sleep(wait_s)
    return True


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m patchkit.train.bootstrap ENTRY [ARGS...]")
    entry, args = sys.argv[1], sys.argv[2:]
    atexit.register(settle_collective_threads)  # registered first: runs last, after the script's own
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if os.environ.get("PATCHKIT_TRAIN_LOG_DIR"):
        _redirect(os.environ["PATCHKIT_TRAIN_LOG_DIR"], rank)
    kind = os.environ.get("PATCHKIT_TRAIN_DEVICE", "cpu")
    set_device(kind, local_rank)
    print(f"patchkit-bootstrap: rank={rank} local_rank={local_rank} world_size={os.environ.get('WORLD_SIZE', '1')} "
          f"device={kind} backend={os.environ.get('PATCHKIT_TRAIN_BACKEND', 'gloo')} pid={os.getpid()}", flush=True)
    if os.environ.get("PATCHKIT_TORCHVISION_COMPAT", "1") != "0":
        torchvision_compat(_say_on(rank, "patchkit-compat"))
    if os.environ.get("PATCHKIT_OVERLAYS"):
        from patchkit.overlay.runtime import activate_from_env

        report = activate_from_env()
        if report is not None and rank == 0:
            for line in report.lines():
                print(f"patchkit-overlay: {line}", flush=True)
            atexit.register(_overlay_summary, report)
    if rank == 0:
        batch, source = per_card_batch(os.environ.get("PATCHKIT_TRAIN_BATCH", ""),
                                       os.environ.get("PATCHKIT_TRAIN_CONFIG") or None, args)
        print(f"patchkit-batch: {json.dumps({'per_card': batch, 'source': source})}", flush=True)
        if os.environ.get("PATCHKIT_TRAIN_FINGERPRINT"):
            print(f"patchkit-fingerprint: {os.environ['PATCHKIT_TRAIN_FINGERPRINT']}", flush=True)
    sys.argv = [entry, *args]
    if not os.environ.get("PATCHKIT_SMOKE_STEPS"):
        # as `python tools/train.py` would: the script's folder first. A smoke script lives in the port
        # repo (train/smoke/bevdepth.py): its folder would shadow the upstream package of the same name,
        # so there the workspace repo (the working directory, already on sys.path under -m) leads.
        sys.path.insert(0, os.path.dirname(os.path.abspath(entry)))
    runpy.run_path(entry, run_name="__main__")


if __name__ == "__main__":
    main()
