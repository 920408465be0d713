"""Benchmark `rebase --check` of a synthetic fleet (about 60 models over shared upstreams) against
the raw-git floor of the same series.

Run it by hand from the repository root (it is not a test):

    python bench/fleet.py [--models 60] [--repeat 5] [--baseline DIR] [--json]

The fleet has the shape of the imported model zoo (issue 16): three mmcv-like upstreams shared by
every model (`mmcv`, `mmdet`, `mmdet3d`: 120, 80 and 80 Python files), each with a shared NPU layer
(30, 15 and 15 patches), and per model its own upstream (20 files, a layer of 6 patches), its own
layer on `mmcv` (2 patches on top of the shared one) and, for every other model, on `mmdet3d` (1
patch). Overlays: the shared set `mmcv-npu` (6 targets on `mmcv` functions) and one set per model (2
targets on its own repo, 1 on the `mmcv` function its own layer edits), all fingerprinted from the
pin with the model's series. The shared upstreams move past their pins (licence headers on a third of
their files: their patches become `offset`); the model repos stay where they are, as most do.
Patches are written as `git format-patch` text from the files' contents (difflib), not committed.

Cases, round-robin, reported as the median of per-round ratios to the floor (bench/floor.py: per
upstream one rev-parse, one read-tree, one `git apply --cached` per patch of the trie of all series;
no overlays): `patchkit rebase --check --no-fetch --json --jobs 1` and `--jobs 2`, and with
`--baseline DIR` the same from another checkout. Goal (issue 14): the whole fleet in one check
within 2x the floor's CPU. Every run must exit 0 and find every patch `clean` or `offset` and every
overlay `holds`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import PYTHON_FLAGS, Row, Timed, baseline_env, hermetic_env, load, log, paired, python_lines, report, rounds, sh
from floor import count_git, floor_case, own_rss_mb
from rebase_check import SLOTS, FastImport

from patchkit.overlay import fingerprint

SHARED = {"mmcv": (120, 30), "mmdet": (80, 15), "mmdet3d": (80, 15)}  # files, shared-layer patches
OWN_FILES, OWN_PATCHES, OWN_ON_MMCV, SHARED_TARGETS = 20, 6, 2, 6
GOAL = 2.0
DATE = "Tue, 14 Nov 2023 22:13:20 +0000"


def module_files(rng: random.Random, name: str, count: int) -> dict[str, list[str]]:
    return {f"{name}/sub{i % 4}/mod_{i:03d}.py": python_lines(rng, f"{name}_m{i}", 150) for i in range(count)}


def format_patch(subject: str, path: str, before: list[str], after: list[str]) -> bytes:
    """One `git format-patch` file changing PATH from BEFORE to AFTER (three lines of context)."""
    body = list(difflib.unified_diff(before, after, f"a/{path}", f"b/{path}", n=3, lineterm=""))
    return (f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"From: Bench <bench@example.invalid>\nDate: {DATE}\nSubject: [PATCH] {subject}\n\n"
            f"Upstream-Status: Inappropriate [bench]\n---\ndiff --git a/{path} b/{path}\n"
            + "\n".join(body) + "\n").encode()


class Series:
    """A layer's patches on one upstream, made by editing FILES (the state they apply to) in place."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.names = folder, []

    def edit(self, files: dict[str, list[str]], path: str, slot: int, tag: str) -> None:
        before = list(files[path])
        files[path][slot] = files[path][slot].replace("+ y", f"+ y * {tag}")
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{len(self.names) + 1:04d}-{tag}.patch"
        (self.folder / name).write_bytes(format_patch(f"npu: {tag}", path, before, files[path]))
        self.names.append(name)

    def close(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "series").write_text("".join(f"{n}\n" for n in self.names))


def function_at(files: dict[str, list[str]], path: str, slot: int) -> tuple[str, str]:
    """(module, function) of the function whose `total` line is SLOT."""
    return path[:-3].replace("/", "."), files[path][slot - 1].split("def ", 1)[1].split("(", 1)[0]


def make_repo(tmp: Path, env: dict[str, str], name: str, files: dict[str, list[str]], moved: list[str]) -> str:
    """A bare upstream NAME: FILES at the pin, then licence headers on MOVED; returns the pin."""
    stream = FastImport()
    stream.commit("initial import", files)
    if moved:
        later = {p: ["# SPDX-License-Identifier: Apache-2.0", "# Copyright the authors", "", *files[p]] for p in moved}
        stream.commit("add licence headers", later)
    repo = tmp / "upstream" / name
    stream.run(repo, env)
    return sh(["git", "--git-dir", str(repo), "rev-parse", f"main~{1 if moved else 0}"], env).strip()


