"""Opt-in: the PyTorch routes of the stack's deformable kernels against a plain reference, forward and gradients.

Multi-scale deformable attention (MSDA) and Sparse4D's deformable aggregation go to mx_driving on NPU and to
a CUDA extension on CUDA; everywhere else they run a PyTorch path that lives in the upstream stack: mmcv's
`multi_scale_deformable_attn_pytorch` (through the shared overlay overlays/mmcv-npu/msda.py, which keeps it
in fp32), reached by SurroundOcc's patched MSDeformableAttention3D and by FB-OCC's ms_deform_attn under the
names those modules import; and Sparse4D's own DeformableFeatureAggregation.feature_sampling +
multi_view_level_fusion. Each is compared with a reference that spells bilinear sampling out (the four
corners, their weights, zero outside the map: grid_sample's align_corners=False convention, which the CUDA
kernels share) on random inputs, in float64, for the output and the gradients of every input.

Like tests/test_real_npu_wiring.py: PATCHKIT_REAL_MIRRORS (the upstream mirrors) and PATCHKIT_STACK_VENV (a
venv with the installed stack); the program runs with the venv's python in the model's upstream repository
with the model's overlay sets active, as a training worker has them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.realstack import MARKS, run_program

pytestmark = MARKS

PROGRAM_HEAD = r'''

G = torch.Generator().manual_seed(0)


def bilinear(fm, x, y):
    """fm [C, H, W] sampled at pixel coordinates x, y [P] (pixel centres at integers): the four corners
    weighted by their distances, zero outside the map. Returns [P, C]."""
    _, h, w = fm.shape
    x0, y0 = torch.floor(x), torch.floor(y)
    out = fm.new_zeros(x.shape[0], fm.shape[0])
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            xc, yc = xi.clamp(0, w - 1).long(), yi.clamp(0, h - 1).long()
            out = out + (fm[:, yc, xc].T * (weight * inside)[:, None])
    return out


def at(fm, u, v):
    """fm sampled at normalised coordinates u, v in [0, 1] (align_corners=False: pixel = u * W - 0.5)."""
    return bilinear(fm, u * fm.shape[2] - 0.5, v * fm.shape[1] - 0.5)


def grads(fn, *inputs):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (out.double() * weight).sum().backward()
    return out.detach().double(), [x.grad.double() for x in leaves]


def compare(check, route, reference, *inputs, **extra):
    out, got = grads(route, *inputs)
    ref, want = grads(reference, *[x.double() for x in inputs])
    print("ROUTE " + json.dumps(dict(
        check=check, shape=list(out.shape), ref_shape=list(ref.shape), scale=float(ref.abs().max()),
        max_abs=float((out - ref).abs().max()),
        grad_max_abs=[float((g - r).abs().max()) for g, r in zip(got, want)],
        grad_scale=[float(r.abs().max()) for r in want], **extra)), flush=True)


def msda_reference(value, shapes, locations, weights):
    """out[b, q, h*D + d] = sum over levels l and points p of weights[b, q, h, l, p] *
    value_l[b, :, h, d] sampled at locations[b, q, h, l, p] (x, y in [0, 1])."""
    bs, _, heads, dims = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = value.new_zeros(bs, queries, heads, dims)
    start = 0
    for lvl, (h, w) in enumerate(shapes.tolist()):
        level = value[:, start:start + h * w]
        start += h * w
        for b in range(bs):
            for head in range(heads):
                fm = level[b, :, head].T.reshape(dims, h, w)
                loc = locations[b, :, head, lvl].reshape(-1, 2)
                sampled = at(fm, loc[:, 0], loc[:, 1]).reshape(queries, points, dims)
                out[b, :, head] += (sampled * weights[b, :, head, lvl][..., None]).sum(1)
    return out.reshape(bs, queries, heads * dims)


def msda_inputs(bs=2, heads=2, dims=8, queries=9, points=3):
    shapes = torch.tensor([[6, 7], [3, 4], [2, 2]])
    keys = int(shapes.prod(1).sum())
    value = torch.randn(bs, keys, heads, dims, generator=G)
    # some samples fall outside the maps (zero padding is part of the contract)
    loc = torch.rand(bs, queries, heads, len(shapes), points, 2, generator=G) * 1.2 - 0.1
    weights = torch.rand(bs, queries, heads, len(shapes), points, generator=G).softmax(-1)
    return value, shapes, loc, weights


def check_msda(check, fn):
    value, shapes, loc, weights = msda_inputs()
    compare(check, lambda v, l, w: fn(v, shapes, l, w), lambda v, l, w: msda_reference(v, shapes, l, w),
            value, loc, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # AMP: the overlay keeps the op in fp32
        out = fn(value, shapes, loc, weights)
    print("ROUTE " + json.dumps(dict(check=check + " under autocast", dtype=str(out.dtype),
                                     max_abs=float((out.double() - msda_reference(value.double(), shapes,
                                                   loc.double(), weights.double())).abs().max()))), flush=True)
'''

SURROUNDOCC = r'''
import mmcv.ops.multi_scale_deform_attn as mmcv_msda
from projects.mmdet3d_plugin.surroundocc.modules import spatial_cross_attention as sca

# the name MSDeformableAttention3D.forward calls off NPU and CUDA (patches/surroundocc 0004)
print("ROUTE " + json.dumps(dict(check="same function", same=sca.multi_scale_deformable_attn_pytorch
                                 is mmcv_msda.multi_scale_deformable_attn_pytorch)), flush=True)
check_msda("surroundocc MSDA", sca.multi_scale_deformable_attn_pytorch)
'''

FBOCC = r'''
from mmdet3d.models.fbbev.view_transformation.backward_projection.bevformer_utils import \
    spatial_cross_attention_depth as sca

# FB-OCC's depth-aware attention calls ms_deform_attn (the fbocc layer's one function): off CUDA mmcv's version
def fn(value, shapes, loc, weights):
    level_start = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    return sca.ms_deform_attn(value, shapes, level_start, loc, weights, 64)

check_msda("fbocc ms_deform_attn", fn)
'''

SPARSE4D = r'''
import projects.mmdet3d_plugin  # noqa: registers the plugin's modules
from projects.mmdet3d_plugin.models.blocks import DeformableFeatureAggregation as DFA


def dfa_reference(maps, key_points, projection, image_wh, weights, groups):
    """For each anchor: sum over points, cameras and levels of weights[..., group] x the level's map of that
    camera bilinearly sampled where the key point projects (x, y over depth clamped at 1e-5, divided by the
    image size): [bs, anchors, C]."""
    bs, anchors, pts, _ = key_points.shape
    cams, channels = maps[0].shape[1], maps[0].shape[2]
    out = maps[0].new_zeros(bs, anchors, channels)
    homogeneous = torch.cat([key_points, torch.ones_like(key_points[..., :1])], -1)
    for b in range(bs):
        for c in range(cams):
            xyz = homogeneous[b].reshape(-1, 4) @ projection[b, c].T
            uv = xyz[:, :2] / xyz[:, 2:3].clamp(min=1e-5) / image_wh[b, c]
            for lvl, fm in enumerate(maps):
                sampled = at(fm[b, c], uv[:, 0], uv[:, 1]).reshape(anchors, pts, groups, channels // groups)
                out[b] += (sampled * weights[b, :, c, lvl][..., None]).sum(1).reshape(anchors, channels)
    return out


def dfa_route(dfa, m0, m1, key_points, projection, image_wh, weights):
    """The model's path where no kernel runs (blocks.py forward, use_deformable_func off or unsupported)."""
    features = DFA.feature_sampling([m0, m1], key_points, projection, image_wh)
    return dfa.multi_view_level_fusion(features, weights).sum(dim=2)


