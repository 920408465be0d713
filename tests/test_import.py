"""`patchkit import`: synthetic DrivingSDK-style port folders built here, one difficulty each.

Upstreams are throwaway repositories reached through PATCHKIT_MIRROR_TEMPLATE, as the ports'
github.com URLs are; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from patchkit.importer import patches as patches_mod
from patchkit.train import recipe as recipe_mod
from tests.gitfixtures import commit, git, make_upstream, patchkit, write_files

CORE = "".join(f"def f{i}():\n    return {i}\n\n\n" for i in range(10))


@pytest.fixture
def mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "mirrors"
    folder.mkdir()
    monkeypatch.setenv("PATCHKIT_MIRROR_TEMPLATE", f"{folder}/{{owner}}+{{name}}")
    # anything not mirrored here fails at once instead of reaching the network
    monkeypatch.setenv("PATCHKIT_URL_REWRITE", f"https://github.com/nomirror/={tmp_path}/absent/")
    return folder


def upstream(mirrors: Path, name: str, files: dict[str, str | bytes], owner: str = "up") -> tuple[Path, str]:
    repo = mirrors / f"{owner}+{name}"
    return repo, make_upstream(repo, files)


def diff_of(repo: Path, base: str, files: dict[str, str | bytes]) -> bytes:
    """A plain `git diff` (no header: as DrivingSDK stores them) of FILES changed at BASE."""
    work = repo.parent / f"{repo.name}-work"
    if not work.exists():
        git(repo.parent, "clone", "-q", str(repo), str(work))
    git(work, "checkout", "-q", "--detach", base)
    write_files(work, files)
    git(work, "add", "-A")
    data = subprocess.run(["git", "diff", "--cached", base], cwd=work, check=True, capture_output=True).stdout
    git(work, "reset", "-q", "--hard", base)
    return data


def port_folder(tmp_path: Path, name: str, readme: str, files: dict[str, str | bytes]) -> Path:
    """A DrivingSDK checkout holding model_examples/NAME, committed (the port's git history)."""
    sdk = tmp_path / "DrivingSDK"
    port = sdk / "model_examples" / name
    write_files(port, {"README.md": readme, **files})
    git(tmp_path, "init", "-q", str(sdk)) if not (sdk / ".git").exists() else None
    git(sdk, "add", "-A")
    git(sdk, "commit", "-q", "--author", "Port Er <porter@example.org>", "-m", f"add {name}")
    return port


def readme(url: str, sha: str, steps: str) -> str:
    return (f"# Model\n\n- reference:\n\n  ```shell\n  url={url}\n  commit_id={sha}\n  ```\n\n"
            f"## install\n\n```shell\n{steps}\n```\n")


def import_into(root: Path, port: Path, *args: str) -> dict:
    root.mkdir(exist_ok=True)
    run = patchkit(root, "import", str(port), "--json", *args)
    assert run.code == 0, run.err + run.out
    return json.loads(run.out)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "work" not in p.relative_to(root).parts}


@pytest.fixture
def simple(tmp_path: Path, mirrors: Path) -> tuple[Path, str]:
    repo, pin = upstream(mirrors, "Model", {"model/core.py": CORE, "README.md": "model\n"})
    commit(repo, {"model/core.py": CORE.replace("return 9", "return 90")}, "later work")
    patch = diff_of(repo, pin, {"model/core.py": CORE.replace("return 2", "return 'npu'"),
                                "model/npu.py": "DEVICE = 'npu'\n"})
    steps = (f"git clone https://github.com/up/Model.git\ncp -f model.patch Model\ncd Model\n"
             f"git checkout {pin}\ngit apply --reject --whitespace=fix model.patch\npip install -e .\ncd ..")
    return port_folder(tmp_path, "Model", readme("https://github.com/up/Model.git", pin, steps),
                       {"model.patch": patch}), pin


