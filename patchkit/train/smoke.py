"""The training loop of a smoke run (`patchkit train MODEL --smoke`): a few real steps of the real model
on a synthetic batch, on whatever device the launcher chose, under torchrun.

A model's smoke script (`train/smoke/<model>.py`, named by the recipe's `smoke: script`) builds the
model from its upstream config and says how to make a batch and how to get the losses; this module
does the rest the same way for every model: the process group, the device, DDP, the optimizer step,
the checks (every loss finite, gradients reached the parameters) and the `patchkit-smoke:` lines the
launcher reads. It runs inside the training worker, after the bootstrap.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from patchkit.train import dispatch, overfit as overfit_mod

DEFAULT_STEPS = 4
PREFIX = "patchkit-smoke:"  # the launcher parses these lines: launch.SMOKE_STEP_TIME, SMOKE_STEP, SMOKE_LOSS


class SmokeFailed(RuntimeError):
    """The model ran but did not train: a loss that is not finite, or no gradient anywhere."""


@dataclass
class Context:
    device: torch.device
    kind: str  # npu | cuda | cpu
    backend: str
    rank: int
    local_rank: int
    world_size: int
    steps: int
    amp: bool
    generator: torch.Generator
    batch: int = 1  # per-card samples of the synthetic input (the recipe's smoke: batch)
    overfit: bool = False  # one fixed batch, every step; stop once the overfit bar is reached
    lr: float | None = None  # an overfit run's base learning rate (the recipe's smoke: overfit: lr)
    warmup_steps: int = 0  # an overfit run's lr warmup and schedule (smoke: overfit: warmup_*, schedule)
    warmup_ratio: float = 0.1
    schedule: str = "constant"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise SmokeFailed(f"{name}={value!r} is not a whole number") from None


def init(seed: int = 0) -> Context:
    """The device and process group of this worker, from the launcher's and torchrun's environment."""
    kind = os.environ.get("PATCHKIT_TRAIN_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    backend = os.environ.get("PATCHKIT_TRAIN_BACKEND") or dispatch.backend(kind)
    device = torch.device(kind, local_rank) if kind in ("cuda", "npu") else torch.device(kind)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend)
    steps = _env_int("PATCHKIT_SMOKE_STEPS", DEFAULT_STEPS)
    if steps < 1:
        raise SmokeFailed(f"PATCHKIT_SMOKE_STEPS must be at least 1, not {steps}")
    amp = os.environ.get("PATCHKIT_SMOKE_AMP", "0") not in ("", "0", "false", "no")
    batch = _env_int("PATCHKIT_SMOKE_BATCH", 1)
    seed = _env_int("PATCHKIT_SMOKE_SEED", seed)  # `patchkit train --seed`
    per_rank = seed * 1000 + rank
    generator = torch.Generator().manual_seed(per_rank)
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    # The upstream code draws from the global generators too (Sparse4D's GridMask from numpy's): seeded per rank,
    # a run repeats itself, as the synthetic batch does.
    random.seed(per_rank)
    try:
        import numpy
    except ImportError:  # torch runs without numpy; then nothing draws from it
        pass
    else:
        numpy.random.seed(per_rank)
    overfit = os.environ.get("PATCHKIT_SMOKE_OVERFIT", "0") not in ("", "0")
    ctx = Context(device, kind, backend, rank, local_rank, world_size, steps, amp, generator, max(1, batch),
                  overfit, _env_float("PATCHKIT_SMOKE_LR") if overfit else None)
    if overfit:
        ctx.warmup_steps, ctx.warmup_ratio = _warmup(os.environ.get("PATCHKIT_SMOKE_WARMUP", ""))
        ctx.schedule = os.environ.get("PATCHKIT_SMOKE_SCHEDULE") or "constant"
        if ctx.schedule not in overfit_mod.SCHEDULES:
            raise SmokeFailed(f"PATCHKIT_SMOKE_SCHEDULE={ctx.schedule!r} is not one of {', '.join(overfit_mod.SCHEDULES)}")
    return ctx


def _warmup(value: str) -> tuple[int, float]:
    """PATCHKIT_SMOKE_WARMUP=STEPS:RATIO (set by the launcher from the recipe); empty: no warmup."""
    if not value:
        return 0, 0.1
    try:
        steps, ratio = value.split(":")
        return int(steps), float(ratio)
    except ValueError:
        raise SmokeFailed(f"PATCHKIT_SMOKE_WARMUP={value!r} is not STEPS:RATIO") from None


def _env_float(name: str) -> float | None:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else None
    except ValueError:
        raise SmokeFailed(f"{name}={value!r} is not a number") from None


def fixed(batch: Callable[[int], Any]) -> Callable[[int], Any]:
    """An overfit run's inputs: the first batch, made once; every step gets a fresh copy (a model that
    edits its inputs in place cannot change the next step's)."""
    first = batch(1)
    return lambda _step: copy.deepcopy(first)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Scale every parameter group's learning rate so that the optimizer's base rate becomes LR (groups the
    config gives another rate, such as a backbone at 0.1x, keep their ratio)."""
    base = optimizer.defaults.get("lr") or lr
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr"] / base


def mm_config(path: str) -> Any:
    """An upstream mmcv config (mmcv.Config.fromfile) as a smoke run uses it: the model's plugin registered
    (cfg.plugin_dir, imported as the upstream tools/train.py does, from the repository root that is the
    working directory), an overfit run's `cfg_options` merged in, and nothing to load -- no load_from / resume_from checkpoint, no `pretrained` weights
    and no `Pretrained` init_cfg anywhere in the model (those files would have to be downloaded; the
    weights come from the model's own init_weights()). Sizes are the script's to shrink."""
    from mmcv import Config

    cfg = Config.fromfile(path)
    options = os.environ.get("PATCHKIT_SMOKE_CFG_OPTIONS")
    if options:  # an overfit run's overrides (the recipe's smoke: overfit: cfg_options), as --cfg-options merges them
        cfg.merge_from_dict(json.loads(options))
    cfg.load_from = None
    cfg.resume_from = None
    _drop_checkpoints(cfg.model)
    if cfg.get("plugin") and cfg.get("plugin_dir"):
        importlib.import_module(cfg.plugin_dir.strip("/").replace("/", "."))
    return cfg


def _drop_checkpoints(node: Any) -> None:
    if isinstance(node, Mapping):
        node.pop("pretrained", None)  # type: ignore[attr-defined]
        init = node.get("init_cfg")
        if isinstance(init, Mapping) and init.get("type") == "Pretrained":
            node.pop("init_cfg")  # type: ignore[attr-defined]
        elif isinstance(init, list):
            init[:] = [i for i in init if not (isinstance(i, Mapping) and i.get("type") == "Pretrained")]
        for value in node.values():
            _drop_checkpoints(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _drop_checkpoints(value)


def mm_model(cfg: Any, build: Callable[..., torch.nn.Module]) -> torch.nn.Module:
    """build(cfg.model) (mmdet's build_detector, mmdet3d's build_model) with the config's train/test cfg when
    it has them, then its init_weights() with mmcv's logger quiet (it logs every parameter at INFO)."""
    extra = {k: cfg[k] for k in ("train_cfg", "test_cfg") if cfg.get(k) is not None}
    model = build(cfg.model, **extra)
    logging.getLogger("mmcv").setLevel(logging.WARNING)
    model.init_weights()
    return model


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors anywhere inside dicts, lists and tuples moved to device; everything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_device(v, device) for v in obj)
    return obj


