"""SurroundOcc smoke training: the real SurroundOcc detector from the real upstream config
(projects/configs/surroundocc/surroundocc.py), shrunk in memory, trained for a few steps on a synthetic
nuScenes-shaped batch: six cameras, small images, a small semantic occupancy grid.

Run by `patchkit train surroundocc --smoke` (train/surroundocc.yaml, `smoke:`) with the workspace repo
`surroundocc` as the working directory, after the bootstrap has activated overlays/surroundocc:

    python -m patchkit.train.bootstrap train/smoke/surroundocc.py projects/configs/surroundocc/surroundocc.py

Nothing on disk is edited: the config is read with mmcv's Config.fromfile and every change below is an
in-memory override with its reason. No dataset and no checkpoint: the inputs are generated in process and
the weights are the model's own initialisation (init_weights()).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from patchkit.train import smoke, synthetic

# What the detector's loss needs to know about the occupancy labels (OccHead.loss, loss_utils.py):
# class 0 is empty space (multiscale_supervision fills the grid with 0, geo_scal_loss reads class 0 as empty),
# 1..16 the nuScenes semantic classes, 255 ignored; model.pts_bbox_head.num_classes = 17.
FREE = 0


def shrink(cfg, coarsest: tuple[int, int, int], image_size: tuple[int, int], depth: int, width: int) -> None:
    """In-memory overrides of the upstream config, each for speed on a CPU with one thread per rank.
    Every module type stays the same; only sizes, depths and counts change."""
    model = cfg.model
    # (No checkpoint: smoke.mm_config dropped load_from, ckpts/r101_dcn_fcos3d_pretrain.pth.)
    # ResNet-101 -> ResNet-`depth` (50 by default): same Bottleneck blocks, DCNv2 in stages 3-4, caffe style,
    # frozen stem/BN and the same output channels (512/1024/2048) into the FPN; about half the backbone time.
    model.img_backbone.depth = depth
    # Volumes (200x200x16 occupancy; 100/50/25 x 8/4/2 encoder volumes) shrunk: the coarsest encoder volume
    # becomes `coarsest` (default 6x6x2), the two finer ones 2x and 4x that, the occupancy grid 8x it (the head
    # upsamples 2x three times), i.e. 48x48x16 instead of 200x200x16: the volume queries (and the cross attention
    # over them), the 3D deconvolutions and the four-scale loss all scale with these volumes. Z stays 2 at the coarsest level as upstream: with Z=1 the ground layer makes every
    # coarsest voxel occupied, and geo_scal_loss's specificity is then 0/0 (NaN) -- real scenes never do that.
    h, w, z = coarsest
    head = model.pts_bbox_head
    head.volume_h = [4 * h, 2 * h, h]
    head.volume_w = [4 * w, 2 * w, w]
    head.volume_z = [4 * z, 2 * z, z]
    cfg.occ_size = [8 * w, 8 * h, 8 * z]  # only the datasets read it; kept consistent
    # Channels / width: FPN 512 -> 512/width, encoder dims 128/256/512 -> /width, FFN 256/512/1024 -> /width,
    # the head's 3D conv channels -> /width (never under 16: GroupNorm(16 groups) needs multiples of 16).
    # 76M -> about 27M parameters (mostly the ResNet, kept whole): the optimizer step and the gloo all-reduce
    # of the gradients scale with the parameter count.
    def narrow(c: int) -> int:
        return max(16, c // width)

    template = head.transformer_template
    layer = template.encoder.transformerlayers
    attn = layer.attn_cfgs[0]
    model.img_neck.out_channels = narrow(model.img_neck.out_channels)
    head.img_channels = [model.img_neck.out_channels] * len(head.img_channels)
    head.embed_dims = [narrow(c) for c in head.embed_dims]
    for holder in (template, layer, attn, attn.deformable_attention):
        holder.embed_dims = list(head.embed_dims)
    layer.feedforward_channels = [narrow(c) for c in layer.feedforward_channels]
    head.conv_input = [narrow(c) for c in head.conv_input]
    head.conv_output = [narrow(c) for c in head.conv_output]
    # Encoder depth per level 1/3/6 -> 1/1/2: the layers of a level are identical OccLayers, two are enough to
    # chain one layer's output into the next.
    head.transformer_template.encoder.num_layers = [1, 1, 2]
    # Images: nuScenes' 900x1600 (padded to 928x1600 by PadMultiViewImage(size_divisor=32)) -> `image_size`
    # (default 64x128): on CPU the DCNv2 backward of stages 3-4 dominates a step and scales with the pixels.
    # The sides stay multiples of 32, as the pipeline's padding leaves them (the ResNet's stride is 32).
    if image_size[0] % 32 or image_size[1] % 32:
        raise SystemExit(f"--image-size {image_size[0]}x{image_size[1]}: both sides must be multiples of 32")


def img_metas_for(rig: synthetic.Cameras, image_size: tuple[int, int], cfg) -> list[dict]:
    """What CustomNuScenesOccDataset.get_data_info + the pipeline put into img_metas for training:
    lidar2img per camera (4x4, numpy) and the padded img_shape per camera; pc_range/occ_size for completeness."""
    h, w = image_size
    metas = []
    for b in range(rig.lidar2img.shape[0]):
        metas.append(dict(
            lidar2img=[m.numpy().astype(np.float64) for m in rig.lidar2img[b]],
            img_shape=[(h, w, 3)] * len(rig.names),
            ori_shape=[(h, w, 3)] * len(rig.names),
            pad_shape=[(h, w, 3)] * len(rig.names),
            pc_range=np.array(cfg.point_cloud_range),
            occ_size=np.array(cfg.occ_size),
        ))
    return metas


def _pair(text: str, sep: str = "x") -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split(sep))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the upstream config (projects/configs/surroundocc/surroundocc.py)")
    parser.add_argument("--image-size", default="64x128", help="HxW of each camera image, multiples of 32")
    parser.add_argument("--coarsest", default="6x6x2", help="HxWxZ of the coarsest encoder volume")
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth of the image backbone (50, 101)")
    parser.add_argument("--width", type=int, default=4, help="divide the neck/encoder/head channels by this")
    args = parser.parse_args(argv)
    image_size = _pair(args.image_size)
    coarsest = _pair(args.coarsest)

    ctx = smoke.init(seed=0)

    # The plugin registers SurroundOcc, OccHead, OccEncoder, ... with mmdet/mmcv, as tools/train.py does it.
    cfg = smoke.mm_config(args.config)
    shrink(cfg, coarsest, image_size, args.depth, args.width)
    # Per-rank batch: the recipe's smoke batch (ctx.batch), as the config trains (data.samples_per_gpu=1).
    # SurroundOcc takes one sample per card only: gt_occ holds each sample's own number of occupied voxels,
    # and OccHead.loss calls gt_occ.clone(), i.e. it needs the stacked [1, N, 4] tensor the collate makes of
    # a single sample (with two samples the collate gives a list and upstream fails the same way).
    batch = ctx.batch
    if batch != 1:
        raise SystemExit(f"smoke batch {batch}: SurroundOcc trains one sample per card "
                         f"(its config: data.samples_per_gpu={cfg.data.samples_per_gpu})")

    from mmdet3d.models import build_model

    model = smoke.mm_model(cfg, build_model)

    head = cfg.model.pts_bbox_head
    grid = (8 * head.volume_w[-1], 8 * head.volume_h[-1], 8 * head.volume_z[-1])
    classes = int(head.num_classes)

    def make_batch(step: int) -> dict:
        g = ctx.generator
        rig = synthetic.cameras(batch, image_size, generator=g)
        img = synthetic.images(batch, image_size, generator=g)
        occ = synthetic.occupancy(batch, grid, classes=classes, free=FREE, generator=g)
        # LoadOccupancy gives the (N, 4) occupied voxels (x, y, z, label) as float32 at the full occupancy
        # resolution; OccHead.loss bins them to each scale (multiscale_supervision). One sample: [1, N, 4].
        points = [p.float() for p in synthetic.occupied(occ, free=FREE)]
        gt_occ = torch.stack(points)
        return dict(img=img, img_metas=img_metas_for(rig, image_size, cfg), gt_occ=gt_occ)

    def losses(wrapped: torch.nn.Module, inputs: dict) -> dict:
        # SurroundOcc.forward(return_loss=True) -> forward_train(img_metas, gt_occ, img) -> OccHead.loss:
        # {'loss_occ_0': ..., 'loss_occ_3': ...}, one term per supervised scale.
        return wrapped(return_loss=True, **inputs)

    if ctx.rank == 0:
        print(f"surroundocc-smoke: image {image_size[0]}x{image_size[1]} x6 cams, batch {batch}/rank, "
              f"volumes {list(zip(head.volume_h, head.volume_w, head.volume_z))}, occupancy {grid}, "
              f"ResNet-{args.depth}-DCN, encoder layers {list(head.transformer_template.encoder.num_layers)}",
              flush=True)
    # The config's optimizer, built the way mmdet_train.py builds it: AdamW lr 2e-4, weight decay 0.01, the
    # backbone at lr x 0.1 (paramwise_cfg); gradients clipped at the config's max_norm 35. The config's
    # find_unused_parameters=True is needed: PerceptionTransformer.reference_points is never used upstream.
    from mmcv.runner import build_optimizer

    optimizer = build_optimizer(model, cfg.optimizer)
    smoke.run(ctx, model, batch=make_batch, losses=losses, optimizer=optimizer,
              find_unused_parameters=bool(cfg.get("find_unused_parameters", False)),
              grad_clip=float(cfg.optimizer_config.grad_clip.max_norm))


if __name__ == "__main__":
    main()
