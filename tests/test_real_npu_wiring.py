"""Opt-in: the NPU branches of the shipped overlays are wired right, checked without an NPU.

Each test applies one model at its real pins (like test_real_stack.py: PATCHKIT_REAL_MIRRORS, and
PATCHKIT_STACK_VENV for a venv holding the installed mmcv stack) and runs a small program with the venv's
python in the model's upstream repository, its overlay sets active as a training worker has them
(PATCHKIT_OVERLAYS). In that program:

* `mx_driving` is a stand-in module in sys.modules whose kernels record each call (name, argument dtypes
  and shapes) and compute the result with the overlay's own non-NPU path (its PyTorch function, mmcv's
  PyTorch version, or a PyTorch reference of the kernel where the model has no function of the kernel's
  arguments), taking the arguments in the order the overlay documents for the kernel (DrivingSDK's
  signatures, quoted in each overlay's docstring);
* patchkit.train.dispatch.kind answers 'npu' while the call under test runs (every overlay asks it,
  directly or through on_npu/select), and torch knows an 'npu' device type for autocast, as torch_npu
  would register it.

Each check calls the upstream name the model uses (so the overlay's patching is checked too) once with
the device check answering 'npu' and once without, on the same inputs, and the test asserts: the right
mx_driving function was called, with the documented argument order and dtypes, and the two outputs are
equal. With sys.modules['mx_driving'] = None (and with an mx_driving that lacks the kernel) the NPU branch
must raise patchkit.train.dispatch.KernelMissing naming the kernel, never fall back silently.
"""

from __future__ import annotations

from pathlib import Path

from tests.realstack import MARKS, run_program

pytestmark = MARKS

# Common to every program: the stand-in mx_driving, the device check answering 'npu' on demand, the
# recording and the report (one `NPUWIRE {json}` line per check).
PROGRAM_HEAD = r'''
import json, sys, types, warnings
from patchkit.overlay import original
from patchkit.train import dispatch

# what torch_npu does on import: an 'npu' device type that torch.autocast accepts
torch.utils.rename_privateuse1_backend("npu")
_npu_module = types.ModuleType("npu_standin")
_npu_module.get_amp_supported_dtype = lambda: [torch.float16, torch.bfloat16]
torch._register_device_module("npu", _npu_module)

NPU = [False]
_kind = dispatch.kind
dispatch.kind = lambda x: "npu" if NPU[0] else _kind(x)  # on_npu and select ask kind too

MX = types.ModuleType("mx_driving")
MX.__version__ = "stand-in"
sys.modules["mx_driving"] = MX
CALLS = []


def desc(a):
    if isinstance(a, torch.Tensor):
        return {"dtype": str(a.dtype).replace("torch.", ""), "shape": list(a.shape), "contiguous": a.is_contiguous()}
    if isinstance(a, (list, tuple)):
        return {"type": type(a).__name__, "items": [x if isinstance(x, (int, float)) else repr(x) for x in a]}
    return {"type": type(a).__name__, "repr": repr(a)}


def standin(name, reference, inspect=None):
    """mx_driving.<name>: records the call, returns reference(*args) computed off the NPU branch."""
    def kernel(*args, **kwargs):
        record = {"op": name, "args": [desc(a) for a in args], "kwargs": sorted(kwargs)}
        if inspect is not None:
            record.update(inspect(*args, **kwargs))
        CALLS.append(record)
        NPU[0] = False
        try:
            return reference(*args, **kwargs)
        finally:
            NPU[0] = True
    kernel.__name__ = name
    setattr(MX, name, kernel)
    return kernel


def on_npu(fn, *args):
    del CALLS[:]
    NPU[0] = True
    try:
        return fn(*args)
    finally:
        NPU[0] = False


def emit(**fields):
    print("NPUWIRE " + json.dumps(fields), flush=True)


def compare(check, fn, *args, **extra):
    """fn(*args) with the device check answering 'npu', then without; report the kernel calls and the difference."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = on_npu(fn, *args)
    calls = list(CALLS)
    ref = fn(*args)
    emit(check=check, calls=calls, shape=list(got.shape), ref_shape=list(ref.shape),
         dtype=str(got.dtype).replace("torch.", ""), max_abs=float((got.float() - ref.float()).abs().max()),
         scale=float(ref.float().abs().max()), warnings=[str(w.message) for w in caught], **extra)


def missing(check, fn, *args):
    """The NPU branch without mx_driving, and with an mx_driving that lacks the kernels."""
    out = {}
    saved = sys.modules["mx_driving"]
    for case, module in (("absent", None), ("without_kernel", types.ModuleType("mx_driving"))):
        sys.modules["mx_driving"] = module
        try:
            on_npu(fn, *args)
            out[case] = {"raised": None}
        except Exception as exc:
            out[case] = {"raised": type(exc).__name__, "kernel_missing": isinstance(exc, dispatch.KernelMissing),
                         "message": str(exc)}
        finally:
            sys.modules["mx_driving"] = saved
    emit(check=check, calls=list(CALLS), **out)


def level_start(spatial_shapes):
    return torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1])).tolist()


def msda_inspect(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *rest):
    return {"level_start_index": level_start_index.tolist(), "expected_level_start_index": level_start(spatial_shapes)}


G = torch.Generator().manual_seed(0)


def msda_inputs(bs=1, heads=2, dims=8, queries=7, points=4, dtype=torch.float32):
    shapes = torch.tensor([[4, 5], [2, 3]])
    keys = int(shapes.prod(1).sum())
    value = torch.randn(bs, keys, heads, dims, generator=G).to(dtype)
    loc = torch.rand(bs, queries, heads, len(shapes), points, 2, generator=G).to(dtype)
    weights = torch.rand(bs, queries, heads, len(shapes), points, generator=G).softmax(-1).to(dtype)
    return value, shapes, torch.tensor(level_start(shapes)), loc, weights
'''

