"""Smoke training of TPVFormer (`patchkit train tpvformer --smoke`): a few real steps of the real model.

Runs in the workspace repo (wzzheng/TPVFormer) as the working directory, after the bootstrap has
activated overlays/tpvformer. It builds TPVFormer from the upstream config named by the recipe with the
repo's own builder (ResNet + DCNv2 backbone, FPN, TPVFormerHead with its TPVFormerEncoder of
TPVFormerLayers: TPVCrossViewHybridAttention + TPVImageCrossAttention/TPVMSDeformableAttention3D, and
the TPVAggregator), shrunk only through in-memory config overrides. The losses are train.py's: the
repo's loss builder (CrossEntropyLoss(ignore_index=ignore_label) + lovasz_softmax) on the inputs the
config's `lovasz_input` / `ce_input` name; so are the optimizer (mmcv build_optimizer with the config's
`optimizer`), the gradient clip (`grad_max_norm`) and the DDP setting.

The batch is what train.py's DataLoader yields, made without a dataset: a synthetic nuScenes sample in
the form ImagePoint_NuScenes returns it (six raw camera images, img_metas with lidar2img, lidar points
with their labels, the points lying in the voxels of a synthetic occupancy scene) goes through the
repo's own DatasetWrapper_NuScenes (photometric distortion, normalisation, padding to 32, grid indices,
numba voxel labels) and custom_collate_fn. No dataset, no pretrained weights, no file edited.

    usage: tpvformer.py [CONFIG]      (default config/tpv04_occupancy.py, the recipe's config)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from patchkit.train import smoke, synthetic

# Small but nuScenes-shaped: six 96x160 cameras (divisible by 32, as PadMultiViewImage makes them;
# the four FPN levels are then 12x20, 6x10, 3x5 and 2x3), and a 25x25x4 TPV grid.
IMAGE_SIZE = (96, 160)
TPV_HWZ = (25, 25, 4)
# Points sampled per TPV query (see load_config): hw / zh / wz pillars and deformable sampling points.
PILLAR_POINTS = [4, 8, 8]
SAMPLING_POINTS = [8, 16, 16]


def _set_everywhere(node, values):
    """Set every key of VALUES wherever it occurs in the nested config NODE (dicts and lists)."""
    if isinstance(node, dict):
        for key in list(node.keys()):
            if key in values:
                node[key] = values[key]
            else:
                _set_everywhere(node[key], values)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _set_everywhere(item, values)


def load_config(path):
    cfg = smoke.mm_config(path)  # no load_from (the FCOS3D checkpoint), no pretrained weights
    tpv_h, tpv_w, tpv_z = TPV_HWZ
    model = cfg.model
    # TPV planes 100x100x8 -> 25x25x4 (16x fewer TPV queries; every plane, head, encoder, attention
    # and the aggregator read these same keys, and the learned positional encoding is tpv_h x tpv_w).
    _set_everywhere(model, {"tpv_h": tpv_h, "tpv_w": tpv_w, "tpv_z": tpv_z,
                            "row_num_embed": tpv_h, "col_num_embed": tpv_w})
    # The voxel grid the labels are made on and the aggregator predicts: tpv_* times the config's scale_*.
    agg = model.tpv_aggregator
    cfg.grid_size = [tpv_h * agg.scale_h, tpv_w * agg.scale_w, tpv_z * agg.scale_z]
    # Pillar reference points [4, 32, 32] -> [4, 8, 8] and sampling points [8, 64, 64] -> [8, 16, 16]:
    # a quarter of the image cross-attention samples of the zh / wz planes (the encoder's and the
    # attention's constraints still hold: 8 % 4 == 0, points per anchor 8 on every plane).
    encoder = model.tpv_head.encoder
    encoder.num_points_in_pillar = PILLAR_POINTS
    for attn in encoder.transformerlayers.attn_cfgs:
        if "deformable_attention" in attn:
            attn.deformable_attention.num_z_anchors = PILLAR_POINTS
            attn.deformable_attention.num_points = SAMPLING_POINTS
    # ResNet-101 -> ResNet-50 (same ResNet, caffe style, DCNv2 in stages 3-4, frozen stem): half the
    # backbone time of six images on a CPU.
    model.img_backbone.depth = 50
    return cfg


def build_model(cfg):
    if cfg.get("occupancy", False):  # as train.py chooses its builder
        from builder import tpv_occupancy_builder as model_builder
    else:
        from builder import tpv_lidarseg_builder as model_builder
    return model_builder.build(cfg.model)


class SyntheticScenes(torch.utils.data.Dataset):
    """Samples in the form ImagePoint_NuScenes.__getitem__ returns: (imgs, img_metas, xyz, labels).

    imgs: six HxWx3 float32 images in 0..255 (BGR, as mmcv.imread gives them); img_metas:
    {'lidar2img': six 4x4 arrays}; xyz: [N, 3] lidar points; labels: [N, 1] uint8 learning labels.
    The points lie in the occupied voxels of a synthetic scene (ground layer + objects), so the voxel
    labels the wrapper derives from them are the scene."""

    def __init__(self, cfg, generator, length):
        self.generator, self.length = generator, length
        params = cfg.dataset_params
        self.lo = np.asarray(params["min_volume_space"], dtype=np.float64)
        hi = np.asarray(params["max_volume_space"], dtype=np.float64)
        self.grid = np.asarray(cfg.grid_size)
        self.interval = (hi - self.lo) / (self.grid - 1)  # DatasetWrapper_NuScenes' intervals
        self.fill_label = params["fill_label"]
        self.classes = cfg.model.tpv_aggregator.nbr_classes

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        g = self.generator
        rig = synthetic.cameras(1, IMAGE_SIZE, generator=g)
        raw = (synthetic.images(1, IMAGE_SIZE, generator=g)[0] * 40.0 + 115.0).clamp(0, 255)
        imgs = [img.permute(1, 2, 0).contiguous().numpy().astype(np.float32) for img in raw]
        img_metas = {"lidar2img": [m.numpy().astype(np.float64) for m in rig.lidar2img[0]]}
        occ = synthetic.occupancy(1, tuple(int(v) for v in self.grid), classes=self.classes,
                                  free=self.fill_label, generator=g)
        rows = synthetic.occupied(occ, free=self.fill_label)[0].repeat(2, 1)  # two points per occupied voxel
        offset = 0.25 + 0.5 * torch.rand(len(rows), 3, generator=g, dtype=torch.float64)
        xyz = self.lo + (rows[:, :3].double() + offset).numpy() * self.interval
        labels = rows[:, 3:4].numpy().astype(np.uint8)
        return imgs, img_metas, xyz.astype(np.float32), labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="config/tpv04_occupancy.py")
    args = parser.parse_args()

    ctx = smoke.init(seed=0)
    np.random.seed(ctx.rank)  # GridMask and the photometric distortion draw from numpy

    cfg = load_config(args.config)
    model = build_model(cfg)

    from builder import loss_builder
    from dataloader.dataset_wrapper import DatasetWrapper_NuScenes, custom_collate_fn

    params = cfg.dataset_params
    ignore_label = params["ignore_label"]
    loss_func, lovasz_softmax = loss_builder.build(ignore_label=ignore_label)
    scenes = DatasetWrapper_NuScenes(
        SyntheticScenes(cfg, ctx.generator, length=ctx.steps + 1), grid_size=cfg.grid_size,
        fixed_volume_space=params["fixed_volume_space"], max_volume_space=params["max_volume_space"],
        min_volume_space=params["min_volume_space"], fill_label=params["fill_label"], phase="train",
        scale_rate=cfg.get("scale_rate", 1))
    batch_size = ctx.batch  # the recipe's smoke batch (what the launcher reports); the config's is 1 too

    def batch(step):
        imgs, img_metas, vox_label, grid, pt_labs = custom_collate_fn(
            [scenes[(step - 1) * batch_size + i] for i in range(batch_size)])
        return {"img": imgs, "img_metas": img_metas, "points": grid.to(torch.float32),
                "voxel_label": vox_label.long(), "point_label": pt_labs}

    def losses(net, b):  # train.py's training step, loss for loss
        outputs_vox, outputs_pts = net(img=b["img"], img_metas=b["img_metas"], points=b["points"])
        outputs_vox, outputs_pts = outputs_vox.float(), outputs_pts.float()
        if cfg.lovasz_input == "voxel":
            lovasz_input, lovasz_label = outputs_vox, b["voxel_label"]
        else:
            lovasz_input, lovasz_label = outputs_pts, b["point_label"]
        if cfg.ce_input == "voxel":
            ce_input, ce_label = outputs_vox, b["voxel_label"]
        else:
            ce_input, ce_label = outputs_pts.squeeze(-1).squeeze(-1), b["point_label"].squeeze(-1)
        return {"loss_lovasz": lovasz_softmax(F.softmax(lovasz_input, dim=1), lovasz_label, ignore=ignore_label),
                "loss_ce": loss_func(ce_input, ce_label)}

    # train.py's optimizer (AdamW, lr 2e-4, weight decay 0.01, backbone lr x0.1), its grad_max_norm clip and its
    # DDP setting (find_unused_parameters from the config, default False).
    from mmcv.runner import build_optimizer

    smoke.run(ctx, model, batch=batch, losses=losses, optimizer=build_optimizer(model, cfg.optimizer),
              find_unused_parameters=cfg.get("find_unused_parameters", False), grad_clip=cfg.grad_max_norm)


if __name__ == "__main__":
    main()
