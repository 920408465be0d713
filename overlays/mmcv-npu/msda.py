"""Multi-scale deformable attention by device, for every model on mmcv 1.x.

mmcv's MultiScaleDeformableAttention, and the model code that copied its dispatch (TPVFormer's
TPVMSDeformableAttention3D and TPVCrossViewHybridAttention, FB-OCC's depth-aware ms_deform_attn), call the
CUDA Function only for CUDA tensors; every other tensor goes to mmcv's `multi_scale_deformable_attn_pytorch`
(grid_sample), which those modules import by name. Replacing it in mmcv before they import it (the overlay
hook patches mmcv.ops.multi_scale_deform_attn as it is imported, so their `from ... import` gets the
replacement) routes NPU tensors to mx_driving's kernel and leaves CPU on mmcv's PyTorch path, in one place:

* NPU: `mx_driving.multi_scale_deformable_attn(value, value_spatial_shapes, value_level_start_index,
  sampling_locations, attention_weights)` (DrivingSDK docs/api/context/multi_scale_deformable_attn.md:
  value [bs, keys, heads, dims], output [bs, queries, heads*dims], float32/float16; documented limits
  dims a multiple of 8 and at most 256, heads <= 8, num_levels * num_points <= 64 -- TPVFormer uses 8 heads
  of 32 dims with 4 levels x 8 points; FB-OCC's main attention, 8 heads of 10 dims, is outside them and runs
  mmcv's PyTorch version on NPU, with one warning per shape).
* CUDA: never reaches here while the callers' CUDA branch is taken (mmcv's CUDA ext, unchanged).
* CPU (and anything else): mmcv's multi_scale_deformable_attn_pytorch, as upstream.

Like the upstream CUDA branch (MultiScaleDeformableAttnFunction_fp32) the op runs in fp32 with autocast off,
so AMP leaves it in full precision. SurroundOcc's own attention module routes NPU tensors to mx_driving in
its patch (patches/surroundocc 0004, which imports mx_driving directly so the patched repository runs
without patchkit); off NPU it reaches this function too.
"""

import warnings

from patchkit.overlay import original, replace

_warned: set[tuple[int, int, int]] = set()


def within_kernel_limits(value, sampling_locations) -> bool:
    """Whether mx_driving's kernel takes these shapes (its documented limits); warns once per shape when not."""
    heads, dims = value.shape[2], value.shape[3]
    levels_points = sampling_locations.shape[3] * sampling_locations.shape[4]
    if dims % 8 == 0 and dims <= 256 and heads <= 8 and levels_points <= 64:
        return True
    if (heads, dims, levels_points) not in _warned:
        _warned.add((heads, dims, levels_points))
        warnings.warn(f"mx_driving.multi_scale_deformable_attn does not take heads={heads} dims={dims} "
                      f"levels*points={levels_points}; using mmcv's PyTorch version on NPU", stacklevel=3)
    return False


@replace("mmcv.ops.multi_scale_deform_attn:multi_scale_deformable_attn_pytorch", upstream="mmcv", fingerprint="d397e2b7f5e6b062-adfd1548")
def multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    import torch

    from patchkit.train import dispatch

    with dispatch.full_precision(value):
        value, sampling_locations, attention_weights = (
            value.float(), sampling_locations.float(), attention_weights.float())
        if dispatch.on_npu(value) and within_kernel_limits(value, sampling_locations):
            kernel = dispatch.npu_op("multi_scale_deformable_attn")
            level_start_index = torch.cat((value_spatial_shapes.new_zeros((1,)),
                                           value_spatial_shapes.prod(1).cumsum(0)[:-1]))
            return kernel(value, value_spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return original(multi_scale_deformable_attn_pytorch)(value, value_spatial_shapes, sampling_locations,
                                                             attention_weights)
