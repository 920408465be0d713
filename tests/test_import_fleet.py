"""`patchkit import --all`: a synthetic fleet of DrivingSDK-style port folders on one upstream.

Five ports patch `lib` alike and apart: a change every one makes (f2 returns 'npu'), at two bases (the
newer one added a line right above it, so a layer made at one base does not apply strictly at the
other: split, one layer per base), with different line offsets and contexts (one port's hunk also
holds its own change); one port has an A5 variant; one folder is not a port. Nothing leaves the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.gitfixtures import commit, git, patchkit
from tests.test_import import CORE, diff_of, mirrors, port_folder, readme, snapshot, upstream  # noqa: F401

URL = "https://github.com/up/lib.git"
NPU = ("return 2", "return 'npu'")  # the change every port makes


def edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert old in text
        text = text.replace(old, new, 1)
    return text


def port(tmp_path: Path, repo: Path, name: str, pin: str, base: str, *changes: tuple[str, str],
         extra: dict[str, str | bytes] | None = None) -> Path:
    steps = f"git clone {URL}\ncd lib\ngit checkout {pin}\ngit apply ../lib.patch\ncd .."
    patch = diff_of(repo, pin, {"lib/core.py": edit(base, *changes)})
    return port_folder(tmp_path, name, readme(URL, pin, steps), {"lib.patch": patch, **(extra or {})})


@pytest.fixture
def fleet(tmp_path: Path, mirrors: Path) -> dict[str, object]:  # noqa: F811
    repo, old = upstream(mirrors, "lib", {"lib/core.py": CORE, "README.md": "lib\n"})
    new_core = edit(CORE, ("\n\ndef f2", "\n# two\ndef f2"))  # a line right above the shared change
    new = commit(repo, {"lib/core.py": new_core}, "note f2")
    top = "".join(f"# line {i}\n" for i in range(5))
    port(tmp_path, repo, "Alpha", new, new_core, NPU, ("return 7", "return 77"))
    port(tmp_path, repo, "Beta", new, new_core, NPU, ("return 3", "return 33"), ("def f0", top + "def f0"))
    a5 = diff_of(repo, new, {"lib/core.py": edit(new_core, ("return 9", "return 99"), ("return 0", "return 'a5'"))})
    port(tmp_path, repo, "Echo", new, new_core, ("return 9", "return 99"),
         extra={"lib_a5.patch": a5, "requirements.txt": "numpy==1.23\nattrs\n",
                "requirements_pytorch2.7.1_a5.txt": "attrs\ntorchvision==0.22.1\n"})
    port(tmp_path, repo, "Charlie", old, CORE, NPU, ("return 6", "return 66"))
    port(tmp_path, repo, "Delta", old, CORE, NPU, ("return 8", "return 88"))
    (tmp_path / "DrivingSDK/model_examples/NotAPort").mkdir()
    return {"examples": tmp_path / "DrivingSDK/model_examples", "old": old, "new": new, "root": tmp_path / "ports"}


def import_all(root: Path, examples: Path) -> tuple[int, dict]:
    root.mkdir(exist_ok=True)
    run = patchkit(root, "import", "--all", str(examples), "--json")
    return run.code, json.loads(run.out)


def test_a_fleet_shares_its_common_change_split_by_base_and_a_second_run_changes_nothing(fleet) -> None:
    root, examples, old, new = fleet["root"], fleet["examples"], fleet["old"], fleet["new"]
    code, report = import_all(root, examples)
    assert code == 1 and not report["ok"]  # one folder is not a port: reported, the rest imported
    assert report["totals"] == {**report["totals"], "folders": 6, "added": 5, "not_added": 0, "failed": 1,
                                "shared_layers": 2, "hunks_absorbed": 4, "variants": 1}
    (failed,) = [f for f in report["folders"] if f["status"] == "failed"]
    assert failed["folder"] == "NotAPort" and "no README.md" in failed["reason"]
    layers = {d["name"]: d for d in report["shared_layers"]}
    assert set(layers) == {f"lib-shared-core-at-{new[:7]}", f"lib-shared-core-at-{old[:7]}"}
    assert layers[f"lib-shared-core-at-{new[:7]}"]["models"] == ["alpha", "beta"]
    assert layers[f"lib-shared-core-at-{old[:7]}"]["models"] == ["charlie", "delta"]
    assert all(d["hunks"] == 1 and d["files"] == ["lib/core.py"] for d in layers.values())
    manifest = yaml.safe_load((root / "upstreams.yaml").read_text())
    assert manifest["version"] == 2 and manifest["upstreams"]["lib"]["pin"] == new  # the pin most models need
    models = manifest["models"]
    assert models["alpha"]["upstreams"] == {"lib": [f"lib-shared-core-at-{new[:7]}", "alpha"]}
    assert models["charlie"]["upstreams"] == {"lib": {"pin": old, "track": "main",
                                                      "layers": [f"lib-shared-core-at-{old[:7]}", "charlie"]}}
    shared = (root / f"patches/lib-shared-core-at-{old[:7]}/lib/0001-lib-core.py.patch").read_text()
    assert "model_examples/Charlie/lib.patch" in shared and "model_examples/Delta/lib.patch" in shared
    assert "Upstream-Status: Pending" in shared and "+    return 'npu'" in shared
    for model in ("alpha", "beta", "charlie", "delta"):  # own layers keep only their own changes
        own = "".join(p.read_text() for p in (root / f"patches/{model}/lib").glob("*.patch"))
        assert "'npu'" not in own and own.count("\n+    return ") == 1
    beta = (root / "patches/beta/lib/0001-lib-core.py.patch").read_text()
    assert "return 33" in beta and f"in the shared layer lib-shared-core-at-{new[:7]} (applied before" in beta
    for model, want in (("alpha", "return 77"), ("beta", "return 33"), ("charlie", "return 66"), ("delta", "return 88")):
        applied = patchkit(root, "apply", model)
        assert applied.code == 0, applied.err
        text = (root / f"work/{model}/lib/lib/core.py").read_text()
        assert "return 'npu'" in text and want in text
    assert patchkit(root, "validate").code == 0
    before = snapshot(root)
    code, again = import_all(root, examples)
    assert code == 1 and again["changed"] == [] and snapshot(root) == before
    assert again["totals"] == report["totals"]
    alone = json.loads(patchkit(root, "import", str(examples / "Alpha"), "--json").out)
    assert any("imported alone" in n["reason"] for n in alone["notes"])
    assert patchkit(root, "apply", "alpha").code == 0 and patchkit(root, "validate").code == 0


def test_a_variant_patch_becomes_a_layer_on_the_model_and_its_requirements_its_requires(fleet) -> None:
    root, examples = fleet["root"], fleet["examples"]
    import_all(root, examples)
    echo = yaml.safe_load((root / "upstreams.yaml").read_text())["models"]["echo"]
    variant = echo["variants"]["a5"]
    assert variant["upstreams"] == {"lib": ["echo-a5"]}
    assert variant["requires"] == ["torchvision==0.22.1"]  # the requirements file's extras over requirements.txt
    (patch,) = (root / "patches/echo-a5/lib").glob("*.patch")
    text = patch.read_text()
    assert "+    return 'a5'" in text and "return 99" not in text.split("---\n", 1)[1]  # only the difference
    assert patchkit(root, "apply", "echo").code == 0
    work = root / "work/echo/lib"
    assert "return 'a5'" not in (work / "lib/core.py").read_text()
    git(work, "apply", "--check", str(patch))  # the variant's layer applies strictly on the model's series
    if "--variant" in patchkit(root, "apply", "--help").out:
        applied = patchkit(root, "apply", "echo", "--variant", "a5", "-w", str(root / "work-a5"))
        assert applied.code == 0, applied.err
        work = root / "work-a5/echo/lib"
    else:  # the verbs of manifest version 2 not there yet: the layer by hand
        git(work, "apply", str(patch))
    core = (work / "lib/core.py").read_text()
    assert "return 'a5'" in core and "return 99" in core
    found = json.loads((root / "imports/fleet.json").read_text())["variants"]
    assert [(v["model"], v["name"], v["files"]) for v in found] == \
        [("echo", "a5", ["lib_a5.patch", "requirements_pytorch2.7.1_a5.txt"])]


def test_an_older_imports_model_upstream_is_rewritten_to_the_long_form(tmp_path: Path, mirrors: Path) -> None:  # noqa: F811
    repo, old = upstream(mirrors, "lib", {"lib/core.py": CORE})
    new = commit(repo, {"lib/core.py": CORE + "X = 1\n"}, "later")
    root = tmp_path / "ports"
    root.mkdir()
    first = port(tmp_path, repo, "One", new, CORE + "X = 1\n", ("return 1", "return 11"))
    second = port(tmp_path, repo, "Two", old, CORE, ("return 5", "return 55"))
    assert patchkit(root, "import", str(first)).code == 0
    legacy = (root / "upstreams.yaml").read_text()
    # what a version-1 importer wrote for Two: its own upstream `lib-two`, marked as Two's
    legacy = legacy.replace("models:\n", "  # >>> patchkit import two: upstreams\n  lib-two:\n"
                            f"    url: {URL}\n    pin: {old}\n    track: main\n  # <<< patchkit import two: upstreams\n"
                            "models:\n", 1)
    legacy += ("  # >>> patchkit import two: model\n  two:\n    upstreams:\n      lib-two: []\n"
               "  # <<< patchkit import two: model\n")
    (root / "upstreams.yaml").write_text(legacy)
    assert patchkit(root, "validate").code == 0
    run = patchkit(root, "import", str(second))
    assert run.code == 0, run.err
    manifest = yaml.safe_load((root / "upstreams.yaml").read_text())
    assert "lib-two" not in manifest["upstreams"] and manifest["version"] == 2
    assert manifest["models"]["two"]["upstreams"] == {"lib": {"pin": old, "track": "main", "layers": ["two"]}}
    assert patchkit(root, "apply", "two").code == 0
    if "--variant" in patchkit(root, "apply", "--help").out:  # the verbs of manifest version 2: the model's own pin
        assert old in git(root / "work/two/lib", "rev-list", "HEAD").split()
        assert new not in git(root / "work/two/lib", "rev-list", "HEAD").split()
