"""The first thing every training worker runs (`-m patchkit.train.bootstrap ENTRY ARGS...`).

It sends the worker's output to its rank's log, sets the worker's device, activates the model's
overlays, says what it did (the launcher reads these `patchkit-...:` lines), then runs ENTRY as
`__main__` with ARGS. Standard library only until the device is set: it runs before torch.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys


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


def torchvision_compat() -> str | None:
    """Make a torchvision whose compiled ops cannot load importable; what was done, or None.

    PyPI has only CUDA builds of torchvision for recent torch: on a CPU-only torch its `_C` does not
    load and `import torchvision` stops with "operator torchvision::nms does not exist" while it
    registers fake kernels. mmcv 1.x imports torchvision at module level, so nothing trains. Defining
    the two operator schemas first lets it import; torchvision.ops kernels stay unavailable (mmcv.ops
    has its own). Only done when the import really fails that way.
    """
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision  # noqa: F401
        return None
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)
    import torchvision  # noqa: F401,F811

    return ("torchvision's compiled ops do not load with this torch (a CUDA build on a CPU torch?): defined "
            "the torchvision::nms/qnms schemas so it imports; its C++ ops stay unavailable, mmcv.ops has its own")


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


def _overlay_summary(report: object) -> None:
    """At exit, what became of the targets that were pending at start (their modules imported later)."""
    entries = getattr(report, "entries", [])
    never = [e.target for e in entries if e.status == "pending"]
    applied = sum(1 for e in entries if e.status == "applied")
    print(f"patchkit-overlay: at exit: {applied} applied, {len(never)} never imported"
          + (f" ({', '.join(never)})" if never else ""), flush=True)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m patchkit.train.bootstrap ENTRY [ARGS...]")
    entry, args = sys.argv[1], sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if os.environ.get("PATCHKIT_TRAIN_LOG_DIR"):
        _redirect(os.environ["PATCHKIT_TRAIN_LOG_DIR"], rank)
    kind = os.environ.get("PATCHKIT_TRAIN_DEVICE", "cpu")
    set_device(kind, local_rank)
    print(f"patchkit-bootstrap: rank={rank} local_rank={local_rank} world_size={os.environ.get('WORLD_SIZE', '1')} "
          f"device={kind} backend={os.environ.get('PATCHKIT_TRAIN_BACKEND', 'gloo')} pid={os.getpid()}", flush=True)
    if os.environ.get("PATCHKIT_TORCHVISION_COMPAT", "1") != "0":
        done = torchvision_compat()
        if done and rank == 0:
            print(f"patchkit-compat: {done}", flush=True)
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