def parse_losses(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss and its terms: a tensor is the total; from a dict, every term whose key contains
    'loss' counts (the mmdet convention), a list of tensors counts as their sum."""
    if isinstance(out, torch.Tensor):
        return out, {"loss": out}
    if not isinstance(out, Mapping):
        raise SmokeFailed(f"the losses function returned {type(out).__name__}, not a tensor or a dict of losses")
    terms: dict[str, torch.Tensor] = {}
    for key, value in out.items():
        if "loss" not in str(key):
            continue
        if isinstance(value, torch.Tensor):
            terms[str(key)] = value.mean()
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            terms[str(key)] = sum(v.mean() for v in value)  # type: ignore[assignment]
        else:
            raise SmokeFailed(f"loss term {key!r} is {type(value).__name__}, not a tensor or a list of tensors")
    if not terms:
        raise SmokeFailed(f"no loss term among the model's outputs ({', '.join(map(str, out)) or 'none'})")
    total = sum(terms.values())
    return total, terms  # type: ignore[return-value]


def _synchronize(ctx: Context) -> None:
    if ctx.kind == "cuda":
        torch.cuda.synchronize(ctx.device)
    elif ctx.kind == "npu":
        torch.npu.synchronize(ctx.device)  # type: ignore[attr-defined]


def _say(ctx: Context, message: str) -> None:
    if ctx.rank == 0:
        print(f"{PREFIX} {message}", flush=True)


@dataclass
class Curve:
    """What the steps gave: the total loss and each term (means over the ranks) and the step times."""
    totals: list[float] = field(default_factory=list)
    terms: dict[str, list[float | None]] = field(default_factory=dict)  # None: a step without that term
    times: list[float] = field(default_factory=list)
    floors: dict[str, list[float | None]] = field(default_factory=dict)  # see `run`'s floors


class SoftTargetFloor(torch.nn.Module):
    """A binary cross-entropy-with-logits loss (logits, targets in [0, 1]) that also keeps, in `floor`, the least
    value it can take for the targets it was just given: the loss at the logits logit(target), i.e. the targets'
    entropy, weighted and reduced by the wrapped loss itself. The loss it returns is the wrapped loss's, unchanged.
    For a term whose targets follow the model's own predictions, the overfit bar judges the excess over this."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.floor: torch.Tensor | None = None

    def forward(self, pred: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            best = torch.logit(target.detach().float().clamp(1e-6, 1 - 1e-6)).to(pred.dtype)
            self.floor = self.loss(best, target.detach(), *args, **kwargs)
        return self.loss(pred, target, *args, **kwargs)


def run(ctx: Context, model: torch.nn.Module, batch: Callable[[int], Any],
        losses: Callable[[torch.nn.Module, Any], Any], optimizer: torch.optim.Optimizer | None = None,
        lr: float = 1e-4, find_unused_parameters: bool = True, grad_clip: float | None = 35.0,
        prime: Callable[[torch.nn.Module, Any], Any] | None = None,
        floors: Callable[[], Mapping[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """`ctx.steps` optimizer steps; `batch(step)` makes the inputs, `losses(model, inputs)` runs the
    forward pass and returns the losses. An overfit run (ctx.overfit) trains on the first batch only, at
    ctx.lr, and stops once patchkit/train/overfit.py's bar is reached; `prime(model, inputs)`, when given, runs
    once on that batch before the first step, without gradients (a model that keeps the previous frame's
    state then starts from the state every later step has). `floors()`, when given, is called after each forward
    pass: for loss terms whose targets follow the model's own predictions, the least value each could take for this
    step's targets (SoftTargetFloor), by term name, the same names on every rank; they are logged as
    `floor(NAME)=value` and the overfit bar judges those terms by their excess over it. Returns the per-step
    totals, terms, floors and times."""
    model.to(ctx.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SmokeFailed("the model has no trainable parameters")
    wrapped: torch.nn.Module = model
    if ctx.world_size > 1:
        ids = [ctx.local_rank] if ctx.kind in ("cuda", "npu") else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                            find_unused_parameters=find_unused_parameters)
    optimizer = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if ctx.overfit:
        batch = fixed(batch)
        set_lr(optimizer, ctx.lr or lr)
        scheduled = _Schedule(ctx, optimizer)
        if prime is not None:
            with torch.no_grad():
                prime(model, to_device(batch(0), ctx.device))
    step_once = _Step(ctx, wrapped, params, optimizer, losses, grad_clip, floors)
    _say(ctx, f"start model={type(model).__name__} parameters={sum(p.numel() for p in params)} device={ctx.device} "
              f"backend={ctx.backend if ctx.world_size > 1 else 'none'} world_size={ctx.world_size} "
              f"steps={ctx.steps} amp={ctx.amp}" + (f" overfit lr={ctx.lr or lr:g}" if ctx.overfit else "")
              + (f" warmup={ctx.warmup_steps}:{ctx.warmup_ratio:g}" if ctx.overfit and ctx.warmup_steps else "")
              + (f" schedule={ctx.schedule}" if ctx.overfit and ctx.schedule != "constant" else ""))
    curve = Curve()
    for step in range(1, ctx.steps + 1):
        if ctx.overfit:
            scheduled(step)
        total, terms, least, elapsed, reached = step_once(to_device(batch(step), ctx.device), step)
        curve.totals.append(total)
        curve.times.append(elapsed)
        overfit_mod.extend(curve.terms, terms, len(curve.totals))
        overfit_mod.extend(curve.floors, least, len(curve.totals))
        detail = " ".join([*(f"{k}={v:.6g}" for k, v in terms.items()),
                           *(f"floor({k})={v:.6g}" for k, v in least.items())])
        _say(ctx, f"step {step}/{ctx.steps} loss {total:.6f} time {elapsed:.3f} s grads={reached}/{len(params)} {detail}")
        if ctx.overfit and overfit_mod.reached(curve.totals, curve.terms, curve.floors):
            break
    if ctx.world_size > 1:
        dist.barrier()
    _finish(ctx, curve)
    if ctx.world_size > 1 and dist.is_initialized():
        # (on torch 2.13 gloo's threads outlive this: DDP keeps the group referenced from C++; the
        # bootstrap's at-exit settle_collective_threads keeps a rank from aborting at exit)
        dist.destroy_process_group()
    return {"losses": curve.totals, "times": curve.times, "terms": curve.terms, "floors": curve.floors,
            "finite": all(math.isfinite(t) for t in curve.totals)}


def _finish(ctx: Context, curve: Curve) -> None:
    steady = curve.times[1:] or curve.times
    _say(ctx, f"done steps={len(curve.totals)} losses finite, mean step time {sum(steady) / len(steady):.3f} s "
              f"(after the first), loss {curve.totals[0]:.4f} -> {curve.totals[-1]:.4f}")
    if ctx.overfit:
        found = overfit_mod.verdict(curve.totals, curve.terms, curve.floors)
        if found:
            _say(ctx, f"overfit {'passed' if found.passed else 'FAILED'}: loss {found.start:.4f} -> {found.end:.4f} "
                      f"(x{found.ratio:.3f}) in {found.steps} steps; bar: {found.bar}"
                      + (f"; rising: {', '.join(found.terms_rising)}" if found.terms_rising else ""))


class _Schedule:
    """An overfit run's lr per step: every group's rate (after set_lr) times overfit.lr_factor."""

    def __init__(self, ctx: Context, optimizer: torch.optim.Optimizer) -> None:
        self.ctx, self.optimizer = ctx, optimizer
        self.base = [group["lr"] for group in optimizer.param_groups]

    def __call__(self, step: int) -> None:
        ctx = self.ctx
        factor = overfit_mod.lr_factor(step, ctx.steps, ctx.warmup_steps, ctx.warmup_ratio, ctx.schedule)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * factor


class _Step:
    """One optimizer step with the checks: finite losses, gradients that reached parameters and are finite."""

    def __init__(self, ctx: Context, wrapped: torch.nn.Module, params: list[torch.nn.Parameter],
                 optimizer: torch.optim.Optimizer, losses: Callable[[torch.nn.Module, Any], Any],
                 grad_clip: float | None, floors: Callable[[], Mapping[str, torch.Tensor]] | None = None) -> None:
        self.ctx, self.wrapped, self.params, self.optimizer, self.losses = ctx, wrapped, params, optimizer, losses
        self.grad_clip, self.floors = grad_clip, floors
        self.scaler = torch.amp.GradScaler(ctx.kind) if ctx.amp and ctx.kind in ("cuda", "npu") else None

    def __call__(self, inputs: Any, step: int) -> tuple[float, dict[str, float], dict[str, float], float, int]:
        ctx = self.ctx
        _synchronize(ctx)
        start = time.perf_counter()
        with dispatch.autocast(ctx.device, enabled=ctx.amp):
            total, terms = parse_losses(self.losses(self.wrapped, inputs))
        least = {k: v.detach().float().mean() for k, v in (self.floors() if self.floors else {}).items()}
        _check_finite(ctx, step, total, terms)
        with_grad = self.backward(total, step)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        _synchronize(ctx)
        elapsed = time.perf_counter() - start
        values = _mean_over_ranks(ctx, torch.stack([total.detach().float(),
                                                    *(v.detach().float() for v in terms.values()), *least.values()]))
        return (values[0], dict(zip(terms, values[1:1 + len(terms)])), dict(zip(least, values[1 + len(terms):])),
                elapsed, len(with_grad))

    def backward(self, total: torch.Tensor, step: int) -> list[torch.nn.Parameter]:
        ctx, scaler = self.ctx, self.scaler
        self.optimizer.zero_grad(set_to_none=True)
        (scaler.scale(total) if scaler else total).backward()
        if scaler:
            scaler.unscale_(self.optimizer)
        with_grad = [p for p in self.params if p.grad is not None]
        if not with_grad:
            raise SmokeFailed(f"rank {ctx.rank} step {step}: the backward pass reached no parameter")
        # the clip's total norm is finite exactly when every gradient is (one sync; max_norm inf: no clip).
        # Under a GradScaler non-finite gradients are expected now and then: its step skips them.
        norm = torch.nn.utils.clip_grad_norm_(with_grad, self.grad_clip or math.inf)
        if not scaler and not torch.isfinite(norm):
            nonfinite = sum(1 for p in with_grad if not torch.isfinite(p.grad).all())  # type: ignore[arg-type]
            raise SmokeFailed(f"rank {ctx.rank} step {step}: {nonfinite} parameter(s) got non-finite gradients")
        return with_grad


def _check_finite(ctx: Context, step: int, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
    if torch.stack([torch.isfinite(v.detach()).all() for v in (total, *terms.values())]).all():  # one sync
        return
    bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
    raise SmokeFailed(f"rank {ctx.rank} step {step}: loss is not finite ("
                      + (", ".join(f"{k}={float(terms[k].detach()):g}" for k in bad)
                         or f"total={float(total.detach()):g}") + ")")


def _mean_over_ranks(ctx: Context, values: torch.Tensor) -> list[float]:
    """The total and the terms averaged over the ranks (one all-reduce), so every rank logs and decides alike."""
    if ctx.world_size > 1:
        values = values.to(ctx.device)
        dist.all_reduce(values)
        values = values / ctx.world_size
    return [float(v) for v in values.cpu()]