def build(tmp: Path, env: dict[str, str], models: int) -> tuple[Path, int, int]:
    """The fleet's port; returns it, the patch count of all series and the overlay target count."""
    port = tmp / "port"
    rng = random.Random("fleet")
    pins, shared_state, places_used, targets = {}, {}, {}, 0
    decls: dict[str, list[str]] = {}
    for up, (count, patches) in SHARED.items():
        files = module_files(rng, up, count)
        moved = rng.sample(sorted(files), count // 3)
        pins[up] = make_repo(tmp, env, up, files, moved)
        places = rng.sample([(p, s) for p in sorted(files) for s in SLOTS], patches + 2 * models + SHARED_TARGETS)
        series = Series(port / "patches" / f"{up}-npu" / up)
        for i, (path, slot) in enumerate(places[:patches]):
            series.edit(files, path, slot, f"{up}-{i}")
        series.close()
        shared_state[up], places_used[up] = files, places[patches:]
    shared_targets = []
    for path, slot in places_used["mmcv"][:SHARED_TARGETS]:  # functions no model's own layer edits
        module, function = function_at(shared_state["mmcv"], path, slot)
        value = fingerprint.of_source("\n".join(shared_state["mmcv"][path]) + "\n", function)
        shared_targets.append(f'@replace("{module}:{function}", upstream="mmcv", fingerprint="{value}")\n'
                              f"def {function}(*args, **kwargs):\n    return original({function})(*args, **kwargs)\n")
    decls["mmcv-npu"] = shared_targets
    free = places_used["mmcv"][SHARED_TARGETS:]
    total = 0
    lines = ["upstreams:"] + [f"  {up}:\n    url: {tmp / 'upstream' / up}\n    pin: {pins[up]}\n    track: main"
                              for up in SHARED]
    model_lines = ["models:"]
    for k in range(models):
        name = f"model{k:02d}"
        own = module_files(rng, name, OWN_FILES)
        pin = make_repo(tmp, env, name, own, [])
        lines.append(f"  {name}:\n    url: {tmp / 'upstream' / name}\n    pin: {pin}\n    track: main")
        mine: list[tuple[str, str, str, dict[str, list[str]]]] = []
        series = Series(port / "patches" / name / name)
        for i, (path, slot) in enumerate(rng.sample([(p, s) for p in sorted(own) for s in SLOTS], OWN_PATCHES)):
            series.edit(own, path, slot, f"{name}-{i}")
            if i < 2:
                module, function = function_at(own, path, slot)
                mine.append((name, module, function, own))
        series.close()
        mmcv = {p: list(v) for p, v in shared_state["mmcv"].items()}
        on_mmcv = Series(port / "patches" / name / "mmcv")
        for i, (path, slot) in enumerate(free[2 * k:2 * k + OWN_ON_MMCV]):
            on_mmcv.edit(mmcv, path, slot, f"{name}-mmcv-{i}")
            if i == 0:
                module, function = function_at(mmcv, path, slot)
                mine.append(("mmcv", module, function, mmcv))
        on_mmcv.close()
        ups = {"mmcv": ["mmcv-npu", name], "mmdet": ["mmdet-npu"], name: [name]}
        total += SHARED["mmcv"][1] + OWN_ON_MMCV + SHARED["mmdet"][1] + OWN_PATCHES
        if k % 2 == 0:
            d3 = {p: list(v) for p, v in shared_state["mmdet3d"].items()}
            path, slot = places_used["mmdet3d"][k]
            extra = Series(port / "patches" / name / "mmdet3d")
            extra.edit(d3, path, slot, f"{name}-3d")
            extra.close()
            ups["mmdet3d"] = ["mmdet3d-npu", name]
            total += SHARED["mmdet3d"][1] + 1
        decls[name] = [f'@replace("{module}:{function}", upstream="{up}", fingerprint="'
                       f'{fingerprint.of_source(chr(10).join(files[module.replace(".", "/") + ".py"]) + chr(10), function)}")\n'
                       f"def {function}(*args, **kwargs):\n    return original({function})(*args, **kwargs)\n"
                       for up, module, function, files in mine]
        targets += SHARED_TARGETS + len(mine)
        model_lines += [f"  {name}:", "    upstreams:"] + [f"      {up}: [{', '.join(layers)}]" for up, layers in ups.items()]
        model_lines.append(f"    overlays: [mmcv-npu, {name}]")
    (port / "upstreams.yaml").write_text("\n".join(lines + model_lines) + "\n")
    for name, found in decls.items():
        folder = port / "overlays" / name
        folder.mkdir(parents=True)
        (folder / "targets.py").write_text("from patchkit.overlay import original, replace\n\n\n" + "\n\n".join(found))
    return port, total, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--models", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--baseline", type=Path, help="another checkout of patchkit to time as well (A/B)")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    loads_before = load()
    with tempfile.TemporaryDirectory(prefix="patchkit-bench-fleet-") as tmp_name:
        tmp = Path(tmp_name).resolve()
        env = hermetic_env(tmp, tmp / "scratch")
        (tmp / "scratch").mkdir()
        start = time.perf_counter()
        port, total, targets = build(tmp, env, opts.models)
        build_s = time.perf_counter() - start
        log(f"built {opts.models} models ({total} patches in all series, {targets} overlay targets) in {build_s:.1f} s")
        patchkit = [sys.executable, *PYTHON_FLAGS, "-m", "patchkit"]
        sh([*patchkit, "--quiet", "fetch", "-j", "8"], env, port)
        check = [*patchkit, "--quiet", "rebase", "--check", "--no-fetch", "--json"]
        first = Timed("targets", lambda _r: [*check, "--jobs", "1"], port, env)
        rounds([first], 1, "targets: ")
        doc = json.loads(first.outputs[0])
        cases = [floor_case(tmp, port, tmp / "cache", first.outputs[0], env),
                 Timed("patchkit --jobs 1", lambda _r: [*check, "--jobs", "1"], port, env),
                 Timed("patchkit --jobs 2", lambda _r: [*check, "--jobs", "2"], port, env)]
        if opts.baseline:
            cases.append(Timed("baseline --jobs 1", lambda _r: [*check, "--jobs", "1"], port,
                               baseline_env(env, opts.baseline)))
        counts = {c.name: count_git(c.args(0), c.cwd, c.env)["total"] for c in cases if "2" not in c.name}
        log(f"git processes: {counts}")
        own_rss, _ = own_rss_mb([sys.executable, *PYTHON_FLAGS], ["--quiet", "rebase", "--check", "--no-fetch", "--json",
                                                               "--jobs", "1"], port, env)
        rounds(cases, opts.repeat)
    notes = []
    if doc["summary"]["patches"] != total or set(k for k, v in doc["summary"].items() if v and k not in
                                                 ("patches", "broken")) - {"clean", "offset"}:
        notes.append(f"unexpected summary {doc['summary']} (built: {total} patches, all clean or offset)")
    states = [t["state"] for o in doc["overlays"] for t in o["targets"]]
    if len(states) != targets or set(states) != {"holds"}:
        notes.append(f"overlays: {len(states)} targets checked (built {targets}), states {sorted(set(states))}")
    floor, one = cases[0], cases[1]
    rss = {c.name: round(statistics.median(c.rss_kb) / 1024, 1) for c in cases}
    name = f"fleet-{opts.models}"
    rows = [Row(name, "rebase --check --jobs 1", "raw floor", paired(one, floor), GOAL,
                extra={"git_processes": counts[one.name], "floor_git_processes": counts[floor.name]}),
            Row(name, "rebase --check --jobs 2", "raw floor", paired(cases[2], floor))]
    if opts.baseline:
        rows += [Row(name, "baseline --jobs 1", "raw floor", paired(cases[3], floor),
                     extra={"git_processes": counts[cases[3].name]}),
                 Row(name, "rebase --check --jobs 1", "baseline --jobs 1", paired(one, cases[3]))]
    notes.insert(0, f"{opts.models} models, {len(doc['upstreams'])} upstreams, {doc['summary']['patches']} patches "
                    f"in {len(doc['series'])} series, {len(states)} overlay targets; git processes: {counts}; "
                    f"peak memory of patchkit's own process {own_rss} MB")
    report(name, rows, (loads_before, load()), opts.repeat, opts.json, models=opts.models, patches=total,
           overlay_targets=targets, build_s=round(build_s, 2), git_processes=counts, own_rss_mb=own_rss, notes=notes)


if __name__ == "__main__":
    main()
