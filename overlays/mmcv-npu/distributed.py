"""mmcv 1.x `init_dist('pytorch')`: a process group for the device the worker really runs on.

The mmcv-based entries (SurroundOcc's and Sparse4D's `tools/train.py --launcher pytorch`, FB-BEV's)
call mmcv's `init_dist('pytorch', **cfg.dist_params)`, and their configs say
`dist_params = dict(backend='nccl')`. mmcv 1.x's `_init_dist_pytorch` then uses hccl when torch_npu
imports, otherwise that nccl, and first calls `torch.cuda.set_device(rank % torch.cuda.device_count())`:
on a CPU worker a ZeroDivisionError before any process group exists, and on every device it picks the
card from the global rank, not the local one.

Under patchkit the launcher names the backend for the device in PATCHKIT_TRAIN_BACKEND (hccl on NPU,
nccl on CUDA, gloo on CPU) and the bootstrap has already set this worker's device from torchrun's
LOCAL_RANK, so the group is made with that backend and the device is left alone. Without
PATCHKIT_TRAIN_DEVICE (the model run outside patchkit) mmcv's own function runs unchanged.
"""

from __future__ import annotations

import os

from patchkit.overlay import original, replace


@replace("mmcv.runner.dist_utils:_init_dist_pytorch", upstream="mmcv", fingerprint="688ae162f00bf3d5-96a66c3c")
def _init_dist_pytorch(backend, **kwargs):
    device_kind = os.environ.get("PATCHKIT_TRAIN_DEVICE")
    if not device_kind:
        return original(_init_dist_pytorch)(backend, **kwargs)
    import torch.distributed as dist

    from patchkit.train import dispatch

    chosen = os.environ.get("PATCHKIT_TRAIN_BACKEND") or dispatch.backend(device_kind)
    dist.init_process_group(backend=chosen, rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]), **kwargs)
