"""`patchkit train MODEL --smoke --overfit`: the bar, the curve in results.json (schema 2, and version-1
files migrated on load), the recipe's `smoke: overfit:` section, and a real two-process overfit run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from patchkit import verify
from patchkit.train import overfit, results as results_mod
from patchkit.train.launch import SMOKE_LOSS, SMOKE_STEP, SMOKE_STEP_TIME
from patchkit.train.recipe import Recipe
from tests.gitfixtures import patchkit
from tests.htmltree import Tree, assert_curve
from tests.test_smoke import toy  # noqa: F401 - the toy port fixture


# --- the bar -------------------------------------------------------------------------------------------

def test_the_bar_needs_the_total_halved_and_no_term_rising() -> None:
    falling = [10.0 - i for i in range(10)]  # 10 -> 1
    ok = overfit.verdict(falling, {"loss_a": falling, "loss_b": [2.0] * 10})
    assert ok is not None and ok.passed and ok.start == 10.0 and ok.end == 1.0 and ok.ratio == 0.1
    assert ok.steps == 10 and ok.terms_rising == [] and ok.bar == overfit.BAR
    # a term whose last-5 mean is above its first-5 mean fails the run, even with the total halved
    up = overfit.verdict(falling, {"loss_a": falling, "loss_b": [1.0] * 5 + [1.1] * 5})
    assert up is not None and not up.passed and up.terms_rising == ["loss_b"]
    # a total that only falls to 0.6 of its start fails
    slow = overfit.verdict([10.0, 8.0, 6.0], {})
    assert slow is not None and not slow.passed and slow.ratio == 0.6
    # exactly half passes; a non-finite end never does; one step is no curve
    assert overfit.verdict([4.0, 2.0], {}).passed  # type: ignore[union-attr]
    assert not overfit.verdict([4.0, math.nan], {}).passed  # type: ignore[union-attr]
    assert overfit.verdict([4.0], {}) is None and overfit.verdict([None, 3.0], {}) is None
    assert overfit.rising({"t": [None, *[1.0] * 5, None, *[2.0] * 5]}) == ["t"]  # unlogged steps are left out
    assert overfit.rising({"t": [None, None], "u": [2.0, 1.0]}) == []


def test_a_term_with_a_floor_is_judged_by_its_excess_over_it() -> None:
    """A cross-entropy against a target that follows the model's own predictions (Sparse4D's centerness) can rise
    while it learns: its least value, the target's entropy, rises faster. With its floor logged the bar judges the
    excess; a term whose excess rises still fails; a step without a floor is left out of that term's windows."""
    totals = [10.0 - i for i in range(10)]
    cns = [0.30, 0.20, 0.15, 0.20, 0.25, 0.45, 0.50, 0.55, 0.60, 0.62]  # raw: rising
    floor = [0.01, 0.05, 0.10, 0.17, 0.23, 0.42, 0.48, 0.53, 0.58, 0.60]  # excess 0.29 .. 0.02: falling
    raw = overfit.verdict(totals, {"loss_cns_0": cns})
    assert raw is not None and not raw.passed and raw.terms_rising == ["loss_cns_0"] and raw.floored == []
    judged = overfit.verdict(totals, {"loss_cns_0": cns, "loss_box": totals}, {"loss_cns_0": floor})
    assert judged is not None and judged.passed and judged.floored == ["loss_cns_0"]
    assert overfit.excess({"a": [1.0, None, 3.0], "b": [1.0]}, {"a": [0.5, 0.5, None]}) == {"a": [0.5, None, None],
                                                                                          "b": [1.0]}
    worse = [f + e for f, e in zip(floor, [0.02] * 5 + [0.05] * 5)]  # excess 0.02 -> 0.05: the branch unlearns
    up = overfit.verdict(totals, {"loss_cns_0": worse}, {"loss_cns_0": floor})
    assert up is not None and not up.passed and up.terms_rising == ["loss_cns_0"]
    columns: dict = {}  # the loop and the log reader keep every column one per step, None where a step had none
    for step, row in enumerate(({"a": 1.0}, {"b": 2.0}, {"a": 3.0, "b": 4.0}), start=1):
        overfit.extend(columns, row, step)
    assert columns == {"a": [1.0, None, 3.0], "b": [None, 2.0, 4.0]}
    # the loop's stop rule uses the floors the same way
    assert overfit.reached(totals, {"loss_cns_0": cns}, {"loss_cns_0": floor})
    assert not overfit.reached(totals, {"loss_cns_0": cns})


