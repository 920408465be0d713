"""The PyTorch routes of the ported kernels against plain reference implementations: forward and gradients
on random inputs.

On NPU the ports send these ops to mx_driving, on CUDA to the upstream extension; everywhere else a PyTorch
path runs, and that path is what a CPU smoke or overfit run trains through. A wrong index, a dropped point or
a gradient that does not flow would still run, so each route is compared here with a reference written
the plainest way (a Python loop over points or samples, the bilinear weights spelled out), in float64:

* bev_pool (FB-OCC's Lift-Splat pooling): overlays/fbocc/ops.py bev_pool_torch;
* voxel pooling (BEVDepth): overlays/bevdepth/voxel_pooling.py pool_torch and the inference lift.

Multi-scale deformable attention (mmcv's PyTorch version, through the mmcv-npu overlay, and SurroundOcc's
patched module) and Sparse4D's deformable aggregation live in the upstream stack: they are compared the same
way, against the same bilinear reference, by the opt-in tests/test_real_kernel_routes.py.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import ModuleType

import pytest

from patchkit.overlay import api

torch = pytest.importorskip("torch", reason="torch is needed (pip install torch==2.13.0)")

ROOT = Path(__file__).resolve().parent.parent


def _overlay(relative: str) -> ModuleType:
    """An overlay file as a plain module (its declarations are not kept: nothing is activated)."""
    path = ROOT / "overlays" / relative
    spec = importlib.util.spec_from_file_location(f"kernel_routes_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    declared = list(api._DECLARED)
    try:
        spec.loader.exec_module(module)
    finally:
        api._DECLARED[:] = declared
    return module


def _grads(fn, *inputs):
    """fn's output and the gradients of (output * a fixed random weight).sum() for each input."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
    (out * weight).sum().backward()
    return out.detach(), [x.grad for x in leaves]


def _assert_same(route, reference, *inputs, tol=1e-10):
    """Same output and same input gradients (TOL: a route that computes in float32 gets 1e-5)."""
    out, grads = _grads(route, *inputs)
    ref_out, ref_grads = _grads(reference, *inputs)
    assert out.shape == ref_out.shape
    torch.testing.assert_close(out.double(), ref_out.double(), rtol=tol, atol=tol)
    assert any(float(g.abs().sum()) > 0 for g in ref_grads), "the reference has no gradient: a vacuous test"
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)


# --- bev_pool ---------------------------------------------------------------------------------------------

def bev_pool_reference(depth, feat, ranks_depth, ranks_feat, ranks_bev, bev_feat_shape):
    """The CUDA kernel's definition, point by point: out[b, :, z, y, x] += depth[rank_depth] * feat[rank_feat, :]
    where ranks_bev is the flat (b, z, y, x) index; the result is (B, C, Z, Y, X)."""
    b_, z_, y_, x_, c_ = bev_feat_shape
    out = [[torch.zeros((), dtype=feat.dtype) for _ in range(c_)] for _ in range(b_ * z_ * y_ * x_)]
    flat_depth, flat_feat = depth.reshape(-1), feat.reshape(-1, c_)
    for rd, rf, rb in zip(ranks_depth.tolist(), ranks_feat.tolist(), ranks_bev.tolist()):
        for c in range(c_):
            out[rb][c] = out[rb][c] + flat_depth[rd] * flat_feat[rf, c]
    grid = torch.stack([torch.stack(cell) for cell in out]).view(b_, z_, y_, x_, c_)
    return grid.permute(0, 4, 1, 2, 3)


