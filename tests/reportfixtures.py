"""Synthetic inputs for the report: a port of N models (manifest, series, format-patch files with DEP-3
headers), a rebase --check document consistent with it, a check history and schema-2 results.json files.

Deterministic for a seed. `python -m tests.reportfixtures DIR [N]` writes one to DIR (for looking at it).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from patchkit.report import store

SHARED = {"mmcv": ("mmcv-npu", 8), "mmdet": ("mmdet-npu", 3), "mmdetection3d": ("mmdet3d-npu", 5),
          "pytorch-lightning": ("lightning-npu", 2)}
STATUSES = ("Pending", "Pending", "Pending", "Submitted", "Backport", "Inappropriate", "Denied", None)
BASE = datetime(2026, 12, 1, tzinfo=timezone.utc)


def sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def patch_text(subject: str, status: str | None, date: datetime, added: int, removed: int) -> str:
    status_line = f"\nUpstream-Status: {status}\n" if status else "\n"
    body = "".join(f"-old line {i}\n" for i in range(removed)) + "".join(f"+new line {i}\n" for i in range(added))
    return (f"From {'0' * 40} Mon Sep 17 00:00:00 2001\nFrom: Port Team <port@example.org>\n"
            f"Date: {date.strftime('%a, %d %b %Y %H:%M:%S +0000')}\nSubject: [PATCH] {subject}\n\n"
            f"Why this change.\n{status_line}---\n"
            f"diff --git a/src/{subject}.py b/src/{subject}.py\n--- a/src/{subject}.py\n+++ b/src/{subject}.py\n"
            f"@@ -1,{removed + 1} +1,{added + 1} @@\n context\n{body}-- \n2.43.0\n")


class Fleet:
    def __init__(self, root: Path, n: int, seed: int = 17) -> None:
        self.root, self.n, self.rng = root, n, random.Random(seed)
        self.models = [f"model{i:02d}" for i in range(n)]
        self.layers: dict[tuple[str, str], list[str]] = {}  # (layer, upstream) -> patch names
        self.info: dict[str, dict[str, Any]] = {}  # layer/name -> status, date, added, removed
        self.uses: dict[str, dict[str, list[str]]] = {}  # model -> upstream -> layers

    def write(self) -> Fleet:
        for up, (layer, count) in SHARED.items():
            self._layer(layer, up, count)
        for i, model in enumerate(self.models):
            own = f"{model}-repo"
            self._layer(model, own, self.rng.randint(1, 6))
            uses = {own: [model], "mmcv": ["mmcv-npu"], "mmdet": ["mmdet-npu"]}
            if i % 3 == 0:
                uses["mmdetection3d"] = ["mmdet3d-npu"]
            if i % 7 == 0:
                uses["pytorch-lightning"] = ["lightning-npu"]
            self.uses[model] = uses
        self._manifest()
        return self

    def _layer(self, layer: str, up: str, count: int) -> None:
        folder = self.root / "patches" / layer / up
        folder.mkdir(parents=True)
        names = []
        for k in range(count):
            name = f"{k + 1:04d}-{layer}-change-{k}.patch"
            status = self.rng.choice(STATUSES)
            date = BASE - timedelta(days=self.rng.randint(3, 700))
            added, removed = self.rng.randint(1, 30), self.rng.randint(0, 10)
            (folder / name).write_text(patch_text(f"{layer}-change-{k}", status, date, added, removed))
            self.info[f"{layer}/{name}"] = {"status": status or "none", "date": date, "added": added,
                                            "removed": removed}
            names.append(name)
        (folder / "series").write_text("".join(f"{n}\n" for n in names))
        self.layers[(layer, up)] = names

    def _manifest(self) -> None:
        ups = [*SHARED, *(f"{m}-repo" for m in self.models)]
        lines = ["version: 1", "upstreams:"]
        for up in ups:
            lines += [f"  {up}:", f"    url: https://example.org/{up}.git", f"    pin: {sha(up)}", "    track: main"]
        lines.append("models:")
        for model, uses in self.uses.items():
            lines += [f"  {model}:", f"    description: synthetic {model}", "    upstreams:"]
            lines += [f"      {up}: [{', '.join(layers)}]" for up, layers in uses.items()]
        (self.root / "upstreams.yaml").write_text("\n".join(lines) + "\n")

    def check(self, *, seed: int = 5, breaking: float = 0.3, checked_at: str = "2026-12-02T04:00:00Z") -> dict[str, Any]:
        """A check document: shared-layer outcomes the same for every model, about BREAKING of models broken."""
        rng = random.Random(seed)
        shared_outcome = {pid: rng.choice(["clean"] * 6 + ["offset", "merged", "upstreamed"])
                          for (layer, up), names in self.layers.items() if up in SHARED
                          for pid in (f"{layer}/{n}" for n in names)}
        series = []
        for model, uses in self.uses.items():
            bad = rng.random() < breaking
            for up, layers in uses.items():
                patches = []
                for layer in layers:
                    for name in self.layers[(layer, up)]:
                        pid = f"{layer}/{name}"
                        outcome = shared_outcome.get(pid) or ("conflict" if bad and not patches else
                                                              rng.choice(["clean"] * 5 + ["offset", "fuzz"]))
                        if bad and patches and patches[0]["outcome"] == "conflict" and rng.random() < 0.3:
                            outcome = "blocked"
                        patches.append(self.patch_doc(layer, up, name, outcome, patches))
                series.append({"model": model, "upstream": up, "patches": patches})
        upstreams = {up: {"upstream": up, "url": f"https://example.org/{up}.git", "pin": sha(up), "ref": "main",
                          "commit": sha(up + "new"), "commits_since_pin": 12, "commits_behind": 0,
                          "pin_is_ancestor": True} for up in {s["upstream"] for s in series}}
        broken = any(p["broken"] for s in series for p in s["patches"])
        overlays = [{"model": self.models[0], "upstream": "mmcv",
                     "targets": [{"target": "mmcv.ops:nms", "upstream": "mmcv", "where": "overlays/x/ops.py:3",
                                  "state": "drifted", "declared": "a-b", "current": "c-d",
                                  "detail": ["@@ -1 +1 @@", "-old", "+new"]},
                                 {"target": "mmcv.ops:roi_align", "upstream": "mmcv", "where": "overlays/x/ops.py:9",
                                  "state": "holds", "declared": "e-f", "current": "e-f", "detail": []}],
                     "files": []}]
        return {"schema": "patchkit/rebase-check/1", "checked_at": checked_at, "ok": not broken, "allow_fuzz": False,
                "upstreams": upstreams, "series": series, "overlays": overlays, "summary": {}}

    @staticmethod
    def patch_doc(layer: str, up: str, name: str, outcome: str, before: list[dict[str, Any]]) -> dict[str, Any]:
        files = []
        if outcome == "conflict":
            files = [{"path": f"src/{name}.py", "reason": "does not apply", "hunks": ["hunk #1 @@ -1,3 +1,4 @@ def f():"],
                      "commits": [f"{sha(name)[:9]} refactor f (#123)"], "renamed_to": None}]
        return {"patch": f"{layer}/{name}", "layer": layer, "name": name, "path": f"patches/{layer}/{up}/{name}",
                "outcome": outcome, "broken": outcome in ("conflict", "target-missing", "blocked", "fuzz"),
                "offset": 4 if outcome == "offset" else 0, "fuzz": 1 if outcome == "fuzz" else 0,
                "blocked_by": before[0]["patch"] if outcome == "blocked" else None, "files": files,
                "range_diff": []}

    def history(self, folder: Path, checks: int = 8) -> None:
        for k in range(checks):
            stamp = (BASE + timedelta(days=k)).strftime("%Y-%m-%dT%H:%M:%SZ")
            store.append_history(folder, self.check(seed=100 + k, breaking=0.05 * k, checked_at=stamp), f"night-{k}")


def results_doc(model: str, kind: str, steps: int, *, seed: int = 1, cards: int = 2) -> dict[str, Any]:
    """A schema-2 results.json as `patchkit train` writes it (learn's writer, SCHEMAS.md)."""
    rng = random.Random(seed)
    loss = [round(10 * 0.93 ** i + rng.random() * 0.3, 4) for i in range(steps)]
    cls = [round(v * 0.6, 4) for v in loss]
    step_s = [None] + [round(0.8 + rng.random() * 0.4, 4) for _ in range(steps - 1)]
    return {"model": model, "device": "cpu", "backend": "gloo", "cards": cards, "nnodes": 1,
            "performance": kind == "performance", "smoke": kind in ("smoke", "overfit"), "steps_seen": steps,
            "warmup_steps": 1, "mean_step_ms": 1000.0, "per_card_batch": 1, "batch_source": "smoke",
            "global_batch": cards, "published_global_batch": 8, "fps": 2.0, "metrics": {},
            "fingerprint": {"model": model, "repos": {"mmcv": {"pin": "a" * 40, "head": "b" * 40, "patches": 3,
                                                               "series": "c" * 16}}, "overlays": "d" * 16},
            "command": ["torchrun"], "seconds": 12.5, "exit_code": 0, "notes": [], "schema": 2, "kind": kind,
            "series": {"step": list(range(1, steps + 1)), "loss": loss, "step_s": step_s,
                       "terms": {"loss_cls": cls, "loss_bbox": [round(v - c, 4) for v, c in zip(loss, cls)]}},
            "overfit": None,
            "published": {"step_ms": 1650.0, "fps": 4.8, "metrics": {"mIoU": 39.1}, "chip": "A100", "cards": 8}}


def write_results(folder: Path, doc: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(doc, indent=2))
    return folder / "results.json"


if __name__ == "__main__":
    out = Path(sys.argv[1])
    fleet = Fleet(out, int(sys.argv[2]) if len(sys.argv) > 2 else 60).write()
    (out / "check.json").write_text(json.dumps(fleet.check(), indent=1))
    fleet.history(out / "history")
    write_results(out / "train-runs" / "model00-smoke", results_doc("model00", "smoke", 5))
    write_results(out / "train-runs" / "model01-overfit", results_doc("model01", "overfit", 40, seed=2))