FBOCC = r'''
from mmdet3d.ops.bev_pool_v2 import bev_pool as pool_module
from mmdet3d.models.fbbev.view_transformation.forward_projection import view_transformer
from mmdet3d.models.fbbev.view_transformation.backward_projection.bevformer_utils import \
    spatial_cross_attention_depth as sca
import mmcv.ops.multi_scale_deform_attn as mmcv_msda
ops = sys.modules["patchkit_overlays.fbocc.ops"]

standin("bev_pool_v3", ops.bev_pool_torch)
# the upstream function off CUDA is mmcv's PyTorch version (no level_start_index), which the shared
# mmcv-npu overlay routes to the kernel on NPU
standin("multi_scale_deformable_attn",
        lambda v, s, i, l, w: original(mmcv_msda.multi_scale_deformable_attn_pytorch)(v, s, l, w),
        inspect=msda_inspect)

# bev_pool_v2 as FB-BEV's forward projection calls it (view_transformer's imported name)
B, N, D, H, W, C, Z, Y, X, n = 1, 2, 3, 4, 5, 8, 2, 3, 4, 60
depth = torch.rand(B, N, D, H, W, generator=G)
feat = torch.rand(B, N, H, W, C, generator=G)
ranks_depth = torch.randint(0, B * N * D * H * W, (n,), generator=G)
ranks_feat = torch.randint(0, B * N * H * W, (n,), generator=G)
ranks_bev = torch.randint(0, B * Z * Y * X, (n,), generator=G).sort().values
kept = torch.ones(n, dtype=torch.bool)
kept[1:] = ranks_bev[1:] != ranks_bev[:-1]
interval_starts = torch.where(kept)[0].int()
interval_lengths = torch.diff(torch.cat((interval_starts, torch.tensor([n], dtype=torch.int32)))).int()
compare("bev_pool_v2", view_transformer.bev_pool_v2, depth, feat, ranks_depth, ranks_feat, ranks_bev,
        (B, Z, Y, X, C), interval_starts, interval_lengths,
        same_object=view_transformer.bev_pool_v2 is pool_module.bev_pool_v2,
        ranks=[ranks_depth.tolist(), ranks_feat.tolist(), ranks_bev.tolist()])
missing("bev_pool_v2 missing", view_transformer.bev_pool_v2, depth, feat, ranks_depth, ranks_feat, ranks_bev,
        (B, Z, Y, X, C), interval_starts, interval_lengths)

# ms_deform_attn inside the kernel's limits, and outside them (heads > 8: the PyTorch version, with a warning)
args = msda_inputs(heads=2, dims=8)
compare("ms_deform_attn", sca.ms_deform_attn, *args, 64)
compare("ms_deform_attn heads>8", sca.ms_deform_attn, *msda_inputs(heads=16, dims=8), 64)
missing("ms_deform_attn missing", sca.ms_deform_attn, *args, 64)
'''

