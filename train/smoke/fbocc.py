"""Smoke training of FB-OCC (NVlabs/FB-BEV): the real FBOCC detector from its upstream occupancy config, on a
synthetic six-camera nuScenes-shaped batch, a few real optimizer steps.

Runs in the fb-bev workspace (its vendored mmdet3d on sys.path) after the patchkit bootstrap has activated the
fbocc overlays. The config is read with mmcv's Config.fromfile and shrunk in memory only (see shrink()); every
module type of the config is kept: ResNet + CustomFPN image encoder, CM_DepthNet, LSSViewTransformerFunction3D
(bev_pool_v2), BackwardProjection (BEVFormer encoder with MultiScaleDeformableAttention and the depth-aware
DA_SpatialCrossAttention), the temporal fusion (fuse_history), CustomResNet3D + FPN3D, OccHead, and the real
losses: depth BCE, focal, scene-class affinity, geometry affinity and Lovasz-softmax.

    python -m patchkit train fbocc --smoke --device cpu --cards 2
"""

from __future__ import annotations

import argparse
import math

import torch

from patchkit.train import smoke, synthetic

# Occ3D-nuScenes labels after the config's fix_void (LoadOccupancy): 0 void (never a target), 1..17 the classes,
# 18 free (empty_idx), 255 ignored (not visible from the cameras).
NUM_CLASSES, FREE, IGNORE = 19, 18, 255


def shrink(cfg) -> dict:
    """Small sizes for a CPU step of a few seconds, in memory only; returns the sizes the batch needs."""
    m = cfg.model
    image_size = (128, 352)          # input_size (256, 704) halved: the backbone dominates a CPU step
    xy_step, z_step = 4.0, 1.6       # grid_config x/y 0.8 m -> 4.0 m (100 -> 20 cells), z 0.8 -> 1.6 m (8 -> 4)
    depth_step = 2.0                 # depth bins 0.5 m -> 2.0 m (80 -> 20 bins); the range stays 2..42 m
    channels = 32                    # numC_Trans 80 -> 32 (LSS context, BEVFormer embed dims, temporal fusion)
    img_dim = 64                     # _dim_ 256 -> 64 (image neck output = depth net input)
    voxel_channels = [16, 32, 64]    # [64, 128, 256] -> a quarter (CustomResNet3D stages)
    voxel_out = 32                   # voxel_out_channel 256 -> 32 (FPN3D, OccHead inputs)
    history = 2                      # history_cat_num 16 -> 2 frames of long-term temporal fusion

    grid = {k: list(v) for k, v in m.forward_projection.grid_config.items()}
    grid['x'][2] = grid['y'][2] = xy_step
    grid['z'][2] = z_step
    grid['depth'][2] = depth_step
    nx, ny = (round((grid[a][1] - grid[a][0]) / grid[a][2]) for a in 'xy')
    nz = round((grid['z'][1] - grid['z'][0]) / grid['z'][2])
    depth_bins = round((grid['depth'][1] - grid['depth'][0]) / grid['depth'][2])

    # ResNet-50 -> ResNet-18 (same ResNet type and stages); smoke.mm_config dropped the ImageNet checkpoint.
    m.img_backbone.depth = 18
    m.img_neck.in_channels = [256, 512]  # ResNet-18's stage 3/4 widths (out_indices (2, 3) as in the config)
    m.img_neck.out_channels = img_dim

    m.depth_net.in_channels = img_dim
    m.depth_net.mid_channels = 128   # default 512: its hidden layers would be 25M of the model's 37M parameters
    m.depth_net.context_channels = channels
    m.depth_net.depth_channels = depth_bins
    m.depth_net.grid_config = grid
    m.forward_projection.grid_config = grid
    m.forward_projection.input_size = image_size

    bp = m.backward_projection
    bp.bev_h, bp.bev_w = ny, nx      # BEV queries = the LSS grid (readd adds the two)
    bp.in_channels = bp.out_channels = channels
    tr = bp.transformer
    tr.embed_dims = channels
    enc = tr.encoder
    enc.data_config = dict(enc.data_config, input_size=image_size)
    enc.grid_config = {k: list(v) for k, v in enc.grid_config.items()}
    enc.grid_config['x'][2] = enc.grid_config['y'][2] = xy_step  # its BEV reference grid = the LSS grid (z: 4 anchors as is)
    layer = enc.transformerlayers
    layer.attn_cfgs[0].embed_dims = channels
    layer.attn_cfgs[1].embed_dims = channels
    layer.attn_cfgs[1].dbound = list(grid['depth'])
    layer.attn_cfgs[1].deformable_attention.embed_dims = channels
    layer.ffn_cfgs.embed_dims = channels
    layer.ffn_cfgs.feedforward_channels = layer.feedforward_channels = channels * 4
    pe = bp.positional_encoding
    pe.num_feats = channels // 2     # _pos_dim_ = numC_Trans / 2 (row + column halves)
    pe.row_num_embed, pe.col_num_embed = ny, nx

    m.single_bev_num_channels = channels
    m.history_cat_num = history
    m.img_bev_encoder_backbone.n_input_channels = channels
    m.img_bev_encoder_backbone.block_inplanes = voxel_channels
    m.img_bev_encoder_neck.in_channels = voxel_channels
    m.img_bev_encoder_neck.out_channels = voxel_out
    head = m.occupancy_head
    head.in_channels = [voxel_out] * len(head.in_channels)
    head.final_occ_size = [2 * nx, 2 * ny, 2 * nz]  # the head predicts at twice the voxel grid (Occ3D: 200x200x16)
    return dict(image_size=image_size, occ=(2 * nx, 2 * ny, 2 * nz), pc_range=tuple(m.backward_projection.pc_range),
                depth_range=tuple(grid['depth'][:2]))