def test_one_port_becomes_a_model_that_applies_and_a_second_import_changes_nothing(tmp_path: Path, simple) -> None:
    port, pin = simple
    root = tmp_path / "ports"
    report = import_into(root, port)
    manifest = yaml.safe_load((root / "upstreams.yaml").read_text())
    assert manifest["upstreams"]["model"]["pin"] == pin and manifest["upstreams"]["model"]["track"] == "main"
    assert manifest["upstreams"]["model"]["install"]["build"] == "editable"
    assert manifest["models"]["model"]["upstreams"] == {"model": ["model"]}
    series = (root / "patches/model/model/series").read_text().split("\n")
    names = [n for n in series if n and not n.startswith("#")]
    assert len(names) == 2  # one patch a file
    text = (root / "patches/model/model" / names[0]).read_text()
    sdk_head = git(port.parent.parent, "rev-parse", "HEAD")
    assert "From: Port Er <porter@example.org>" in text and "Upstream-Status: Pending" in text
    assert f"Origin: DrivingSDK model_examples/Model/model.patch at {sdk_head}" in text
    assert (root / ".gitattributes").read_text() == "*.patch -text -whitespace\n"
    assert patchkit(root, "validate").code == 0
    applied = patchkit(root, "apply", "model")
    assert applied.code == 0, applied.err
    assert (root / "work/model/model/model/npu.py").read_text() == "DEVICE = 'npu'\n"
    before = snapshot(root)
    again = import_into(root, port)
    assert again["changed"] == [] and snapshot(root) == before
    assert report["upstreams"]["model"]["how"] == "pinned"


def test_a_branch_is_resolved_to_its_commit_and_tracked(tmp_path: Path, mirrors: Path) -> None:
    repo, _ = upstream(mirrors, "lib", {"lib.py": CORE})
    git(repo, "checkout", "-q", "-b", "1.x")
    head = commit(repo, {"lib.py": CORE + "X = 1\n"}, "on 1.x")
    git(repo, "checkout", "-q", "main")
    steps = "git clone -b 1.x https://github.com/up/lib.git\ncd lib\nMMCV_WITH_OPS=1 FORCE_NPU=1 python setup.py install"
    port = port_folder(tmp_path, "M", "# M\n\n```shell\n" + steps + "\n```\n", {})
    import_into(tmp_path / "ports", port)
    up = yaml.safe_load((tmp_path / "ports/upstreams.yaml").read_text())["upstreams"]["lib"]
    assert (up["pin"], up["track"]) == (head, "1.x")
    assert up["install"] == {"build": "wheel", "env": {"MMCV_WITH_OPS": "1"}, "npu_env": {"FORCE_NPU": "1"}}


def test_contradicting_pins_are_reported_and_the_step_that_runs_wins(tmp_path: Path, mirrors: Path) -> None:
    repo, first = upstream(mirrors, "Model", {"a.py": CORE})
    second = commit(repo, {"a.py": CORE + "Y = 2\n"}, "second")
    steps = f"git clone https://github.com/up/Model.git\ncd Model\ngit reset --hard {second}"
    port = port_folder(tmp_path, "M", readme("https://github.com/up/Model", first, steps), {})
    report = import_into(tmp_path / "ports", port)
    assert report["upstreams"]["model"]["pin"] == second
    (contradiction,) = report["contradictions"]
    assert contradiction["where"] == "README.md:7" and first in contradiction["what"]
    assert "git reset --hard at README.md:" in contradiction["reason"]


def test_a_pin_absent_upstream_is_inferred_from_where_the_patches_apply_strictly(tmp_path: Path, mirrors: Path) -> None:
    repo, c1 = upstream(mirrors, "Model", {"a.py": CORE, "b.py": "B = 1\n"})
    c2 = commit(repo, {"b.py": "B = 2\n"}, "b only")   # a.py unchanged: the patch fits here too
    c3 = commit(repo, {"a.py": CORE.replace("return 5", "return 55")}, "a changes")
    patch = diff_of(repo, c2, {"a.py": CORE.replace("return 5", "return 'five'")})
    absent = "459bc060901c9c4920f802252f04b290a449e4a1"
    steps = f"git clone https://github.com/up/Model.git\ncd Model\ngit checkout {absent}\ngit apply m.patch"
    port = port_folder(tmp_path, "M", readme("https://github.com/up/Model.git", absent, steps), {"m.patch": patch})
    report = import_into(tmp_path / "ports", port)
    decision = report["upstreams"]["model"]
    assert decision["how"] == "inferred" and decision["candidates"] == [c2, c1] and decision["pin"] == c2
    assert c3 not in decision["candidates"]
    text = (tmp_path / "ports/upstreams.yaml").read_text()
    assert "# INFERRED by patchkit import: the port names " + absent in text
    assert patchkit(tmp_path / "ports", "apply", "m").code == 0


