"""pytorch-lightning 1.6's Trainer follows the run's device under torchrun.

BEVDepth's experiments build the Trainer from argparse (bevdepth/exps/base_cli.py: Trainer
arguments plus defaults accelerator='ddp', precision=16; the README runs `--gpus 8 --amp_backend
native`). Lightning 1.6 then wants CUDA (`--gpus`), knows no NPU, rejects precision=16 on CPU and
picks its process-group backend from the device type only (nccl on CUDA, gloo elsewhere). This
overlay rewrites the device flags where the Trainer hands them to its AcceleratorConnector, from
the device the patchkit launcher chose (PATCHKIT_TRAIN_DEVICE, else what torch sees) and
torchrun's environment, so the same command line trains on every device:

* accelerator: 'gpu' on CUDA; on NPU also 'gpu', after torch_npu.contrib.transfer_to_npu (the
  documented torch_npu way to run CUDA-device code on Ascend: torch.cuda.* and 'cuda' devices go to
  the NPU), 'cpu' on CPU. `--gpus N` becomes `devices=N`; a legacy strategy name given as
  accelerator (base_cli's accelerator='ddp') becomes the strategy.
* launcher: under torchrun (LOCAL_WORLD_SIZE set) the processes already exist: devices is the
  number torchrun started on this node (a different --gpus is reported and overridden, else
  Lightning's DistributedSampler and process count would disagree with the processes), and the
  strategy is DDP in the existing processes (Lightning's TorchElastic environment), never
  ddp_spawn. Its process-group backend is PATCHKIT_TRAIN_BACKEND (hccl / nccl / gloo, what the
  launcher set for the device), and DDP keeps Lightning's default find_unused_parameters=True.
  A single process without torchrun gets no DDP.
* AMP: precision 16 stays torch.amp fp16 autocast on CUDA and NPU (Lightning's native plugin;
  on NPU through transfer_to_npu); on CPU, where fp16 autocast does not exist, it becomes 'bf16'
  (torch.autocast('cpu', bfloat16)); PATCHKIT_CPU_PRECISION=32 picks fp32 instead. The apex
  backend exists on CUDA only; elsewhere it becomes native.

And one torch >= 2.0 fix Lightning 1.6 needs on every device: it recognises schedulers by
`torch.optim.lr_scheduler._LRScheduler`, which torch 2 keeps only as a legacy subclass of
`LRScheduler`; MultiStepLR (BEVDepth's configure_optimizers) is not one, so Trainer.fit stops with
"The provided lr scheduler `MultiStepLR` doesn't follow PyTorch's LRScheduler API".
"""

from __future__ import annotations

import os
import sys

import torch

from patchkit.overlay import original, replace, replace_value
from patchkit.train import dispatch

_STRATEGY_NAMES = ("ddp", "ddp_spawn", "ddp2", "dp", "ddp_sharded", "ddp_sharded_spawn", "ddp_fully_sharded",
                   "ddp_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_false", "deepspeed",
                   "horovod")
# DDP in any spelling; under torchrun Lightning's DDPStrategy runs in the processes torchrun started.
_DDP_NAMES = ("ddp", "ddp_spawn", "ddp_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_false")


def _device_kind() -> str:
    kind = os.environ.get("PATCHKIT_TRAIN_DEVICE")
    if kind:
        return kind
    if "torch_npu" in sys.modules and torch.npu.is_available():  # type: ignore[attr-defined]
        return "npu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"patchkit-lightning: {message}", flush=True)


def _count(value) -> int | None:
    """--gpus / --devices as a number of devices (an int, '4', '0,1', [0, 1]); None when not given."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return len(value)
    text = str(value).strip()
    if "," in text:
        return len([v for v in text.split(",") if v.strip()])
    try:
        return int(text)
    except ValueError:
        return None


def device_flags(flags: dict) -> dict:
    """The AcceleratorConnector keyword arguments, rewritten for this run's device and launcher."""
    kind = _device_kind()
    flags = dict(flags)
    accelerator, strategy = flags.get("accelerator"), flags.get("strategy")
    if isinstance(accelerator, str) and accelerator in _STRATEGY_NAMES:  # Lightning <1.5 spelling
        strategy, accelerator = strategy or accelerator, None
    asked = _count(flags.get("gpus")) or _count(flags.get("devices")) or _count(flags.get("num_processes"))
    torchrun = "LOCAL_WORLD_SIZE" in os.environ
    devices = int(os.environ["LOCAL_WORLD_SIZE"]) if torchrun else (asked or 1)
    if torchrun and asked not in (None, devices):
        _say(f"--gpus/--devices {asked} but torchrun started {devices} process(es) on this node: using {devices}")
    if kind == "npu":
        import torch_npu  # noqa: F401
        from torch_npu.contrib import transfer_to_npu  # noqa: F401  (CUDA-device code runs on the NPU)
    accelerator = {"cuda": "gpu", "npu": "gpu"}.get(kind, "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1")) if torchrun else devices * int(flags.get("num_nodes") or 1)
    if world > 1 and (strategy is None or strategy in _DDP_NAMES):
        from pytorch_lightning.strategies import DDPStrategy

        backend = os.environ.get("PATCHKIT_TRAIN_BACKEND") or dispatch.backend(kind)
        extra = {"find_unused_parameters": False} if strategy and "find_unused_parameters_false" in strategy else {}
        strategy = DDPStrategy(process_group_backend=backend, **extra)
    elif world == 1 and strategy in _DDP_NAMES:
        strategy = None  # one process: nothing to distribute
    precision = flags.get("precision", 32)
    if kind == "cpu" and str(precision) == "16":
        precision = "bf16" if os.environ.get("PATCHKIT_CPU_PRECISION", "bf16") == "bf16" else 32
    amp_type = flags.get("amp_type", "native")
    if kind != "cuda" and amp_type == "apex":
        amp_type = "native"
    flags.update(accelerator=accelerator, devices=devices, gpus=None, num_processes=None, strategy=strategy,
                 precision=precision, amp_type=amp_type)
    if kind != "cuda":
        flags["auto_select_gpus"] = False
    _say(f"device={kind} accelerator={accelerator} devices={devices} "
         f"strategy={type(strategy).__name__ if strategy is not None and not isinstance(strategy, str) else strategy} "
         f"backend={getattr(strategy, '_process_group_backend', None) or '-'} precision={precision} amp={amp_type}")
    return flags


@replace("pytorch_lightning.trainer.connectors.accelerator_connector:AcceleratorConnector.__init__",
         upstream="pytorch-lightning", fingerprint="5771e1590896b424-f8046d7f")
def __init__(self, *args, **kwargs):  # noqa: N807
    if args:  # the Trainer passes keywords only; anything else goes through untouched
        return original(__init__)(self, *args, **kwargs)
    return original(__init__)(self, **device_flags(kwargs))


# core/optimizer.py imports this tuple by name when it is imported, after this overlay has patched it.
replace_value("pytorch_lightning.utilities.types:LRSchedulerTypeTuple",
              (getattr(torch.optim.lr_scheduler, "LRScheduler", torch.optim.lr_scheduler._LRScheduler),
               torch.optim.lr_scheduler.ReduceLROnPlateau),
              upstream="pytorch-lightning", fingerprint="8abb0f1484f1d915-e3b0c442")