TPVFORMER = r'''
import mmcv.ops.multi_scale_deform_attn as mmcv_msda
from tpvformer04.modules import cross_view_hybrid_attention, image_cross_attention

standin("multi_scale_deformable_attn",
        lambda v, s, i, l, w: original(mmcv_msda.multi_scale_deformable_attn_pytorch)(v, s, l, w),
        inspect=msda_inspect)
fn = image_cross_attention.multi_scale_deformable_attn_pytorch  # the name TPVMSDeformableAttention3D calls
same = (fn is mmcv_msda.multi_scale_deformable_attn_pytorch
        is cross_view_hybrid_attention.multi_scale_deformable_attn_pytorch)
value, shapes, _, loc, weights = msda_inputs(heads=8, dims=8)
compare("multi_scale_deformable_attn_pytorch", fn, value, shapes, loc, weights, same_object=same,
        replaced=original(fn) is not None)
# half inputs (under --amp): the overlay runs the op in fp32
value, shapes, _, loc, weights = msda_inputs(heads=8, dims=8, dtype=torch.float16)
compare("multi_scale_deformable_attn_pytorch fp16", fn, value, shapes, loc, weights)
missing("multi_scale_deformable_attn_pytorch missing", fn, value, shapes, loc, weights)
'''

BEVDEPTH = r'''
from bevdepth.layers.backbones import base_lss_fpn  # the names BaseLSSFPN calls
ov = sys.modules["patchkit_overlays.bevdepth.voxel_pooling"]

# mx_driving/ops/voxel_pooling_train.py flattens [B, ..., 3] / [B, ..., C] to [B, N, 3] / [B, N, C] itself
standin("npu_voxel_pooling_train", ov.pool_torch)

B, N, D, H, W, C = 1, 2, 3, 4, 5, 8
voxel_num = torch.LongTensor([6, 5, 1])  # BaseLSSFPN's buffer: x, y, z
geom = torch.stack([torch.randint(-1, high, (B, N, D, H, W), generator=G) for high in (7, 6, 2)],
                   -1).int()  # x, y, z; some points outside the grid
feats = torch.rand(B, N, D, H, W, C, generator=G)
compare("voxel_pooling_train", base_lss_fpn.voxel_pooling_train, geom, feats, voxel_num)
depth = torch.rand(B * N, D, H, W, generator=G)
context = torch.rand(B * N, C, H, W, generator=G)
compare("voxel_pooling_inference", base_lss_fpn.voxel_pooling_inference, geom, depth, context, voxel_num)
# on NPU inference is the train kernel on depth x context, laid out as BaseLSSFPN lifts them for training
lifted = (depth.unsqueeze(1) * context.unsqueeze(2)).reshape(B, N, C, D, H, W).permute(0, 1, 3, 4, 5, 2).contiguous()
inference = on_npu(base_lss_fpn.voxel_pooling_inference, geom, depth, context, voxel_num)
train = on_npu(base_lss_fpn.voxel_pooling_train, geom, lifted, voxel_num)
emit(check="inference is train on the lifted features", max_abs=float((inference - train).abs().max()))
missing("voxel_pooling_train missing", base_lss_fpn.voxel_pooling_train, geom, feats, voxel_num)
missing("voxel_pooling_inference missing", base_lss_fpn.voxel_pooling_inference, geom, depth, context, voxel_num)
'''

