"""BEVDepth's full-precision regions on every device.

Upstream forces fp32 in a few places with `torch.cuda.amp.autocast(False)`: the depth loss
(base_exp.get_depth_loss, `with autocast(enabled=False)`: "the depth loss will collapse" in fp16),
the detection head (BEVDepthHead.forward, decorator), the depth aggregation net
(DepthAggregation.forward, decorator) and MatrixVT's projection. That only switches off CUDA
autocast; under NPU autocast (torch_npu, device type 'npu') or CPU autocast (bf16) these regions
would run in low precision. Here each region switches autocast off for every device type that has
it on (patchkit.train.dispatch.full_precision), so they are fp32 under CUDA, NPU and CPU autocast alike,
and cost nothing without autocast.

Each method that holds such a region is replaced by the upstream method called inside a region
that switches autocast off on every device (the upstream CUDA-only decorator or `with` still runs
inside it and is harmless). MatrixVT._forward_single_sweep's `with autocast(enabled=False)` needs no
overlay: inside it the features are cast with .float() and the projection is
MatrixVT.reduce_and_project, which is covered below.
"""

from __future__ import annotations

import functools

from patchkit.overlay import original, replace
from patchkit.train.dispatch import full_precision

def _fp32_method(replacement):
    @functools.wraps(replacement)
    def method(self, *args, **kwargs):
        with full_precision():
            return original(method)(self, *args, **kwargs)

    return method


# The depth loss: upstream's `with autocast(enabled=False):` around the BCE ("the depth loss will
# collapse" in fp16); the whole method runs in full precision here (the rest of it only reshapes the
# labels). Its depth_preds are fp32 under CUDA autocast only because CUDA autocast runs softmax in fp32
# (base_lss_fpn: "final_depth has to be fp32"); CPU (bf16) and NPU autocast may hand them over in low
# precision, which the BCE refuses next to fp32 labels -- so both go in as fp32, as on CUDA.
@replace("bevdepth.exps.nuscenes.base_exp:BEVDepthLightningModel.get_depth_loss", upstream="bevdepth",
         fingerprint="4e79087484ec4c9f-6701adcd")
def get_depth_loss(self, depth_labels, depth_preds):
    with full_precision():
        return original(get_depth_loss)(self, depth_labels.float(), depth_preds.float())


# Decorated methods (the decorator was applied when the class was made, before any overlay).
@replace("bevdepth.layers.heads.bev_depth_head:BEVDepthHead.forward", upstream="bevdepth",
         fingerprint="3a34a912172fbc0c-209c101a")
@_fp32_method
def head_forward(self, x):
    ...


@replace("bevdepth.layers.backbones.base_lss_fpn:DepthAggregation.forward", upstream="bevdepth",
         fingerprint="9129f2e2760c3cc6-209c101a")
@_fp32_method
def depth_aggregation_forward(self, x):
    ...


@replace("bevdepth.layers.backbones.matrixvt:HoriConv.forward", upstream="bevdepth",
         fingerprint="cdfc058de65692fa-191a50b7")
@_fp32_method
def hori_conv_forward(self, x, pe=None):
    ...


@replace("bevdepth.layers.backbones.matrixvt:DepthReducer.forward", upstream="bevdepth",
         fingerprint="61666852a1063f08-6375abd9")
@_fp32_method
def depth_reducer_forward(self, feat, depth):
    ...


@replace("bevdepth.layers.backbones.matrixvt:MatrixVT.reduce_and_project", upstream="bevdepth",
         fingerprint="98c71878154247fc-c7503dfc")
@_fp32_method
def reduce_and_project(self, feature, depth, mats_dict):
    ...
