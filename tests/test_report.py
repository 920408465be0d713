"""`patchkit report`: the page is parsed back (html.parser) and checked against the data it was built from:
the matrix against the check document, the metrics against the patch files, the curves and the history charts
(polyline points turned back into numbers) against results.json and history.jsonl."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import tempfile
import threading
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from patchkit.report import data as d, store, svg
from tests.gitfixtures import patchkit
from tests.htmltree import Node, Tree, assert_curve
from tests.reportfixtures import Fleet, results_doc, write_results
from tests.test_check import History, history  # noqa: F401  (the every-outcome upstream history fixture)

def self_contained(html: str) -> None:
    """Nothing the page would load: no src/href to another place, no external script or style."""
    tree = Tree(html)
    for node in tree.root.all():
        for attr in ("src", "href", "xlink:href", "action", "data"):
            value = node.attrs.get(attr)
            if value is not None:
                assert value.startswith("#"), f"<{node.tag} {attr}={value!r}>"
        assert node.tag not in ("link", "iframe", "img", "object", "embed")
    assert "@import" not in html and "url(" not in html


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Fleet, Path, dict[str, Any]]:
    fl = Fleet(tmp_path / "port", 60).write()
    doc = fl.check()
    check = tmp_path / "check.json"
    check.write_text(json.dumps(doc))
    fl.history(tmp_path / "hist")
    runs = tmp_path / "runs"
    write_results(runs / "model00-smoke", results_doc("model00", "smoke", 5))
    write_results(runs / "model01-overfit", results_doc("model01", "overfit", 40, seed=2))
    return fl, tmp_path, doc


def build(fleet: tuple[Fleet, Path, dict[str, Any]], *extra: str) -> tuple[str, str]:
    fl, tmp, _ = fleet
    run = patchkit(fl.root, "report", "--html", str(tmp / "r.html"), "--md", str(tmp / "r.md"), "--check",
                   str(tmp / "check.json"), "--history", str(tmp / "hist"), "--runs", str(tmp / "runs"), *extra)
    assert run.code == 0, run.text
    return (tmp / "r.html").read_text(), (tmp / "r.md").read_text()


def test_fleet_matrix_is_the_check(fleet: tuple[Fleet, Path, dict[str, Any]]) -> None:
    fl, _, doc = fleet
    html, _ = build(fleet)
    self_contained(html)
    tree = Tree(html)
    table = tree.root.all("table", id="matrix")[0]
    columns = [th.attrs["data-column"] for th in table.all("th") if th.has_class("col")]
    assert columns == ["mmcv", "mmdet", "mmdetection3d", "pytorch-lightning", d.OWN]  # 64 upstreams folded
    series = {(s["model"], s["upstream"]): s["patches"] for s in doc["series"]}
    rows = [tr for tr in table.all("tr") if tr.has_class("model")]
    assert sorted(tr.attrs["data-model"] for tr in rows) == fl.models
    for tr in rows:
        model = tr.attrs["data-model"]
        cells = [td for td in tr.all("td") if td.has_class("cell") and "empty" not in td.attrs["class"]]
        assert {td.attrs["data-column"] for td in cells} == {c if c in columns else d.OWN
                                                            for c in fl.uses[model]}
        broken_row = 0
        for td in cells:
            ups = [u for u in fl.uses[model] if (u if u in columns else d.OWN) == td.attrs["data-column"]]
            want = [p for u in ups for p in series[(model, u)]]
            got = [(tr_.attrs["data-patch"], tr_.attrs["data-outcome"]) for tr_ in td.all("tr") if tr_.has_class("patch")]
            assert sorted(got) == sorted((p["patch"], p["outcome"]) for p in want)
            overlays = [o for o in doc["overlays"] if o["model"] == model and o["upstream"] in ups]
            states = [p["outcome"] for p in want] + [t["state"] for o in overlays for t in o["targets"]]
            assert td.attrs["data-outcome"] == min(states, key=d.rank)
            broken = sum(p["broken"] for p in want) + sum(s not in ("holds", "merged") for s in states[len(want):])
            assert int(td.attrs["data-broken"]) == broken
            assert td.attrs["style"].startswith(f"background:{d.colour(td.attrs['data-outcome'])}")
            broken_row += broken
            conflict = [p for p in want if p["outcome"] == "conflict"]
            for p in conflict:  # the cell opens the conflict's files, hunks, upstream commits and a fix hint
                text = td.texts()
                assert p["files"][0]["hunks"][0] in text and p["files"][0]["commits"][0] in text
                assert f"patchkit rebase {model} --onto" in text
        assert int(tr.attrs["data-broken"]) == broken_row
    groups = {tb.attrs["data-group"]: [tr.attrs["data-model"] for tr in tb.all("tr") if tr.has_class("model")]
              for tb in table.all("tbody")}
    breaking = {s["model"] for s in doc["series"] if any(p["broken"] for p in s["patches"])} | {fl.models[0]}
    assert set(groups["breaking"]) == breaking and set(groups["holding"]) == set(fl.models) - breaking
    ranks = [min((d.rank(td.attrs["data-outcome"]) for td in tr.all("td") if "data-outcome" in td.attrs), default=99)
             for tr in rows]
    assert ranks[:len(groups["breaking"])] == sorted(ranks[:len(groups["breaking"])])  # worst first


def test_fleet_metrics_are_the_patch_files(fleet: tuple[Fleet, Path, dict[str, Any]]) -> None:
    fl, _, doc = fleet
    html, _ = build(fleet)
    tree = Tree(html)
    layers = {tr.attrs["data-layer"]: tr for tr in tree.root.all("tr") if "data-layer" in tr.attrs}
    assert len(layers) == 4 + 60
    for (layer, up), names in fl.layers.items():
        tr = layers[layer]
        want = Counter(fl.info[f"{layer}/{n}"]["status"] for n in names)
        got = {td.attrs["data-status"]: int(td.text) for td in tr.all("td") if "data-status" in td.attrs}
        assert got == {s: want.get(s, 0) for s in d.DEP3}
        served = sum(layer in ls for uses in fl.uses.values() for ls in uses.values())
        assert int(next(td for td in tr.all("td") if "data-models" in td.attrs).text) == served
        assert sum(fl.info[f"{layer}/{n}"]["added"] for n in names) == int(tr.all("td")[-2].text)
    models = {tr.attrs["data-model"]: tr for tr in tree.root.all("table", id="by-model")[0].all("tr")
              if "data-model" in tr.attrs}
    for model, uses in fl.uses.items():
        want = Counter(fl.info[f"{ly}/{n}"]["status"] for up, ls in uses.items() for ly in ls
                       for n in fl.layers[(ly, up)])
        got = {td.attrs["data-status"]: int(td.text) for td in models[model].all("td") if "data-status" in td.attrs}
        assert got == {s: want.get(s, 0) for s in d.DEP3}
    dropped = {li.attrs["data-patch"] for li in tree.root.all("ul", id="upstreamed")[0].all("li")}
    assert dropped == {f"{s['upstream']}: {p['patch']}" for s in doc["series"] for p in s["patches"]
                       if p["outcome"] == "upstreamed"}


def test_fleet_curves_and_history_are_the_data(fleet: tuple[Fleet, Path, dict[str, Any]]) -> None:
    _, tmp, _ = fleet
    html, md = build(fleet)
    tree = Tree(html)
    sections = tree.root.all("section")
    assert [s.attrs["data-kind"] for s in sections] == ["smoke", "overfit"]
    for section in sections:
        res = json.loads(Path(section.attrs["data-path"]).read_text())
        lines = [p for p in section.all("polyline")]
        by_line: dict[str, list[Node]] = {}
        for p in lines:
            by_line.setdefault(p.attrs["data-line"], []).append(p)
        steps = [float(s) for s in res["series"]["step"]]
        assert_curve(by_line["loss (total)"], steps, res["series"]["loss"])
        for name, values in res["series"]["terms"].items():
            assert_curve(by_line[name], steps, values)
        assert_curve(by_line["step time"], steps, [None if v is None else 1000 * v for v in res["series"]["step_s"]])
        assert "not a training figure" in section.texts()
    entries = store.load_history(tmp / "hist").entries
    charts = {div.attrs["data-upstream"]: div for div in tree.root.all("div") if div.has_class("history")}
    times = [store.parse_time(e["checked_at"]).timestamp() for e in entries]
    for up in ("mmcv", "model07-repo"):
        lines = {p.attrs["data-line"]: p for p in charts[up].all("polyline")}
        assert_curve([lines["holding"]], times, [e["upstreams"][up]["holding"] for e in entries])
        assert_curve([lines["breaking"]], times, [e["upstreams"][up]["breaking"] for e in entries])
    total = {p.attrs["data-line"]: p for p in charts[d.ALL].all("polyline")}
    assert_curve([total["breaking"]], times, [sum(u["breaking"] for u in e["upstreams"].values()) for e in entries])
    runs = {tr.attrs["data-kind"]: tr for tr in tree.root.all("table", id="runs")[0].all("tr") if "data-kind" in tr.attrs}
    assert "1650" in runs["smoke"].texts() and "A100" in runs["smoke"].texts()  # the published figure beside ours
    assert "rebase --check 2026-12-02T04:00:00Z" in md and "| model51 |" in md and "smoke (not a training figure)" in md


def test_filter_narrows_models(fleet: tuple[Fleet, Path, dict[str, Any]]) -> None:
    fl, tmp, _ = fleet
    html, _ = build(fleet, "model07", "model51")
    rows = [tr.attrs["data-model"] for tr in Tree(html).root.all("tr") if tr.has_class("model")]
    assert sorted(rows) == ["model07", "model51"]
    run = patchkit(fl.root, "report", "nosuch", "--html", str(tmp / "x.html"), "--check", str(tmp / "check.json"))
    assert run.code == 2 and "unknown model 'nosuch'" in run.err


def test_check_keeps_its_json_and_history(history: History, tmp_path: Path) -> None:  # noqa: F811
    hist = tmp_path / "hist"
    for _ in range(2):
        run = patchkit(history.port, "rebase", "--check", "--history", str(hist))
        assert run.code == 1
    latest = history.port / "work" / ".patchkit" / "checks" / "latest.json"
    doc = json.loads(latest.read_text())
    assert doc["schema"] == "patchkit/rebase-check/1" and re.match(r"\d{4}-\d\d-\d\dT", doc["checked_at"])
    entries = [json.loads(line) for line in (hist / "history.jsonl").read_text().splitlines()]
    assert len(entries) == 2 and entries[0]["run"] != entries[1]["run"]
    assert entries[0]["upstreams"]["up"] | {"commit": None} == {
        "ref": "main", "commit": None, "pin": history.pin, "commits_since_pin": 6, "patches": 10, "holding": 5,
        "breaking": 5, "broken": ["npu/0004-fuzz.patch", "npu/0005-conflict.patch", "npu/0006-needs-conflict.patch",
                                  "npu/0008-renamed.patch", "npu/0009-removed.patch"],
        "held": ["npu/0001-clean.patch", "npu/0002-offset.patch", "npu/0003-merged.patch", "npu/0007-upstreamed.patch",
                 "npu/0010-after.patch"], "overlays_holding": 0, "overlays_breaking": 0}
    write_results(history.port / "work" / "m" / "runs" / "20261202-0400", results_doc("m", "smoke", 3))
    out = tmp_path / "r.html"
    run = patchkit(history.port, "report", "--html", str(out), "--history", str(hist))  # latest.json, runs by default
    assert run.code == 0, run.text
    tree = Tree(out.read_text())
    assert [r.attrs["data-model"] for r in tree.root.all("section")] == ["m"]  # from WORKSPACE/m/runs
    cell = tree.root.all("td", data_model="m", data_column="up")[0]
    assert cell.attrs["data-outcome"] == "conflict" and cell.attrs["data-broken"] == "5"
    got = {tr.attrs["data-patch"]: tr.attrs["data-outcome"] for tr in cell.all("tr") if tr.has_class("patch")}
    assert got == {p["patch"]: p["outcome"] for p in doc["series"][0]["patches"]}
    text = cell.texts()
    assert "renamed.py" in text and "conflict: upstream rewrites line 10" in text and "drop it from" in text
    md = patchkit(history.port, "report", "--md", "-").out
    broken = [line for line in md.splitlines() if line.startswith("- up `npu/")]
    assert len(broken) == 5 and "- up `npu/0005-conflict.patch`: **conflict** for `m`. `patchkit rebase m --onto up=main`" in md


def test_history_append_is_atomic_and_bad_lines_are_named(tmp_path: Path) -> None:
    doc = {"schema": "patchkit/rebase-check/1", "ok": True, "upstreams": {}, "series": [], "overlays": []}
    threads = [threading.Thread(target=store.append_history,
                                args=(tmp_path, {**doc, "checked_at": f"2026-01-0{i}T00:00:00Z"}, f"run{i}"))
               for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load_history(tmp_path).entries) == 8
    with open(tmp_path / "history.jsonl", "a") as fh:
        fh.write('{"torn": \n{"schema": "patchkit/check-history/1", "checked_at": "yesterday", "upstreams": {}}\n')
    port = Fleet(tmp_path / "port", 2).write()
    run = patchkit(port.root, "report", "--md", "-", "--history", str(tmp_path))
    assert run.code == 2 and "history.jsonl:9: not a JSON line" in run.err and "Traceback" not in run.err
    assert "history.jsonl:10: not a patchkit/check-history/1 line" in run.err
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something/else"}')
    run = patchkit(port.root, "report", "--md", "-", "--check", str(bad))
    assert run.code == 2 and "not a rebase --check document" in run.err
    run = patchkit(port.root, "report")
    assert run.code == 2 and "--html FILE" in run.err


def test_shards_of_one_run_read_as_one(fleet: tuple[Fleet, Path, dict[str, Any]], tmp_path: Path) -> None:
    fl, tmp, doc = fleet
    halves = [{**doc, "series": [s for s in doc["series"] if int(s["model"][5:]) % 2 == k],
               "overlays": [o for o in doc["overlays"] if int(o["model"][5:]) % 2 == k]} for k in (0, 1)]
    for k, half in enumerate(halves):
        store.append_history(tmp_path / "sharded", {**half, "ok": not any(p["broken"] for s in half["series"]
                                                                           for p in s["patches"])}, "run-1")
        (tmp / f"shard{k}.json").write_text(json.dumps(half))
    store.append_history(tmp_path / "whole", doc, "run-1")
    sharded, whole = store.load_history(tmp_path / "sharded").entries, store.load_history(tmp_path / "whole").entries
    assert len(sharded) == 1 and sharded[0]["shards"] == 2
    assert sharded[0]["upstreams"] == whole[0]["upstreams"] and sharded[0]["models"] == whole[0]["models"]
    assert sharded[0]["ok"] == whole[0]["ok"] == doc["ok"]
    run = patchkit(fl.root, "report", "--html", str(tmp / "s.html"), "--check", str(tmp / "shard0.json"),
                   "--check", str(tmp / "shard1.json"))
    assert run.code == 0, run.text
    cells = {(td.attrs["data-model"], td.attrs["data-column"]): td.attrs["data-outcome"]
             for td in Tree((tmp / "s.html").read_text()).root.all("td") if "data-outcome" in td.attrs}
    whole_html, _ = build(fleet)
    assert cells == {(td.attrs["data-model"], td.attrs["data-column"]): td.attrs["data-outcome"]
                     for td in Tree(whole_html).root.all("td") if "data-outcome" in td.attrs}


def test_svg_ticks_and_gaps() -> None:
    assert svg.nice_ticks(0, 10, 6) == [0, 2, 4, 6, 8, 10] and svg.nice_ticks(0, 10) == [0, 5, 10]
    assert svg.nice_ticks(0.013, 0.051) == [0.02, 0.03, 0.04, 0.05]
    line = svg.Line("x", [1, 2, 3, 4], [1.0, None, 3.0, 4.0], "#000")
    parts = svg.segments(line, (1, 4, 1, 4, 0, 0, 300, 300))
    assert parts == ["0,300", "200,100 300,0"]  # a step with no value breaks the line
    day = 86400.0
    assert svg.time_ticks(10 * day, 14 * day) == [10 * day, 11 * day, 12 * day, 13 * day, 14 * day]


# --- opt-in: a real browser renders the page ----------------------------------------------------------------

BROWSER = os.environ.get("PATCHKIT_BROWSER")


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, rows, prev = zlib.decompress(idat), [], bytes(width * bpp)
    stride = width * bpp
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = bytes(line)
    return width, height, [b"".join(r[i:i + 3] for i in range(0, stride, bpp)) for r in rows]


def screenshot(page: Path, out: Path, size: str = "1400,1800") -> set[tuple[int, int, int]]:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([BROWSER or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={out}",
                        f"--window-size={size}", page.as_uri()], check=True, capture_output=True, timeout=120)
    _, _, rows = png_pixels(out.read_bytes())
    return {tuple(r[i:i + 3]) for r in rows for i in range(0, len(r), 3)}  # type: ignore[misc]


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.mark.skipif(not BROWSER, reason="opt-in: PATCHKIT_BROWSER=/usr/bin/chromium renders the page headless")
def test_browser_renders_the_matrix(fleet: tuple[Fleet, Path, dict[str, Any]]) -> None:
    _, tmp, doc = fleet
    build(fleet)
    colours = screenshot(tmp / "r.html", tmp / "fleet.png")
    assert len(colours) > 50  # not blank
    shown = {o for s in doc["series"] for p in s["patches"] for o in [p["outcome"]]}
    for outcome in shown & {"clean", "conflict", "fuzz", "offset", "merged"}:
        assert hex_rgb(d.colour(outcome)) in colours, outcome  # the matrix cells are painted


def test_ci_recipe_uses_real_options() -> None:
    """The workflow in docs/ci calls patchkit with options that exist (the shard option is issue 14's)."""
    import click
    import yaml

    from patchkit.cli import cli

    recipe = Path(__file__).parent.parent / "docs" / "ci" / "patchkit-nightly.yml"
    jobs = yaml.safe_load(recipe.read_text())["jobs"]
    scripts = "\n".join(step.get("run", "") for job in jobs.values() for step in job["steps"])
    calls = re.findall(r"^\s*patchkit ((?:rebase|report)\b.*(?:\\\n.*)?)", scripts, re.M)
    assert len(calls) == 3  # the sharded check, the merge of the shards, the report
    for call in calls:
        command = cli.commands[call.split()[0]]
        known = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
        used = set(re.findall(r"(?<![\w-])(--[a-z-]+)", call))
        assert used <= known, used - known


@pytest.mark.skipif(not BROWSER, reason="opt-in: PATCHKIT_BROWSER=/usr/bin/chromium runs the page's script")
def test_browser_filter_hides_rows(fleet: tuple[Fleet, Path, dict[str, Any]]) -> None:
    _, tmp, doc = fleet
    html, _ = build(fleet)
    typed = ('<script>var b=document.getElementById("filter");b.value="model5";b.dispatchEvent(new Event("input"));'
             'var o=document.getElementById("only-broken");o.checked=true;o.dispatchEvent(new Event("change"));'
             "</script></body>")
    page = tmp / "typed.html"
    page.write_text(html.replace("</body>", typed))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([BROWSER or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             check=True, capture_output=True, text=True, timeout=120).stdout
    shown = {tr.attrs["data-model"] for tr in Tree(dom).root.all("tr")
             if tr.has_class("model") and "display: none" not in tr.attrs.get("style", "")}
    broken = {s["model"] for s in doc["series"] if any(p["broken"] for p in s["patches"])}
    assert shown == {m for m in broken if m.startswith("model5")} and shown
