"""OccEncoder.get_reference_points without a CUDA default device.

The static method's signature defaults to `device='cuda'`. OccEncoder.forward passes the volume
query's device, so training never uses the default, but any other caller that leaves it out (a
test, a visualisation, a deployment script) gets CUDA tensors, which fails without CUDA and mixes
devices on NPU. The default is now torch's default device (CPU unless the process changed it), and
an explicit device is passed through unchanged, so CUDA callers see no difference.
"""

from __future__ import annotations

from patchkit.overlay import original, replace


@replace("projects.mmdet3d_plugin.surroundocc.modules.encoder:OccEncoder.get_reference_points",
         upstream="surroundocc", fingerprint="0ac42f6658ceee7e-faa5aeda")
def get_reference_points(H, W, Z, bs=1, device=None, dtype=None):  # noqa: N803 - upstream's names
    import torch

    if device is None:
        device = torch.empty(0).device  # torch's default device
    if dtype is None:
        dtype = torch.float  # upstream's default
    return original(get_reference_points)(H, W, Z, bs=bs, device=device, dtype=dtype)
