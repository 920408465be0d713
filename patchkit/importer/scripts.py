"""The training-script reader: the port's `test/train_*.sh` (read as text, never run) and its
`test/env_npu.sh`, made a recipe (train/<model>.yaml). Every value says where it was read; what cannot
be derived is a `TODO(import)` comment, never a guess.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from patchkit.importer import readme as readme_mod
from patchkit.importer.model import Finding
from patchkit.importer.regen import Tree
from patchkit.importer.upstreams import Plans, normalize

_LAUNCHERS = ("torchrun", "torch.distributed.launch", "torch.distributed.run", "dist_train.sh", "accelerate")
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclass
class Launch:
    kind: str
    entry: str | None
    args: list[str]
    cards: str | None
    where: str


@dataclass
class RecipeOut:
    text: str | None
    todos: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def scripts(port: Path) -> list[Path]:
    folder = port / "test"
    return sorted(p for p in folder.glob("*.sh") if p.is_file() and not p.name.startswith("env")) if folder.is_dir() else []


def read(port: Path, readme: readme_mod.Readme, model: str, names: dict[str, str], plans: Plans,
         trees: dict[str, Tree] | None = None) -> RecipeOut:
    found = scripts(port)
    if not found:
        return RecipeOut(None, findings=[Finding("test/", "training scripts", "none: no recipe made")])
    trains = [s for s in found if s.name.startswith("train")] or found
    full = next((s for s in trains if "full" in s.name), None) or \
        next((s for s in trains if not any(w in s.name for w in ("perf", "eval", "1p", "multi"))), trains[0])
    perf = next((s for s in found if "perf" in s.name), None)
    workdir = _workdir(readme, names, plans)
    out = RecipeOut(None)
    launch = _launch(full, port, trees or {}, workdir and next((u for u, n in names.items() if n == workdir), None))
    lines = [f"# train/{model}.yaml -- made by `patchkit import` from the port's {full.relative_to(port)}"
             f"{' and ' + str(perf.relative_to(port)) if perf else ''} (read, not run).",
             "# Lines marked TODO(import) could not be derived from the port: fill them in by hand.", ""]
    lines += _field("workdir", workdir, "the upstream the port's test/ folder is copied into", out)
    if launch is None:
        lines += _field("entry", None, f"no launch line ({', '.join(_LAUNCHERS)}, python X.py) in {full.name}", out)
    else:
        lines += _field("entry", launch.entry, f"{launch.where} ({launch.kind})", out)
        config = next((a for a in launch.args if a.endswith(".py") and not a.startswith("-")), None)
        if config:
            lines += [f"# {launch.where}", f"config: {config}"]
        args = ["{config}" if a == config else a for a in launch.args]
        todo = [a for a in args if "TODO" in a]
        lines += [f"# {launch.where}" + (" -- TODO(import): replace the TODO arguments" if todo else ""),
                  f"args: [{', '.join(_quote(a) for a in args)}]"]
        if todo:
            out.todos.append(f"args: {', '.join(todo)}")
        if launch.cards and launch.cards.isdigit():
            lines += [f"# {launch.where}", f"cards: {launch.cards}"]
        else:
            lines += _todo(f"cards: the launch line says {launch.cards!r}", out)
    lines += _env(port, out)
    lines += _performance(port, perf, full, out)
    lines += _log(full, out)
    lines += _published(readme, port, out)
    out.text = "\n".join(lines) + "\n"
    return out


def _field(key: str, value: str | None, where: str, out: RecipeOut) -> list[str]:
    if value:
        return [f"# {where}", f"{key}: {_quote(value)}"]
    out.todos.append(f"{key}: {where}")
    return [f"# TODO(import): {key}: {where}", f"{key}: TODO"]


def _todo(text: str, out: RecipeOut) -> list[str]:
    out.todos.append(text)
    return [f"# TODO(import): {text}"]


def _quote(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_./{}=-]+", value) and not value.startswith(("{", "-")) or \
        re.fullmatch(r"--?[A-Za-z0-9_-]+", value) else '"' + value.replace('"', '\\"') + '"'


def _workdir(readme: readme_mod.Readme, names: dict[str, str], plans: Plans) -> str | None:
    for url, evidence, _ in readme.references:
        if normalize(url) in names and evidence is not None:
            return names[normalize(url)]
    for step in readme.steps:
        if step.kind == "copy" and any(w.rstrip("/*").endswith("test") for w in step.words[1:-1]):
            found = plans.at(readme_mod.join(step.cwd, step.words[-1]))
            if found and found[0].url in names:
                return names[found[0].url]
    return None


def _variables(text: str) -> dict[str, str]:
    """Variables the script sets once, to a literal (set twice or computed: not derivable)."""
    out: dict[str, str] = {}
    twice = set()
    for m in re.finditer(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S*)", text, re.M):
        name, value = m.group(1), m.group(2).strip("\"'")
        if name in out or re.search(r"[$`();]", value):
            twice.add(name)
        out[name] = value
    return {k: v for k, v in out.items() if k not in twice}


def _logical(text: str) -> list[tuple[int, str]]:
    out, pending, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        start = start or number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending, start = "", 0
    return out


def _words(line: str, variables: dict[str, str]) -> list[str]:
    line = re.split(r"\s(?:>|2>|&>|1>)|\s&\s*$|\|", " " + line)[0]
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    return [_VAR.sub(lambda m: variables.get(m.group(1), f"TODO(${m.group(1)})"), w) for w in words]


def _launch(script: Path, port: Path, trees: dict[str, Tree], workdir_url: str | None) -> Launch | None:
    text = script.read_text(encoding="utf-8", errors="replace")
    variables = _variables(text)
    rel = script.relative_to(port).as_posix()
    for number, line in _logical(text):
        words = [w for w in _words(line, variables) if w not in ("nohup", "bash", "exec")]
        if not words or words[0].startswith("#"):
            continue
        where = f"{rel}:{number}"
        if words[0] == "torchrun" or "torch.distributed.launch" in words or "torch.distributed.run" in words:
            return _torchrun(words, where)
        if words[0].endswith("dist_train.sh"):
            return Launch("upstream dist_train.sh", words[0].removeprefix("./").rsplit("/", 1)[0] + "/train.py",
                          [words[1], "--launcher", "pytorch", *words[3:]] if len(words) > 1 else [],
                          words[2] if len(words) > 2 else None, where)
        if words[0] in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
            cards = _opt(words, "--gpus") or _opt(words, "--num-npu") or _opt(words, "--nproc_per_node")
            return Launch("python", words[1].removeprefix("./"), words[2:], cards, where)
    return None


def _opt(words: list[str], name: str) -> str | None:
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def _torchrun(words: list[str], where: str) -> Launch:
    cards = _opt(words, "--nproc_per_node") or _opt(words, "--nproc-per-node")
    entry_at = next((i for i, w in enumerate(words) if w.endswith(".py") and not w.startswith("-")), None)
    if entry_at is None:
        return Launch("torchrun", None, [], cards, where)
    return Launch("torchrun", words[entry_at].removeprefix("./"), words[entry_at + 1:], cards, where)


def _env(port: Path, out: RecipeOut) -> list[str]:
    path = port / "test" / "env_npu.sh"
    if not path.is_file():
        return []
    npu, lines = {}, [f"# test/env_npu.sh (sourced by the launch scripts on NPU)"]
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = re.match(r"^\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not m:
            continue
        value = m.group(2).strip().strip("\"'")
        if re.search(r"[$`]", value):
            lines += _todo(f"env npu {m.group(1)}: test/env_npu.sh:{number} computes it ({value})", out)
        else:
            npu[m.group(1)] = value
    body = ", ".join(f"{k}: {_quote_str(v)}" for k, v in npu.items())
    return lines + ["env:", f"  npu: {{{body}}}"]


def _quote_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _performance(port: Path, perf: Path | None, full: Path, out: RecipeOut) -> list[str]:
    if perf is None:
        return _todo("performance: the port has no performance script", out)
    a, b = full.read_text(errors="replace"), perf.read_text(errors="replace")
    extra = sorted(set(_variables(b).items()) - set(_variables(a).items()))
    flags = [f"{k}={v}" for k, v in extra if "PERF" in k.upper()]
    steps = None
    for path in sorted(port.rglob("*.py")):
        m = re.search(r"brake_at\((\d+)\)", path.read_text(errors="replace"))
        if m and "_a5" not in path.stem and steps is None:  # the A5 variant's file is not what the README runs
            steps = (m.group(1), path.relative_to(port).as_posix())
    lines = [f"# {perf.relative_to(port)}: differs from {full.name} in " +
             (", ".join(f"{k}={v}" for k, v in extra) or "nothing this reader sees")]
    if steps:
        lines += [f"# the port's runtime patcher stops at step {steps[0]} (brake_at in {steps[1]}); "
                  "patchkit's launcher stops the run there", f"performance: {{steps: {steps[0]}}}"]
    else:
        lines += _todo("performance: steps or args of a bounded run" + (f" (the port switches it with {', '.join(flags)})"
                                                                          if flags else ""), out)
    return lines


def _log(script: Path, out: RecipeOut) -> list[str]:
    text = script.read_text(errors="replace")
    grep = re.search(r"grep -a ['\"]([^'\"]+)['\"][^\n]*?awk -F ['\"]([^'\"]*time[^'\"]*)['\"]", text)
    if not grep:
        return _todo(f"log: step_time: no `grep ... | awk -F 'time...'` in {script.name}", out)
    # grep's pattern is a (basic) regular expression already; awk's field separator is a literal
    literal = re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", grep.group(2).strip())
    pattern = grep.group(1).strip() + r".*?" + literal + r"\s*(?P<value>[0-9.]+)"
    return [f"# {script.name}: {grep.group(0)[:120]}", "log:", "  step_time: '" + pattern.replace("'", "''") + "'",
            "  step_time_unit: s"] + \
        [f"  # TODO(import): step_time_unit and warmup_steps: check against a log"]


def _published(readme: readme_mod.Readme, port: Path, out: RecipeOut) -> list[str]:
    text = (port / "README.md").read_text(encoding="utf-8", errors="replace").splitlines()
    rows = [(n, line) for n, line in enumerate(text, 1) if line.strip().startswith("|") and
            re.search(r"Atlas|A2|NPU|竞品|GPU", line)]
    if not rows:
        return _todo("global_batch: the README has no results table", out)
    lines = ["# The README's results table (the published figures):"] + \
        [f"#   README.md:{n}: {line.strip()}" for n, line in rows]
    for key, header in (("global_batch", r"global\s*batch"), ("epochs", r"^\s*epochs?\s*$")):
        found = _column(text, header)
        if len(set(v for v, _ in found)) == 1:
            lines += [f"# README.md:{found[0][1]}: the NPU row's {key.replace('_', ' ')}", f"{key}: {found[0][0]}"]
        else:
            lines += _todo(f"{key}: the README's tables say {', '.join(f'{v} (README.md:{n})' for v, n in found) or 'nothing'}",
                           out)
    return lines


def _column(text: list[str], header: str) -> list[tuple[int, int]]:
    """(value, line) of the column HEADER in each results table's NPU row (Atlas / A2 / NPU), where it is a number."""
    found = []
    columns: list[str] = []
    for n, line in enumerate(text, 1):
        if not line.strip().startswith("|"):
            columns = []
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if any(re.search(header, c, re.I) for c in cells) and not columns:
            columns = cells
            continue
        if columns and re.search(r"Atlas|A2|NPU", line) and len(cells) == len(columns):
            at = next(i for i, c in enumerate(columns) if re.search(header, c, re.I))
            if re.fullmatch(r"\d+", cells[at]):
                found.append((int(cells[at]), n))
    return found
