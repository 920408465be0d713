"""Pins resolved against the upstreams' mirrors: SHAs for branches and tags (pin + track), the step
that runs winning over what is only written, and an inferred pin where the named one is in no history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from patchkit import cache, git, pypi
from patchkit.errors import PatchkitError, PinNotFound
from patchkit.importer.model import Finding, PinDecision, PinEvidence, UpstreamPlan
from patchkit.importer.patches import FileDiff
from patchkit.importer.regen import infer_pin
from patchkit.importer.upstreams import SHA_LIKE
from patchkit.manifest import Upstream

PLACEHOLDER_PIN = "0" * 40


@dataclass
class Resolved:
    upstream: Upstream  # with its pin
    mirror: Path
    decision: PinDecision


def mirror_for(plan: UpstreamPlan, name: str) -> tuple[Upstream, Path]:
    """The mirror of a git PLAN, fetched (cloned) into the cache; raises when it cannot be reached."""
    upstream = Upstream(name, plan.url, PLACEHOLDER_PIN, "HEAD", 0)
    cache.fetch(upstream)
    return upstream, cache.mirror_path(upstream)


def default_branch(mirror: Path) -> str:
    head = git.run(["symbolic-ref", "-q", "HEAD"], mirror, check=False).stdout.strip()
    return head.removeprefix("refs/heads/") or "HEAD"


def resolve_ref(mirror: Path, upstream: Upstream, ref: str) -> str | None:
    """The commit REF names in MIRROR (a SHA, maybe abbreviated, fetched by SHA if needed; a branch; a tag)."""
    if SHA_LIKE.match(ref):
        found = git.run(["rev-parse", "--verify", "-q", f"{ref}^{{commit}}"], mirror, check=False)
        if found.ok:
            return found.stdout.strip()
        if len(ref) == 40:
            try:
                cache.ensure_pin(Upstream(upstream.name, upstream.url, ref, upstream.track, 0))
                return ref
            except PatchkitError:
                return None
        return None
    return cache.track_commit(mirror, ref)


def winner(evidence: list[PinEvidence]) -> PinEvidence | None:
    """The statement that decides: the last step that runs (checkout/reset over clone -b), else the
    reference block, else a commit line."""
    running = [e for e in evidence if e.runs]
    pins = [e for e in running if e.form != "clone -b"]
    if pins:
        return pins[-1]
    if running:
        return running[-1]
    written = [e for e in evidence if e.form in ("reference block", "commit line")]
    return written[0] if written else None


def decide(plan: UpstreamPlan, name: str, diffs: list[FileDiff]) -> tuple[Resolved, list[Finding]]:
    """PLAN's pin and track; raise PatchkitError when the upstream cannot be obtained."""
    if plan.pypi:
        return _pypi(plan, name), []
    upstream, mirror = mirror_for(plan, name)
    branch = next((e.ref for e in plan.evidence if e.form == "clone -b"), None)
    track = branch or default_branch(mirror)
    chosen = winner(plan.evidence)
    findings: list[Finding] = []
    ref = chosen.ref if chosen else track
    pin = resolve_ref(mirror, upstream, ref)
    how = "pinned" if chosen and SHA_LIKE.match(ref) else "track resolved"
    decision = PinDecision(name, pin or "", track, how)
    if pin is None:
        found, looked = infer_pin(mirror, diffs)
        if not found:
            raise PinNotFound(f"{plan.url}: {ref} is in no history of the mirror, and the port's patches "
                              f"apply strictly at none of the {looked} newest commits")
        decision = PinDecision(name, found[0], track, "inferred", candidates=found)
        decision.note = (f"INFERRED by patchkit import: the port names {ref} ({chosen.where if chosen else '?'}), "
                         f"which is in no history of {plan.url}; its patches apply strictly at {len(found)} of the "
                         f"{looked} newest commits (newest first: {', '.join(c[:12] for c in found[:8])}"
                         f"{', ...' if len(found) > 8 else ''}); the newest is used")
        findings.append(Finding(str(chosen.where) if chosen else plan.url, f"pin {ref} not found upstream",
                                decision.note.removeprefix("INFERRED by patchkit import: ")))
    findings += _contradictions(plan, mirror, upstream, decision, chosen)
    return Resolved(Upstream(name, plan.url, decision.pin, track, 0), mirror, decision), findings


def _contradictions(plan: UpstreamPlan, mirror: Path, upstream: Upstream, decision: PinDecision,
                    chosen: PinEvidence | None) -> list[Finding]:
    out = []
    for e in plan.evidence:
        if e is chosen or e.form == "clone -b" and chosen and chosen.form != "clone -b":
            continue
        if chosen and (e.ref.startswith(chosen.ref) or chosen.ref.startswith(e.ref)):
            continue  # the same pin said twice
        commit = resolve_ref(mirror, upstream, e.ref)
        if commit != decision.pin:
            said = f"{e.ref} ({commit[:12] if commit else 'in no history'})"
            by = f"{chosen.form} at {chosen.where}" if chosen else "the default branch"
            out.append(Finding(str(e.where), f"{e.form} says {said}",
                               f"contradicts the pin {decision.pin[:12]} ({by}, the step that runs)"))
    return out


def _pypi(plan: UpstreamPlan, name: str) -> Resolved:
    assert plan.pypi
    dist, version = pypi.split(plan.pypi)
    probe = Upstream(name, f"pypi:{plan.pypi}", "", "", 0, pypi=plan.pypi, sha256="0" * 64)
    mirror = cache.mirror_path(probe)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    commit = pypi.import_version(probe, mirror, version)
    message = git.out(["log", "-1", "--format=%B", commit], mirror)
    sha = re.search(r"sha256: ([0-9a-f]{64})", message)
    major, minor = (version.split(".") + ["0"])[:2]
    track = f">={major}.{minor},<{major}.{int(minor) + 1}" if minor.isdigit() else f"=={version}"
    upstream = Upstream(name, f"pypi:{plan.pypi}", commit, track, 0, pypi=plan.pypi,
                        sha256=sha.group(1) if sha else None)
    decision = PinDecision(name, commit, track, "pypi", note=f"{message.splitlines()[2] if len(message.splitlines()) > 2 else ''}")
    return Resolved(upstream, mirror, decision)


def missing_blob_dirs(mirror: Path, pin: str) -> list[str]:
    """Top-level folders (or files) holding blobs the mirror lacks at PIN: the workspace leaves them out."""
    listing = git.run(["ls-tree", "-r", "--full-tree", pin], mirror).stdout
    blobs = {}
    for line in listing.splitlines():
        meta, _, path = line.partition("\t")
        fields = meta.split()
        if len(fields) == 3 and fields[1] == "blob":
            blobs.setdefault(fields[2], []).append(path)
    if not blobs:
        return []
    check = git.run(["cat-file", "--batch-check"], mirror, input_bytes="\n".join(blobs).encode()).stdout
    missing = [line.split()[0] for line in check.splitlines() if line.endswith(" missing")]
    out = set()
    for sha in missing:
        for path in blobs[sha]:
            out.add(path.split("/", 1)[0] + "/" if "/" in path else path)
    return sorted(out)
