"""The real rebase (with --continue / --abort) and export, on throwaway upstreams."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import Port
from tests.gitfixtures import commit, git, patchkit


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the port repository (manifest and patches), byte for byte."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "work" not in p.relative_to(root).parts}


def test_export_without_changes_is_byte_stable(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    before = snapshot(port.root)
    run = patchkit(port.root, "export", "demo", "--check")
    assert run.code == 0, run.text
    assert "the series match the workspace (5 patches)" in run.out
    assert patchkit(port.root, "export", "demo").code == 0
    assert snapshot(port.root) == before


def test_export_round_trip(port: Port, tmp_path: Path) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    lib = port.repo("demo", "lib")
    # edit the middle commit (shared layer), add a new one, drop the demo-layer one
    git(lib, "checkout", "-q", "HEAD~1")
    (lib / "lib/core.py").write_text((lib / "lib/core.py").read_text().replace("return 33", "return 333"))
    git(lib, "commit", "-q", "-a", "--amend", "--no-edit")
    edited = git(lib, "rev-parse", "HEAD")
    git(lib, "checkout", "-q", "-B", "patchkit/demo", edited)  # the demo tweak is dropped
    commit(lib, {"lib/npu.py": "NPU = True\n"}, "lib: add the npu module\n\nUpstream-Status: Pending",
           author="New Porter <new@example.org>")
    stale = patchkit(port.root, "export", "demo", "--check")
    assert stale.code == 1
    assert "lib: refreshed would be shared/0002-lib-f3-returns-33.patch" in stale.out
    run = patchkit(port.root, "export", "demo")
    assert run.code == 0, run.text
    assert "lib: added demo/0002-lib-add-the-npu-module.patch" in run.out
    assert "lib: dropped demo/0001-lib-demo-tweak.patch" in run.err + run.out
    assert "shared layer 'shared', also used by other" in run.err
    demo_series = (port.root / "patches/demo/lib/series").read_text()
    assert "0001-lib-demo-tweak.patch" not in demo_series and "0002-lib-add-the-npu-module.patch\n" in demo_series
    assert demo_series.startswith("# order matters\n")  # comments kept
    assert not (port.root / "patches/demo/lib/0001-lib-demo-tweak.patch").exists()
    new_patch = (port.root / "patches/demo/lib/0002-lib-add-the-npu-module.patch").read_text()
    assert "From: New Porter <new@example.org>" in new_patch and "Upstream-Status: Pending" in new_patch
    assert patchkit(port.root, "export", "demo", "--check").code == 0
    assert patchkit(port.root, "status", "demo").out.count("clean") == 2
    assert patchkit(port.root, "apply", "demo").out.startswith("demo: up to date")
    # a fresh workspace built from the exported series has the edited result
    fresh = tmp_path / "fresh"
    assert patchkit(port.root, "apply", "demo", "--workspace", str(fresh)).code == 0
    assert "return 333" in (fresh / "demo/lib/lib/core.py").read_text()
    assert (fresh / "demo/lib/lib/npu.py").read_text() == "NPU = True\n"
    assert not (fresh / "demo/lib/lib/demo.py").exists()
    assert git(fresh / "demo/lib", "log", "-1", "--format=%an") == "New Porter"


def test_rebase_moves_pins_and_refreshes_patches(port: Port) -> None:
    port.manifest.write_text(port.manifest.read_text().replace("  lib:\n", "  lib:  # the library\n", 1))
    assert patchkit(port.root, "apply", "demo").code == 0
    before = snapshot(port.root)
    core = (port.lib / "lib/core.py").read_text()
    new_pin = commit(port.lib, {"lib/core.py": "# moved\n" * 3 + core}, "upstream adds a header")
    run = patchkit(port.root, "rebase", "demo")
    assert run.code == 0, run.text
    assert f"lib: pin {port.lib_pin[:12]} -> {new_pin[:12]} (main)" in run.out
    assert "refreshed: shared/0002-lib-f3-returns-33.patch" in run.out
    assert "also on these upstreams: other" in run.out
    manifest = port.manifest.read_text()
    assert manifest == before["upstreams.yaml"].decode().replace(port.lib_pin, new_pin)  # layout and comments kept
    after = snapshot(port.root)
    # the patch whose hunk moved was refreshed; the others are byte-identical
    changed = sorted(k for k in after if after[k] != before[k])
    assert changed == ["patches/shared/lib/0002-lib-f3-returns-33.patch", "upstreams.yaml"]
    refreshed = after["patches/shared/lib/0002-lib-f3-returns-33.patch"].decode()
    assert "From: Second Porter <second@example.org>" in refreshed and "Date: Tue, 14 Nov 2023" in refreshed
    assert "@@ -11,7 +11,7 @@ def f2():" in refreshed  # three lines further down than at the old pin
    assert patchkit(port.root, "status", "demo").out.count("clean") == 2
    assert patchkit(port.root, "rebase", "--check", "demo", "--no-fetch").code == 0


def test_conflict_resolve_continue(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    commit(port.lib, {"lib/util.py": "VALUE = 2\n"}, "upstream changes VALUE")
    run = patchkit(port.root, "rebase", "demo")
    assert run.code == 1, run.text
    assert "rebase of lib stopped on a conflict in work/demo/lib" in run.out and "lib/util.py" in run.out
    assert "patchkit rebase --continue" in run.out
    assert "in progress" in patchkit(port.root, "rebase", "demo").err  # a second start is refused
    lib = port.repo("demo", "lib")
    (lib / "lib/util.py").write_text("VALUE = 2\nDEVICE = 'npu'\n")
    git(lib, "add", "lib/util.py")
    run = patchkit(port.root, "rebase", "--continue")
    assert run.code == 0, run.text
    assert "refreshed: shared/0001-lib-use-the-NPU-device.patch" in run.out
    patch = (port.root / "patches/shared/lib/0001-lib-use-the-NPU-device.patch").read_text()
    assert "-VALUE = 2\n" not in patch and " VALUE = 2\n+DEVICE = 'npu'\n" in patch
    assert "Upstream-Status: Inappropriate [NPU only]" in patch  # provenance kept
    assert patchkit(port.root, "status", "demo").out.count("clean") == 2
    assert not (port.root / "work/demo/.patchkit/rebase.json").exists()


def test_abort_restores_the_exact_prior_state(port: Port) -> None:
    assert patchkit(port.root, "apply", "demo").code == 0
    heads = {r: git(port.repo("demo", r), "rev-parse", "HEAD") for r in ("lib", "app")}
    state = (port.root / "work/demo/.patchkit/state.json").read_bytes()
    before = snapshot(port.root)
    commit(port.app, {"NEWS": "x\n"}, "app moves cleanly")
    commit(port.lib, {"lib/util.py": "VALUE = 2\n"}, "upstream changes VALUE")
    run = patchkit(port.root, "rebase", "demo", "--json")
    assert run.code == 1 and json.loads(run.out)["status"] == "conflict"
    (port.repo("demo", "lib") / "lib/util.py").write_text("half resolved\n")
    run = patchkit(port.root, "rebase", "--abort", "demo")
    assert run.code == 0, run.text
    assert "back at its previous head" in run.out
    assert {r: git(port.repo("demo", r), "rev-parse", "HEAD") for r in ("lib", "app")} == heads
    assert all(git(port.repo("demo", r), "status", "--porcelain") == "" for r in ("lib", "app"))
    assert (port.root / "work/demo/.patchkit/state.json").read_bytes() == state
    assert snapshot(port.root) == before
    assert patchkit(port.root, "rebase", "--abort").code == 2  # nothing left to abort


def test_rebase_needs_a_clean_workspace(port: Port) -> None:
    run = patchkit(port.root, "rebase", "demo")
    assert run.code == 1 and "must be applied and clean" in run.err
    assert patchkit(port.root, "apply", "demo").code == 0
    (port.repo("demo", "app") / "setup.py").write_text("edited\n")
    run = patchkit(port.root, "rebase", "demo")
    assert run.code == 1 and "uncommitted: M setup.py" in run.err
    shutil.rmtree(port.root / "work")
    assert patchkit(port.root, "rebase", "--continue").code == 2


def test_export_of_an_upstream_without_layers(port: Port) -> None:
    """An upstream a model takes unpatched has nothing to export, until it gets commits."""
    port.manifest.write_text(port.manifest.read_text().replace("      app: [demo]\n", "      app: []\n"))
    assert patchkit(port.root, "apply", "demo").code == 0
    assert patchkit(port.root, "export", "demo", "--check").code == 0
    commit(port.repo("demo", "app"), {"x.py": "X = 1\n"}, "a new change\n\nUpstream-Status: Pending")
    run = patchkit(port.root, "export", "demo")
    assert run.code == 2 and "has no layer for upstream 'app' to put new patches in" in run.err
