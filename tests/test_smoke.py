"""`patchkit train MODEL --smoke`: synthetic nuScenes-shaped inputs, run-time device dispatch, the smoke
loop under two real gloo processes, and the recipe's `smoke:` section."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest

from patchkit.train import device as device_mod
from tests.gitfixtures import make_upstream, patchkit, write_layer, write_one_upstream_port

torch = pytest.importorskip("torch", reason="torch is needed (pip install torch==2.13.0)")

from patchkit.train import dispatch, smoke, synthetic  # noqa: E402

# A smoke script as a model port writes one: the model's own modules (here toymod, in the upstream
# repo, imported from the workspace as cwd), a synthetic batch, the shared loop.
SMOKE = '''\
import os
import sys

import torch

import patchkit
from patchkit.train import smoke, synthetic

print(f"worker python {sys.prefix} patchkit {os.path.dirname(patchkit.__file__)}", flush=True)

import toymod

ctx = smoke.init(seed=0)
H, W, GRID = 32, 64, (8, 8, 4)
model = toymod.OccNet(GRID, classes=5)

def batch(step):
    imgs = synthetic.images(ctx.batch, (H, W), generator=ctx.generator)
    occ = synthetic.occupancy(ctx.batch, GRID, classes=5, free=0, generator=ctx.generator)
    return {"imgs": imgs, "occ": occ}

def losses(net, b):
    logits = net(b["imgs"])
    loss = torch.nn.functional.cross_entropy(logits, b["occ"])
    if os.environ.get("TOY_NAN") == "1":
        loss = loss * float("nan")
    return {"loss_occ": loss, "acc": (logits.argmax(1) == b["occ"]).float().mean()}

smoke.run(ctx, model, batch, losses, lr=1e-2)
'''

TOYMOD = '''\
import torch


class OccNet(torch.nn.Module):
    """Six camera images in, a semantic occupancy grid out."""

    def __init__(self, grid, classes):
        super().__init__()
        self.grid, self.classes = grid, classes
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d((4, 4)))
        self.head = torch.nn.Linear(6 * 8 * 16, classes * grid[0] * grid[1] * grid[2])
        self.unused = torch.nn.Linear(2, 2)  # never reached: DDP must be told to find unused parameters

    def forward(self, imgs):
        b, n = imgs.shape[:2]
        feats = self.backbone(imgs.flatten(0, 1)).view(b, -1)
        return self.head(feats).view(b, self.classes, *self.grid)
'''

RECIPE = '''\
workdir: toy
entry: train.py
cards: 8
global_batch: 64
smoke:
  script: train/smoke/toy.py
  args: ["--on", "{device}"]
  steps: 3
  env: {all: {TOY_SMOKE: "1"}}
'''


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    up = tmp_path / "toy"
    pin = make_upstream(up, {"train.py": "raise SystemExit('the full run is not what a smoke test runs')\n",
                             "toymod.py": TOYMOD})
    port = tmp_path / "port"
    write_layer(port, "npu", "toy", {})
    write_one_upstream_port(port, up, pin, name="toy", model="toy")
    (port / "train/smoke").mkdir(parents=True)
    (port / "train/toy.yaml").write_text(RECIPE)
    (port / "train/smoke/toy.py").write_text(SMOKE)
    return port


# --- synthetic inputs -------------------------------------------------------------------------------

def test_camera_rig_is_nuscenes_shaped_and_projects_correctly() -> None:
    g = torch.Generator().manual_seed(1)
    rig = synthetic.cameras(2, (256, 704), generator=g)
    assert rig.names == ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                         "CAM_BACK_RIGHT")
    assert rig.intrinsics.shape == (2, 6, 3, 3) and rig.cam2ego.shape == (2, 6, 4, 4)
    assert rig.lidar2cam.shape == rig.lidar2img.shape == rig.cam2img.shape == (2, 6, 4, 4)
    assert rig.lidar2ego.shape == rig.ego2global.shape == (2, 4, 4)
    # intrinsics scaled from 1600x900 to 704x256: the principal point lands near the image centre
    assert rig.intrinsics[0, 0, 0, 2] == pytest.approx(816.3 * 704 / 1600, rel=1e-4)
    assert rig.intrinsics[0, 0, 1, 2] == pytest.approx(491.5 * 256 / 900, rel=1e-4)
    # a point 20 m ahead at the lidar's height shows in the front camera, near the centre column
    ahead = torch.tensor([20.0, 0.0, 0.0, 1.0])
    uvd = rig.lidar2img[0, 0] @ ahead
    assert uvd[2] > 0 and abs(float(uvd[0] / uvd[2]) - 704 / 2) < 40
    # ... and behind the back camera's image plane is in front of it
    assert (rig.lidar2img[0, 3] @ ahead)[2] < 0
    assert (rig.lidar2img[0, 3] @ torch.tensor([-20.0, 0.0, 0.0, 1.0]))[2] > 0
    # rotations are proper: cam2ego's rotation block is orthonormal with determinant 1
    r = rig.cam2ego[1, 4, :3, :3]
    assert torch.allclose(r @ r.T, torch.eye(3), atol=1e-5) and float(torch.det(r)) == pytest.approx(1.0, abs=1e-5)
    # the same generator seed gives the same rig; another seed another one
    again = synthetic.cameras(2, (256, 704), generator=torch.Generator().manual_seed(1))
    other = synthetic.cameras(2, (256, 704), generator=torch.Generator().manual_seed(2))
    assert torch.equal(rig.lidar2img, again.lidar2img) and not torch.equal(rig.lidar2img, other.lidar2img)


def test_images_occupancy_boxes_points_depth() -> None:
    g = torch.Generator().manual_seed(0)
    imgs = synthetic.images(2, (64, 176), generator=g)
    assert imgs.shape == (2, 6, 3, 64, 176) and imgs.dtype == torch.float32
    assert abs(float(imgs.mean())) < 0.05 and 0.9 < float(imgs.std()) < 1.1

    occ = synthetic.occupancy(2, (20, 20, 4), classes=17, free=17, generator=g)
    assert occ.shape == (2, 20, 20, 4) and occ.dtype == torch.long
    assert int(occ.min()) >= 0 and int(occ.max()) <= 17
    assert bool((occ[:, :, :, 0] != 17).all())  # the ground layer is all occupied
    assert float((occ == 17).float().mean()) > 0.4  # most of the air is free
    zero_free = synthetic.occupancy(1, (10, 10, 3), classes=17, free=0, generator=g)
    assert 0 < int(zero_free.max()) <= 16 and bool((zero_free[..., 0] != 0).all())
    rows = synthetic.occupied(zero_free, free=0)
    assert rows[0].shape == (int((zero_free[0] != 0).sum()), 4)
    x, y, z, label = rows[0][0].tolist()
    assert zero_free[0, x, y, z] == label != 0
    with pytest.raises(ValueError, match="no label is left"):
        synthetic.occupancy(1, (2, 2, 2), classes=1, free=0)
    with pytest.raises(ValueError, match="positive"):
        synthetic.occupancy(1, (2, 0, 2), classes=3, free=0)

    boxes, labels = synthetic.boxes(2, 5, classes=10, generator=g)
    assert [b.shape for b in boxes] == [(5, 9), (5, 9)] and [lab.shape for lab in labels] == [(5,), (5,)]
    assert all(int(lab.max()) < 10 for lab in labels) and bool((boxes[0][:, 3:6] > 0).all())

    pts = synthetic.points(1, 4000, generator=g)
    assert pts[0].shape == (4000, 5)
    assert float(pts[0][:, 0].min()) >= -51.2 and float(pts[0][:, 2].max()) <= 3.0

    rig = synthetic.cameras(1, (64, 176), generator=g)
    depth = synthetic.depth(rig, pts, downsample=4)
    assert depth.shape == (1, 6, 16, 44)
    hit = depth[depth > 0]
    assert hit.numel() > 50 and float(hit.min()) > 0.1  # every camera sees some of the points
    assert all(int((depth[0, c] > 0).sum()) > 0 for c in range(6))
    with pytest.raises(ValueError, match="image_size"):
        synthetic.images(1, (0, 10))


# --- dispatch ----------------------------------------------------------------------------------------

class _On:
    """Stands in for a tensor on a device this machine does not have."""

    def __init__(self, kind: str) -> None:
        self.device = types.SimpleNamespace(type=kind)


def test_dispatch_picks_the_branch_of_the_tensor_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dispatch.kind(torch.zeros(1)) == "cpu" and dispatch.kind(torch.device("cpu")) == "cpu"
    assert dispatch.kind("npu:3") == "npu" and dispatch.kind(_On("npu")) == "npu" and dispatch.on_npu(_On("npu"))
    branches = dict(npu=lambda: "kernel", cuda=lambda: "ext", other=lambda: "pytorch")
    assert [dispatch.select(_On(k), **branches) for k in ("npu", "cuda", "cpu", "xpu")] == \
        ["kernel", "ext", "pytorch", "pytorch"]
    assert dispatch.select(_On("npu"), other=lambda: "pytorch") == "pytorch"  # no NPU branch given
    assert dispatch.backend("npu") == "hccl" and dispatch.backend("cuda") == "nccl" and dispatch.backend("cpu") == "gloo"

    fake = types.ModuleType("mx_driving")
    fake.__version__ = "9.9"  # type: ignore[attr-defined]
    fake.multi_scale_deformable_attn = lambda *a: ("npu", a)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mx_driving", fake)
    assert dispatch.npu_op("multi_scale_deformable_attn")(1, 2) == ("npu", (1, 2))
    with pytest.raises(dispatch.KernelMissing, match=r"mx_driving.bev_pool_v3 is needed on NPU but this "
                                                      r"mx_driving \(9.9\) has no 'bev_pool_v3'"):
        dispatch.npu_op("bev_pool_v3")
    monkeypatch.setitem(sys.modules, "mx_driving", None)  # not installed: import fails
    with pytest.raises(dispatch.KernelMissing, match="mx_driving does not import"):
        dispatch.npu_op("multi_scale_deformable_attn")

    with dispatch.autocast(torch.zeros(1)):  # bf16 on CPU
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with dispatch.autocast(torch.zeros(1), enabled=False):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_full_precision_switches_autocast_off_inside_the_block_only() -> None:
    def mm_dtype():
        return torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype

    with dispatch.autocast(torch.zeros(1)):  # bf16 on CPU
        for region in (dispatch.full_precision(torch.zeros(1)), dispatch.full_precision("cpu"),
                       dispatch.full_precision()):  # x's device type, or every type where autocast is on
            with region:
                assert mm_dtype() == torch.float32
            assert mm_dtype() == torch.bfloat16
        with dispatch.full_precision("cuda"):  # another device type's autocast: this one stays on
            assert mm_dtype() == torch.bfloat16
    with dispatch.full_precision():  # nothing on: nothing to switch off
        assert mm_dtype() == torch.float32


def test_mm_configs_lose_every_checkpoint_and_nothing_else() -> None:
    model = {"type": "Det", "pretrained": "ckpt.pth",
             "img_backbone": {"type": "ResNet", "pretrained": "torchvision://resnet50", "depth": 50,
                              "init_cfg": {"type": "Pretrained", "checkpoint": "x.pth"}},
             "img_neck": {"type": "FPN", "init_cfg": {"type": "Xavier", "layer": "Conv2d"}},
             "heads": [{"init_cfg": [{"type": "Pretrained", "checkpoint": "h.pth"}, {"type": "Normal"}]}]}
    smoke._drop_checkpoints(model)
    assert model == {"type": "Det", "img_backbone": {"type": "ResNet", "depth": 50},
                     "img_neck": {"type": "FPN", "init_cfg": {"type": "Xavier", "layer": "Conv2d"}},
                     "heads": [{"init_cfg": [{"type": "Normal"}]}]}


def test_parse_losses_follows_the_mmdet_convention() -> None:
    total, terms = smoke.parse_losses({"loss_a": torch.tensor(1.0), "loss_b": [torch.tensor(2.0), torch.tensor(3.0)],
                                       "acc": torch.tensor(0.5)})
    assert float(total) == 6.0 and set(terms) == {"loss_a", "loss_b"}
    assert float(smoke.parse_losses(torch.tensor(4.0))[0]) == 4.0
    with pytest.raises(smoke.SmokeFailed, match="no loss term"):
        smoke.parse_losses({"acc": torch.tensor(1.0)})
    with pytest.raises(smoke.SmokeFailed, match="'loss_x' is str"):
        smoke.parse_losses({"loss_x": "nope"})
    moved = smoke.to_device({"a": [torch.zeros(1), (torch.ones(1), "meta")], "b": 3}, torch.device("cpu"))
    assert moved["b"] == 3 and moved["a"][1][1] == "meta" and isinstance(moved["a"][1], tuple)


def test_the_loop_in_process_trains_and_catches_non_finite_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process, no group: a finite loss whose gradient is NaN (d sqrt(x)/dx at 0) fails the step;
    a well-behaved model trains and reports its per-step totals."""
    monkeypatch.setenv("PATCHKIT_TRAIN_DEVICE", "cpu")
    monkeypatch.setenv("PATCHKIT_SMOKE_STEPS", "2")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    ctx = smoke.init(seed=0)
    net = torch.nn.Linear(3, 1)
    result = smoke.run(ctx, net, lambda step: torch.ones(4, 3), lambda m, x: {"loss": m(x).pow(2).mean()})
    assert len(result["losses"]) == 2 and result["finite"]
    with pytest.raises(smoke.SmokeFailed, match="step 1: 2 parameter\\(s\\) got non-finite gradients"):
        smoke.run(ctx, torch.nn.Linear(3, 1), lambda step: torch.ones(4, 3),
                  lambda m, x: {"loss": torch.sqrt(m(x) * 0).sum()})


