"""Smoke training of BEVDepth: the recipe's experiment, real model, real losses, synthetic batch.

Run by `patchkit train bevdepth --smoke` inside the workspace repo (cwd = BEVDepth checkout, on
sys.path), after the bootstrap activated overlays/bevdepth. Argument: the experiment script
(default: the recipe's entry, bev_depth_lss_r50_256x704_128x128_24e_2key.py).

The experiment's LightningModule is built from the experiment's own backbone_conf / head_conf
(bevdepth/exps/nuscenes/base_exp.py, copied in memory and shrunk below; no file is edited). Each
step runs the experiment's training_step -- BaseBEVDepth forward over both key frames, the head's
get_targets + CenterPoint loss, the depth loss on depth labels projected from lidar points -- on a
synthetic batch with the layout NuscDetDataset/collate_fn give it, then backward and the
experiment's own optimizer (configure_optimizers: AdamW, lr 2e-4/64 x batch x cards). The module
is driven directly under DDP (patchkit.train.smoke), not through the Lightning Trainer.
"""

from __future__ import annotations

import copy
import os
import runpy
import sys
import tempfile

import torch

from patchkit.train import smoke, synthetic

DEFAULT_EXP = "bevdepth/exps/nuscenes/mv/bev_depth_lss_r50_256x704_128x128_24e_2key.py"
IMAGE_SIZE = (64, 192)  # H, W: about 256x704 / 4, kept multiples of 32 (ResNet stride: the neck's levels line up)
BOXES = 6  # ground-truth boxes per sample
POINTS = 6000  # lidar points per sample, projected into the depth labels


def shrink(base_exp) -> tuple[dict, dict]:
    """The experiment's backbone_conf / head_conf, deep-copied and made small (each change says why)."""
    backbone = copy.deepcopy(base_exp.backbone_conf)
    head = copy.deepcopy(base_exp.head_conf)
    # Images 64x192 instead of 256x704: a CPU step in seconds; the frustum follows final_dim.
    backbone["final_dim"] = IMAGE_SIZE
    # BEV cells of 3.2 m instead of 0.8 m: a 32x32 BEV grid instead of 128x128 (same 102.4 m range).
    backbone["x_bound"] = [-51.2, 51.2, 3.2]
    backbone["y_bound"] = [-51.2, 51.2, 3.2]
    # Depth bins of 4 m instead of 0.5 m: 14 bins instead of 112 (frustum, depth net output, depth loss).
    backbone["d_bound"] = [2.0, 58.0, 4.0]
    # Depth net 64 channels wide instead of 512 (in_channels stays: it is the image neck's output).
    backbone["depth_net_conf"]["mid_channels"] = 64
    # No pretrained ResNet-50 checkpoint (torchvision://resnet50): random initial weights, no download.
    backbone["img_backbone_conf"].pop("init_cfg", None)
    backbone["img_backbone_conf"].pop("pretrained", None)
    # The head's target grid follows the BEV grid: 32x32 = grid_size 128 / out_size_factor 4 at 0.8 m.
    head["train_cfg"]["grid_size"] = [128, 128, 1]
    head["train_cfg"]["voxel_size"] = [0.8, 0.8, 8]
    head["bbox_coder"]["voxel_size"] = [0.8, 0.8, 8]
    head["test_cfg"]["voxel_size"] = [0.8, 0.8, 8]
    # At most 64 targets per task instead of 500: the smoke batch has 6 boxes.
    head["train_cfg"]["max_objs"] = 64
    return backbone, head


def lightning_module(exp_path: str, world_size: int, batch: int, work_dir: str):
    """The experiment's BEVDepthLightningModel class (its __main__ is not run), built small."""
    exp = runpy.run_path(exp_path, run_name="patchkit_smoke_exp")
    model_class = exp["BEVDepthLightningModel"]
    from bevdepth.exps.nuscenes import base_exp

    backbone_conf, head_conf = shrink(base_exp)
    module = model_class(gpus=world_size, batch_size_per_device=batch, backbone_conf=backbone_conf,
                         head_conf=head_conf, default_root_dir=work_dir, data_root=work_dir)
    return module


