"""FB-OCC's CUDA-only ops, dispatched on the device of the tensors they get.

* bev_pool_v2 (FB-BEV's vendored mmdet3d/ops/bev_pool_v2, the Lift-Splat pooling of the forward
  projection): mx_driving.bev_pool_v3 on NPU, the upstream CUDA extension on CUDA where it is built,
  a PyTorch scatter-add everywhere else (and on CUDA without the extension).
* ms_deform_attn (the deformable attention of DA_MSDeformableAttention, put into one function by the
  fb-bev layer) calls mmcv's multi_scale_deformable_attn_pytorch off CUDA, which the shared set
  overlays/mmcv-npu (msda.py) routes to mx_driving.multi_scale_deformable_attn on NPU.

mx_driving signature (DrivingSDK docs/api/context/bev_pool_v3.md):
  bev_pool_v3(depth [B,N,D,H,W] f32, feat [B,N,H,W,C] f32, ranks_depth, ranks_feat, ranks_bev (int32),
              bev_feat_shape [B,D,H,W,C]) -> [B,C,D,H,W]; C a multiple of 8.
"""

from __future__ import annotations

import sys
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
