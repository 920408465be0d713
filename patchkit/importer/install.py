"""The install reader: how the README builds each upstream, as an `install:` recipe (patchkit.install).

`pip install -e .` and `python setup.py develop` are editable installs, `python setup.py install` and
`pip install .` wheels; their `VAR=value` prefixes are the build environment (FORCE_NPU goes to
npu_env: the port builds for the NPU, a CPU or CUDA install leaves it out); `pip install -r FILE` run
in an upstream's folder are its run-time requirements, installed from the workspace. Upstreams built
nowhere run from the workspace (build: none). The order of the steps is the `after:` order.
"""

from __future__ import annotations

from patchkit.importer.model import Finding, Step
from patchkit.importer.upstreams import Plans

_NPU_ONLY = ("FORCE_NPU",)
_DROP = ("PIP", "pip")


def recipes(steps: list[Step], plans: Plans, names: dict[str, str]) -> tuple[dict[str, dict[str, object]], list[Finding]]:
    """url -> install recipe for every upstream in NAMES (url -> manifest name)."""
    out: dict[str, dict[str, object]] = {}
    order: list[str] = []
    findings: list[Finding] = []
    for step in steps:
        found = plans.at(step.cwd)
        if found is None or found[1] or found[0].url not in names or step.kind not in ("pip", "build"):
            continue
        url = found[0].url
        recipe = out.setdefault(url, {})
        words = list(step.words)
        if step.kind == "build":
            action = words[2] if len(words) > 2 else ""
            if action in ("develop", "install"):
                recipe["build"] = "editable" if action == "develop" else "wheel"
            elif action not in ("build_ext", "build"):
                findings.append(Finding(str(step.where), step.text, "a setup.py action the install reader does not know"))
        elif "install" in words:
            rest = words[words.index("install") + 1:]
            if "-r" in rest:
                reqs = rest[rest.index("-r") + 1:rest.index("-r") + 2]
                recipe.setdefault("requires", []).extend(["-r", *reqs])  # type: ignore[union-attr]
            elif "-e" in rest or "." in rest:
                recipe["build"] = "editable" if "-e" in rest else "wheel"
                if "--no-build-isolation" in rest:
                    recipe["pip_args"] = ["--no-build-isolation"]
            else:
                continue
        for key, value in step.env:
            recipe.setdefault("npu_env" if key in _NPU_ONLY else "env", {})[key] = value  # type: ignore[index]
        if url not in order:
            order.append(url)
    for url in names:
        recipe = out.setdefault(url, {})
        recipe.setdefault("build", "none" if not plans.by_url[url].pypi else "wheel")
        if url in order:
            before = [names[u] for u in order[:order.index(url)]]
            if before:
                recipe["after"] = before
    return {url: _ordered(r) for url, r in out.items() if url in names}, findings


def _ordered(recipe: dict[str, object]) -> dict[str, object]:
    keys = ("after", "build", "env", "npu_env", "pip_args", "requires")
    return {k: recipe[k] for k in keys if k in recipe}