def test_a_patch_that_lost_its_crs_is_regenerated_to_apply_strictly_and_keep_crlf(tmp_path: Path, mirrors: Path) -> None:
    crlf = CORE.replace("\n", "\r\n")
    repo, pin = upstream(mirrors, "Model", {"win.py": crlf.encode()})
    stored = diff_of(repo, pin, {"win.py": crlf.replace("return 3", "return 33").encode()}).replace(b"\r\n", b"\n")
    steps = f"git clone https://github.com/up/Model.git\ncd Model\ngit checkout {pin}\ngit apply --whitespace=fix m.patch"
    port = port_folder(tmp_path, "M", readme("https://github.com/up/Model.git", pin, steps), {"m.patch": stored})
    report = import_into(tmp_path / "ports", port)
    assert any("regenerated to apply strictly" in r["reason"] and "CRLF" in r["reason"] for r in report["repairs"])
    (patch,) = (tmp_path / "ports/patches/m/model").glob("0001-*.patch")
    data = patch.read_bytes()
    assert b"+    return 33\r\n" in data and b"-    return 3\r\n" in data
    assert patchkit(tmp_path / "ports", "apply", "m").code == 0
    assert (tmp_path / "ports/work/m/model/win.py").read_bytes() == crlf.replace("return 3", "return 33").encode()


def test_malformed_but_unambiguous_patches_are_repaired_and_said(tmp_path: Path, mirrors: Path) -> None:
    repo, pin = upstream(mirrors, "Model", {"a.py": CORE})
    good = diff_of(repo, pin, {"a.py": CORE.replace("return 4", "return 44")})
    lying = good.replace(b"@@ -15,7 +15,7 @@", b"@@ -15,9 +15,9 @@").rstrip(b"\n")  # counts lie, no final newline
    assert lying != good.rstrip(b"\n")
    steps = f"git clone https://github.com/up/Model.git\ncd Model\ngit checkout {pin}\ngit apply m.patch"
    port = port_folder(tmp_path, "M", readme("https://github.com/up/Model.git", pin, steps), {"m.patch": lying})
    report = import_into(tmp_path / "ports", port)
    reasons = " | ".join(f"{r['where']} {r['what']}: {r['reason']}" for r in report["repairs"])
    assert "no final newline" in reasons and "m.patch:5 a.py: hunk header says -9 +9" in reasons
    assert patchkit(tmp_path / "ports", "apply", "m").code == 0


def test_an_ambiguous_patch_is_refused_with_file_and_line(tmp_path: Path, mirrors: Path) -> None:
    repo, pin = upstream(mirrors, "Model", {"a.py": CORE})
    bad = diff_of(repo, pin, {"a.py": CORE.replace("return 4", "return 44")}).replace(b"+    return 44", b"*    return 44")
    steps = f"git clone https://github.com/up/Model.git\ncd Model\ngit checkout {pin}\ngit apply m.patch"
    port = port_folder(tmp_path, "M", readme("https://github.com/up/Model.git", pin, steps), {"m.patch": bad})
    root = tmp_path / "ports"
    root.mkdir()
    run = patchkit(root, "import", str(port))
    assert run.code == 2 and "model_examples/M/m.patch:10: line b'*    return 44' in the hunk at line 5" in run.err and "Traceback" not in run.err
    assert not any(root.iterdir())


def test_junk_empty_files_and_submodule_entries_are_dropped_and_said() -> None:
    data = (b"diff --git a/0 b/0\nnew file mode 100644\nindex 0000000..e69de29\n"
            b"diff --git a/sub b/sub\ndeleted file mode 160000\nindex 60ce864..0000000\n--- a/sub\n+++ /dev/null\n"
            b"@@ -1 +0,0 @@\n-Subproject commit 60ce86423d8e5f5ed3b5e6e5e7c1a3a1b7e9f0a1\n"
            b"diff --git a/pkg/__init__.py b/pkg/__init__.py\nnew file mode 100644\nindex 0000000..e69de29\n")
    files, repairs = patches_mod.parse(data, "x.patch")
    assert [f.path for f in files] == ["pkg/__init__.py"]
    assert {r.what for r in repairs} == {"0: dropped", "sub: dropped"}