embed, groups, cams, bs, anchors, pts = 16, 4, 3, 2, 5, 7
dfa = DFA(embed_dims=embed, num_groups=groups, num_levels=2, num_cams=cams, use_deformable_func=False,
          kps_generator=dict(type="SparseBox3DKeyPointsGenerator", num_learnable_pts=pts - 1,
                             fix_scale=[[0, 0, 0]]))
assert dfa.num_pts == pts, dfa.num_pts
m0 = torch.randn(bs, cams, embed, 6, 10, generator=G)
m1 = torch.randn(bs, cams, embed, 3, 5, generator=G)
key_points = torch.randn(bs, anchors, pts, 3, generator=G) * 2
projection = torch.zeros(bs, cams, 4, 4)
for c in range(cams):  # depth = z + 4 (> 0 mostly; a few points behind get the clamp), u, v around the centre
    projection[:, c, 0, 0], projection[:, c, 0, 2], projection[:, c, 0, 3] = 9.0, 20.0 + 3 * c, 80.0
    projection[:, c, 1, 1], projection[:, c, 1, 2], projection[:, c, 1, 3] = 6.0, 12.0, 48.0
    projection[:, c, 2, 2], projection[:, c, 2, 3] = 1.0, 4.0
    projection[:, c, 3, 3] = 1.0
image_wh = torch.tensor([40.0, 24.0]).expand(bs, cams, 2).clone()
weights = torch.rand(bs, anchors, cams, 2, pts, groups, generator=G)  # as _get_weights shapes them
compare("sparse4d deformable aggregation",
        lambda a, b, k, w: dfa_route(dfa, a, b, k, projection, image_wh, w),
        lambda a, b, k, w: dfa_reference([a, b], k, projection.double(), image_wh.double(), w, groups),
        m0, m1, key_points, weights)
'''

PROGRAMS = {"surroundocc": ("surroundocc", SURROUNDOCC), "fbocc": ("fb-bev", FBOCC),
            "sparse4d": ("sparse4d", SPARSE4D)}


def run_routes(workspace: Path, model: str) -> dict[str, dict]:
    repo, program = PROGRAMS[model]
    return run_program(workspace, model, repo, PROGRAM_HEAD + program, "ROUTE", timeout=600)


def assert_matches(report: dict, tol: float = 1e-5) -> None:
    """The route (float32 where it computes in float32) against the float64 reference."""
    assert report["shape"] == report["ref_shape"], report
    assert report["scale"] > 0.1 and all(s > 1e-3 for s in report["grad_scale"]), f"a vacuous comparison: {report}"
    assert report["max_abs"] <= tol * max(1.0, report["scale"]), report
    for diff, scale in zip(report["grad_max_abs"], report["grad_scale"]):
        assert diff <= tol * max(1.0, scale) * 10, report  # sums of many float32 products


@pytest.mark.parametrize("model", ["surroundocc", "fbocc"])
def test_msda_pytorch_route_matches_the_reference(real: Path, model: str) -> None:
    checks = run_routes(real, model)
    name = "surroundocc MSDA" if model == "surroundocc" else "fbocc ms_deform_attn"
    if model == "surroundocc":
        assert checks["same function"]["same"], "SurroundOcc's attention does not call mmcv's (overlaid) function"
    assert_matches(checks[name])
    amp = checks[f"{name} under autocast"]
    assert amp["dtype"] == "torch.float32" and amp["max_abs"] <= 1e-5, amp


def test_sparse4d_deformable_aggregation_route_matches_the_reference(real: Path) -> None:
    assert_matches(run_routes(real, "sparse4d")["sparse4d deformable aggregation"])