def desync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm -> per-process BatchNorm (same parameters and statistics): torch's SyncBatchNorm has no CPU
    kernel (it refuses CPU tensors when world_size > 1); CUDA and NPU keep it."""
    class AnyDimBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
        def _check_input_dim(self, input):  # noqa: A002 - torch's name
            pass

    out = module
    if isinstance(module, torch.nn.SyncBatchNorm):
        out = AnyDimBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, desync_batchnorm(child))
    return out


def rotation_z(yaw: float) -> torch.Tensor:
    m = torch.eye(4)
    m[:2, :2] = torch.tensor([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    return m


class Batches:
    """One short driving sequence per rank: step 1 starts it, later steps continue it (the temporal fusion then
    warps the history by curr_to_prev_ego_rt, as LoadOccupancy/the sequential sampler give it)."""

    def __init__(self, sizes: dict, generator: torch.Generator, batch: int = 1) -> None:
        self.sizes, self.g, self.batch = sizes, generator, batch

    def __call__(self, step: int) -> dict:
        g, b, (h, w) = self.g, self.batch, self.sizes['image_size']
        rig = synthetic.cameras(b, (h, w), generator=g)
        imgs = synthetic.images(b, (h, w), generator=g)
        rots, trans = rig.cam2ego[..., :3, :3], rig.cam2ego[..., :3, 3]
        post_rots = torch.eye(3).expand(b, 6, 3, 3).clone()   # intrinsics are already at the input size
        post_trans = torch.zeros(b, 6, 3)
        bda = torch.eye(3).expand(b, 3, 3).clone()
        img_inputs = (imgs, rots, trans, rig.intrinsics, post_rots, post_trans, bda)

        pc = self.sizes['pc_range']
        points = synthetic.points(b, 6000, pc, generator=g)
        gt_depth = synthetic.depth(rig, points, downsample=1)
        lo, hi = self.sizes['depth_range']
        gt_depth[(gt_depth < lo) | (gt_depth >= hi)] = 0.0
        occ = synthetic.occupancy(b, self.sizes['occ'], classes=NUM_CLASSES, free=FREE, generator=g)
        occ[occ == 0] = FREE                                # label 0 is the void slot fix_void adds: never a target
        hidden = torch.rand(occ.shape, generator=g) < 0.2   # not seen by any camera (ignore_nonvisible=True)
        occ[hidden] = IGNORE

        metas = []
        for i in range(b):
            yaw = float(torch.randn(1, generator=g)) * 0.02  # a little ego motion between frames
            move = rotation_z(yaw)
            move[:2, 3] = torch.randn(2, generator=g) * 0.5
            metas.append(dict(sequence_group_idx=i, start_of_sequence=step == 1, curr_to_prev_ego_rt=move))
        return dict(img_metas=metas, img_inputs=img_inputs, gt_depth=gt_depth, gt_occupancy=occ)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='the FB-OCC config (the recipe names it)')
    args = parser.parse_args()

    ctx = smoke.init(seed=0)
    from mmdet3d.models import build_model

    cfg = smoke.mm_config(args.config)  # no depth checkpoint (load_from), no ImageNet weights
    sizes = shrink(cfg)
    model = smoke.mm_model(cfg, build_model)
    if ctx.kind == 'cpu' and ctx.world_size > 1:
        model = desync_batchnorm(model)
    batches = Batches(sizes, ctx.generator, batch=ctx.batch)  # the recipe's smoke: batch

    calls = [0]

    def losses(net, batch):
        calls[0] += 1
        # SequentialControlHook (config custom_hooks) turns the long-term history on at temporal_start_iter;
        # here from step 2 on, so both phases run and step 3 fuses a history warped by curr_to_prev_ego_rt.
        model.do_history = calls[0] >= 2
        return net(return_loss=True, **batch)

    # DDP as the upstream trains (mmdet3d/apis/train.py: cfg.get('find_unused_parameters', False), which this config
    # leaves unset): every parameter gets a gradient, and with_cp's re-entrant checkpoints need the default.
    # (An overfit run primes with one call of losses, so its step 1 already fuses the history, as every later step.)
    smoke.run(ctx, model, batch=batches, losses=losses, lr=cfg.optimizer.lr,
              find_unused_parameters=cfg.get('find_unused_parameters', False), prime=losses)


if __name__ == '__main__':
    main()
