"""The port-health page: one self-contained HTML file (inline CSS, inline SVG, a few lines of inline
JavaScript for the model filter; nothing loaded from anywhere, so it opens offline and as a CI artifact).

Stable hooks for tests and scripts: the matrix is `table#matrix`, a row `tr.model[data-model]`, a cell
`td.cell[data-model][data-column][data-outcome][data-broken]` holding a <details> with one
`tr.patch[data-patch][data-outcome]` per patch; metrics tables carry `data-layer` / `data-model` and
`data-status` counts; each training run is `section.run[data-path]` with its charts (see svg.py).
"""

from __future__ import annotations

from patchkit.report import curves, data as d, svg
from patchkit.report.svg import esc

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 1.5rem 3rem;color:#222;font-size:14px}
h1{font-size:1.5rem;margin:1rem 0 .2rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:12px}nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{padding:3px 8px;text-align:left;vertical-align:top}
table.grid td,table.grid th{border:1px solid #e0e0e0}td.num,th.num{text-align:right}
table#matrix{table-layout:auto}table#matrix th.col{writing-mode:vertical-rl;transform:rotate(180deg);
 white-space:nowrap;font-weight:500;padding:6px 2px}
td.cell{min-width:3.2rem;border:2px solid #fff;padding:0;position:relative}
td.cell>details>summary{list-style:none;cursor:pointer;padding:4px 6px;font-size:12px;font-weight:600}
td.cell>details>summary::-webkit-details-marker{display:none}
td.cell.empty{background:#fff}
.pop{position:absolute;z-index:5;left:0;top:100%;background:#fff;border:1px solid #888;box-shadow:0 4px 14px #0004;
 padding:6px 10px;width:min(62rem,80vw);max-height:28rem;overflow:auto;font-weight:400;color:#222}
.pop.right{left:auto;right:0}
.pop pre{margin:2px 0 4px;font-size:11px;white-space:pre-wrap}
tr.group th{background:#f4f4f4;font-size:13px;padding-top:8px}
.chip{display:inline-block;padding:1px 6px;border-radius:3px;font-size:11px;margin:1px 3px 1px 0;color:#111}
.legend .chip{font-size:12px}.hint{color:#064;font-size:12px}.commit{color:#555;font-size:11px}
.mark{background:#ffe08a;border-radius:3px;padding:0 5px;font-size:12px;font-weight:600}
.runs{display:flex;flex-wrap:wrap;gap:1rem}.charts{display:flex;flex-wrap:wrap;gap:.5rem}
.filter{margin:.5rem 0}.filter input[type=search]{width:16rem;padding:3px}
.bad{color:#b00;font-weight:600}.ok{color:#060;font-weight:600}
"""

JS = """
(function(){
  var box=document.getElementById('filter'), only=document.getElementById('only-broken');
  function apply(){
    var q=(box.value||'').toLowerCase();
    document.querySelectorAll('tr.model').forEach(function(tr){
      var show=tr.dataset.model.toLowerCase().indexOf(q)>=0 && (!only.checked || tr.dataset.broken!=='0');
      tr.style.display=show?'':'none';
    });
  }
  box.addEventListener('input',apply); only.addEventListener('change',apply);
  document.getElementById('close-all').addEventListener('click',function(){
    document.querySelectorAll('td.cell details[open]').forEach(function(x){x.open=false;});
  });
})();
"""


def render(page: d.Page) -> str:
    body = [f"<h1>{esc(page.title)}</h1>",
            f'<p class="meta">generated {page.generated:%Y-%m-%d %H:%M} UTC by patchkit report; '
            f'{len(page.models)} model(s). Built from: {esc("; ".join(page.sources))}</p>',
            '<nav><a href="#s-matrix">matrix</a><a href="#s-metrics">patches</a><a href="#s-history">history</a>'
            '<a href="#s-training">training</a></nav>',
            *matrix_section(page.matrix), *metrics_section(page.metrics), *history_section(page.history),
            *training_section(page.runs)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{esc(page.title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + f"\n<script>{JS}</script>\n</body></html>\n")


def chip(outcome: str, text: str | None = None) -> str:
    return f'<span class="chip" style="background:{d.colour(outcome)}">{esc(text or outcome)}</span>'


# --- matrix ----------------------------------------------------------------------------------------------

def matrix_section(m: d.Matrix) -> list[str]:
    out = ['<h2 id="s-matrix">Matrix: model &times; upstream, newest rebase --check</h2>']
    if m.ok is None:
        return out + ["<p>No check result found: run <code>patchkit rebase --check</code> "
                      "(it keeps its JSON in <code>work/.patchkit/checks/latest.json</code>) "
                      "or pass <code>--check FILE</code>.</p>"]
    verdict = '<span class="ok">all hold</span>' if m.ok else '<span class="bad">something breaks</span>'
    counts = ", ".join(f"{n} {o}" for o, n in sorted(m.totals.items(), key=lambda kv: d.rank(kv[0])))
    out.append(f"<p>Checked {esc(m.checked_at or 'at an unknown time')}: {verdict} ({esc(counts)}).</p>")
    out.append('<p class="legend">' + "".join(chip(o, f"{o}: {d.OUTCOMES[o][2]}") for o in
                                              (*d.PATCH_OUTCOMES, *d.OVERLAY_STATES)) + "</p>")
    out.append('<div class="filter"><input type="search" id="filter" placeholder="filter models by name"> '
               '<label><input type="checkbox" id="only-broken"> only models with something broken</label> '
               '<button id="close-all" type="button">close all cells</button></div>')
    out.append('<table id="matrix"><thead><tr><th>model</th>'
               + "".join(f'<th class="col" data-column="{esc(c)}">{esc(c)}</th>' for c in m.columns)
               + "</tr></thead>")
    for group in m.groups:
        out.append(f'<tbody data-group="{esc(group.name)}"><tr class="group"><th colspan="{len(m.columns) + 1}">'
                   f'{esc(group.name)} ({len(group.rows)})</th></tr>')
        out += [_row(row, m) for row in group.rows]
        out.append("</tbody>")
    out.append("</table>")
    out += _targets(m)
    return out


def _row(row: d.Row, m: d.Matrix) -> str:
    cells = "".join(_cell(row.cells[c], m, right=i >= len(m.columns) / 2) if c in row.cells
                    else '<td class="cell empty"></td>' for i, c in enumerate(m.columns))
    return (f'<tr class="model" data-model="{esc(row.model)}" data-broken="{row.broken}">'
            f"<th>{esc(row.model)}</th>{cells}</tr>")


def _cell(cell: d.Cell, m: d.Matrix, right: bool = False) -> str:
    n, broken = len(cell.patches), cell.broken
    label = f"&#10007; {broken}/{n + len(cell.overlays)}" if broken else f"&#10003; {n}"
    if cell.overlays and not broken:
        label += f"+{len(cell.overlays)}"
    if not cell.checked:
        label = "?"
    fg = "#fff" if d.rank(cell.outcome) in (0, 1, 2, 12) else "#111"
    pop = [f"<b>{esc(cell.model)}</b> on {esc(', '.join(cell.upstreams))}: "
           + " ".join(chip(o, f"{k} {o}") for o, k in sorted(cell.counts().items(), key=lambda kv: d.rank(kv[0])))]
    for up in cell.upstreams:
        t = m.targets.get(up)
        if t:
            pop.append(f'<div class="commit">{esc(up)}: pin {esc(t["pin"][:12])} &rarr; {esc(t["ref"])} '
                       f'{esc(t["commit"][:12])} ({t["commits_since_pin"]} commits ahead)</div>')
    pop.append('<table class="grid">')
    pop += [_patch_tr(p) for p in sorted(cell.patches, key=lambda p: d.rank(p.outcome))]
    pop += [_overlay_tr(o) for o in sorted(cell.overlays, key=lambda o: d.rank(o.state))]
    pop.append("</table>")
    return (f'<td class="cell" data-model="{esc(cell.model)}" data-column="{esc(cell.column)}" '
            f'data-outcome="{esc(cell.outcome)}" data-broken="{broken}" data-patches="{n}" '
            f'data-overlays="{len(cell.overlays)}" style="background:{d.colour(cell.outcome)};color:{fg}">'
            f'<details><summary title="{esc(cell.model)} / {esc(cell.column)}: {esc(cell.outcome)}">{label}</summary>'
            f'<div class="pop{" right" if right else ""}">{"".join(pop)}</div></details></td>')


def _patch_tr(p: d.PatchRow) -> str:
    detail = f"<pre>{esc(chr(10).join(p.detail))}</pre>" if p.detail else ""
    commits = "".join(f'<div class="commit">upstream: {esc(c)}</div>' for c in p.commits)
    hint = f'<div class="hint">{esc(p.hint)}</div>' if p.outcome != "clean" else ""
    return (f'<tr class="patch" data-patch="{esc(p.patch)}" data-upstream="{esc(p.upstream)}" '
            f'data-outcome="{esc(p.outcome)}"><td>{chip(p.outcome)}</td><td>{esc(p.patch)}{detail}{commits}{hint}'
            "</td></tr>")


def _overlay_tr(o: d.OverlayRow) -> str:
    detail = f"<pre>{esc(chr(10).join(o.detail))}</pre>" if o.detail else ""
    hint = f'<div class="hint">{esc(o.hint)}</div>' if o.state not in ("holds", "merged") else ""
    return (f'<tr class="overlay" data-target="{esc(o.name)}" data-outcome="{esc(o.state)}"><td>{chip(o.state)}</td>'
            f'<td>overlay {esc(o.name)} <span class="commit">({esc(o.where)})</span>{detail}{hint}</td></tr>')


def _targets(m: d.Matrix) -> list[str]:
    out = ['<details><summary>upstream targets of this check</summary><table class="grid"><tr><th>upstream</th>'
           '<th>pin</th><th>checked against</th><th class="num">commits ahead</th><th class="num">behind</th></tr>']
    for name, t in sorted(m.targets.items()):
        out.append(f'<tr><td>{esc(name)}</td><td><code>{esc(t["pin"][:12])}</code></td><td>{esc(t["ref"])} '
                   f'<code>{esc(t["commit"][:12])}</code></td><td class="num">{t["commits_since_pin"]}</td>'
                   f'<td class="num">{t.get("commits_behind", 0)}</td></tr>')
    return out + ["</table></details>"]


# --- metrics ---------------------------------------------------------------------------------------------

STATUS_COLOURS = {"Pending": "#fdae61", "Submitted": "#abd9e9", "Backport": "#2c7bb6", "Denied": "#d7191c",
                  "Inappropriate": "#878787", "none": "#f1b6da"}


def _status_cells(counts: dict[str, int]) -> str:
    cells = "".join(f'<td class="num" data-status="{s}">{counts.get(s, 0)}</td>' for s in d.DEP3)
    bar = svg.stacked_bar([(s, counts.get(s, 0), STATUS_COLOURS[s]) for s in d.DEP3])
    return cells + f"<td>{bar}</td>"


def metrics_section(mt: d.Metrics) -> list[str]:
    heads = "".join(f'<th class="num">{s}</th>' for s in d.DEP3)
    out = ['<h2 id="s-metrics">Patches</h2>',
           f"<p>{len(mt.patches)} distinct patches in {len(mt.layers)} layers. Upstream-Status is the patch "
           "header's DEP-3 line (<i>none</i>: the header has none). Age: days since the patch's Date: header.</p>",
           '<p class="legend">' + "".join(f'<span class="chip" style="background:{c}">{s}</span>'
                                          for s, c in STATUS_COLOURS.items()) + "</p>",
           '<h3>By layer</h3><table class="grid" id="by-layer"><tr><th>layer</th><th>upstreams</th>'
           f'<th class="num">models served</th><th class="num">patches</th>{heads}<th></th>'
           '<th class="num">median age</th><th class="num">oldest</th><th class="num">+lines</th>'
           '<th class="num">-lines</th></tr>']
    shared = [layer for layer in mt.layers if len(layer.models) > 1]
    for i, layer in enumerate(mt.layers):
        if len(mt.layers) > FOLD_ROWS and i == len(shared):
            own = mt.layers[i:]
            out.append(f'</table><details><summary>{len(own)} layers of one model each '
                       f'({sum(len(x.patches) for x in own)} patches)</summary><table class="grid" id="by-layer-own">')
        median, oldest = mt.age_summary(layer.patches)
        served = f' title="{esc(", ".join(layer.models))}"'
        out.append(f'<tr data-layer="{esc(layer.name)}"><td>{esc(layer.name)}</td><td>{esc(", ".join(layer.upstreams))}'
                   f'</td><td class="num" data-models="{len(layer.models)}"{served}>{len(layer.models)}</td>'
                   f'<td class="num" data-patches="{len(layer.patches)}">{len(layer.patches)}</td>'
                   f"{_status_cells(mt.by_layer[layer.name])}"
                   f'<td class="num">{_days(median)}</td><td class="num">{_days(oldest)}</td>'
                   f'<td class="num">{sum(p.added for p in layer.patches)}</td>'
                   f'<td class="num">{sum(p.removed for p in layer.patches)}</td></tr>')
    out.append("</table>" + ("</details>" if len(mt.layers) > FOLD_ROWS and len(shared) < len(mt.layers) else ""))
    fold = len(mt.by_model) > FOLD_ROWS
    out.append(("<details><summary>by model (" + str(len(mt.by_model)) + ")</summary>" if fold else "<h3>By model</h3>")
               + f'<table class="grid" id="by-model"><tr><th>model</th><th class="num">patches</th>{heads}<th></th></tr>')
    for model, counts in sorted(mt.by_model.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        out.append(f'<tr data-model="{esc(model)}"><td>{esc(model)}</td><td class="num">{sum(counts.values())}</td>'
                   f"{_status_cells(counts)}</tr>")
    out.append("</table>" + ("</details>" if fold else ""))
    out.append("<h3>Already upstream: candidates to drop</h3>")
    if mt.upstreamed:
        out.append('<ul id="upstreamed">' + "".join(f'<li data-patch="{esc(p)}">{esc(p)} <span class="commit" '
                                                     f'title="{esc(", ".join(models))}">({_names(models)})</span></li>'
                                                     for p, models in mt.upstreamed) + "</ul>")
    else:
        out.append("<p>None in the newest check.</p>")
    out += _patch_list(mt)
    return out


def _names(models: list[str], most: int = 4) -> str:
    return esc(", ".join(models) if len(models) <= most else f"{', '.join(models[:most])} and {len(models) - most} more")


def _days(n: int | None) -> str:
    return "-" if n is None else f"{n} d"


def _patch_list(mt: d.Metrics) -> list[str]:
    out = [f'<details><summary>every patch ({len(mt.patches)}): status, age, size</summary>'
           '<table class="grid" id="patches"><tr><th>patch</th><th>upstream</th><th>status</th><th class="num">age</th>'
           '<th class="num">files</th><th class="num">+</th><th class="num">-</th></tr>']
    for p in sorted(mt.patches, key=lambda p: (-(p.age_days(mt.now) or 0), p.id)):
        out.append(f'<tr data-patch="{esc(p.id)}"><td>{esc(p.id)}</td><td>{esc(p.upstream)}</td><td>{esc(p.status)}'
                   f'</td><td class="num">{_days(p.age_days(mt.now))}</td><td class="num">{p.files}</td>'
                   f'<td class="num">{p.added}</td><td class="num">{p.removed}</td></tr>')
    return out + ["</table></details>"]


# --- history ---------------------------------------------------------------------------------------------

def history_chart(h: d.UpstreamHistory) -> svg.Chart:
    xs = list(h.times)
    return svg.Chart(h.upstream, [
        svg.Line("holding", xs, [None if v is None else float(v) for v in h.holding], d.colour("clean")),
        svg.Line("breaking", xs, [None if v is None else float(v) for v in h.breaking], d.colour("conflict"))],
        "check date (UTC)", "distinct patches", time_axis=True, from_zero=True, width=380, height=200)


def history_section(hist: list[d.UpstreamHistory]) -> list[str]:
    out = ['<h2 id="s-history">History</h2>']
    if not hist:
        return out + ["<p>No history: <code>patchkit rebase --check --history DIR</code> appends each check to "
                      "<code>DIR/history.jsonl</code>; pass <code>--history DIR</code> here.</p>"]
    out.append(f"<p>{len(hist[0].times)} checks, holding (green) and breaking (red) distinct patches per upstream; "
               "most breaking now first.</p><div class=\"charts\">")
    for i, h in enumerate(hist):
        if i == SHOWN_CHARTS and len(hist) > SHOWN_CHARTS + 1:
            out.append(f'</div><details><summary>{len(hist) - i} more upstreams</summary><div class="charts">')
        broken = f' title="broken now: {esc(", ".join(h.last_broken))}"' if h.last_broken else ""
        out.append(f'<div class="history" data-upstream="{esc(h.upstream)}"{broken}>{svg.line_chart(history_chart(h))}'
                   "</div>")
    return out + ["</div>" + ("</details>" if len(hist) > SHOWN_CHARTS + 1 else "")]


SHOWN_CHARTS = 9  # history charts shown before the rest fold away
FOLD_ROWS = 15  # metrics tables longer than this fold their long tail away


# --- training --------------------------------------------------------------------------------------------

def training_section(runs: list[d.Run]) -> list[str]:
    out = ['<h2 id="s-training">Training</h2>']
    if not runs:
        return out + ["<p>No training results: pass <code>--runs DIR</code> (a folder searched for results.json; "
                      "by default <code>WORKSPACE/MODEL/runs/</code>, where <code>patchkit train</code> writes them).</p>"]
    out.append('<table class="grid" id="runs"><tr><th>model</th><th>kind</th><th>device</th><th class="num">cards</th>'
               '<th class="num">steps</th><th class="num">global batch (published)</th>'
               '<th class="num">step ms</th><th class="num">published ms</th>'
               '<th class="num">FPS</th><th class="num">published FPS</th><th>metrics (published)</th>'
               '<th>last loss</th><th>fingerprint</th><th>results</th></tr>')
    out += [_run_tr(r) for r in runs]
    out.append("</table>")
    for r in runs:
        res = r.results
        mark = f' <span class="mark">{esc(r.marked)} run: not a training figure</span>' if r.marked else ""
        verdict = ""
        if res.overfit is not None:
            o = res.overfit
            verdict = (f'<p class="{"ok" if o.passed else "bad"}">overfit {"passed" if o.passed else "FAILED"}: '
                       f"loss {o.start:.4g} &rarr; {o.end:.4g} (x{o.ratio:.3f}) in {o.steps} steps; bar: {esc(o.bar)}</p>")
        out.append(f'<section class="run" data-path="{esc(r.path)}" data-model="{esc(res.model)}" '
                   f'data-kind="{esc(res.kind)}"><h3>{esc(res.model)} &middot; {esc(res.kind)}{mark}</h3>'
                   f'<p class="meta">{esc(r.path)}</p>{verdict}<div class="charts">'
                   f"{svg.line_chart(curves.loss_chart(res))}{svg.line_chart(curves.step_chart(res))}</div></section>")
    return out


def _run_tr(r: d.Run) -> str:
    res, pub = r.results, r.results.published or {}
    metrics = ", ".join(f"{k} {v:g}" + (f" ({pub.get('metrics', {}).get(k)})" if k in pub.get("metrics", {}) else "")
                        for k, v in res.metrics.items())
    metrics = metrics or ", ".join(f"- ({k} {v})" for k, v in (pub.get("metrics") or {}).items()) or "-"
    last = next((v for v in reversed(res.series.loss) if v is not None), None)
    kind = f'<span class="mark">{esc(res.kind)}</span>' if r.marked else esc(res.kind)
    where = f" on {pub.get('cards') or '?'} {esc(pub.get('chip') or '')}" if pub else ""
    return (f'<tr data-path="{esc(r.path)}" data-model="{esc(res.model)}" data-kind="{esc(res.kind)}">'
            f"<td>{esc(res.model)}</td><td>{kind}</td><td>{esc(res.device)} ({esc(res.backend)})</td>"
            f'<td class="num">{res.cards * res.nnodes}</td><td class="num">{len(res.series.step) or res.steps_seen}</td>'
            f'<td class="num">{_fmt(res.global_batch)} ({_fmt(res.published_global_batch)})</td>'
            f'<td class="num">{_fmt(res.mean_step_ms)}</td><td class="num">{_fmt(pub.get("step_ms"))}{where}</td>'
            f'<td class="num">{_fmt(res.fps)}</td><td class="num">{_fmt(pub.get("fps"))}</td><td>{esc(metrics)}</td>'
            f'<td class="num">{_fmt(last)}</td><td title="{esc(_fingerprint_text(res.fingerprint))}"><code>'
            f"{esc(r.fingerprint)}</code></td><td>{esc(r.path.name)}</td></tr>")


def _fmt(value: object) -> str:
    return d.number(value) if value is None or isinstance(value, float) else esc(value)


def _fingerprint_text(fp: dict[str, object]) -> str:
    repos = fp.get("repos") or {}
    parts = [f"{up} {str(r.get('head', ''))[:12]}" for up, r in repos.items() if isinstance(r, dict)]  # type: ignore[union-attr]
    return "; ".join(parts) + (f"; overlays {fp.get('overlays')}" if fp.get("overlays") else "")
