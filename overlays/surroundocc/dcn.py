"""DCNv2 of the ResNet-DCN backbone under CPU autocast.

SurroundOcc's image backbone is mmdet's ResNet with `dcn=dict(type='DCNv2')` in stages 3-4, i.e.
mmcv's ModulatedDeformConv2dPack. Under autocast its input and the offsets from `conv_offset` are
low precision. CUDA's kernel takes fp16, and NPU's is mx_driving's (ModulatedDeformConv2d via
mx_driving is the shared mmcv-npu layer's job), but mmcv's CPU kernel has no bfloat16
("modulated_deformable_im2col_cpu" not implemented for 'BFloat16'), so a CPU run with autocast
(torch.autocast('cpu'), bf16) stops at the first DCN layer.

On CPU with autocast on, the layer now runs in fp32 (autocast off inside it, the input cast to
float; the cast is differentiable, so the gradient goes back in the input's dtype). Every other case
(no autocast, CUDA, NPU) calls mmcv's forward unchanged.
"""

from __future__ import annotations

from patchkit.overlay import original, replace


@replace("mmcv.ops.modulated_deform_conv:ModulatedDeformConv2dPack.forward", upstream="mmcv", fingerprint="a863f57b32047785-b1d10b9a")
def forward(self, x):
    import torch

    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast(device_type="cpu", enabled=False):
            return original(forward)(self, x.float())
    return original(forward)(self, x)