SPARSE4D = r'''
import torch.nn.functional as F
import projects.mmdet3d_plugin  # noqa: registers the plugin's modules
from projects.mmdet3d_plugin import ops as s4d_ops
from projects.mmdet3d_plugin.models import blocks


def deformable_aggregation(mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights):
    """A PyTorch reference of the kernel on its documented arguments: bilinear samples (grid_sample,
    zero padding) of each camera's level maps, cut out of the packed features at scale_start_index,
    weighted per group and summed over points, cameras and levels."""
    bs, _, channels = mc_ms_feat.shape
    _, anchors, pts, cams, _ = sampling_location.shape
    levels, groups = spatial_shape.shape[1], weights.shape[-1]
    out = mc_ms_feat.new_zeros(bs, anchors, channels)
    for c in range(cams):
        for s in range(levels):
            h, w = spatial_shape[c, s].tolist()
            start = int(scale_start_index[c, s])
            fm = mc_ms_feat[:, start:start + h * w].reshape(bs, h, w, channels).permute(0, 3, 1, 2)
            sampled = F.grid_sample(fm, sampling_location[:, :, :, c] * 2 - 1, align_corners=False)
            sampled = sampled.permute(0, 2, 3, 1).reshape(bs, anchors, pts, groups, channels // groups)
            out += (sampled * weights[:, :, :, c, s, :, None]).sum(2).reshape(bs, anchors, channels)
    return out


standin("deformable_aggregation", deformable_aggregation)

torch.manual_seed(0)
embed, groups, levels, cams, bs, anchors = 32, 4, 2, 2, 1, 5
dfa = blocks.DeformableFeatureAggregation(
    embed_dims=embed, num_groups=groups, num_levels=levels, num_cams=cams, attn_drop=0.0,
    use_deformable_func=True, use_camera_embed=True, residual_mode="add",
    kps_generator=dict(type="SparseBox3DKeyPointsGenerator", num_learnable_pts=2,
                       fix_scale=[[0, 0, 0], [0.45, 0, 0], [0, -0.45, 0]])).eval()
torch.nn.init.normal_(dfa.weights_fc.weight, std=0.5)  # its init is zero: make the weights differ
maps = [torch.randn(bs, cams, embed, h, w, generator=G) for h, w in ((6, 10), (3, 5))]
anchor = torch.cat([torch.rand(bs, anchors, 3, generator=G) * 4 - 2, torch.zeros(bs, anchors, 3),
                    torch.tensor([0.0, 1.0]).expand(bs, anchors, 2), torch.zeros(bs, anchors, 3)], -1)
instance = torch.randn(bs, anchors, embed, generator=G)
anchor_embed = torch.randn(bs, anchors, embed, generator=G)
proj = torch.zeros(bs, cams, 4, 4)
for c in range(cams):  # u = (x + 4) / 8 * 80 + shift, v = (y + 4) / 8 * 48, depth 1: inside the images
    proj[:, c, 0, 0], proj[:, c, 0, 3] = 10.0, 40.0 + 7 * c
    proj[:, c, 1, 1], proj[:, c, 1, 3] = 6.0, 24.0
    proj[:, c, 2, 3] = proj[:, c, 3, 3] = 1.0
metas = {"projection_mat": proj, "image_wh": torch.tensor([80.0, 48.0]).expand(bs, cams, 2)}


def forward(instance):
    # Sparse4D.extract_feat packs the maps where deformable_aggregation_supported says so (patch 0002)
    feature_maps = s4d_ops.feature_maps_format(maps) if s4d_ops.deformable_aggregation_supported(instance) else maps
    with torch.no_grad():
        return dfa(instance, anchor, anchor_embed, feature_maps, metas)


# how much of the output the sampled features make (the rest is the residual and the projection's bias)
zero_maps = [torch.zeros_like(m) for m in maps]
with torch.no_grad():
    signal = float((dfa(instance, anchor, anchor_embed, maps, metas)
                    - dfa(instance, anchor, anchor_embed, zero_maps, metas)).abs().max())
compare("DeformableFeatureAggregation", forward, instance, signal=signal,
        supported_off_npu=bool(s4d_ops.deformable_aggregation_supported(instance)),
        block_names_patched=blocks.DAF is s4d_ops.deformable_aggregation_function
        and blocks.deformable_aggregation_supported is s4d_ops.deformable_aggregation_supported)
missing("deformable_aggregation_supported missing", s4d_ops.deformable_aggregation_supported, instance)
packed = s4d_ops.feature_maps_format(maps)
missing("deformable_aggregation_function missing", s4d_ops.deformable_aggregation_function, *packed,
        torch.rand(bs, anchors, 5, cams, 2), torch.rand(bs, anchors, 5, cams, levels, groups))
'''

