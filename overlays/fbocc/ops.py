"""FB-OCC's CUDA-only ops, dispatched on the device of the tensors they get.

* bev_pool_v2 (FB-BEV's vendored mmdet3d/ops/bev_pool_v2, the Lift-Splat pooling of the forward
  projection): mx_driving.bev_pool_v3 on NPU, the upstream CUDA extension on CUDA where it is built,
  a PyTorch scatter-add everywhere else (and on CUDA without the extension).
* ms_deform_attn (the deformable attention of DA_MSDeformableAttention, put into one function by the
  fb-bev layer): mx_driving.multi_scale_deformable_attn on NPU; CUDA and CPU keep the upstream
  function (the CUDA kernel, mmcv's PyTorch version elsewhere).

mx_driving signatures (DrivingSDK docs/api/context/bev_pool_v3.md and multi_scale_deformable_attn.md):
  bev_pool_v3(depth [B,N,D,H,W] f32, feat [B,N,H,W,C] f32, ranks_depth, ranks_feat, ranks_bev (int32),
              bev_feat_shape [B,D,H,W,C]) -> [B,C,D,H,W]; C a multiple of 8.
  multi_scale_deformable_attn(value [bs,keys,heads,dims], spatial_shapes, level_start_index,
              sampling_locations [bs,q,heads,levels,points,2], attention_weights [bs,q,heads,levels,points])
              -> [bs,q,heads*dims]; dims a multiple of 8, heads <= 8, levels*points <= 64.
"""

from __future__ import annotations

import sys
import warnings
from math import prod

from patchkit.overlay import original, replace
from patchkit.train import dispatch


def bev_pool_torch(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape):
    """out[ranks_bev] += depth[ranks_depth] * feat[ranks_feat], as (B, C, Z, Y, X): what the CUDA
    kernel computes, with autograd's gradients for depth and feat."""
    channels = feat.shape[-1]
    src = depth.float().reshape(-1)[ranks_depth.long()].unsqueeze(-1) \
        * feat.float().reshape(-1, channels)[ranks_feat.long()]
    out = src.new_zeros(prod(int(s) for s in bev_feat_shape[:-1]), channels)
    out = out.index_add(0, ranks_bev.long(), src)
    return out.view(*(int(s) for s in bev_feat_shape)).permute(0, 4, 1, 2, 3).contiguous()


@replace("mmdet3d.ops.bev_pool_v2.bev_pool:bev_pool_v2", upstream="fb-bev", fingerprint="3b7513e18501f24b-d571da9e")
def bev_pool_v2(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape, interval_starts,
                interval_lengths):
    kind = dispatch.kind(feat)
    if kind == "npu":
        bev_pool_v3 = dispatch.npu_op("bev_pool_v3")
        return bev_pool_v3(depth.float().contiguous(), feat.float().contiguous(), ranks_depth.int(),
                           ranks_feat.int(), ranks_bev.int(), [int(s) for s in bev_feat_shape])
    upstream = original(bev_pool_v2)
    if kind == "cuda" and getattr(sys.modules[upstream.__module__], "bev_pool_v2_ext", None) is not None:
        return upstream(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape, interval_starts,
                        interval_lengths)
    return bev_pool_torch(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape)


_warned: set[tuple[int, int, int]] = set()


@replace("mmdet3d.models.fbbev.view_transformation.backward_projection.bevformer_utils."
         "spatial_cross_attention_depth:ms_deform_attn", upstream="fb-bev", fingerprint="eaef095466f40481-fd0d235c")
def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   im2col_step):
    if dispatch.kind(value) == "npu":
        heads, dims = value.shape[2], value.shape[3]
        levels_points = sampling_locations.shape[3] * sampling_locations.shape[4]
        if dims % 8 == 0 and heads <= 8 and dims <= 256 and levels_points <= 64:
            msda = dispatch.npu_op("multi_scale_deformable_attn")
            return msda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        if (heads, dims, levels_points) not in _warned:  # outside the kernel's documented limits
            _warned.add((heads, dims, levels_points))
            warnings.warn(f"mx_driving.multi_scale_deformable_attn does not take heads={heads} dims={dims} "
                          f"levels*points={levels_points}; using the PyTorch version on NPU", stacklevel=2)
    return original(ms_deform_attn)(value, spatial_shapes, level_start_index, sampling_locations,
                                    attention_weights, im2col_step)

