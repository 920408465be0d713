"""`rebase --check --shard K/N` and `rebase --merge`: one check split over a CI matrix, and put back.

Splitting: the work is the series of each (model, upstream). An upstream stays whole on one shard
(its shared layers are replayed once there) unless it alone carries more than a shard's share of
the patches; such an upstream is split by model. The pieces go, largest first, to the shard with
the fewest patches so far (ties to the lower shard, names break ties between pieces), so the split
depends only on the manifest and the series: every job of the matrix computes the same one.

Merging: the JSON documents of all N shards of one check (each says which shard it is) become one
report, in manifest order; missing, repeated or mismatched shards are refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchkit.errors import BadInput, Diagnostic, InvalidInput
from patchkit.paths import display

_SHARD = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse(text: str) -> Shard:
    m = _SHARD.match(text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise BadInput(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. --shard 2/4")
    return Shard(int(m.group(1)), int(m.group(2)))


def assign(weights: dict[tuple[str, str], int], count: int) -> list[set[tuple[str, str]]]:
    """Split the (model, upstream) series, weighed by patch count, into COUNT shards (see above)."""
    total = sum(max(w, 1) for w in weights.values())
    by_upstream: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(weights, key=lambda k: (k[1], k[0])):
        by_upstream.setdefault(key[1], []).append(key)
    pieces: list[tuple[int, str, list[tuple[str, str]]]] = []
    for upstream, keys in by_upstream.items():
        size = sum(max(weights[k], 1) for k in keys)
        if size * count > total and len(keys) > 1:
            pieces += [(max(weights[k], 1), f"{upstream}/{k[0]}", [k]) for k in keys]
        else:
            pieces.append((size, upstream, keys))
    shards: list[set[tuple[str, str]]] = [set() for _ in range(count)]
    loads = [0] * count
    for size, _name, keys in sorted(pieces, key=lambda p: (-p[0], p[1])):
        lightest = min(range(count), key=lambda i: (loads[i], i))
        shards[lightest].update(keys)
        loads[lightest] += size
    return shards


# -- merging ---------------------------------------------------------------------------------

@dataclass
class Merged:
    document: dict[str, Any]  # a `rebase --check --json` document of the whole check
    shards: int


def merge(paths: list[Path], order: list[tuple[str, str]] | None = None) -> Merged:
    """One `rebase --check` document from the shard documents at PATHS; ORDER: (model, upstream) in
    manifest order, when the manifest is at hand (else shard by shard)."""
    if not paths:
        raise BadInput("rebase --merge: name the shard JSON files to merge")
    docs, problems = [], []
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            problems.append(Diagnostic(display(path), 0, f"cannot read: {exc.strerror or exc}"))
            continue
        except ValueError as exc:
            problems.append(Diagnostic(display(path), getattr(exc, "lineno", 0), f"not JSON: {exc}"))
            continue
        shard = doc.get("shard") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or doc.get("schema") != "patchkit/rebase-check/1" or not isinstance(shard, dict):
            problems.append(Diagnostic(display(path), 1, "not the JSON of `patchkit rebase --check --shard K/N --json`"))
            continue
        docs.append((path, doc))
    if problems:
        raise InvalidInput(problems)
    counts = {d["shard"]["count"] for _, d in docs}
    if len(counts) != 1:
        raise BadInput("rebase --merge: the files are shards of different splits",
                       details=[f"{display(p)}: shard {d['shard']['index']}/{d['shard']['count']}" for p, d in docs])
    count = counts.pop()
    seen: dict[int, Path] = {}
    for path, doc in docs:
        index = doc["shard"]["index"]
        if index in seen:
            raise BadInput(f"rebase --merge: shard {index}/{count} given twice: {display(seen[index])} and {display(path)}")
        seen[index] = path
    missing = [str(i) for i in range(1, count + 1) if i not in seen]
    if missing:
        raise BadInput(f"rebase --merge: shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} of {count} "
                       "missing: merge all of them")
    docs.sort(key=lambda pd: pd[1]["shard"]["index"])
    fuzz = {d["allow_fuzz"] for _, d in docs}
    if len(fuzz) != 1:
        raise BadInput("rebase --merge: some shards were checked with --allow-fuzz and some without")
    upstreams: dict[str, Any] = {}
    for path, doc in docs:
        for name, target in doc["upstreams"].items():
            if upstreams.setdefault(name, target) != target:
                raise BadInput(f"rebase --merge: upstream {name!r} was checked against different commits",
                               details=[f"{display(path)}: {target.get('commit')}", f"before: {upstreams[name].get('commit')}"])
    series = [s for _, d in docs for s in d["series"]]
    overlays = [o for _, d in docs for o in d["overlays"]]
    if order:  # (model or model[variant], upstream)
        rank = {key: i for i, key in enumerate(order)}
        series.sort(key=lambda s: rank.get((label(s), s["upstream"]), len(rank)))
        models = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in order))}
        overlays.sort(key=lambda o: (models.get(label(o), len(models)), o["upstream"]))
    started = min((d["checked_at"] for _, d in docs if d.get("checked_at")), default=None)
    return Merged(from_parts(upstreams, series, overlays, fuzz.pop(), started), count)


def label(entry: dict[str, Any]) -> str:
    """A series or overlay entry's model, with its variant when it has one: `model[variant]`."""
    return entry["model"] + (f"[{entry['variant']}]" if entry.get("variant") else "")


def from_parts(upstreams: dict[str, Any], series: list[dict[str, Any]], overlays: list[dict[str, Any]],
               allow_fuzz: bool, checked_at: str | None = None) -> dict[str, Any]:
    """A whole document from its parts (ok and summary recomputed; checked_at: the earliest shard's)."""
    from patchkit.check import OUTCOMES
    from patchkit.overlay.drift import HOLDING

    counts = dict.fromkeys(OUTCOMES, 0)
    broken = 0
    for s in series:
        for p in s["patches"]:
            counts[p["outcome"]] = counts.get(p["outcome"], 0) + 1
            broken += bool(p["broken"])
    overlay_broken = sum(1 for o in overlays for item in [*o["targets"], *o["files"]]
                         if item["state"] not in HOLDING)
    return {"schema": "patchkit/rebase-check/1", **({"checked_at": checked_at} if checked_at else {}),
            "ok": not broken and not overlay_broken, "allow_fuzz": allow_fuzz,
            "upstreams": dict(sorted(upstreams.items())), "series": series, "overlays": overlays,
            "summary": {**counts, "patches": sum(counts.values()), "broken": broken}}


def report_of(document: dict[str, Any]) -> Any:
    """The CheckReport a document describes, for the text and JUnit renderers."""
    from patchkit.check import CheckReport, FileIssue, PatchCheck, SeriesCheck, Target
    from patchkit.overlay.drift import FileState, OverlayResult, TargetState

    def patch(p: dict[str, Any]) -> PatchCheck:
        return PatchCheck(**{**p, "files": [FileIssue(**f) for f in p["files"]]})

    series = [SeriesCheck(s["model"], s["upstream"], [patch(p) for p in s["patches"]], s.get("variant"),
                          s.get("target", "")) for s in document["series"]]
    overlays = [OverlayResult(o["model"], [TargetState(**t) for t in o["targets"]],
                              [FileState(**f) for f in o["files"]], o["upstream"], variant=o.get("variant"),
                              target=o.get("target", "")) for o in document["overlays"]]
    targets = {name: Target(**t) for name, t in document["upstreams"].items()}
    return CheckReport(targets, series, document["allow_fuzz"], overlays)
