"""mmdet FocalLoss off CUDA: ignore-labels (-1) mean "no class", as in mmcv's CUDA kernel.

Sparse4D's denoising adds negative noisy anchors whose class target is -1
(projects/mmdet3d_plugin/models/detection3d/target.py get_dn_anchors, add_neg_dn=True in every v3
config) and feeds them to mmdet's FocalLoss (loss_cls). On CUDA that goes to mmcv's
sigmoid_focal_loss kernel, which treats any target outside 0..C-1 as negative for every class. On
any other device (NPU, CPU: `pred.is_cuda` is False) mmdet takes its PyTorch path, whose
`F.one_hot(target, C + 1)` fails on -1 ("Class values must be non-negative"), so every training
step dies. Here such targets become C (the background column the PyTorch path drops), which gives
exactly the CUDA kernel's loss; the CUDA path is untouched.
"""

import torch

from patchkit.overlay import original, replace


@replace("mmdet.models.losses.focal_loss:FocalLoss.forward", upstream="mmdet", fingerprint="cf87053d17370633-c0422ba3")
def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
    if (self.use_sigmoid and not self.activated and not pred.is_cuda
            and target.dim() == 1 and not target.is_floating_point()):
        target = torch.where(target < 0, torch.full_like(target, pred.size(1)), target)
    return original(forward)(self, pred, target, weight=weight, avg_factor=avg_factor,
                             reduction_override=reduction_override)
