r"""`train/<model>.yaml`: how a model trains. Checked like the manifest: file, line, message.

    workdir: surroundocc            # the workspace repo that is the working directory
    entry: tools/train.py           # the entry script, relative to workdir
    config: projects/configs/surroundocc/surroundocc.py   # optional
    args: ["{config}", "--launcher", "pytorch", "--work-dir", "{work_dir}"]   # also {cards}, {nnodes}, {world_size}, {device}
    cards: 8
    multinode: false
    global_batch: 8                 # the published figure, shown beside the measured one
    epochs: 12
    batch: {config_key: data.samples_per_gpu}   # or {arg: --batch-size} or {value: 8}
    performance: {steps: 600, args: ["--cfg-options", "runner.max_iters=600"]}
                                    # no args: the launcher stops the run once the log reaches `steps`
    env: {all: {...}, npu: {...}, cuda: {...}, cpu: {...}}
    log:
      step_time: 'time: (?P<value>[0-9.]+)'
      step: 'Iter \[(?P<value>[0-9]+)/'   # optional: the iteration a log line is at
      step_time_unit: s             # s, ms or it/s
      warmup_steps: 5
      metrics: {mIoU: 'mIoU: (?P<value>[0-9.]+)'}
    published:                      # optional: the figures the port published, copied into results.json
      chip: Atlas 800T A2           # what they were measured on
      cards: 8
      step_ms: 1054                 # optional, as are fps and metrics
      fps: 7.59
      metrics: {mIoU: 0.1995}
    smoke:                          # `patchkit train MODEL --smoke`: the real model, synthetic batch, a few steps
      script: train/smoke/surroundocc.py   # our own script, relative to the port root (beside upstreams.yaml)
      args: ["{config}"]            # optional, same placeholders
      steps: 4                      # default steps (--steps overrides)
      batch: 1                      # per-card batch of the synthetic input (default 1)
      env: {all: {...}, cpu: {...}} # optional, over the recipe's env
      overfit:                      # `--smoke --overfit`: one fixed batch, the loss must fall (patchkit/train/overfit.py)
        steps: 40                   # at most this many steps (60 at most; the run stops once the bar is reached)
        lr: 1.0e-3                  # every parameter group's lr scaled so the base lr is this
        warmup_steps: 10            # optional: the lr rises linearly over these steps, from warmup_ratio x lr
        warmup_ratio: 0.3333        # optional (default 0.1, as mmcv's linear warmup)
        schedule: cosine            # optional: constant (default) or cosine (down to 1e-3 x lr at the last step)
        cfg_options: {model.head.x: 0}  # optional: overrides of the upstream config for this run (smoke.mm_config)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from patchkit.errors import BadInput, Diagnostic, InvalidInput
from patchkit.manifest import DEVICES
from patchkit.paths import display
from patchkit.train import overfit as overfit_mod
from patchkit.yamlcheck import Checker

UNITS = ("s", "ms", "it/s")


@dataclass(frozen=True)
class Recipe:
    model: str
    path: Path
    workdir: str
    entry: str
    args: tuple[str, ...]
    config: str | None = None
    cards: int = 1
    multinode: bool = False
    global_batch: int | None = None
    epochs: int | None = None
    batch: tuple[str, str] | None = None  # ("config_key"|"arg"|"value", what)
    performance_steps: int | None = None
    performance_args: tuple[str, ...] = ()
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    step_time: str | None = None
    step: str | None = None  # the iteration number in the log, when lines are not one per step
    step_time_unit: str = "s"
    warmup_steps: int = 0
    metrics: dict[str, str] = field(default_factory=dict)
    smoke: Smoke | None = None
    published: Published | None = None


@dataclass(frozen=True)
class Published:
    chip: str
    cards: int
    step_ms: float | None = None
    fps: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OverfitRun:
    steps: int = 60
    lr: float = 1e-3
    warmup_steps: int = 0
    warmup_ratio: float = 0.1
    schedule: str = "constant"
    cfg_options: dict[str, object] = field(default_factory=dict)  # dotted config key -> value

    def settings(self) -> dict[str, object]:
        """What the run was set up with, for its record and its note."""
        return {"lr": self.lr, "warmup_steps": self.warmup_steps, "warmup_ratio": self.warmup_ratio,
                "schedule": self.schedule, "cfg_options": dict(self.cfg_options)}


@dataclass(frozen=True)
class Smoke:
    script: str  # relative to the port root
    args: tuple[str, ...] = ()
    steps: int = 4
    batch: int = 1
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    line: int = 0  # where the section is, for messages
    overfit: OverfitRun = field(default_factory=OverfitRun)


def recipe_path(root: Path, model: str) -> Path:
    return root / "train" / f"{model}.yaml"


def load(root: Path, model: str) -> Recipe:
    path = recipe_path(root, model)
    if not path.is_file():
        raise BadInput(f"model {model!r} has no training recipe ({display(path)} not found)")
    checker = _RecipeChecker(path, display(path))
    recipe = checker.check(path.read_text(encoding="utf-8"), model)
    if checker.problems:
        raise InvalidInput(checker.problems)
    assert recipe is not None
    return recipe


_KEYS = ("workdir", "entry", "config", "args", "cards", "multinode", "global_batch", "epochs", "batch",
         "performance", "env", "log", "smoke", "published")


class _RecipeChecker(Checker):
    def check(self, text: str, model: str) -> Recipe | None:
        root = self.compose(text)
        if root is None:
            if not self.problems:
                self.problems.append(Diagnostic(self.where, 1, "the recipe is empty"))
            return None
        top = self.mapping(root, "recipe", _KEYS)
        if not isinstance(root, yaml.MappingNode):
            return None
        values: dict[str, object] = {}
        for key in ("workdir", "entry"):
            node = self.required(top, key, root, "recipe")
            values[key] = self.string(node, key) if node is not None else None
        if "config" in top:
            values["config"] = self.string(top["config"][1], "config")
        values["args"] = self.strings(top["args"][1], "args") if "args" in top else ()
        for key in ("cards", "global_batch", "epochs"):
            if key in top:
                values[key] = self.positive(top[key][1], key)
        if "multinode" in top:
            values["multinode"] = self.boolean(top["multinode"][1], "multinode")
        if "batch" in top:
            values["batch"] = self.batch(top["batch"][1])
        if "performance" in top:
            perf = self.mapping(top["performance"][1], "performance", ("steps", "args"))
            if "steps" in perf:
                values["performance_steps"] = self.positive(perf["steps"][1], "performance: steps")
            if "args" in perf:
                values["performance_args"] = self.strings(perf["args"][1], "performance: args")
        if "env" in top:
            values["env"] = self.env(top["env"][1])
        if "log" in top:
            values.update(self.log(top["log"][1]))
        if "smoke" in top:
            values["smoke"] = self.smoke(top["smoke"][1])
        if "published" in top:
            values["published"] = self.published(top["published"][1])
        if any(values.get(k) is None for k in ("workdir", "entry")) or self.problems:
            return None
        return Recipe(model, self.path, **values)  # type: ignore[arg-type]

    def smoke(self, node: yaml.Node) -> Smoke | None:
        fields = self.mapping(node, "smoke", ("script", "args", "steps", "batch", "env", "overfit"))
        if not isinstance(node, yaml.MappingNode):
            return None
        script = self.required(fields, "script", node, "smoke")
        text = self.string(script, "smoke: script") if script is not None else None
        if text is not None and (text.startswith("/") or ".." in text.split("/") or not text.endswith(".py")):
            self.error(script, "smoke: script must be a .py file path inside the port repository "
                               "(relative, no '..')")
            text = None
        values: dict[str, object] = {"line": node.start_mark.line + 1}
        if "args" in fields:
            values["args"] = self.strings(fields["args"][1], "smoke: args")
        for key in ("steps", "batch"):
            if key in fields:
                number = self.positive(fields[key][1], f"smoke: {key}")
                if number is not None:
                    values[key] = number
        if "env" in fields:
            values["env"] = self.env(fields["env"][1])
        if "overfit" in fields:
            values["overfit"] = self.overfit(fields["overfit"][1])
        return Smoke(text, **values) if text is not None else None  # type: ignore[arg-type]

    def published(self, node: yaml.Node) -> Published | None:
        fields = self.mapping(node, "published", ("chip", "cards", "step_ms", "fps", "metrics"))
        chip, cards = (self.required(fields, k, node, "published") for k in ("chip", "cards"))
        values: dict[str, object] = {
            "chip": self.string(chip, "published: chip") if chip is not None else None,
            "cards": self.positive(cards, "published: cards") if cards is not None else None}
        for key in ("step_ms", "fps"):
            if key in fields:
                values[key] = self.real(fields[key][1], f"published: {key}")
        if "metrics" in fields:
            values["metrics"] = {name: self.real(value, f"published: metrics: {name}")
                                 for name, (_, value) in self.mapping(fields["metrics"][1], "published: metrics",
                                                                      ()).items()}
        if values["chip"] is None or values["cards"] is None:
            return None
        return Published(**values)  # type: ignore[arg-type]

    def overfit(self, node: yaml.Node) -> OverfitRun:
        fields = self.mapping(node, "smoke: overfit",
                              ("steps", "lr", "warmup_steps", "warmup_ratio", "schedule", "cfg_options"))
        values: dict[str, object] = {}
        if "steps" in fields:
            steps = self.positive(fields["steps"][1], "smoke: overfit: steps")
            if steps is not None and steps > overfit_mod.MAX_STEPS:
                self.error(fields["steps"][1], f"smoke: overfit: steps must be at most {overfit_mod.MAX_STEPS}")
            elif steps is not None:
                values["steps"] = steps
        if "lr" in fields:
            lr = self.real(fields["lr"][1], "smoke: overfit: lr")
            if lr is not None:
                values["lr"] = lr
        if "warmup_steps" in fields:
            values["warmup_steps"] = self.positive(fields["warmup_steps"][1], "smoke: overfit: warmup_steps")
        if "warmup_ratio" in fields:
            ratio = self.real(fields["warmup_ratio"][1], "smoke: overfit: warmup_ratio")
            if ratio is not None and ratio > 1:
                self.error(fields["warmup_ratio"][1], "smoke: overfit: warmup_ratio must be at most 1")
            values["warmup_ratio"] = ratio
        if "schedule" in fields:
            schedule = self.string(fields["schedule"][1], "smoke: overfit: schedule")
            if schedule not in overfit_mod.SCHEDULES:
                self.error(fields["schedule"][1], f"smoke: overfit: schedule must be one of {', '.join(overfit_mod.SCHEDULES)}")
            values["schedule"] = schedule
        if "cfg_options" in fields:
            values["cfg_options"] = self.cfg_options(fields["cfg_options"][1])
        return OverfitRun(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]

    def cfg_options(self, node: yaml.Node) -> dict[str, object]:
        """`dotted.config.key: value` pairs (mmcv's --cfg-options), each value a number, true/false or a string."""
        out: dict[str, object] = {}
        for key, (knode, vnode) in self.mapping(node, "smoke: overfit: cfg_options", ()).items():
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key):
                self.error(knode, f"smoke: overfit: cfg_options: {key!r} is not a dotted config key (such as model.head.x)")
            elif not isinstance(vnode, yaml.ScalarNode) or vnode.tag == "tag:yaml.org,2002:null":
                self.error(vnode, f"smoke: overfit: cfg_options: {key} must be a number, true/false or a string")
            else:
                out[key] = yaml.safe_load(yaml.serialize(vnode))
        return out

    def real(self, node: yaml.Node, what: str) -> float | None:
        try:
            value = float(node.value) if isinstance(node, yaml.ScalarNode) else math.nan
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            return value
        self.error(node, f"{what} must be a positive number (such as 1.0e-3)")
        return None

    def strings(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list of strings")
            return ()
        out = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or item.tag == "tag:yaml.org,2002:null":
                self.error(item, f"{what}: every item must be a string")
            else:
                out.append(str(item.value))
        return tuple(out)

    def positive(self, node: yaml.Node, what: str) -> int | None:
        if isinstance(node, yaml.ScalarNode) and re.fullmatch(r"[1-9][0-9]*", str(node.value)):
            return int(node.value)
        self.error(node, f"{what} must be a positive whole number")
        return None

    def boolean(self, node: yaml.Node, what: str) -> bool:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            return str(node.value).lower() in ("true", "yes", "on")
        self.error(node, f"{what} must be true or false")
        return False

    def batch(self, node: yaml.Node) -> tuple[str, str] | None:
        kinds = ("config_key", "arg", "value")
        fields = self.mapping(node, "batch", kinds)
        if len(fields) != 1:
            self.error(node, f"batch: give exactly one of {', '.join(kinds)}")
            return None
        kind, (_, value) = next(iter(fields.items()))
        text = self.string(value, f"batch: {kind}")
        return (kind, text) if text is not None else None

    def env(self, node: yaml.Node) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for kind, (_, value) in self.mapping(node, "env", ("all", *DEVICES)).items():
            variables = {}
            for name, (knode, vnode) in self.mapping(value, f"env: {kind}", ()).items():
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    self.error(knode, f"env: {kind}: {name!r} is not a variable name")
                    continue
                text = self.scalar(vnode, f"env: {kind}: {name}")
                if text is not None:
                    variables[name] = text
            out[kind] = variables
        return out

    def scalar(self, node: yaml.Node, what: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:null":
            return str(node.value)
        self.error(node, f"{what} must be a value")
        return None

    def regex(self, node: yaml.Node, what: str) -> str | None:
        text = self.string(node, what)
        if text is None:
            return None
        try:
            compiled = re.compile(text)
        except re.error as exc:
            self.error(node, f"{what}: not a regular expression: {exc}")
            return None
        if "value" not in compiled.groupindex:
            self.error(node, f"{what}: the regular expression needs a (?P<value>...) group")
            return None
        return text

    def log(self, node: yaml.Node) -> dict[str, object]:
        fields = self.mapping(node, "log", ("step_time", "step", "step_time_unit", "warmup_steps", "metrics"))
        out: dict[str, object] = {}
        if "step" in fields:
            out["step"] = self.regex(fields["step"][1], "log: step")
        if "step_time" in fields:
            out["step_time"] = self.regex(fields["step_time"][1], "log: step_time")
        if "step_time_unit" in fields:
            unit = self.string(fields["step_time_unit"][1], "log: step_time_unit")
            if unit not in UNITS:
                self.error(fields["step_time_unit"][1], f"log: step_time_unit must be one of {', '.join(UNITS)}")
            else:
                out["step_time_unit"] = unit
        if "warmup_steps" in fields:
            wnode = fields["warmup_steps"][1]
            if isinstance(wnode, yaml.ScalarNode) and re.fullmatch(r"[0-9]+", str(wnode.value)):
                out["warmup_steps"] = int(wnode.value)
            else:
                self.error(wnode, "log: warmup_steps must be a whole number")
        if "metrics" in fields:
            metrics = {}
            for name, (_, value) in self.mapping(fields["metrics"][1], "log: metrics", ()).items():
                regex = self.regex(value, f"log: metrics: {name}")
                if regex:
                    metrics[name] = regex
            out["metrics"] = metrics
        return out