def test_the_loop_may_stop_only_with_two_separate_windows() -> None:
    curve = [10.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert not overfit.reached(curve, {"t": curve})  # 9 steps: the first and last five overlap
    assert overfit.reached([*curve, 1.0], {"t": [*curve, 1.0]})


# --- results.json schema 2 -------------------------------------------------------------------------------

def _smoke_recipe(tmp_path: Path) -> Recipe:
    return Recipe("toy", tmp_path / "toy.yaml", "toy", "x.py", (), step_time=SMOKE_STEP_TIME, step=SMOKE_STEP,
                  warmup_steps=1, metrics={"loss": SMOKE_LOSS})


SMOKE_LOG = """\
patchkit-smoke: start model=Toy parameters=10 device=cpu backend=gloo world_size=2 steps=3 amp=False
patchkit-smoke: step 1/3 loss 3.000000 time 1.500 s grads=4/6 loss_a=2 loss_b=1
unrelated line
patchkit-smoke: step 2/3 loss 2.000000 time 0.500 s grads=4/6 loss_a=1.5 loss_b=0.5
patchkit-smoke: step 3/3 loss 1.000000 time 0.250 s grads=4/6 loss_a=0.75 loss_b=0.25 loss_c=1e-3
"""


def test_the_series_holds_every_logged_step_with_its_terms(tmp_path: Path) -> None:
    s = results_mod.series(_smoke_recipe(tmp_path), SMOKE_LOG)
    assert s.step == [1, 2, 3] and s.loss == [3.0, 2.0, 1.0] and s.step_s == [1.5, 0.5, 0.25]
    assert s.terms == {"loss_a": [2.0, 1.5, 0.75], "loss_b": [1.0, 0.5, 0.25], "loss_c": [None, None, 0.001]}
    # an mmcv log line: the total is the `loss:` key, the terms every other *loss* key; the time in ms
    mm = Recipe("m", tmp_path / "m.yaml", "m", "x.py", (), step_time=r"time: (?P<value>[0-9.]+)",
                step=r"Iter \[(?P<value>\d+)/", step_time_unit="ms")
    line = ("Iter [51/600]\tlr: 2.3e-04, eta: 0:07:25, time: 812.5, data_time: 0.031, loss_cls_0: 0.9123, "
            "d0.loss_box: 1.5, loss: 38.2211, grad_norm: 101.2\nIter [102/600] time: 800, loss: 30.5\n")
    mms = results_mod.series(mm, line)
    assert mms.step == [51, 102] and mms.loss == [38.2211, 30.5] and mms.step_s == [0.8125, 0.8]
    assert mms.terms == {"loss_cls_0": [0.9123, None], "d0.loss_box": [1.5, None]}
    assert results_mod.series(Recipe("n", tmp_path, "n", "x.py", ()), SMOKE_LOG) == results_mod.Series()


def test_floors_on_the_log_line_go_into_the_series_and_the_verdict(tmp_path: Path) -> None:
    lines = [f"patchkit-smoke: step {i}/10 loss {10 - i}.0 time 1.0 s grads=4/6 loss_cns_0={c} floor(loss_cns_0)={f}"
             for i, (c, f) in enumerate(zip([0.3, 0.2, 0.2, 0.2, 0.25, 0.45, 0.5, 0.55, 0.6, 0.62],
                                            [0.01, 0.05, 0.1, 0.17, 0.23, 0.42, 0.48, 0.53, 0.58, 0.6]), start=1)]
    lines[2] = lines[2].replace(" floor(loss_cns_0)=0.1", "")  # a step without its floor
    res = results_mod.fill(results_mod.Results("toy", "cpu", "gloo", 2, 1, False, True, kind="overfit"),
                           _smoke_recipe(tmp_path), _write(tmp_path / "rank0.log", "\n".join(lines) + "\n"))
    assert list(res.series.terms) == ["loss_cns_0"]  # `floor(...)` is not a term of its own
    assert res.series.floors == {"loss_cns_0": [0.01, 0.05, None, 0.17, 0.23, 0.42, 0.48, 0.53, 0.58, 0.6]}
    assert res.overfit is not None and res.overfit.passed and res.overfit.floored == ["loss_cns_0"]
    assert "judged above their floor: loss_cns_0" in results_mod.overfit_line(res)
    path = tmp_path / "results.json"
    results_mod.write(res, path)
    assert results_mod.load(path) == res


def test_results_json_is_schema_2_and_version_1_files_load(tmp_path: Path) -> None:
    res = results_mod.Results("toy", "cpu", "gloo", 2, 1, False, True, kind="overfit")
    res = results_mod.fill(res, _smoke_recipe(tmp_path), _write(tmp_path / "rank0.log", SMOKE_LOG))
    assert res.overfit is not None and res.overfit.passed and res.overfit.ratio == pytest.approx(1 / 3)
    path = tmp_path / "results.json"
    results_mod.write(res, path)
    data = json.loads(path.read_text())
    assert data["schema"] == 2 and data["kind"] == "overfit" and data["published"] is None
    assert data["series"]["loss"] == [3.0, 2.0, 1.0] and data["overfit"]["start"] == 3.0
    assert set(data["series"]) == {"step", "loss", "step_s", "terms", "floors"} and data["series"]["floors"] == {}
    again = results_mod.load(path)
    assert again == res
    # a schema-2 file written before floors existed loads with none
    del data["series"]["floors"], data["overfit"]["floored"]
    assert results_mod.load(_write(tmp_path / "older.json", json.dumps(data))) == res
    # version 1: no "schema"; the kind comes from its flags, the series is empty
    v1 = {k: v for k, v in data.items() if k not in ("schema", "kind", "series", "overfit", "published")}
    for flags, kind in (({"smoke": True, "performance": False}, "smoke"),
                        ({"smoke": False, "performance": True}, "performance"),
                        ({"smoke": False, "performance": False}, "full")):
        old = _write(tmp_path / "v1.json", json.dumps({**v1, **flags}))
        loaded = results_mod.load(old)
        assert loaded.schema == 2 and loaded.kind == kind and loaded.series == results_mod.Series()
        assert loaded.overfit is None and loaded.metrics == res.metrics
    future = _write(tmp_path / "v3.json", json.dumps({**data, "schema": 3}))
    with pytest.raises(results_mod.BadInput, match="schema 3 is not one this patchkit reads"):
        results_mod.load(future)
    with pytest.raises(results_mod.BadInput, match="not a readable results.json"):
        results_mod.load(_write(tmp_path / "bad.json", "{"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the recipe's smoke: overfit: section ------------------------------------------------------------------

OVERFIT_RECIPE = """\
workdir: toy
entry: train.py
smoke:
  script: train/smoke/toy.py
  overfit:
    steps: {steps}
    lr: {lr}
"""


@pytest.mark.parametrize(("steps", "lr", "message"), [
    ("61", "1e-3", "train/toy.yaml:6: smoke: overfit: steps must be at most 60"),
    ("0", "1e-3", "train/toy.yaml:6: smoke: overfit: steps must be a positive whole number"),
    ("10", "-1", "train/toy.yaml:7: smoke: overfit: lr must be a positive number"),
    ("10", "fast", "train/toy.yaml:7: smoke: overfit: lr must be a positive number"),
])
def test_overfit_section_errors_name_file_and_line(toy: Path, steps: str, lr: str, message: str) -> None:  # noqa: F811
    _overfit_dry_run_refused(toy, OVERFIT_RECIPE.format(steps=steps, lr=lr), message)


def _overfit_dry_run_refused(toy: Path, recipe: str, message: str) -> None:
    """`train --smoke --overfit --dry-run` on the applied toy with RECIPE exits 2 saying MESSAGE."""
    assert patchkit(toy, "apply", "toy").code == 0
    (toy / "train/toy.yaml").write_text(recipe)
    run = patchkit(toy, "train", "toy", "--smoke", "--overfit", "--dry-run")
    assert run.code == 2 and message in run.err, run.err


@pytest.mark.parametrize(("extra", "message"), [
    ("    warmup_steps: 0\n", "train/toy.yaml:8: smoke: overfit: warmup_steps must be a positive whole number"),
    ("    warmup_ratio: 2\n", "train/toy.yaml:8: smoke: overfit: warmup_ratio must be at most 1"),
    ("    schedule: step\n", "train/toy.yaml:8: smoke: overfit: schedule must be one of constant, cosine"),
    ("    cfg_options: {model..x: 1}\n", "train/toy.yaml:8: smoke: overfit: cfg_options: 'model..x' is not a dotted"),
    ("    cfg_options: {model.x: [1]}\n", "train/toy.yaml:8: smoke: overfit: cfg_options: model.x must be a number"),
    ("    cfg_options: {model.x: null}\n", "train/toy.yaml:8: smoke: overfit: cfg_options: model.x must be a number"),
    ("    momentum: 0.9\n", "train/toy.yaml:8: "),
])
def test_overfit_setup_keys_errors_name_file_and_line(toy: Path, extra: str, message: str) -> None:  # noqa: F811
    _overfit_dry_run_refused(toy, OVERFIT_RECIPE.format(steps=10, lr="1e-3") + extra, message)


@pytest.mark.parametrize(("section", "message"), [
    ("published: {cards: 8}", "train/toy.yaml:4: published: missing required key 'chip'"),
    ("published: {chip: x, cards: 8, fps: fast}", "train/toy.yaml:4: published: fps must be a positive number"),
    ("published: {chip: x, cards: 8, metrics: {mAP: -1}}", "published: metrics: mAP must be a positive number"),
    ("published: {chip: x, cards: 8, flops: 1}", "train/toy.yaml:4: "),
])
def test_published_section_errors_name_file_and_line(toy: Path, section: str, message: str) -> None:  # noqa: F811
    assert patchkit(toy, "apply", "toy").code == 0
    (toy / "train/toy.yaml").write_text(f"workdir: toy\nentry: train.py\nsmoke: {{script: train/smoke/toy.py}}\n"
                                        f"{section}\n")
    run = patchkit(toy, "train", "toy", "--smoke", "--dry-run")
    assert run.code == 2 and message in run.err, run.err


def test_overfit_dry_run_and_bad_requests(toy: Path) -> None:  # noqa: F811
    assert patchkit(toy, "apply", "toy").code == 0
    (toy / "train/toy.yaml").write_text(OVERFIT_RECIPE.format(steps=30, lr="2.5e-2"))
    data = json.loads(patchkit(toy, "train", "toy", "--smoke", "--overfit", "--dry-run", "--json").out)
    env = data["env"]
    assert env["PATCHKIT_SMOKE_OVERFIT"] == "1" and env["PATCHKIT_SMOKE_STEPS"] == "30"
    assert float(env["PATCHKIT_SMOKE_LR"]) == 0.025
    assert any("overfit run: the real model on one fixed synthetic batch, up to 30 steps at lr 0.025" in n
               for n in data["notes"])
    many = patchkit(toy, "train", "toy", "--smoke", "--overfit", "--steps", "61", "--dry-run")
    assert many.code == 2 and "an overfit run takes at most 60 steps" in many.err
    alone = patchkit(toy, "train", "toy", "--overfit", "--dry-run")
    assert alone.code == 2 and "--overfit belongs to a --smoke run" in alone.err
    plain = json.loads(patchkit(toy, "train", "toy", "--smoke", "--dry-run", "--json").out)["env"]
    assert "PATCHKIT_SMOKE_OVERFIT" not in plain and plain["PATCHKIT_SMOKE_STEPS"] == "4"
    assert "PATCHKIT_SMOKE_SEED" not in plain and "PATCHKIT_SMOKE_SEED" not in env  # the worker's default, 0
    seeded = json.loads(patchkit(toy, "train", "toy", "--smoke", "--overfit", "--seed", "3", "--dry-run", "--json").out)
    assert seeded["env"]["PATCHKIT_SMOKE_SEED"] == "3" and any("seed 3)" in n for n in seeded["notes"])
    unseeded = patchkit(toy, "train", "toy", "--seed", "3", "--dry-run")
    assert unseeded.code == 2 and "--seed belongs to a --smoke run" in unseeded.err
    assert "PATCHKIT_SMOKE_CFG_OPTIONS" not in env and env["PATCHKIT_SMOKE_SCHEDULE"] == "constant"
    # the optional set-up: warmup, schedule and config overrides go to the workers and into the run's note
    (toy / "train/toy.yaml").write_text(OVERFIT_RECIPE.format(steps=30, lr="2.5e-2") + (
        "    warmup_steps: 5\n    warmup_ratio: 0.3333\n    schedule: cosine\n"
        "    cfg_options: {model.head.cls_threshold_to_reg: -1, model.name: x, model.on: true}\n"))
    data = json.loads(patchkit(toy, "train", "toy", "--smoke", "--overfit", "--dry-run", "--json").out)
    env = data["env"]
    assert env["PATCHKIT_SMOKE_WARMUP"] == "5:0.3333" and env["PATCHKIT_SMOKE_SCHEDULE"] == "cosine"
    assert json.loads(env["PATCHKIT_SMOKE_CFG_OPTIONS"]) == {"model.head.cls_threshold_to_reg": -1,
                                                             "model.name": "x", "model.on": True}
    assert any("up to 30 steps at lr 0.025 (warmup 5 steps from 0.3333 x lr, cosine schedule, config "
               "model.head.cls_threshold_to_reg=-1, config model.name='x', config model.on=True)" in n
               for n in data["notes"]), data["notes"]


def test_lr_factor_is_mmcv_linear_warmup_times_the_schedule() -> None:
    # mmcv LrUpdaterHook, linear warmup: lr = regular * (1 - (1 - i / W) * (1 - ratio)) for iteration i < W
    assert [overfit.lr_factor(s, 10, 4, 0.2) for s in (1, 3, 5, 10)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    cosine = [overfit.lr_factor(s, 11, schedule="cosine") for s in range(1, 12)]
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5 + overfit.MIN_LR_RATIO / 2)
    assert cosine[-1] == pytest.approx(overfit.MIN_LR_RATIO) and cosine == sorted(cosine, reverse=True)
    assert overfit.lr_factor(2, 11, 4, 0.2, "cosine") == pytest.approx(0.4 * cosine[1])


# --- the loop ---------------------------------------------------------------------------------------------

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is needed (pip install torch==2.13.0)")


def _ctx(monkeypatch: pytest.MonkeyPatch, steps: int, lr: float):
    from patchkit.train import smoke

    monkeypatch.setenv("PATCHKIT_TRAIN_DEVICE", "cpu")
    for name, value in (("PATCHKIT_SMOKE_STEPS", str(steps)), ("PATCHKIT_SMOKE_OVERFIT", "1"),
                        ("PATCHKIT_SMOKE_LR", str(lr))):
        monkeypatch.setenv(name, value)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return smoke, smoke.init(seed=0)


@needs_torch
def test_the_loop_overfits_one_fixed_batch_and_stops_at_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    smoke, ctx = _ctx(monkeypatch, steps=60, lr=0.2)
    assert ctx.overfit and ctx.lr == 0.2
    made: list[int] = []
    seen: list[float] = []

    def batch(step: int):
        made.append(step)
        x = torch.randn(16, 4, generator=ctx.generator)
        return {"x": x, "y": (x + 1) @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])}

    def losses(model, b):
        seen.append(float(b["x"].sum()))
        error = (model(b["x"] + 1) - b["y"]).pow(2)
        b["x"].mul_(0)  # a model that edits its inputs in place must not change the next step's
        return {"loss_front": error[:8].mean(), "loss_back": error[8:].mean()}

    net = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-6)
    out = smoke.run(ctx, net, batch, losses, optimizer=opt)
    assert made == [1] and len(set(seen)) == 1 and seen[0] != 0  # one batch, made once, a fresh copy each step
    assert opt.param_groups[0]["lr"] == 0.2  # the overfit lr, not the script's
    assert 10 <= len(out["losses"]) < 60 and overfit.verdict(out["losses"], out["terms"]).passed  # type: ignore[union-attr]