class TrainingStep(torch.nn.Module):
    """The experiment's training_step as a forward pass, so DDP sees it; its two logged terms are the losses."""

    def __init__(self, exp) -> None:
        super().__init__()
        self.exp = exp
        self._logged: dict[str, torch.Tensor] = {}
        # training_step calls self.log('detection_loss' / 'depth_loss'); without a Trainer keep them here.
        exp.log = self._log

    def _log(self, name, value, *args, **kwargs) -> None:
        self._logged[name] = value

    def forward(self, sweep_imgs, mats, gt_boxes, gt_labels, depth_labels):
        self._logged = {}
        batch = (sweep_imgs, mats, None, None, gt_boxes, gt_labels, depth_labels)
        total = self.exp.training_step(batch)
        terms = {k: v for k, v in self._logged.items() if "loss" in k}
        if set(terms) != {"detection_loss", "depth_loss"}:
            raise smoke.SmokeFailed(f"training_step logged {sorted(self._logged)}, "
                                    "expected detection_loss and depth_loss")
        if not torch.allclose(total.detach().float(), sum(terms.values()).detach().float(), rtol=1e-4, atol=1e-5):
            raise smoke.SmokeFailed("training_step's return is not detection_loss + depth_loss")
        return terms


def make_batch(ctx: smoke.Context, batch: int, sweeps: int):
    """One synthetic nuScenes sample per card as collate_fn lays it out (ego frame of the key frame)."""
    g = ctx.generator
    rig = synthetic.cameras(batch, IMAGE_SIZE, generator=g)
    cams = len(rig.names)
    pts = synthetic.points(batch, POINTS, generator=g)
    depth = synthetic.depth(rig, pts)  # [B, 6, H, W] metres, from lidar2img
    eye = torch.eye(4).expand(batch, sweeps, cams, 4, 4).clone()
    # Both key frames seen from the same rig (the car is standing); the images differ.
    mats = {
        "sensor2ego_mats": rig.cam2ego[:, None].expand(batch, sweeps, cams, 4, 4).clone(),
        "intrin_mats": rig.cam2img[:, None].expand(batch, sweeps, cams, 4, 4).clone(),
        "ida_mats": eye.clone(),  # the images are made at final_dim: no resize/crop/flip to undo
        "sensor2sensor_mats": eye.clone(),
        "bda_mat": torch.eye(4).expand(batch, 4, 4).clone(),
    }
    sweep_imgs = torch.stack([synthetic.images(batch, IMAGE_SIZE, generator=g) for _ in range(sweeps)], dim=1)
    boxes, labels = synthetic.boxes(batch, BOXES, classes=10, generator=g)
    for b in boxes:  # lidar frame, z at the bottom -> ego frame (lidar 1.84 m up), z at the box centre
        b[:, 2] += synthetic.LIDAR_HEIGHT + b[:, 5] / 2
    depth_labels = depth[:, None].expand(batch, sweeps, cams, *IMAGE_SIZE).clone()
    return {"sweep_imgs": sweep_imgs, "mats": mats, "gt_boxes": boxes, "gt_labels": labels,
            "depth_labels": depth_labels}


def main() -> None:
    exp_path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_EXP
    ctx = smoke.init(seed=0)
    batch = ctx.batch  # the recipe's smoke: batch
    work_dir = os.environ.get("PATCHKIT_TRAIN_LOG_DIR") or tempfile.mkdtemp(prefix="bevdepth-smoke-")
    exp = lightning_module(exp_path, ctx.world_size, batch, os.path.join(work_dir, f"exp-rank{ctx.rank}"))
    # Sweeps as the experiment's dataset gives them: the key frame plus one per key_idxes entry.
    sweeps = (1 + len(exp.sweep_idxes)) * (1 + len(exp.key_idxes))
    exp.to(ctx.device)  # through LightningModule.to, so exp.device (training_step moves the batch there) is right
    step = TrainingStep(exp)
    optimizers, _schedulers = exp.configure_optimizers()
    smoke.run(ctx, step, batch=lambda i: make_batch(ctx, batch, sweeps),
              losses=lambda model, b: model(**b), optimizer=optimizers[0], find_unused_parameters=True,
              grad_clip=5.0)  # base_cli.py: gradient_clip_val=5


if __name__ == "__main__":
    main()
