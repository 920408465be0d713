"""TPVFormer's validation counters on the device of the process group.

MeanIoU.reset allocates its per-class counters with .cuda(), and _after_epoch all-reduces them, so
validation fails on NPU and CPU. The counters go where the process group can reduce them: the
current NPU for hccl, the current CUDA device for nccl, the CPU for gloo (and without a group).
The rest of MeanIoU is untouched, the `total_seen == 0 -> IoU 1` guard included.
"""

from patchkit.overlay import replace


def _counter_device():
    import torch
    import torch.distributed as dist

    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else "gloo"
    if backend == "hccl":
        return torch.device("npu", torch.npu.current_device())
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@replace("utils.metric_util:MeanIoU.reset", upstream="tpvformer", fingerprint="3e970d92c7ea44e3-7a48fe07")
def reset(self) -> None:
    import torch

    device = _counter_device()
    self.total_seen = torch.zeros(self.num_classes, device=device)
    self.total_correct = torch.zeros(self.num_classes, device=device)
    self.total_positive = torch.zeros(self.num_classes, device=device)
