"""TPVFormer's multi-scale deformable attention by device.

TPVMSDeformableAttention3D (inside TPVImageCrossAttention) and TPVCrossViewHybridAttention call the
upstream's fp32 CUDA Function only for CUDA tensors (`torch.cuda.is_available() and value.is_cuda`);
every other tensor goes to mmcv's `multi_scale_deformable_attn_pytorch` (grid_sample), which the
attention modules of tpvformer04 and tpvformer10 import by name. Replacing it in mmcv before those
modules import it (the overlay hook patches mmcv.ops.multi_scale_deform_attn as it is imported, so
their `from ... import` gets the replacement) routes NPU tensors to mx_driving's kernel and leaves CPU
on mmcv's PyTorch path, without copying the two long forward methods:

* NPU: `mx_driving.multi_scale_deformable_attn(value, value_spatial_shapes, value_level_start_index,
  sampling_locations, attention_weights)` (DrivingSDK docs/api/context/multi_scale_deformable_attn.md:
  value [bs, keys, heads, dims], output [bs, queries, heads*dims], float32/float16; documented limits
  num_points * num_levels <= 64, heads <= 8, dims <= 256 -- TPVFormer uses 8 x 4, 8, 32).
* CUDA: never reaches here while the upstream's CUDA branch is taken (mmcv's CUDA ext, unchanged).
* CPU (and anything else): mmcv's multi_scale_deformable_attn_pytorch, as upstream.

Like the upstream's CUDA branch (MultiScaleDeformableAttnFunction_fp32) the op runs in fp32 with
autocast off, so `--amp` leaves it in full precision.
"""

from patchkit.overlay import original, replace


@replace("mmcv.ops.multi_scale_deform_attn:multi_scale_deformable_attn_pytorch", upstream="mmcv", fingerprint="d397e2b7f5e6b062-adfd1548")
def multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    import torch

    from patchkit.train import dispatch

    with torch.autocast(device_type=dispatch.kind(value), enabled=False):
        value, sampling_locations, attention_weights = (
            value.float(), sampling_locations.float(), attention_weights.float())
        if dispatch.on_npu(value):
            kernel = dispatch.npu_op("multi_scale_deformable_attn")
            level_start_index = torch.cat((value_spatial_shapes.new_zeros((1,)),
                                           value_spatial_shapes.prod(1).cumsum(0)[:-1]))
            return kernel(value, value_spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return original(multi_scale_deformable_attn_pytorch)(value, value_spatial_shapes, sampling_locations,
                                                             attention_weights)