# model -> (the upstream repository the program runs in, the program)
PROGRAMS = {
    "fbocc": ("fb-bev", FBOCC),
    "sparse4d": ("sparse4d", SPARSE4D),
    "bevdepth": ("bevdepth", BEVDEPTH),
    "tpvformer": ("tpvformer", TPVFORMER),
}


def run_wiring(workspace: Path, model: str) -> dict[str, dict]:
    """Apply MODEL, run its program with its overlay sets active; {check: report}."""
    repo, program = PROGRAMS[model]
    return run_program(workspace, model, repo, PROGRAM_HEAD + program, "NPUWIRE", timeout=300)


def only_call(report: dict, op: str) -> dict:
    assert [c["op"] for c in report["calls"]] == [op], f"{report['check']}: expected one mx_driving.{op} call, " \
                                                      f"got {report['calls']}"
    assert report["shape"] == report["ref_shape"], report
    assert report["max_abs"] <= 1e-5 * max(1.0, report["scale"]), \
        f"{report['check']}: the NPU branch differs from the non-NPU path by {report['max_abs']}"
    return report["calls"][0]


def dtypes(call: dict) -> list[str | None]:
    return [a.get("dtype") for a in call["args"]]


def shapes(call: dict) -> list[list[int] | None]:
    return [a.get("shape") for a in call["args"]]


def assert_missing(report: dict, kernel: str) -> None:
    assert not report["calls"], report
    for case in ("absent", "without_kernel"):
        outcome = report[case]
        assert outcome["raised"] and outcome["kernel_missing"], f"{report['check']} ({case}): {outcome}"
        assert f"mx_driving.{kernel}" in outcome["message"], outcome["message"]


def assert_msda_call(call: dict, value: list[int], queries: int) -> None:
    bs, keys, heads, dims = value
    assert call["kwargs"] == [] and len(call["args"]) == 5, call
    (v, s, i, loc, w) = call["args"]
    assert v["shape"] == value and v["dtype"] == "float32", call
    levels = s["shape"][0]
    assert s["shape"] == [levels, 2] and i["shape"] == [levels], call
    assert s["dtype"] in ("int32", "int64") and i["dtype"] in ("int32", "int64"), call
    assert loc["shape"][:3] == [bs, queries, heads] and loc["shape"][3] == levels and loc["shape"][-1] == 2, call
    assert w["shape"] == loc["shape"][:-1] and loc["dtype"] == w["dtype"] == "float32", call
    assert call["level_start_index"] == call["expected_level_start_index"], call


def test_fbocc_bev_pool_and_deformable_attention(real: Path) -> None:
    checks = run_wiring(real, "fbocc")
    pool = checks["bev_pool_v2"]
    assert pool["same_object"], "FB-BEV's view transformer does not call the overlay's bev_pool_v2"
    call = only_call(pool, "bev_pool_v3")
    # bev_pool_v3(depth [B,N,D,H,W] f32, feat [B,N,H,W,C] f32, ranks_depth, ranks_feat, ranks_bev int32,
    #             bev_feat_shape [B,D,H,W,C]) -> [B,C,D,H,W]
    assert call["kwargs"] == [] and len(call["args"]) == 6, call
    assert dtypes(call) == ["float32", "float32", "int32", "int32", "int32", None], call
    assert shapes(call)[:5] == [[1, 2, 3, 4, 5], [1, 2, 4, 5, 8], [60], [60], [60]], call
    assert call["args"][5] == {"type": "list", "items": [1, 2, 3, 4, 8]}, call
    assert pool["shape"] == [1, 8, 2, 3, 4] and call["args"][1]["shape"][-1] % 8 == 0
    assert_missing(checks["bev_pool_v2 missing"], "bev_pool_v3")

    attn = checks["ms_deform_attn"]
    call = only_call(attn, "multi_scale_deformable_attn")
    assert_msda_call(call, [1, 26, 2, 8], 7)
    assert attn["shape"] == [1, 7, 16]
    outside = checks["ms_deform_attn heads>8"]  # outside the kernel's limits: PyTorch version, one warning
    assert outside["calls"] == [] and outside["max_abs"] == 0.0, outside
    assert any("heads=16" in w for w in outside["warnings"]), outside["warnings"]
    assert_missing(checks["ms_deform_attn missing"], "multi_scale_deformable_attn")


