"""The markdown summary for a pull-request comment: verdict, the breaking part of the matrix, what to do,
Upstream-Status per layer, training runs. Kept under GitHub's comment limit: long lists are cut and say so."""

from __future__ import annotations

from patchkit.report import data as d

LIMIT = 60_000  # characters; GitHub refuses comments over 65,536
MAX_ROWS = 40


def _esc(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cell(cell: d.Cell | None) -> str:
    if cell is None:
        return ""
    if not cell.checked:
        return "?"
    n = len(cell.patches) + len(cell.overlays)
    return f"**{cell.outcome}** {cell.broken}/{n}" if cell.broken else f"ok {n}"


def render(page: d.Page) -> str:
    out = [f"## {page.title}", ""]
    out += _matrix(page.matrix)
    out += _layers(page.metrics)
    out += _runs(page.runs)
    text = "\n".join(out) + "\n"
    if len(text) > LIMIT:
        text = text[:LIMIT].rsplit("\n", 1)[0] + "\n\n_(cut here: the full report is the HTML artifact)_\n"
    return text


def _matrix(m: d.Matrix) -> list[str]:
    if m.ok is None:
        return ["No `rebase --check` result was found.", ""]
    counts = ", ".join(f"{n} {o}" for o, n in sorted(m.totals.items(), key=lambda kv: d.rank(kv[0])))
    rows = [r for g in m.groups for r in g.rows]
    broken = [r for r in rows if r.broken]
    out = [f"**rebase --check {m.checked_at or ''}: {'all hold' if m.ok else f'{len(broken)} model(s) break'}** "
           f"({counts})", ""]
    if broken:
        shown = broken[:MAX_ROWS]
        out += ["| model | " + " | ".join(_esc(c) for c in m.columns) + " |",
                "|---|" + "---|" * len(m.columns)]
        out += [f"| {_esc(r.model)} | " + " | ".join(_cell(r.cells.get(c)) for c in m.columns) + " |" for r in shown]
        if len(broken) > len(shown):
            out.append(f"\n_{len(broken) - len(shown)} more breaking model(s) in the HTML report._")
        out += ["", f"{len(rows) - len(broken)} model(s) hold.", "", "<details><summary>what breaks, and what to do"
                "</summary>", ""]
        out += [f"- {what}: **{outcome}** for {_models(models)}. {_esc(hint)}"
                for (what, outcome), (models, hint) in _breaks(broken).items()]
        out += ["", "</details>", ""]
    return out


def _breaks(rows: list[d.Row]) -> dict[tuple[str, str], tuple[list[str], str]]:
    """Each broken patch or overlay once (a shared layer breaks for every model carrying it), with its models
    and the first model's fix hint."""
    found: dict[tuple[str, str], tuple[list[str], str]] = {}
    for r in rows:
        for c in r.cells.values():
            items = [(f"{p.upstream} `{p.patch}`", p.outcome, p.hint) for p in c.patches if p.broken]
            items += [(f"{o.upstream} overlay `{o.name}`", o.state, o.hint) for o in c.overlays
                      if o.state not in ("holds", "merged")]
            for what, outcome, hint in items:
                found.setdefault((what, outcome), ([], hint))[0].append(r.model)
    return found


def _models(models: list[str], most: int = 6) -> str:
    names = ", ".join(f"`{m}`" for m in models[:most])
    return names + (f" and {len(models) - most} more" if len(models) > most else "")


def _layers(mt: d.Metrics) -> list[str]:
    out = ["| layer | models | patches | " + " | ".join(d.DEP3) + " |", "|---|---|---|" + "---|" * len(d.DEP3)]
    for layer in mt.layers[:MAX_ROWS]:
        counts = mt.by_layer[layer.name]
        out.append(f"| {_esc(layer.name)} | {len(layer.models)} | {len(layer.patches)} | "
                   + " | ".join(str(counts.get(s, 0)) for s in d.DEP3) + " |")
    drop = [f"`{p}`" for p, _ in mt.upstreamed]
    return ["<details><summary>patches by Upstream-Status</summary>", "", *out, "", "</details>", ""] + (
        [f"Already upstream (drop them): {', '.join(drop)}", ""] if drop else [])


def _runs(runs: list[d.Run]) -> list[str]:
    if not runs:
        return []
    out = ["| run | kind | device | cards | steps | step ms | FPS | last loss |", "|---|---|---|---|---|---|---|---|"]
    for r in runs[:MAX_ROWS]:
        res = r.results
        last = next((v for v in reversed(res.series.loss) if v is not None), None)
        out.append(f"| {_esc(res.model)} | {res.kind}{' (not a training figure)' if r.marked else ''} | "
                   f"{res.device} | {res.cards * res.nnodes} | {len(res.series.step) or res.steps_seen} | "
                   f"{d.number(res.mean_step_ms)} | {d.number(res.fps)} | {d.number(last)} |")
    return out + [""]
