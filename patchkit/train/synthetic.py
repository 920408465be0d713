"""Synthetic nuScenes-shaped inputs for smoke training, generated in process (no dataset, no download).

The camera rig is nuScenes': six cameras in the order the nuScenes loaders use (FRONT, FRONT_RIGHT,
FRONT_LEFT, BACK, BACK_LEFT, BACK_RIGHT), at their mounting yaws and roughly their positions on the
car, with the 1600x900 intrinsics scaled to the image size asked for. The lidar sits on the roof
(1.84 m up); its axes are the ego car's (nuScenes' lidar is turned 90 degrees about z, which changes
no shape). Conventions are the ones the model repos use: camera frame x right, y down, z forward;
boxes as (x, y, z, w, l, h, yaw, vx, vy) with z at the box bottom (mmdet3d's LiDAR boxes); 4x4
homogeneous matrices; the lidar frame's ground at about z = -1.84.

Every function takes a torch.Generator, so each rank can draw its own reproducible data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
# Mounting yaw (degrees, counter-clockwise from the car's forward axis) and position in the ego frame (m).
_YAW = (0.0, -55.0, 55.0, 180.0, 110.0, -110.0)
_POS = ((1.70, 0.00, 1.51), (1.55, -0.49, 1.50), (1.52, 0.49, 1.51),
        (0.03, 0.00, 1.57), (1.04, 0.48, 1.56), (1.05, -0.48, 1.56))
LIDAR_HEIGHT = 1.84
NUSCENES_IMAGE = (900, 1600)  # H, W of the real camera images
_FOCAL, _CX, _CY = 1266.4, 816.3, 491.5
POINT_CLOUD_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


@dataclass
class Cameras:
    """One rig per sample: every tensor has a leading batch dimension and, where per camera, a 6."""

    names: tuple[str, ...]
    image_size: tuple[int, int]  # H, W
    intrinsics: torch.Tensor  # [B, 6, 3, 3]
    cam2ego: torch.Tensor  # [B, 6, 4, 4]
    lidar2ego: torch.Tensor  # [B, 4, 4]
    lidar2cam: torch.Tensor  # [B, 6, 4, 4]
    lidar2img: torch.Tensor  # [B, 6, 4, 4]  (intrinsics padded to 4x4, times lidar2cam)
    ego2global: torch.Tensor  # [B, 4, 4]

    @property
    def cam2img(self) -> torch.Tensor:
        """The intrinsics padded to 4x4, [B, 6, 4, 4]."""
        return _pad4(self.intrinsics)


def _pad4(k: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(*k.shape[:-2], 4, 4, dtype=k.dtype)
    out[..., :3, :3] = k
    out[..., 3, 3] = 1.0
    return out


def _rotation_z(yaw: float) -> torch.Tensor:
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _camera_to_ego(yaw_deg: float, position: tuple[float, float, float]) -> torch.Tensor:
    """Camera axes (x right, y down, z forward) in the ego frame for a camera looking along `yaw`."""
    yaw = math.radians(yaw_deg)
    c, s = math.cos(yaw), math.sin(yaw)
    m = torch.eye(4)
    # columns: camera x (right of the view direction), camera y (down), camera z (view direction)
    m[:3, :3] = torch.tensor([[s, 0.0, c], [-c, 0.0, s], [0.0, -1.0, 0.0]])
    m[:3, 3] = torch.tensor(position)
    return m


def _check_size(image_size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be two positive numbers (H, W), not {image_size!r}")
    return h, w


def cameras(batch: int, image_size: tuple[int, int], generator: torch.Generator | None = None,
            jitter: float = 0.02) -> Cameras:
    """The six-camera rig for `batch` samples; `jitter` perturbs each sample's mounting a little (radians / m)."""
    h, w = _check_size(image_size)
    g = generator
    sx, sy = w / NUSCENES_IMAGE[1], h / NUSCENES_IMAGE[0]
    k = torch.tensor([[_FOCAL * sx, 0.0, _CX * sx], [0.0, _FOCAL * sy, _CY * sy], [0.0, 0.0, 1.0]])
    intrinsics = k.expand(batch, len(CAMERAS), 3, 3).clone()
    cam2ego = torch.empty(batch, len(CAMERAS), 4, 4)
    for b in range(batch):
        for i, (yaw, pos) in enumerate(zip(_YAW, _POS)):
            noise = (torch.rand(4, generator=g) - 0.5) * 2 * jitter
            cam2ego[b, i] = _camera_to_ego(yaw + math.degrees(float(noise[0])),
                                           (pos[0] + float(noise[1]), pos[1] + float(noise[2]), pos[2] + float(noise[3])))
    lidar2ego = torch.eye(4).expand(batch, 4, 4).clone()
    lidar2ego[:, 2, 3] = LIDAR_HEIGHT
    lidar2cam = torch.linalg.inv(cam2ego) @ lidar2ego[:, None]
    lidar2img = _pad4(intrinsics) @ lidar2cam
    ego2global = torch.eye(4).expand(batch, 4, 4).clone()
    for b in range(batch):
        ego2global[b, :3, :3] = _rotation_z(float(torch.rand(1, generator=g)) * 2 * math.pi)
        ego2global[b, :2, 3] = torch.rand(2, generator=g) * 2000.0
    return Cameras(CAMERAS, (h, w), intrinsics, cam2ego, lidar2ego, lidar2cam, lidar2img, ego2global)