@needs_torch
def test_the_loop_follows_the_warmup_and_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step runs at set_lr's rates times overfit.lr_factor; a group at 0.5x (a backbone) keeps its ratio."""
    import torch

    monkeypatch.setenv("PATCHKIT_SMOKE_WARMUP", "3:0.25")
    monkeypatch.setenv("PATCHKIT_SMOKE_SCHEDULE", "cosine")
    smoke, ctx = _ctx(monkeypatch, steps=12, lr=0.1)
    assert (ctx.warmup_steps, ctx.warmup_ratio, ctx.schedule) == (3, 0.25, "cosine")
    head, body = torch.nn.Linear(4, 1), torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW([{"params": head.parameters()}, {"params": body.parameters(), "lr": 5e-4}], lr=1e-3)
    used: list[tuple[float, float]] = []

    def losses(model, x):
        used.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        return {"loss": (model(x) - 5).pow(2).mean()}

    smoke.run(ctx, torch.nn.Sequential(body, head), lambda s: torch.ones(8, 4), losses, optimizer=opt)
    expected = [overfit.lr_factor(s, 12, 3, 0.25, "cosine") for s in range(1, len(used) + 1)]
    assert [u[0] for u in used] == pytest.approx([0.1 * f for f in expected])
    assert [u[1] for u in used] == pytest.approx([0.05 * f for f in expected])
    monkeypatch.setenv("PATCHKIT_SMOKE_WARMUP", "three")
    with pytest.raises(smoke.SmokeFailed, match="PATCHKIT_SMOKE_WARMUP='three' is not STEPS:RATIO"):
        smoke.init()