def test_tpvformer_multi_scale_deformable_attn(real: Path) -> None:
    checks = run_wiring(real, "tpvformer")
    attn = checks["multi_scale_deformable_attn_pytorch"]
    assert attn["same_object"] and attn["replaced"], "tpvformer04's attention modules do not call the overlay"
    assert_msda_call(only_call(attn, "multi_scale_deformable_attn"), [1, 26, 8, 8], 7)
    assert attn["shape"] == [1, 7, 64]
    half = checks["multi_scale_deformable_attn_pytorch fp16"]  # the kernel gets fp32 under --amp too
    assert_msda_call(only_call(half, "multi_scale_deformable_attn"), [1, 26, 8, 8], 7)
    assert half["dtype"] == "float32"
    assert_missing(checks["multi_scale_deformable_attn_pytorch missing"], "multi_scale_deformable_attn")


def test_bevdepth_voxel_pooling(real: Path) -> None:
    checks = run_wiring(real, "bevdepth")
    for name in ("voxel_pooling_train", "voxel_pooling_inference"):
        report = checks[name]
        call = only_call(report, "npu_voxel_pooling_train")
        # npu_voxel_pooling_train(geom_xyz int32 [B, N, 3], input_features f32|f16 [B, N, C], voxel_num List[int])
        # -> [B, C, num_voxel_y, num_voxel_x]; the kernel's wrapper flattens the middle dimensions itself
        assert call["kwargs"] == [] and len(call["args"]) == 3, call
        geom, features, voxel_num = call["args"]
        assert geom["dtype"] == "int32" and geom["shape"][-1] == 3, call
        assert features["dtype"] in ("float32", "float16"), call
        assert geom["shape"][:-1] == features["shape"][:-1] == [1, 2, 3, 4, 5] and features["shape"][-1] == 8, call
        assert voxel_num == {"type": "list", "items": [6, 5, 1]}, call
        assert report["shape"] == [1, 8, 5, 6], report
        assert_missing(checks[f"{name} missing"], "npu_voxel_pooling_train")
    lifted = checks["inference is train on the lifted features"]
    assert lifted["max_abs"] <= 1e-6, f"inference on NPU lifts depth x context unlike BaseLSSFPN: {lifted}"


def test_sparse4d_deformable_aggregation(real: Path) -> None:
    checks = run_wiring(real, "sparse4d")
    report = checks["DeformableFeatureAggregation"]
    assert report["block_names_patched"], "blocks.py does not call the overlay's functions"
    assert not report["supported_off_npu"], "the kernel path was taken off the NPU: the comparison means nothing"
    assert report["signal"] > 0.1, "the sampled features hardly reach the output: the comparison means little"
    call = only_call(report, "deformable_aggregation")
    # deformable_aggregation(feature_maps f32 [bs, num_feat, c], spatial_shape int32 [cam, scale, 2],
    #   scale_start_index int32 [cam, scale], sample_locations f32 [bs, anchor, pts, cam, 2],
    #   weight f32 [bs, anchor, pts, cam, scale, group]) -> [bs, anchor, c]
    assert call["kwargs"] == [] and len(call["args"]) == 5, call
    assert dtypes(call) == ["float32", "int32", "int32", "float32", "float32"], call
    assert all(a["contiguous"] for a in call["args"]), call
    pts = 3 + 2
    assert shapes(call) == [[1, 2 * (60 + 15), 32], [2, 2, 2], [2, 2], [1, 5, pts, 2, 2], [1, 5, pts, 2, 2, 4]], call
    assert report["shape"] == [1, 5, 32]
    assert_missing(checks["deformable_aggregation_supported missing"], "deformable_aggregation")
    assert_missing(checks["deformable_aggregation_function missing"], "deformable_aggregation")