def images(batch: int, image_size: tuple[int, int], generator: torch.Generator | None = None,
           cams: int = len(CAMERAS)) -> torch.Tensor:
    """[B, 6, 3, H, W] float images as a normalising pipeline leaves them (about zero mean, unit spread)."""
    h, w = _check_size(image_size)
    return torch.randn(batch, cams, 3, h, w, generator=generator)


def occupancy(batch: int, grid: tuple[int, int, int], classes: int, free: int,
              generator: torch.Generator | None = None, objects: int = 6) -> torch.Tensor:
    """[B, X, Y, Z] semantic occupancy: a ground layer, `objects` boxes of object classes, the rest `free`.

    Labels are drawn from 0..classes-1 without `free`; `free` may be outside that range (Occ3D's 17) or
    inside it (SurroundOcc's 0)."""
    x, y, z = (int(v) for v in grid)
    if min(x, y, z) <= 0:
        raise ValueError(f"grid must be three positive sizes, not {grid!r}")
    labels = torch.tensor([c for c in range(classes) if c != free])
    if labels.numel() == 0:
        raise ValueError(f"no label is left to draw from {classes} classes once free={free} is taken out")
    g = generator
    occ = torch.full((batch, x, y, z), free, dtype=torch.long)
    for b in range(batch):
        ground = labels[torch.randint(len(labels), (x, y), generator=g)]
        occ[b, :, :, 0] = ground
        for _ in range(objects):
            sx, sy = (int(torch.randint(1, max(2, n // 4) + 1, (1,), generator=g)) for n in (x, y))
            sz = int(torch.randint(1, max(2, z // 2) + 1, (1,), generator=g))
            ox = int(torch.randint(0, max(1, x - sx + 1), (1,), generator=g))
            oy = int(torch.randint(0, max(1, y - sy + 1), (1,), generator=g))
            label = labels[int(torch.randint(len(labels), (1,), generator=g))]
            occ[b, ox:ox + sx, oy:oy + sy, 1:1 + sz] = label
    return occ


def occupied(occ: torch.Tensor, free: int) -> list[torch.Tensor]:
    """Per sample, the occupied voxels of a dense grid as [N, 4] rows (x, y, z, label)."""
    out = []
    for grid in occ:
        idx = (grid != free).nonzero()
        out.append(torch.cat([idx, grid[idx[:, 0], idx[:, 1], idx[:, 2]][:, None]], dim=1))
    return out


def points(batch: int, count: int, pc_range: tuple[float, ...] = POINT_CLOUD_RANGE,
           generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Per sample, [count, 5] lidar points (x, y, z, intensity, ring index 0) inside pc_range."""
    lo, hi = torch.tensor(pc_range[:3]), torch.tensor(pc_range[3:6])
    out = []
    for _ in range(batch):
        xyz = lo + torch.rand(count, 3, generator=generator) * (hi - lo)
        intensity = torch.rand(count, 1, generator=generator)
        out.append(torch.cat([xyz, intensity, torch.zeros(count, 1)], dim=1))
    return out


def boxes(batch: int, count: int, classes: int, pc_range: tuple[float, ...] = POINT_CLOUD_RANGE,
          generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sample, [count, 9] boxes (x, y, z bottom, w, l, h, yaw, vx, vy) and [count] labels in 0..classes-1."""
    g = generator
    lo, hi = torch.tensor(pc_range[:2]) * 0.8, torch.tensor(pc_range[3:5]) * 0.8
    out_boxes, out_labels = [], []
    for _ in range(batch):
        xy = lo + torch.rand(count, 2, generator=g) * (hi - lo)
        z = -LIDAR_HEIGHT + (torch.rand(count, 1, generator=g) - 0.5) * 0.4
        wlh = torch.tensor([0.5, 0.5, 1.0]) + torch.rand(count, 3, generator=g) * torch.tensor([2.0, 4.5, 1.0])
        yaw = (torch.rand(count, 1, generator=g) * 2 - 1) * math.pi
        vel = (torch.rand(count, 2, generator=g) - 0.5) * 4.0
        out_boxes.append(torch.cat([xy, z, wlh, yaw, vel], dim=1))
        out_labels.append(torch.randint(classes, (count,), generator=g))
    return out_boxes, out_labels


def depth(rig: Cameras, lidar_points: list[torch.Tensor], downsample: int = 1,
          min_depth: float = 0.1) -> torch.Tensor:
    """[B, 6, H/d, W/d] depth maps (metres, 0 where no point lands): the points projected with lidar2img,
    the nearest point kept per pixel."""
    h, w = rig.image_size
    dh, dw = h // downsample, w // downsample
    batch, cams = rig.lidar2img.shape[:2]
    out = torch.zeros(batch, cams, dh, dw)
    for b in range(batch):
        pts = lidar_points[b][:, :3]
        homo = torch.cat([pts, torch.ones(len(pts), 1)], dim=1)
        for c in range(cams):
            uvd = homo @ rig.lidar2img[b, c].T
            d = uvd[:, 2]
            keep = d > min_depth
            u = (uvd[keep, 0] / d[keep] / downsample).floor().long()
            v = (uvd[keep, 1] / d[keep] / downsample).floor().long()
            dk = d[keep]
            inside = (u >= 0) & (u < dw) & (v >= 0) & (v < dh)
            flat = torch.full((dh * dw,), float("inf"))
            flat.scatter_reduce_(0, v[inside] * dw + u[inside], dk[inside], reduce="amin")
            flat[torch.isinf(flat)] = 0.0
            out[b, c] = flat.view(dh, dw)
    return out
