"""Sparse4D's deformable feature aggregation on NPU: mx_driving's kernel.

The model layer (patches/sparse4d/sparse4d 0001, 0002) makes the choice per device at run time:
`ops.deformable_aggregation_supported(x)` says whether a kernel runs on x's device (upstream: CUDA
with the built `deformable_aggregation_ext`), and where none does the model takes its own PyTorch
path (feature_sampling + multi_view_level_fusion). This overlay adds the NPU: there the kernel is
`mx_driving.deformable_aggregation(feature_maps, spatial_shape, scale_start_index,
sample_locations, weight)` (DrivingSDK docs/zh/api/context/deformable_aggregation.md; same
arguments and layout as the CUDA extension: float32 [bs, num_feat, c], int32 [cam, scale, 2],
int32 [cam, scale], float32 [bs, anchor, pts, cam, 2], float32 [bs, anchor, pts, cam, scale,
group] -> [bs, anchor, c]). A missing kernel on NPU is an error (KernelMissing), never a silent
fallback to the slow path.
"""

from patchkit.overlay import original, replace
from patchkit.train import dispatch

KERNEL = "deformable_aggregation"


@replace("projects.mmdet3d_plugin.ops:deformable_aggregation_supported", upstream="sparse4d", fingerprint="b2ddf9e1177a9676-9d8e836d")
def deformable_aggregation_supported(x):
    if dispatch.on_npu(x):
        dispatch.npu_op(KERNEL)  # raises KernelMissing with the reason
        return True
    return original(deformable_aggregation_supported)(x)


@replace("projects.mmdet3d_plugin.ops:deformable_aggregation_function", upstream="sparse4d", fingerprint="23aa48123bbb6fb4-120412aa")
def deformable_aggregation_function(feature_maps, spatial_shape, scale_start_index, sampling_location, weights):
    if dispatch.on_npu(feature_maps):
        # the dtypes the kernel takes, as DeformableAggregationFunction.forward casts for CUDA
        return dispatch.npu_op(KERNEL)(
            feature_maps.contiguous().float(),
            spatial_shape.contiguous().int(),
            scale_start_index.contiguous().int(),
            sampling_location.contiguous().float(),
            weights.contiguous().float(),
        )
    return original(deformable_aggregation_function)(
        feature_maps, spatial_shape, scale_start_index, sampling_location, weights)
