"""Which upstreams a port names and what each statement says about its pin (the five forms).

From the README's steps: `git clone [-b REF] URL [DIR]` makes an upstream and its folder;
`git checkout REF` and `git reset --hard REF` in that folder pin it (the steps that really run); the
reference block (`url=` + `commit_id=` or `commit SHA`) and prose only say what it should be. A patch
applied inside an installed package's folder (site-packages) and a repository too big to mirror
become PyPI upstreams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from patchkit.importer import readme as readme_mod
from patchkit.importer.model import Finding, PinEvidence, Step, UpstreamPlan
from patchkit.importer.readme import SITE, Readme

# too big to mirror here (drivingsdk-upstreams.md): their PyPI releases instead
TOO_BIG = {"open-mmlab/mmdetection": "mmdet", "open-mmlab/mmsegmentation": "mmsegmentation",
           "ultralytics/ultralytics": "ultralytics", "vllm-project/vllm": "vllm"}
_GITHUB = re.compile(r"^(?:https?://|git@)(?:www\.)?github\.com[/:]([^/]+)/([^/]+?)(?:\.git)?/?(?:/tree/\S*)?$", re.I)
_SELF = re.compile(r"(gitcode\.com|gitee\.com|github\.com)/Ascend/DrivingSDK", re.I)
SHA_LIKE = re.compile(r"^[0-9a-f]{7,40}$")


def normalize(url: str) -> str:
    """One spelling per repository: https://github.com/owner/name.git."""
    m = _GITHUB.match(url.strip())
    return f"https://github.com/{m.group(1)}/{m.group(2)}.git" if m else url.strip().rstrip("/")


def owner_name(url: str) -> str | None:
    m = _GITHUB.match(url)
    return f"{m.group(1)}/{m.group(2)}" if m else None


@dataclass
class Plans:
    by_url: dict[str, UpstreamPlan] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)  # folder -> url
    findings: list[Finding] = field(default_factory=list)

    def at(self, cwd: str) -> tuple[UpstreamPlan, str] | None:
        """The upstream whose checkout holds CWD (the longest folder that contains it), and the rest."""
        best = None
        for folder, url in self.folders.items():
            if cwd == folder or cwd.startswith(folder + "/"):
                if best is None or len(folder) > len(best[0]):
                    best = (folder, url)
        if best is None:
            return None
        return self.by_url[best[1]], cwd[len(best[0]):].strip("/")


def plans(readme: Readme) -> Plans:
    result = Plans()
    for step in readme.steps:
        if step.kind == "clone":
            _clone(step, readme, result)
        elif step.kind in ("checkout", "reset"):
            _pin_step(step, result)
        elif step.kind == "apply" and step.cwd.startswith(SITE):
            _site_package(step, readme, result)
    for url, evidence, where in readme.references:
        if _SELF.search(url):
            continue
        key = normalize(url)
        plan = result.by_url.get(key)
        if plan is None:
            folder = (owner_name(key) or key).rsplit("/", 1)[-1].removesuffix(".git")
            plan = result.by_url.setdefault(key, UpstreamPlan(key, folder))
            result.folders.setdefault(folder, key)
        if evidence:
            plan.evidence.append(evidence)
    return result


def _clone(step: Step, readme: Readme, result: Plans) -> None:
    url = readme_mod.clone_url(step.words)
    folder = readme_mod.clone_folder(step.words)
    if not url or not folder:
        result.findings.append(Finding(str(step.where), step.text, "a clone step without a URL"))
        return
    key = normalize(url)
    if _SELF.search(key):
        result.findings.append(Finding(str(step.where), step.text, "a clone of DrivingSDK itself (the port's own "
                                       "repository): not an upstream"))
        return
    plan = result.by_url.setdefault(key, UpstreamPlan(key, readme_mod.join(step.cwd, folder)))
    result.folders[readme_mod.join(step.cwd, folder)] = key
    branch = readme_mod.clone_branch(step.words)
    if branch:
        plan.evidence.append(PinEvidence("clone -b", branch, step.where, True))
    big = TOO_BIG.get(owner_name(key) or "")
    if big and not plan.pypi:
        version = (branch or "").lstrip("v") or readme.versions.get(big, "")
        if re.fullmatch(r"\d+(\.\w+)+", version):
            plan.pypi = f"{big}=={version}"
        else:
            result.findings.append(Finding(str(step.where), f"{owner_name(key)}: too big to mirror here",
                                           "and no release version is named to take it from PyPI"))


def _pin_step(step: Step, result: Plans) -> None:
    refs = [w for w in step.words[2:] if not w.startswith("-")]
    found = result.at(step.cwd)
    if len(refs) != 1 or found is None or found[1]:
        result.findings.append(Finding(str(step.where), step.text,
                                       "not a checkout of a whole upstream folder the README cloned: not used as a pin"))
        return
    form = "git checkout" if step.kind == "checkout" else "git reset --hard"
    ref = refs[0].removeprefix("tags/")
    found[0].evidence.append(PinEvidence(form, ref.lower() if SHA_LIKE.match(ref.lower()) else ref, step.where, True))


def _site_package(step: Step, readme: Readme, result: Plans) -> None:
    """A patch applied inside an installed package: that package's PyPI release is the upstream."""
    rest = step.cwd[len(SITE):].strip("/")
    package = rest.split("/")[0] if rest else ""
    if not package:
        result.findings.append(Finding(str(step.where), step.text, "a patch applied in site-packages itself: "
                                       "which package it belongs to is not said"))
        return
    dist = package.replace("_", "-").lower()
    version = readme.versions.get(dist) or _pip_version(readme, dist)
    key = f"pypi:{dist}"
    if not version:
        result.findings.append(Finding(str(step.where), step.text,
                                       f"patches the installed {dist}, whose version the README does not name"))
        return
    plan = result.by_url.setdefault(key, UpstreamPlan(key, f"{SITE}/{package}"))
    plan.pypi = f"{dist}=={version}"
    plan.site_prefix = f"{package}/" if "/" not in rest else rest + "/"
    result.folders[f"{SITE}/{package}"] = key


def _pip_version(readme: Readme, dist: str) -> str | None:
    for step in readme.steps:
        for word in step.words if step.kind == "pip" else ():
            name, sep, version = word.partition("==")
            if sep and name.lower().replace("_", "-") == dist:
                return version
    return None