def test_copy_overs_become_a_patch_or_a_whole_file_overlay(tmp_path: Path, mirrors: Path) -> None:
    big = "".join(f"def g{i}(x):\n    return x * {i}\n\n\n" for i in range(30))
    repo, pin = upstream(mirrors, "lib", {"lib/small.py": CORE, "lib/big.py": big})
    steps = ("git clone -b main https://github.com/up/lib.git\n"
             "cp -f lib_need/small.py lib/lib/small.py\ncp -f lib_need/big.py lib/lib/big.py\ncd lib\npip install -e .")
    port = port_folder(tmp_path, "M", "# M\n\n```shell\n" + steps + "\n```\n",
                       {"lib_need/small.py": CORE.replace("return 1\n", "return 'one'\n").replace("\n", "\r\n"),
                        "lib_need/big.py": "# rewritten for the NPU\nfrom npu import g\n"})
    report = import_into(tmp_path / "ports", port)
    root = tmp_path / "ports"
    (patch,) = (root / "patches/m/lib").glob("*.patch")
    assert b"-    return 1\n+    return 'one'\n" in patch.read_bytes()  # the upstream file's LF kept
    files = yaml.safe_load((root / "overlays/m/files.yaml").read_text())["files"]
    base = git(repo, "rev-parse", f"{pin}:lib/big.py")
    assert files == [{"upstream": "lib", "path": "lib/big.py", "base": base}]
    assert (root / "overlays/m/files/lib/lib/big.py").read_text().startswith("# rewritten")
    assert any("line ends" in r["reason"] for r in report["repairs"])
    assert patchkit(root, "apply", "m").code == 0
    assert (root / "work/m/lib/lib/big.py").read_text().startswith("# rewritten")


PATCHER = '''\
import mx_driving
from mx_driving.patcher import PatcherBuilder, Patch, msda
open("RAN_PATCHER", "w").write("executed")


def head_patch(head, options):
    SCALE = head.SCALE

    def forward(self, x):
        return x * SCALE

    if hasattr(head, "Head"):
        head.Head.forward = forward
    else:
        raise AttributeError("Head.forward")


def generate_patcher_builder():
    return PatcherBuilder().add_module_patch("mmcv", Patch(msda)).add_module_patch("model.head", Patch(head_patch))
'''


def test_a_runtime_patcher_becomes_fingerprinted_overlays_and_external_hooks(tmp_path: Path, mirrors: Path) -> None:
    head = "SCALE = 2\n\n\nclass Head:\n    def forward(self, x):\n        return x\n"
    repo, pin = upstream(mirrors, "Model", {"model/__init__.py": "", "model/head.py": head})
    steps = f"git clone https://github.com/up/Model.git\ncp patch.py Model/tools\ncd Model\ngit checkout {pin}"
    port = port_folder(tmp_path, "M", readme("https://github.com/up/Model.git", pin, steps), {"patch.py": PATCHER})
    report = import_into(tmp_path / "ports", port)
    root = tmp_path / "ports"
    overlay = (root / "overlays/m/patcher_head_patch.py").read_text()
    assert "from model.head import SCALE" in overlay
    assert 'replace("model.head:Head.forward", upstream="model", fingerprint="' in overlay
    (hook,) = report["external_hooks"]
    assert hook["what"] == "msda on mmcv" and "mx_driving built-in" in hook["reason"]
    assert patchkit(root, "apply", "m").code == 0
    listed = patchkit(root, "overlay", "list", "m")
    assert "holds" in listed.out and "model.head:Head.forward" in listed.out, listed.out + listed.err
    assert not list(tmp_path.rglob("RAN_PATCHER"))


