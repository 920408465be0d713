"""mmcv's deformable convolutions under CPU autocast.

ResNet-DCN backbones (SurroundOcc's and TPVFormer's DCNv2 in stages 3-4: ModulatedDeformConv2dPack)
and BEVDepth's depth net (DeformConv2dPack) run mmcv's deformable convolutions. Under
torch.autocast('cpu') (bf16: a smoke run with AMP, Lightning's 'bf16' on CPU) their input arrives in
bfloat16 and mmcv's CPU kernels have no such version: "modulated_deformable_im2col_cpu" /
"deformable_im2col_cpu" not implemented for 'BFloat16'. On CPU with a reduced-precision input or
autocast on, the layer runs in fp32 with autocast off (what autocast does itself for ops it has no
low-precision kernel for; the cast is differentiable, and the next layers cast back under autocast).
CUDA (half kernels), NPU (mmcv's torch_npu path; mx_driving's DCN is the mmcv-npu layer's to come)
and every plain fp32 run call mmcv's forward unchanged.
"""

from __future__ import annotations

from patchkit.overlay import original, replace


def _cpu_low_precision(x) -> bool:
    import torch

    return x.device.type == "cpu" and (x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu"))


def _in_fp32(forward, self, x):
    from patchkit.train.dispatch import full_precision

    with full_precision("cpu"):
        return forward(self, x.float())


@replace("mmcv.ops.modulated_deform_conv:ModulatedDeformConv2dPack.forward", upstream="mmcv", fingerprint="a863f57b32047785-b1d10b9a")
def modulated_forward(self, x):
    if _cpu_low_precision(x):
        return _in_fp32(original(modulated_forward), self, x)
    return original(modulated_forward)(self, x)


@replace("mmcv.ops.deform_conv:DeformConv2dPack.forward", upstream="mmcv", fingerprint="13c7af3691f7f8a3-85fa2569")
def forward(self, x):
    if _cpu_low_precision(x):
        return _in_fp32(original(forward), self, x)
    return original(forward)(self, x)
