"""Human-readable lines for the reports that commands print."""

from __future__ import annotations

from collections.abc import Iterator

from patchkit.am import GIT_SAYS_MORE
from patchkit.apply import ApplyReport, RepoResult
from patchkit.check import CheckReport, PatchCheck
from patchkit.overlay.drift import HOLDING, FileState, TargetState
from patchkit.status import ModelStatus


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'es' if word.endswith('ch') else 's'}" if n != 1 else f"1 {word}"


def apply_lines(report: ApplyReport) -> list[str]:
    total = sum(r.total for r in report.repos)
    if report.noop:
        variant = f", variant {report.variant}" if report.variant else ""
        lines = [f"{report.model}: up to date, nothing to do ({_plural(len(report.repos), 'repo')}, "
                 f"{_plural(total, 'patch')}, in {report.workspace}{variant})"]
        for repo in report.repos:
            lines += [f"  {repo.upstream}: {note}" for note in repo.notes]
        return lines
    width = max(len(r.upstream) for r in report.repos)
    lines = [f"{report.model} in {report.workspace}" + (f" (variant {report.variant}):" if report.variant else ":")]
    for repo in report.repos:
        lines += _repo_lines(repo, width)
    failed = [r for r in report.repos if r.failure]
    if failed:
        lines.append(f"{report.model}: {len(failed)} of {len(report.repos)} repos failed")
    return lines


def _repo_lines(repo: RepoResult, width: int) -> list[str]:
    pad = " " * (width + 4)
    head = f"  {repo.upstream:<{width}}  "
    if repo.failure:
        f = repo.failure
        lines = [f"{head}FAILED: {f.patch} does not apply on {repo.pin[:12]} "
                 f"(after {_plural(repo.applied, 'patch')} applied; branch left there, no git am in progress)",
                 f"{pad}{f.path}: {f.subject}"]
        lines += [f"{pad}{h.file}: {h.hunk}" + (f" -- {h.detail}" if h.detail else "") for h in f.hunks]
        if f.git_output and any(h.hunk in GIT_SAYS_MORE for h in f.hunks):
            lines.append(f"{pad}git am said:")
            lines += [f"{pad}  {line}" for line in f.git_output[-10:]]
    else:
        extra = f", {repo.reused} reused" if repo.reused and repo.action != "unchanged" else ""
        why = f" ({repo.reason})" if repo.reason and repo.action not in ("built", "unchanged") else ""
        lines = [f"{head}{repo.action}{why}: {_plural(repo.applied, 'patch')}{extra} on {repo.pin[:12]}, "
                 f"head {repo.head[:12]}"]
    lines += [f"{pad}{note}" for note in repo.notes]
    for saved in repo.saved:
        lines.append(f"{pad}kept on {saved.ref} ({saved.why}): {saved.summary()}")
        lines.append(f"{pad}  `patchkit backups --restore {saved.id}` puts it back")
    lines += [f"{pad}your previous work is kept on {ref}" for ref in repo.backups
              if ref not in {s.ref for s in repo.saved}]
    return lines


def status_lines(models: list[ModelStatus]) -> list[str]:
    lines = []
    for model in models:
        variant = f", variant {model.variant}" if model.variant else ""
        lines.append(f"{model.model} ({model.workspace}{variant})")
        if model.problem:
            lines.append(f"  PROBLEM: {model.problem}")
        width = max((len(r.upstream) for r in model.repos), default=0)
        for repo in model.repos:
            lines.append(f"  {repo.upstream:<{width}}  {repo.state:<11} pin {repo.pin[:12]}  "
                         f"{repo.applied}/{repo.total} patches")
            lines += [f"  {'':<{width}}  - {reason}" for reason in repo.reasons]
    return lines


_LABEL = {"conflict": "CONFLICT", "target-missing": "TARGET-MISSING", "blocked": "BLOCKED"}