def test_nothing_in_the_port_folder_is_executed(tmp_path: Path, simple) -> None:
    port, _ = simple
    marker = tmp_path / "MARKER"
    evil = f"touch {marker}\n"
    write_files(port, {"install_model.sh": evil, "test/train_8p.sh": evil + "torchrun --nproc_per_node=8 train.py\n",
                       "test/env_npu.sh": evil, "setup.py": f"open({str(marker)!r}, 'w')\n"})
    (port / "README.md").write_text((port / "README.md").read_text() + "\n```shell\nbash install_model.sh\n```\n")
    git(port.parent.parent, "add", "-A")
    git(port.parent.parent, "commit", "-q", "-m", "scripts")
    before = snapshot(port.parent.parent)
    import_into(tmp_path / "ports", port)
    assert not marker.exists()
    assert snapshot(port.parent.parent) == before  # the port folder is read, never written


def test_an_upstream_not_available_is_reported_and_the_rest_imported(tmp_path: Path, simple) -> None:
    port, _ = simple
    steps = "git clone -b 1.x https://github.com/nomirror/mmcv.git\ncd mmcv\npip install -e ."
    (port / "README.md").write_text((port / "README.md").read_text() + f"\n```shell\n{steps}\n```\n")
    report = import_into(tmp_path / "ports", port)
    (missing,) = [f for f in report["not_converted"] if "upstream not available" in f["reason"]]
    assert "nomirror/mmcv" in missing["what"]
    assert set(report["upstreams"]) == {"model"}
    assert patchkit(tmp_path / "ports", "apply", "model").code == 0


def test_an_existing_upstream_is_reused_at_its_pin_and_a_different_pin_is_the_models_own(tmp_path: Path, mirrors: Path) -> None:
    repo, first = upstream(mirrors, "lib", {"lib.py": CORE})
    second = commit(repo, {"lib.py": CORE + "Z = 3\n"}, "later")
    root = tmp_path / "ports"
    for name, pin in (("A", first), ("B", first), ("C", second)):
        steps = f"git clone https://github.com/up/lib.git\ncd lib\ngit checkout {pin}"
        port = port_folder(tmp_path, name, "# x\n\n```shell\n" + steps + "\n```\n", {})
        report = import_into(root, port)
    manifest = yaml.safe_load((root / "upstreams.yaml").read_text())
    assert set(manifest["upstreams"]) == {"lib"} and manifest["version"] == 2
    assert manifest["models"]["b"]["upstreams"] == {"lib": []}
    assert manifest["models"]["c"]["upstreams"] == {"lib": {"pin": second, "track": "main", "layers": []}}
    assert any("the model's own pin" in n["reason"] for n in report["notes"])
    assert patchkit(root, "validate").code == 0


def test_training_scripts_become_a_recipe_with_todos(tmp_path: Path, simple) -> None:
    port, _ = simple
    write_files(port, {
        "test/env_npu.sh": "export TASK_QUEUE_ENABLE=2\nexport HCCL_IF_IP=$(hostname -I)\n",
        "test/train_8p_full.sh": "WORLD_SIZE=8\nsource test/env_npu.sh\n"
                                 "torchrun --nproc_per_node=$WORLD_SIZE tools/train.py configs/m.py --launcher pytorch \\\n"
                                 "    --work-dir $cur_path/out > train.log 2>&1 &\nwait\n"
                                 "avg=`grep -a 'mmdet - INFO - Epoch ' train.log | awk -F \"time: \" '{print $2}'`\n",
        "test/train_8p_performance.sh": "WORLD_SIZE=8\nMODEL_PERFORMANCE_FLAG=1\n"})
    (port / "README.md").write_text((port / "README.md").read_text() + "\n| 芯片 | 卡数 | global batch size | epoch | FPS |\n"
                                    "|---|---|---|---|---|\n| 竞品A | 8p | 16 | 12 | 9.1 |\n| Atlas 800T A2 | 8p | 16 | 12 | 8.7 |\n")
    git(port.parent.parent, "add", "-A")
    git(port.parent.parent, "commit", "-q", "-m", "scripts")
    report = import_into(tmp_path / "ports", port)
    recipe = recipe_mod.load(tmp_path / "ports", "model")
    assert (recipe.workdir, recipe.entry, recipe.config, recipe.cards) == ("model", "tools/train.py", "configs/m.py", 8)
    assert recipe.args[:3] == ("{config}", "--launcher", "pytorch") and "TODO($cur_path)/out" in recipe.args
    assert recipe.env["npu"] == {"TASK_QUEUE_ENABLE": "2"}
    assert (recipe.global_batch, recipe.epochs) == (16, 12)  # the NPU row of the README's results table
    assert recipe.step_time and "time:" in recipe.step_time
    todos = " | ".join(report["todos"])
    assert "HCCL_IF_IP" in todos and "MODEL_PERFORMANCE_FLAG=1" in todos and "TODO($cur_path)" in todos


