"""BEVDepth voxel pooling on every device.

Upstream's voxel_pooling_train / voxel_pooling_inference are CUDA extensions only (their .cpp
TORCH_CHECKs is_cuda). The patch `ops: import voxel pooling without its CUDA extension` makes them
plain functions that need the extension; these overlays replace both functions (and, through the
overlay runtime's alias pass or the import hook, the names the LSS backbones import from
bevdepth.ops) with a dispatch on the device of the features:

* NPU  -> mx_driving.npu_voxel_pooling_train (DrivingSDK docs/api/README.md "npu_voxel_pooling_train":
  `mx_driving.npu_voxel_pooling_train(Tensor geom_xyz, Tensor input_features, List[int] voxel_num)
  -> Tensor`, geom_xyz int32 [B, N, 3], features float32|float16 [B, N, C]; mx_driving/ops/
  voxel_pooling_train.py returns the map permuted to [B, C, num_voxel_y, num_voxel_x], as upstream).
  Inference on NPU runs the same kernel on depth x context (mx_driving has no inference variant).
  Its documented limits (B <= 128, N <= 100000, C <= 256, voxels <= 1000 a side) are below what the
  256x704 experiments feed it (N = 6 cams x 112 bins x 16 x 44 = 473088 per sample); the DrivingSDK port
  calls it with these shapes all the same -- to be confirmed on an NPU.
* CUDA -> the upstream extension when it is built, else the PyTorch path.
* anything else -> a PyTorch scatter-add with the extension's contract: points outside
  [0, voxel_num) are dropped, the others are summed into their (batch, y, x) cell, the result is
  [B, C, num_voxel_y, num_voxel_x]; the train variant passes the gradient of each kept point's
  cell back to its feature (what the extension's backward does), dropped points get zero.
"""

from __future__ import annotations

import sys

import torch

from patchkit.overlay import original, replace
from patchkit.train import dispatch


def _sizes(voxel_num) -> tuple[int, int, int]:
    values = voxel_num.tolist() if isinstance(voxel_num, torch.Tensor) else list(voxel_num)
    return int(values[0]), int(values[1]), int(values[2])


def pool_torch(geom_xyz: torch.Tensor, features: torch.Tensor, voxel_num) -> torch.Tensor:
    """Sum features [B, ..., C] into a [B, C, Y, X] grid at the integer cells geom_xyz [B, ..., 3]."""
    nx, ny, nz = _sizes(voxel_num)
    batch, channels = geom_xyz.shape[0], features.shape[-1]
    geom = geom_xyz.reshape(batch, -1, 3).long()
    feats = features.reshape(batch, -1, channels)
    x, y, z = geom.unbind(-1)
    kept = (x >= 0) & (x < nx) & (y >= 0) & (y < ny) & (z >= 0) & (z < nz)
    batch_idx = torch.arange(batch, device=geom.device).view(batch, 1)
    # Dropped points add zero to cell 0 of their sample: no boolean indexing, so the shapes stay static.
    cell = torch.where(kept, (batch_idx * ny + y) * nx + x, batch_idx * ny * nx)
    feats = feats * kept.unsqueeze(-1).to(feats.dtype)
    out = feats.new_zeros(batch * ny * nx, channels)
    out = out.index_add(0, cell.reshape(-1), feats.reshape(-1, channels))
    return out.view(batch, ny, nx, channels).permute(0, 3, 1, 2)


def _lift(depth: torch.Tensor, context: torch.Tensor, geom_xyz: torch.Tensor) -> torch.Tensor:
    """depth [B*N, D, H, W] x context [B*N, C, H, W] -> [B, N, D, H, W, C], laid out like geom_xyz."""
    batch, cams = geom_xyz.shape[0], geom_xyz.shape[1]
    feats = depth.unsqueeze(1) * context.unsqueeze(2)  # [B*N, C, D, H, W]
    feats = feats.reshape(batch, cams, *feats.shape[1:])
    return feats.permute(0, 1, 3, 4, 5, 2)


def _ext_built(op: str) -> bool:
    # The package re-exports the function under the submodule's own name, so go through sys.modules.
    module = sys.modules.get(f"bevdepth.ops.{op}.{op}")
    return getattr(module, f"{op}_ext", None) is not None


def _npu_train(geom_xyz, features, voxel_num):
    kernel = dispatch.npu_op("npu_voxel_pooling_train")
    return kernel(geom_xyz.int().contiguous(), features.contiguous(), list(_sizes(voxel_num)))


@replace("bevdepth.ops.voxel_pooling_train.voxel_pooling_train:voxel_pooling_train", upstream="bevdepth",
         fingerprint="83853f4ae212c14e-f203a429")
def voxel_pooling_train(geom_xyz, input_features, voxel_num):
    def cuda():
        if not _ext_built("voxel_pooling_train"):
            return pool_torch(geom_xyz, input_features, voxel_num)
        return original(voxel_pooling_train)(geom_xyz, input_features, voxel_num)

    return dispatch.select(input_features,
                           npu=lambda: _npu_train(geom_xyz, input_features, voxel_num),
                           cuda=cuda,
                           other=lambda: pool_torch(geom_xyz, input_features, voxel_num))


@replace("bevdepth.ops.voxel_pooling_inference.voxel_pooling_inference:voxel_pooling_inference",
         upstream="bevdepth", fingerprint="96827bc368897a20-b40751cb")
def voxel_pooling_inference(geom_xyz, depth_features, context_features, voxel_num):
    def cuda():
        if not _ext_built("voxel_pooling_inference"):
            return pool_torch(geom_xyz, _lift(depth_features, context_features, geom_xyz), voxel_num)
        return original(voxel_pooling_inference)(geom_xyz, depth_features, context_features, voxel_num)

    return dispatch.select(
        depth_features,
        npu=lambda: _npu_train(geom_xyz, _lift(depth_features, context_features, geom_xyz), voxel_num),
        cuda=cuda,
        other=lambda: pool_torch(geom_xyz, _lift(depth_features, context_features, geom_xyz), voxel_num))