def check_lines(report: CheckReport) -> Iterator[str]:
    """The check as text, line by line (a long check's lines are never all in memory)."""
    current = None
    for series in report.series:
        if (series.model, series.variant) != current:
            current = (series.model, series.variant)
            yield series.model + (f" (variant {series.variant})" if series.variant else "")
        t = report.targets[series.target_key]
        moved = f"{t.commits_since_pin} commits ahead"
        if not t.pin_is_ancestor:
            moved += f", {t.commits_behind} behind: the pin is not an ancestor of the target"
        ref = "" if t.commit.startswith(t.ref) else f"{t.ref} "
        yield f"  {series.upstream}: {t.pin[:12]} -> {ref}{t.commit[:12]} ({moved})"
        for p in series.patches:
            yield from _patch_lines(p)
    for overlay in report.overlays:
        variant = f" (variant {overlay.variant})" if overlay.variant else ""
        yield f"{overlay.model}{variant}: overlays on {overlay.upstream}"
        yield from overlay_lines(overlay.targets, overlay.files)
    counts = {k: v for k, v in report.counts().items() if v}
    total = sum(counts.values())
    broken = report.broken() + sum(o.broken for o in report.overlays)
    verdict = "all hold" if report.ok else f"{broken} broken"
    models = len({s.model for s in report.series})
    variants = len({(s.model, s.variant) for s in report.series if s.variant})
    overlays = ""
    if report.overlays:
        states: dict[str, int] = {}
        for o in report.overlays:
            for state in [t.state for t in o.targets] + [f.state for f in o.files]:
                states[state] = states.get(state, 0) + 1
        overlays = "; overlays: " + ", ".join(f"{v} {k}" for k, v in states.items())
    detail = ", ".join(f"{v} {k}" for k, v in counts.items()) + overlays
    yield (f"{total} patches in {models} model{'s' if models != 1 else ''}"
           + (f" and {variants} variant{'s' if variants != 1 else ''}" if variants else "")
           + (f": {detail}" if detail else "") + f" -- {verdict}")


def overlay_lines(targets: list[TargetState], files: list[FileState]) -> list[str]:
    lines = []
    for t in targets:
        label = t.state if t.state in HOLDING or t.state == "updated" else t.state.upper()
        lines.append(f"    {label:<18} {t.target}  ({t.where})")
        lines += [f"{' ' * 23}{d}" for d in t.detail]
    for f in files:
        label = f.state if f.state in HOLDING else f.state.upper()
        lines.append(f"    {label:<18} {f.path}  (whole file, overlay set {f.set})")
        lines += [f"{' ' * 23}{d}" for d in f.detail]
    return lines


def _patch_lines(p: PatchCheck) -> list[str]:
    label = _LABEL.get(p.outcome, p.outcome)
    if p.outcome == "offset":
        label = f"offset {p.offset:+d}"
    elif p.outcome == "fuzz":
        label = f"fuzz {p.fuzz}" + (" (allowed)" if not p.broken else " (BROKEN)")
    lines = [f"    {label:<16} {p.patch}"]
    pad = " " * 21
    if p.blocked_by:
        lines.append(f"{pad}blocked-by {p.blocked_by}: it needs that patch, which does not apply")
    for f in p.files:
        lines.append(f"{pad}{f.path}: {f.reason}")
        lines += [f"{pad}  {h}" for h in f.hunks]
        lines += [f"{pad}    upstream: {c}" for c in f.commits]
    if p.range_diff and p.outcome != "offset":
        lines.append(f"{pad}the patch before (-) and after (+) the move:")
        lines += [f"{pad}  {d}" for d in p.range_diff]
    else:
        lines += [f"{pad}{d}" for d in p.range_diff]
    if p.outcome == "upstreamed":
        lines.append(f"{pad}already in the upstream: drop it from the series")
    return lines


def junit_xml(report: CheckReport) -> bytes:
    """The check as JUnit XML: a suite per model/upstream, a test case per patch."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="patchkit rebase --check")
    for series in report.series:
        failures = sum(p.broken for p in series.patches)
        model = series.model + (f"[{series.variant}]" if series.variant else "")
        suite = ET.SubElement(root, "testsuite", name=f"{model}/{series.upstream}",
                              tests=str(len(series.patches)), failures=str(failures))
        for p in series.patches:
            case = ET.SubElement(suite, "testcase", classname=f"{model}.{series.upstream}", name=p.patch)
            detail = "\n".join(_patch_lines(p))
            if p.broken:
                ET.SubElement(case, "failure", message=p.outcome, type=p.outcome).text = detail
            else:
                ET.SubElement(case, "system-out").text = detail
    for overlay in report.overlays:
        items = [(t.target, t.state, overlay_lines([t], [])) for t in overlay.targets]
        items += [(f.path, f.state, overlay_lines([], [f])) for f in overlay.files]
        model = overlay.model + (f"[{overlay.variant}]" if overlay.variant else "")
        suite = ET.SubElement(root, "testsuite", name=f"{model}/{overlay.upstream}/overlays",
                              tests=str(len(items)), failures=str(overlay.broken))
        for name, state, lines in items:
            case = ET.SubElement(suite, "testcase", classname=f"{model}.overlays", name=name)
            if state not in HOLDING:
                ET.SubElement(case, "failure", message=state, type=state).text = "\n".join(lines)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
