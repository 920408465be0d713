"""tools/train.py --launcher pytorch: the process group of the device this worker runs on.

mmcv 1.x `_init_dist_pytorch` takes the backend from the config (`dist_params = dict(backend="nccl")`
in every Sparse4D config), or hccl when torch_npu imports, and sets the device with
`torch.cuda.set_device(rank % torch.cuda.device_count())`: on a CPU worker that is a
ZeroDivisionError, and `rank % count` is the global rank, not the local one. Under patchkit the
bootstrap has already set this worker's device from torchrun's LOCAL_RANK, and the launcher names
the backend for the device (PATCHKIT_TRAIN_BACKEND: hccl / nccl / gloo); so the process group is
made with that backend and nothing else is touched. Outside patchkit (no PATCHKIT_TRAIN_DEVICE)
mmcv's own function runs.
"""

import os

from patchkit.overlay import original, replace


@replace("mmcv.runner.dist_utils:_init_dist_pytorch", upstream="mmcv", fingerprint="688ae162f00bf3d5-96a66c3c")
def _init_dist_pytorch(backend, **kwargs):
    kind = os.environ.get("PATCHKIT_TRAIN_DEVICE")
    if not kind:
        return original(_init_dist_pytorch)(backend, **kwargs)
    import torch.distributed as dist
    from patchkit.train import dispatch

    backend = os.environ.get("PATCHKIT_TRAIN_BACKEND") or dispatch.backend(kind)
    dist.init_process_group(backend=backend, rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]), **kwargs)