def test_bev_pool_route_matches_the_kernel_definition() -> None:
    ops = _overlay("fbocc/ops.py")
    g = torch.Generator().manual_seed(0)
    b, n, d, h, w, c = 2, 3, 4, 3, 5, 8
    shape = (b, 2, 3, 4, c)  # B, Z, Y, X, C
    depth = torch.rand(b, n, d, h, w, generator=g, dtype=torch.float64)
    feat = torch.randn(b, n, h, w, c, generator=g, dtype=torch.float64)
    points = 150
    ranks_depth = torch.randint(0, depth.numel(), (points,), generator=g, dtype=torch.int32)
    ranks_feat = torch.randint(0, b * n * h * w, (points,), generator=g, dtype=torch.int32)
    ranks_bev = torch.randint(0, b * 2 * 3 * 4, (points,), generator=g, dtype=torch.int32).sort().values
    assert len(set(ranks_bev.tolist())) < points  # several points land in one cell: the sums are exercised
    _assert_same(lambda dp, ft: ops.bev_pool_torch(dp, ft, ranks_depth, ranks_feat, ranks_bev, shape),
                 lambda dp, ft: bev_pool_reference(dp, ft, ranks_depth, ranks_feat, ranks_bev, shape),
                 depth, feat, tol=1e-5)  # the route computes in float32, as the CUDA kernel does


# --- voxel pooling ----------------------------------------------------------------------------------------

def voxel_pool_reference(geom_xyz, features, voxel_num):
    """The extension's definition, point by point: a point inside [0, voxel_num) adds its features to the
    (batch, y, x) cell; points outside are dropped; the result is [B, C, Y, X]."""
    nx, ny, nz = (int(v) for v in voxel_num)
    b_, c_ = geom_xyz.shape[0], features.shape[-1]
    geom, feats = geom_xyz.reshape(b_, -1, 3).tolist(), features.reshape(b_, -1, c_)
    cells: dict[tuple[int, int, int], torch.Tensor] = {}
    for b in range(b_):
        for i, (x, y, z) in enumerate(geom[b]):
            if 0 <= x < nx and 0 <= y < ny and 0 <= z < nz:
                cells[(b, y, x)] = cells.get((b, y, x), 0) + feats[b, i]
    zero = features.new_zeros(c_)
    out = torch.stack([cells.get(key, zero) for key in itertools.product(range(b_), range(ny), range(nx))])
    return out.view(b_, ny, nx, c_).permute(0, 3, 1, 2)


def test_voxel_pooling_route_matches_the_extension_definition() -> None:
    ov = _overlay("bevdepth/voxel_pooling.py")
    g = torch.Generator().manual_seed(1)
    b, n, d, h, w, c = 2, 2, 3, 4, 5, 6
    voxel_num = torch.LongTensor([6, 5, 2])  # x, y, z (BaseLSSFPN's buffer)
    geom = torch.stack([torch.randint(-1, high + 1, (b, n, d, h, w), generator=g) for high in (6, 5, 2)], -1).int()
    outside = ~((geom >= 0) & (geom < voxel_num.int())).all(-1)
    assert 0 < int(outside.sum()) < outside.numel()  # some points are dropped, most are not
    feats = torch.randn(b, n, d, h, w, c, generator=g, dtype=torch.float64)
    _assert_same(lambda f: ov.pool_torch(geom, f, voxel_num), lambda f: voxel_pool_reference(geom, f, voxel_num),
                 feats)
    # inference: the extension takes depth [B*N, D, H, W] and context [B*N, C, H, W] and pools depth x context
    depth = torch.rand(b * n, d, h, w, generator=g, dtype=torch.float64)
    context = torch.randn(b * n, c, h, w, generator=g, dtype=torch.float64)

    def lifted_reference(dp, ctx):
        lifted = torch.empty(b, n, d, h, w, c, dtype=torch.float64)
        for bi, ni, di, hi, wi in itertools.product(range(b), range(n), range(d), range(h), range(w)):
            lifted[bi, ni, di, hi, wi] = dp[bi * n + ni, di, hi, wi] * ctx[bi * n + ni, :, hi, wi]
        return voxel_pool_reference(geom, lifted, voxel_num)

    _assert_same(lambda dp, ctx: ov.pool_torch(geom, ov._lift(dp, ctx, geom), voxel_num), lifted_reference,
                 depth, context)