# --- the launcher --------------------------------------------------------------------------------------

@pytest.mark.processes
def test_smoke_trains_in_two_gloo_processes_from_a_venv(toy: Path, tmp_path: Path) -> None:
    """Two real gloo workers train the toy model. With --venv they run that environment's Python (and
    its device probes), with this patchkit first on their path whatever the venv holds. (One launch for
    both: each costs seconds of torch imports; the plain-Python launch is the non-finite test's.)"""
    import subprocess

    import sysconfig

    venv = tmp_path / "stackenv"  # a venv that sees this process's packages (torch) through a .pth file
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    assert patchkit(toy, "apply", "toy").code == 0
    work = toy / "smoke1"
    run = patchkit(toy, "train", "toy", "--smoke", "--venv", str(venv), "--device", "cpu", "--cards", "2",
                   "--work-dir", str(work))
    logs = {r: (work / f"rank{r}.log").read_text() for r in (0, 1) if (work / f"rank{r}.log").exists()}
    assert run.code == 0, run.text + "".join(logs.values())
    for rank, text in logs.items():
        assert f"patchkit-bootstrap: rank={rank} local_rank={rank} world_size=2 device=cpu backend=gloo" in text
    assert logs[0].count("patchkit-smoke: step ") == 3 and "patchkit-smoke: step" not in logs[1]
    assert "backend=gloo world_size=2 steps=3" in logs[0]
    assert "grads=4/6" in logs[0]  # backbone conv + head got gradients, the unused layer did not
    results = json.loads((work / "results.json").read_text())
    assert results["smoke"] is True and results["steps_seen"] == 3 and results["warmup_steps"] == 1
    assert math.isfinite(results["metrics"]["loss"]) and results["mean_step_ms"] > 0
    assert results["per_card_batch"] == 1 and results["global_batch"] == 2
    assert results["published_global_batch"] is None  # a smoke run is not the published configuration
    assert any("smoke run: the real model on a synthetic batch for 3 steps" in n for n in results["notes"])
    # the venv's Python, this patchkit
    assert f"worker python {venv} patchkit {work / '.patchkit-path' / 'patchkit'}" in logs[0]
    assert (work / ".patchkit-path/patchkit").resolve() == Path(smoke.__file__).resolve().parent.parent
    missing = patchkit(toy, "train", "toy", "--smoke", "--venv", str(tmp_path), "--dry-run")
    assert missing.code == 2 and "no bin/python there" in missing.err