def test_not_a_port_folder_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    run = patchkit(tmp_path, "import", str(tmp_path / "empty"))
    assert run.code == 2 and "no README.md" in run.err


def test_a_package_replaced_by_another_checkouts_folder_becomes_one_patch(tmp_path: Path, mirrors: Path) -> None:
    _, model_pin = upstream(mirrors, "Model", {"pkg/__init__.py": "VENDORED = True\n", "pkg/ops.py": "OPS = 2\n",
                                               "train.py": "import pkg\n"})
    lib, lib_pin = upstream(mirrors, "lib", {"pkg/__init__.py": "VENDORED = False\n", "pkg/old.py": "OLD = 1\n",
                                             "setup.py": "setup()\n"})
    steps = (f"git clone https://github.com/up/Model.git\ncd Model\ngit checkout {model_pin}\n"
             "git clone -b main https://github.com/up/lib.git\ncd lib\nrm -rf pkg\nmv ../pkg pkg\npip install -e .")
    port = port_folder(tmp_path, "M", readme("https://github.com/up/Model.git", model_pin, steps), {})
    report = import_into(tmp_path / "ports", port)
    assert not [f for f in report["not_converted"] if "rm " in f["what"] or "mv " in f["what"]]
    (patch,) = (tmp_path / "ports/patches/m/lib").glob("*.patch")
    assert patch.name == "0001-replace-pkg.patch"
    assert patchkit(tmp_path / "ports", "apply", "m").code == 0
    work = tmp_path / "ports/work/m/lib/pkg"
    assert sorted(p.name for p in work.iterdir()) == ["__init__.py", "ops.py"]
    assert (work / "__init__.py").read_text() == "VENDORED = True\n"


def test_a_port_none_of_whose_upstreams_can_be_obtained_is_reported_not_added(tmp_path: Path, mirrors: Path) -> None:
    steps = "git clone https://github.com/nomirror/Gone.git\ncd Gone\nsed -i '2d;9d' requirements.txt"
    port = port_folder(tmp_path, "Gone", "# Gone\n\n```shell\n" + steps + "\n```\n", {})
    report = import_into(tmp_path / "ports", port)
    assert report["added"] is False and report["changed"] == ["imports/gone.json"]
    reasons = [f["reason"] for f in report["not_converted"]]
    assert any("upstream not available" in r for r in reasons)
    assert [f["what"] for f in report["not_converted"] if "sed" in f["reason"]] == ["sed -i '2d;9d' requirements.txt"]
    assert not (tmp_path / "ports/upstreams.yaml").exists()


def test_a_file_whose_change_is_only_style_is_left_out_and_said(tmp_path: Path, mirrors: Path) -> None:
    repo, pin = upstream(mirrors, "Model", {"a.py": CORE, "b.py": CORE})
    patch = diff_of(repo, pin, {"a.py": "# Copyright (c) Someone\n" + CORE.replace("return 1", "return  1"),
                                "b.py": CORE.replace("return 1", "return 'npu'")})
    steps = f"git clone https://github.com/up/Model.git\ncd Model\ngit checkout {pin}\ngit apply m.patch"
    port = port_folder(tmp_path, "M", readme("https://github.com/up/Model.git", pin, steps), {"m.patch": patch})
    report = import_into(tmp_path / "ports", port)
    (left,) = [f for f in report["not_converted"] if "whitespace or comments" in f["reason"]]
    assert left["what"] == "a.py" and left["where"] == "m.patch:1"
    assert [p.rsplit("/", 1)[1] for p in report["patches"]] == ["0001-b.py.patch"]
    assert patchkit(tmp_path / "ports", "validate").code == 0