@needs_torch
def test_soft_target_floor_is_the_targets_entropy_and_the_loop_logs_it(monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    import torch.nn.functional as F

    smoke, ctx = _ctx(monkeypatch, steps=12, lr=0.1)
    loss = smoke.SoftTargetFloor(torch.nn.BCEWithLogitsLoss())
    target = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    value = loss(torch.zeros(5), target)
    assert float(value) == pytest.approx(float(F.binary_cross_entropy_with_logits(torch.zeros(5), target)))
    entropy = -(target * target.clamp_min(1e-12).log() + (1 - target) * (1 - target).clamp_min(1e-12).log()).mean()
    assert float(loss.floor) == pytest.approx(float(entropy), abs=1e-5)  # type: ignore[arg-type]
    # the loop: a centerness-like logit fit to a soft target, its floor logged and carried to the verdict
    net = torch.nn.Linear(4, 1)

    def losses(model, x):
        return {"loss_cns": loss(model(x).squeeze(1), torch.full((8,), 0.3))}

    out = smoke.run(ctx, net, lambda s: torch.ones(8, 4), losses, floors=lambda: {"loss_cns": loss.floor})
    assert out["floors"]["loss_cns"] == pytest.approx([0.6109] * len(out["losses"]), abs=1e-4)  # H(0.3)
    assert "floor(loss_cns)=0.6108" in capsys.readouterr().out  # 0.610864


@needs_torch
def test_a_seeded_smoke_worker_repeats_its_upstreams_random_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    import torch

    def draws() -> tuple[float, ...]:  # numpy too where it is installed (torch does not need it)
        np = sys.modules.get("numpy") if importlib.util.find_spec("numpy") else None
        return (random.random(), float(torch.rand(1)), *((float(np.random.rand()),) if np else ()))

    smoke, _ = _ctx(monkeypatch, steps=3, lr=0.1)
    first = draws()
    smoke.init(seed=0)
    assert draws() == first
    monkeypatch.setenv("PATCHKIT_SMOKE_SEED", "7")  # `patchkit train --seed 7`
    smoke.init(seed=0)
    assert draws() != first


@needs_torch
def test_a_model_that_cannot_learn_fails_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    smoke, ctx = _ctx(monkeypatch, steps=12, lr=1e-9)
    net = torch.nn.Linear(4, 1)
    out = smoke.run(ctx, net, lambda s: torch.ones(8, 4), lambda m, x: {"loss": (m(x) - 5).pow(2).mean()})
    assert len(out["losses"]) == 12
    found = overfit.verdict(out["losses"], out["terms"])
    assert found is not None and not found.passed and found.ratio > 0.99


# --- a real run -----------------------------------------------------------------------------------------

@needs_torch
@pytest.mark.processes
def test_two_gloo_processes_overfit_the_toy_and_a_stuck_run_exits_1(toy: Path, recording: None) -> None:  # noqa: F811
    assert patchkit(toy, "apply", "toy").code == 0
    recipe = toy / "train/toy.yaml"
    recipe.write_text(recipe.read_text() + "  overfit: {steps: 40, lr: 3.0e-2}\n")
    work = toy / "fit"
    run = patchkit(toy, "train", "toy", "--smoke", "--overfit", "--device", "cpu", "--cards", "2",
                   "--work-dir", str(work))
    log = (work / "rank0.log").read_text() if (work / "rank0.log").exists() else ""
    assert run.code == 0, run.text + log
    assert "toy: overfit passed: loss" in run.out and "overfit lr=0.03" in log
    data = json.loads((work / "results.json").read_text())
    assert data["schema"] == 2 and data["kind"] == "overfit" and data["overfit"]["passed"]
    steps = data["overfit"]["steps"]
    assert 10 <= steps <= 40 and data["series"]["step"] == list(range(1, steps + 1))
    assert data["series"]["loss"][-1] <= 0.5 * data["series"]["loss"][0]
    assert list(data["series"]["terms"]) == ["loss_occ"] and len(data["series"]["step_s"]) == steps
    assert "patchkit-smoke: overfit passed: loss" in log
    # curve.svg beside results.json: its loss polyline is the logged series
    lines = [p for p in Tree((work / "curve.svg").read_text()).root.all("polyline") if p.attrs["data-line"] == "loss (total)"]
    assert_curve(lines, [float(x) for x in data["series"]["step"]], data["series"]["loss"])
    # the same run at a learning rate that cannot move the weights: exit 1, the verdict in results.json
    recipe.write_text(recipe.read_text().replace("lr: 3.0e-2", "lr: 1.0e-12"))
    stuck = patchkit(toy, "train", "toy", "--smoke", "--overfit", "--steps", "10", "--device", "cpu",
                     "--cards", "1", "--work-dir", str(toy / "stuck"))
    assert stuck.code == 1 and "toy: overfit FAILED: loss" in stuck.err, stuck.text
    assert json.loads((toy / "stuck/results.json").read_text())["overfit"]["passed"] is False
    # each run appended its verification record; `list` shows the newest on cpu
    records = [r for r in verify.load(toy, "toy") if r.check == "overfit"]
    assert [(r.device, r.ok) for r in records] == [("cpu", True), ("cpu", False)]
    assert records[0].detail["overfit"]["passed"] and records[0].detail["cards"] == 2
    assert records[0].detail["loss"] == [data["series"]["loss"][0], data["series"]["loss"][-1]]
    assert records[0].workspace == data["fingerprint"]
    assert "verified on cpu: overfit FAILED" in patchkit(toy, "list").out


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-n", "0"]))
