"""Human-readable lines for the reports that commands print."""

from __future__ import annotations

from patchkit.apply import ApplyReport, RepoResult
from patchkit.status import ModelStatus


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'es' if word.endswith('ch') else 's'}" if n != 1 else f"1 {word}"


def apply_lines(report: ApplyReport) -> list[str]:
    total = sum(r.total for r in report.repos)
    if report.noop:
        lines = [f"{report.model}: up to date, nothing to do ({_plural(len(report.repos), 'repo')}, "
                 f"{_plural(total, 'patch')}, in {report.workspace})"]
        for repo in report.repos:
            lines += [f"  {repo.upstream}: {note}" for note in repo.notes]
        return lines
    width = max(len(r.upstream) for r in report.repos)
    lines = [f"{report.model} in {report.workspace}:"]
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
    else:
        extra = f", {repo.reused} reused" if repo.reused and repo.action != "unchanged" else ""
        why = f" ({repo.reason})" if repo.reason and repo.action not in ("built", "unchanged") else ""
        lines = [f"{head}{repo.action}{why}: {_plural(repo.applied, 'patch')}{extra} on {repo.pin[:12]}, "
                 f"head {repo.head[:12]}"]
    lines += [f"{pad}{note}" for note in repo.notes]
    lines += [f"{pad}your previous work is kept on {ref}" for ref in repo.backups]
    return lines


def status_lines(models: list[ModelStatus]) -> list[str]:
    lines = []
    for model in models:
        lines.append(f"{model.model} ({model.workspace})")
        width = max((len(r.upstream) for r in model.repos), default=0)
        for repo in model.repos:
            lines.append(f"  {repo.upstream:<{width}}  {repo.state:<11} pin {repo.pin[:12]}  "
                         f"{repo.applied}/{repo.total} patches")
            lines += [f"  {'':<{width}}  - {reason}" for reason in repo.reasons]
    return lines