@pytest.mark.processes
def test_a_non_finite_loss_fails_the_smoke_run(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert patchkit(toy, "apply", "toy").code == 0
    monkeypatch.setenv("TOY_NAN", "1")
    run = patchkit(toy, "train", "toy", "--smoke", "--device", "cpu", "--cards", "1", "--steps", "2",
                   "--work-dir", str(toy / "smoke2"))
    assert run.code == 1 and "training failed" in run.err
    assert "step 1: loss is not finite (loss_occ=nan)" in run.err


def test_smoke_dry_run_on_npu_and_bad_requests(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert patchkit(toy, "apply", "toy").code == 0
    monkeypatch.setattr(device_mod, "probe_npu", lambda: 8)  # the NPU probe, replaced at its boundary
    run = patchkit(toy, "train", "toy", "--smoke", "--cards", "8", "--steps", "5", "--dry-run", "--json")
    assert run.code == 0, run.text
    data = json.loads(run.out)
    env, argv = data["env"], data["nodes"][0]
    assert env["PATCHKIT_TRAIN_DEVICE"] == "npu" and env["PATCHKIT_TRAIN_BACKEND"] == "hccl"
    assert env["PATCHKIT_SMOKE_STEPS"] == "5" and env["TOY_SMOKE"] == "1" and env["PATCHKIT_TRAIN_BATCH"] == "value:1"
    assert env["PATCHKIT_SMOKE_BATCH"] == "1"
    assert argv[argv.index("patchkit.train.bootstrap") + 1:] == [str(toy / "train/smoke/toy.py"), "--on", "npu"]
    assert "--nproc_per_node=8" in argv
    # a smoke run's default is one card, not the recipe's eight
    one = json.loads(patchkit(toy, "train", "toy", "--smoke", "--dry-run", "--json").out)
    assert "--nproc_per_node=1" in one["nodes"][0] and one["env"]["PATCHKIT_SMOKE_STEPS"] == "3"

    both = patchkit(toy, "train", "toy", "--smoke", "--performance", "--dry-run")
    assert both.code == 2 and "two different runs" in both.err
    steps = patchkit(toy, "train", "toy", "--steps", "3", "--dry-run")
    assert steps.code == 2 and "--steps belongs to a --smoke run" in steps.err
    (toy / "train/smoke/toy.py").unlink()
    gone = patchkit(toy, "train", "toy", "--smoke", "--dry-run")
    assert gone.code == 2 and "train/toy.yaml:6: smoke script train/smoke/toy.py not found" in gone.err


@pytest.mark.parametrize(("section", "message"), [
    ("smoke: {steps: 3}", "train/toy.yaml:1: smoke: missing required key 'script'"),
    ("smoke: {script: ../elsewhere.py}", "train/toy.yaml:1: smoke: script must be a .py file path inside"),
    ("smoke: {script: train/smoke/toy.py, steps: 0}", "train/toy.yaml:1: smoke: steps must be a positive whole number"),
    ("smoke: {script: train/smoke/toy.py, batch: two}", "train/toy.yaml:1: smoke: batch must be a positive whole"),
    ("smoke: {script: train/smoke/toy.py, seed: 1}", "train/toy.yaml:1: "),
    ("smoke: [train/smoke/toy.py]", "train/toy.yaml:1: smoke must be a mapping"),
])
def test_smoke_section_errors_name_file_and_line(toy: Path, section: str, message: str) -> None:
    assert patchkit(toy, "apply", "toy").code == 0
    (toy / "train/toy.yaml").write_text(f"{section}\nworkdir: toy\nentry: train.py\n")
    run = patchkit(toy, "train", "toy", "--smoke", "--dry-run")
    assert run.code == 2 and message in run.err, run.err


def test_a_recipe_without_smoke_says_how_to_add_one(toy: Path) -> None:
    assert patchkit(toy, "apply", "toy").code == 0
    (toy / "train/toy.yaml").write_text("workdir: toy\nentry: train.py\n")
    run = patchkit(toy, "train", "toy", "--smoke", "--dry-run")
    assert run.code == 2 and "no `smoke:` section" in run.err and "add smoke: {script:" in run.err
