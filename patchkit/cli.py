"""The command line. The only module that prints; everything else returns data or raises."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from patchkit import __version__, cache, git, manifest as manifest_mod, settings
from patchkit.errors import BadInput, Interrupted, InvalidInput, PatchkitError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_INTERNAL = 70


class Ctx:
    def __init__(self, manifest_path: str | None, quiet: bool) -> None:
        self.manifest_path = manifest_path
        self.quiet = quiet
        self._manifest: manifest_mod.Manifest | None = None

    def manifest(self) -> manifest_mod.Manifest:
        if self._manifest is None:
            path = Path(self.manifest_path) if self.manifest_path else manifest_mod.find()
            kept = manifest_mod.manifests_memo(settings.cache_root(), path)  # a warm run reads no YAML
            self._manifest = manifest_mod.load(path, kept)
            kept.save()
        return self._manifest

    def workspace(self, option: str | None) -> Path:
        if option:
            return _folder(option, "--workspace")
        if os.environ.get("PATCHKIT_WORKSPACE"):
            return _folder(os.environ["PATCHKIT_WORKSPACE"], "PATCHKIT_WORKSPACE")
        return _folder(str(self.manifest().root / "work"), "the workspace")

    def progress(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"patchkit: {message}", err=True)


def _folder(value: str, what: str) -> Path:
    """A folder the user named: fine when it does not exist yet (it is made), refused when it is a file."""
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{what} {value}: not a folder")
    return path


def _output_file(value: str, what: str) -> Path:
    """A file patchkit will write: its folder must exist and be a folder (nothing is created on the way)."""
    path = Path(value)
    parent = path.parent
    if not parent.exists():
        raise BadInput(f"{what} {value}: no such folder {parent}")
    if not parent.is_dir():
        raise BadInput(f"{what} {value}: {parent} is not a folder")
    if path.is_dir():
        raise BadInput(f"{what} {value}: is a folder")
    if not os.access(parent, os.W_OK):
        raise BadInput(f"{what} {value}: cannot write into {parent}")
    return path


def _emit_json(data: Any) -> None:
    """DATA as indented JSON on stdout, written in pieces (jsonstream: a check's patches are never all in memory)."""
    from patchkit import jsonstream

    jsonstream.write(lambda text: click.echo(text, nl=False), data, indent=2, default=_json_default)


def _emit(as_json: bool, data: Any, lines: Callable[[], Iterable[str]]) -> None:
    """--json: DATA; else the text LINES (made only then)."""
    if as_json:
        _emit_json(data)
        return
    for line in lines():
        click.echo(line)


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)  # type: ignore[arg-type]
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print a JSON document on stdout.")
workspace_option = click.option("--workspace", "-w", metavar="DIR",
                                help="Workspace root (default: PATCHKIT_WORKSPACE, else ./work beside upstreams.yaml).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--manifest", "-m", metavar="PATH", envvar="PATCHKIT_MANIFEST",
              help="The upstreams.yaml to use (default: found in the current folder or its parents).")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@click.version_option(__version__, prog_name="patchkit")
@click.pass_context
def cli(ctx: click.Context, manifest: str | None, quiet: bool) -> None:
    """Keep hardware ports of ML models alive while their upstreams move."""
    ctx.obj = Ctx(manifest, quiet)


@cli.command()
@click.option("--remote", is_flag=True, help="Also check that every pin resolves and every track exists upstream.")
@json_option
@click.pass_obj
def validate(obj: Ctx, remote: bool, as_json: bool) -> None:
    """Check upstreams.yaml, the series files and the patches; report every problem at once."""
    from patchkit.validate import validate as run_validate

    report = run_validate(obj.manifest(), remote=remote)
    if as_json:
        _emit_json({"manifest": report.manifest, "ok": report.exit_code == 0, "patches": report.patches,
                    "errors": [dataclasses.asdict(d) for d in report.diagnostics],
                    "unreachable": report.unreachable})
    else:
        for diag in report.diagnostics:
            click.echo(str(diag), err=True)
        m = obj.manifest()
        if report.exit_code == 0:
            click.echo(f"{report.manifest}: ok ({len(m.upstreams)} upstreams, {len(m.models)} models, "
                       f"{report.patches} patches{', pins checked upstream' if remote else ''})")
        else:
            click.echo(f"patchkit: {len(report.diagnostics)} error(s) in the manifest, series and patches", err=True)
    sys.exit(report.exit_code)


@cli.command("list")
@json_option
@click.pass_obj
def list_cmd(obj: Ctx, as_json: bool) -> None:
    """Show the models, the upstreams of the manifest, and what was verified on which device."""
    from patchkit import verify

    m = obj.manifest()
    data: dict[str, Any] = {
        "upstreams": [{"name": u.name, "url": u.url, "pin": u.pin, "track": u.track} for u in m.upstreams.values()],
        "models": [{"name": md.name, "description": md.description, "upstreams": _list_upstreams(m.effective(md)),
                    "variants": {v: {"description": md.variants[v].description,
                                     "upstreams": {up: {"layers": list(layers), "patches": len(md.variants[v].patches[up])}
                                                   for up, layers in md.variants[v].layers.items()},
                                     "overlays": list(md.variants[v].overlays),
                                     "requires": list(md.variants[v].requires)} for v in md.variants},
                    "verified": verify.newest(verify.load(m.root, md.name))}
                   for md in m.models.values()],
    }
    if as_json:
        _emit_json(data)
        return
    click.echo("models:")
    for md in data["models"]:
        click.echo(f"  {md['name']}" + (f"  {md['description']}" if md["description"] else ""))
        for up, info in md["upstreams"].items():
            layers = " + ".join(info["layers"]) or "(no patches)"
            own = f"  (own pin {info['pin'][:12]}, track {info['track']})" if "pin" in info else ""
            click.echo(f"    {up:<20} {layers}  [{info['patches']} patches]{own}")
        for name, v in md["variants"].items():
            click.echo(f"    variant {name}" + (f"  {v['description']}" if v["description"] else "") + ": " +
                       "; ".join([f"{up} + {' + '.join(i['layers'])} [{i['patches']} patches]"
                                  for up, i in v["upstreams"].items()]
                                 + ([f"overlays + {', '.join(v['overlays'])}"] if v["overlays"] else [])
                                 + ([f"requires {', '.join(v['requires'])}"] if v["requires"] else [])))
        for device, records in md["verified"].items():
            if device != "any" or records:
                click.echo(f"    {'applied' if device == 'any' else f'verified on {device}'}: "
                           f"{verify.summary(records)}")
    click.echo("upstreams:")
    for u in data["upstreams"]:
        click.echo(f"  {u['name']:<20} {u['pin'][:12]}  track {u['track']:<12} {u['url']}")


def _list_upstreams(view: manifest_mod.Effective) -> dict[str, dict[str, Any]]:
    """Each upstream of a model: its layers and patch count, and its own pin and track where the model has one."""
    out: dict[str, dict[str, Any]] = {}
    for up, layers in view.layers.items():
        out[up] = {"layers": list(layers), "patches": len(view.patches.get(up, ()))}
        if up in view.model.pins or up in view.model.tracks:
            out[up].update(pin=view.upstreams[up].pin, track=view.upstreams[up].track)
    return out


@cli.command()
@click.argument("upstreams", nargs=-1)
@click.option("--jobs", "-j", default=4, show_default=True, help="Upstreams fetched at once.")
@json_option
@click.pass_obj
def fetch(obj: Ctx, upstreams: tuple[str, ...], jobs: int, as_json: bool) -> None:
    """Create or update the mirrors of UPSTREAMS (default: all) in the cache."""
    m = obj.manifest()
    chosen = [m.upstream(name) for name in upstreams] if upstreams else list(m.upstreams.values())
    total = len(chosen)
    done = [0]

    def on_done(up: manifest_mod.Upstream, outcome: cache.FetchResult | PatchkitError) -> None:
        done[0] += 1
        if isinstance(outcome, PatchkitError):
            obj.progress(f"[{done[0]}/{total}] {up.name}: {outcome.message}")
        else:
            moved = ""
            if outcome.track_before and outcome.track_after and outcome.track_before != outcome.track_after:
                moved = f", {up.track} moved {outcome.track_before[:12]} -> {outcome.track_after[:12]}"
            obj.progress(f"[{done[0]}/{total}] {up.name}: {outcome.action} in {outcome.seconds:.1f} s{moved}")

    obj.progress(f"fetching {total} upstream{'s' if total != 1 else ''} into {cache.mirror_path(chosen[0]).parent}"
                 if chosen else "nothing to fetch")
    outcomes = cache.fetch_all(chosen, jobs=jobs, on_done=on_done)
    errors = {name: o for name, o in outcomes.items() if isinstance(o, PatchkitError)}
    if as_json:
        _emit_json({name: ({"ok": False, "error": o.lines()} if isinstance(o, PatchkitError)
                           else {"ok": True, **dataclasses.asdict(o)}) for name, o in outcomes.items()})
    for error in errors.values():
        for line in error.lines():
            click.echo(f"patchkit: error: {line}", err=True)
    sys.exit(max((e.exit_code for e in errors.values()), default=0))


@cli.command("install")
@click.argument("model")
@click.option("--venv", type=click.Path(file_okay=False),
              help="Install into this virtual environment; a new one is created with the device's toolchain.")
@click.option("--device", type=click.Choice(["auto", "cpu", "npu", "cuda"]), default="auto", show_default=True,
              help="Whose toolchain and build (npu adds the recipes' npu_env); auto: the machine's driver.")
@click.option("--force", is_flag=True, help="Use a venv whose torch differs from the toolchain's (kept as it is).")
@click.option("--variant", metavar="NAME", help="The variant the workspace is built as (`apply --variant`): "
              "its requirements are installed too (default: whatever the workspace records).")
@workspace_option
@json_option
@click.pass_obj
def install_cmd(obj: Ctx, model: str, venv: str | None, device: str, force: bool, variant: str | None,
                workspace: str | None, as_json: bool) -> None:
    """Install MODEL's stack from its workspace in dependency order, reusing cached wheels."""
    from patchkit.install import install

    m, root = obj.manifest(), obj.workspace(workspace)
    try:
        report = install(m, model, root, venv=Path(venv) if venv else None, device=device, force=force,
                         variant=variant, progress=obj.progress)
    except PatchkitError as exc:
        _record(obj, m, model, root, "compile", device, False, {"error": exc.message})
        raise
    _record(obj, m, model, root, "compile", report.device, True,
            {"steps": {s.upstream: s.action for s in report.steps}, "python": str(report.python),
             "versions": report.versions})
    if as_json:
        _emit_json({"ok": True, **dataclasses.asdict(report)})
        return
    for step in report.steps:
        click.echo(f"  {step.upstream:<20} {step.action:<9} {step.seconds:7.1f} s  {step.wheel or ''}")
    torch = ", ".join(f"{k} {v}" for k, v in report.versions.items() if v and k != "python")
    click.echo(f"{model}: {len(report.steps)} step(s) installed into {report.python} ({report.device}: {torch})")
    if venv:
        click.echo(f"{model}: recorded; `patchkit train {model}` runs with this venv")
    for warning in report.warnings:
        click.echo(f"warning: pip check: {warning}", err=True)


@cli.command("pin")
@click.argument("upstream")
@click.option("--check", "check_only", is_flag=True, help="Only say whether the pin in upstreams.yaml is right.")
@click.pass_obj
def pin_cmd(obj: Ctx, upstream: str, check_only: bool) -> None:
    """Compute the pin of a PyPI UPSTREAM (the commit its release imports as) and write it."""
    from patchkit import pypi
    from patchkit.manifest import write_pin

    m = obj.manifest()
    up = m.upstream(upstream)
    if up.kind != "pypi":
        raise click.UsageError(f"{upstream} is a git upstream: its pin is a commit you choose")
    mirror = cache.mirror_path(up)
    mirror.parent.mkdir(parents=True, exist_ok=True)
    commit = pypi.pin(up, mirror)
    if commit == up.pin:
        click.echo(f"{upstream}: pin {commit} is right for {up.pypi}")
        return
    if check_only:
        click.echo(f"{upstream}: {up.pypi} imports as {commit}, upstreams.yaml says {up.pin or 'nothing'}", err=True)
        sys.exit(1)
    write_pin(m, up, commit)
    click.echo(f"{upstream}: pin {commit} written to {m.path.name} ({up.pypi})")


@cli.command("apply")
@click.argument("model")
@workspace_option
@click.option("--variant", metavar="NAME", help="Build the model's variant NAME (its layers, overlays and "
              "requirements added); recorded in the workspace.")
@click.option("--force", is_flag=True, help="Rebuild repos with local edits, or switch the variant, keeping the "
              "edits on a backup branch.")
@click.option("--lock-timeout", type=float, metavar="SECONDS",
              help="Give up when another apply holds the workspace this long (default: wait).")
@json_option
@click.pass_obj
def apply_cmd(obj: Ctx, model: str, workspace: str | None, variant: str | None, force: bool,
              lock_timeout: float | None, as_json: bool) -> None:
    """Build or update MODEL's workspace: every upstream at its pin plus its patch series."""
    from patchkit import report as renderers  # the text renderers: loaded only when used
    from patchkit.apply import apply

    m, root = obj.manifest(), obj.workspace(workspace)
    report = apply(m, model, root, variant=variant, force=force, progress=obj.progress, lock_timeout=lock_timeout)
    if not report.noop:  # a no-op apply ran nothing new
        _record(obj, m, model, root, "apply", "any", not report.failed,
                {"repos": {r.upstream: r.total for r in report.repos}})
    _emit(as_json, {"model": report.model, "variant": report.variant, "workspace": report.workspace,
                    "noop": report.noop, "ok": not report.failed, "repos": report.repos, "renamed": report.renamed},
          lambda: renderers.apply_lines(report))
    sys.exit(report.exit_code)


@cli.command()
@click.argument("model", required=False)
@workspace_option
@json_option
@click.pass_obj
def status(obj: Ctx, model: str | None, workspace: str | None, as_json: bool) -> None:
    """Show, per repo, the pin, the patches applied and whether it is clean, stale or edited."""
    from patchkit.report import status_lines
    from patchkit.status import model_status

    m = obj.manifest()
    models = [m.model(model)] if model else list(m.models.values())
    root = obj.workspace(workspace)
    result = [model_status(m, md, root) for md in models]
    code = max((r.exit_code for r in result), default=0)
    _emit(as_json, {"workspace": str(root), "models": result, "exit_code": code}, lambda: status_lines(result))
    sys.exit(code)


@cli.command()
@click.argument("model", required=False)
@click.option("--restore", "restore_id", metavar="ID", help="Put backup ID back into its repo (or folder).")
@click.option("--clean", "clean_old", is_flag=True, help="Delete backups older than --older-than DAYS.")
@click.option("--older-than", type=click.FloatRange(min=0), metavar="DAYS", help="With --clean: the age to keep.")
@workspace_option
@json_option
@click.pass_obj
def backups(obj: Ctx, model: str | None, restore_id: str | None, clean_old: bool, older_than: float | None,
            workspace: str | None, as_json: bool) -> None:
    """List what `apply --force` and repairs kept (branches, set-aside folders); restore or clean them."""
    from patchkit import backup
    from patchkit.lock import FileLock
    from patchkit.state import meta_dir

    root = obj.workspace(workspace)
    if restore_id and clean_old:
        raise click.UsageError("--restore and --clean exclude each other")
    if clean_old and older_than is None:
        raise click.UsageError("--clean needs --older-than DAYS (0 deletes every backup)")
    if restore_id:
        found = backup.get(root, restore_id)
        with FileLock(meta_dir(root / found.model) / "lock", inherit=True):
            click.echo(backup.restore(root, found))
        return
    if clean_old:
        gone = []
        for name in [model] if model else sorted(p.name for p in root.glob("*") if (p / ".patchkit").is_dir()):
            with FileLock(meta_dir(root / name) / "lock", inherit=True):
                gone += backup.clean(root, name, older_than or 0)
        if as_json:
            _emit_json({"deleted": gone})
        for b in gone if not as_json else []:
            click.echo(f"deleted {b.id} ({b.date}, {b.kind} {b.ref or b.path})")
        if not as_json:
            click.echo(f"{len(gone)} backup(s) older than {older_than:g} days deleted")
        return
    found = backup.find(root, model)
    if as_json:
        _emit_json({"workspace": str(root), "backups": found})
        return
    for b in found:
        click.echo(f"{b.id}  {b.date}  {b.kind} {b.ref or b.path}")
        click.echo(f"    {b.contents}")
    click.echo(f"{len(found)} backup(s) in {root}" + ("" if not found else
                                                      "; `patchkit backups --restore ID` puts one back"))


@cli.command()
@click.argument("models", nargs=-1)
@click.option("--check", "check_only", is_flag=True, help="Only replay the series on the new upstream and report.")
@click.option("--onto", multiple=True, metavar="UPSTREAM=REF", help="Use REF instead of the track (repeatable).")
@click.option("--continue", "cont", is_flag=True, help="Go on after resolving a conflict.")
@click.option("--abort", is_flag=True, help="Undo a stopped rebase: every repo back at its previous head.")
@click.option("--allow-fuzz", is_flag=True, help="With --check: count patches that need reduced context as holding.")
@click.option("--no-fetch", is_flag=True, help="Use the mirrors as cached; do not fetch first.")
@click.option("--jobs", "-j", default=4, show_default=True, help="With --check: upstreams checked at once.")
@click.option("--junit", type=click.Path(dir_okay=False), metavar="FILE", help="With --check: also write JUnit XML.")
@click.option("--history", type=click.Path(file_okay=False), metavar="DIR",
              help="With --check: append a summary of this check to DIR/history.jsonl (for `patchkit report`).")
@click.option("--shard", metavar="K/N", help="With --check: check only the K-th of N parts (balanced by patch count).")
@click.option("--merge", is_flag=True, help="Merge the --shard --json files named as arguments into one report.")
@workspace_option
@json_option
@click.pass_obj
def rebase(obj: Ctx, models: tuple[str, ...], check_only: bool, onto: tuple[str, ...], cont: bool, abort: bool,
           allow_fuzz: bool, no_fetch: bool, jobs: int, junit: str | None, history: str | None,
           shard: str | None, merge: bool,
           workspace: str | None, as_json: bool) -> None:
    """Move MODEL's series onto its upstreams' newest commits; --check only says what would hold.

    \b
    patchkit rebase --check [MODEL...]   replay every series, report each patch (all models by default)
    patchkit rebase --check --shard K/N --json > shard-K.json   one part of the check (a CI matrix job)
    patchkit rebase --merge shard-*.json [--junit FILE] [--json]   the parts as one report
    patchkit rebase MODEL                rebase the workspace, then refresh patches and pins
    patchkit rebase --continue|--abort   after a conflict
    """
    from patchkit import check as check_mod

    if sum((check_only, cont, abort, merge)) > 1:
        raise click.UsageError("--check, --merge, --continue and --abort exclude each other")
    if shard and not check_only:
        raise click.UsageError("--shard goes with --check")
    if merge:
        _rebase_merge(obj, models, junit, as_json)
        return
    m = obj.manifest()
    if check_only:
        _rebase_check(obj, m, models, onto, allow_fuzz, no_fetch, jobs, junit, as_json,
                      obj.workspace(workspace), Path(history) if history else None, shard)
        return
    if history:
        raise click.UsageError("--history goes with --check")
    from patchkit import rebase as rebase_mod

    root = obj.workspace(workspace)
    if cont or abort:
        if len(models) > 1:
            raise click.UsageError("--continue/--abort take at most one MODEL")
        model = models[0] if models else None
        result = (rebase_mod.resume(m, model, root, progress=obj.progress) if cont
                  else rebase_mod.abort(m, model, root))
    else:
        if len(models) != 1:
            raise click.UsageError("name one MODEL to rebase (or use --check)")
        result = rebase_mod.start(m, models[0], root, onto=check_mod.parse_onto(onto, m), fetch=not no_fetch,
                                  progress=obj.progress)
    _emit(as_json, {"ok": result.exit_code == 0, **dataclasses.asdict(result)},
          lambda: rebase_mod.describe(result, root))
    sys.exit(result.exit_code)


def _rebase_check(obj: Ctx, m: manifest_mod.Manifest, models: tuple[str, ...], onto: tuple[str, ...],
                  allow_fuzz: bool, no_fetch: bool, jobs: int, junit: str | None, as_json: bool,
                  workspace: Path, history: Path | None, shard: str | None = None) -> None:
    from patchkit import check as check_mod
    from patchkit import shard as shard_mod
    from patchkit.report import store

    if junit:
        _output_file(junit, "--junit")  # refused before a long check, not after it
    report = check_mod.check(m, list(models), onto=check_mod.parse_onto(onto, m), allow_fuzz=allow_fuzz,
                             fetch=not no_fetch, jobs=jobs, progress=obj.progress,
                             shard=shard_mod.parse(shard) if shard else None)
    document = check_json(report)
    obj.progress(f"check kept in {store.keep(workspace, document)}")
    if history:
        obj.progress(f"check appended to {store.append_history(history, document)}")
    _check_output(report, document, junit, as_json)


def _rebase_merge(obj: Ctx, files: tuple[str, ...], junit: str | None, as_json: bool) -> None:
    from patchkit import shard as shard_mod

    if junit:
        _output_file(junit, "--junit")
    try:  # the manifest, when there is one, gives the merged report its usual order
        m = obj.manifest()
        order = [(view.label, up) for view in m.views() for up in view.layers]
    except PatchkitError:
        order = None
    merged = shard_mod.merge([Path(f) for f in files], order)
    obj.progress(f"merged {merged.shards} shards")
    _check_output(shard_mod.report_of(merged.document), merged.document, junit, as_json)


def _check_output(report: Any, document: dict[str, Any], junit: str | None, as_json: bool) -> None:
    from patchkit import report as renderers  # the text renderers load apply, status, am: only when used

    if junit:
        from patchkit.paths import atomic_write

        atomic_write(_output_file(junit, "--junit"), renderers.junit_xml(report))
    _emit(as_json, document, lambda: renderers.check_lines(report))
    sys.exit(report.exit_code)


@cli.command("export")
@click.argument("model")
@click.argument("upstream", required=False)
@click.option("--check", "check_only", is_flag=True, help="Write nothing; exit 1 when a patch file is stale.")
@workspace_option
@json_option
@click.pass_obj
def export_cmd(obj: Ctx, model: str, upstream: str | None, check_only: bool, workspace: str | None,
               as_json: bool) -> None:
    """Turn MODEL's workspace commits back into its patch series (refresh, add, drop)."""
    from patchkit.export import export

    reports = export(obj.manifest(), model, obj.workspace(workspace), upstream=upstream, check=check_only)
    stale = [c for r in reports for c in r.stale]
    if as_json:
        _emit_json({"ok": not (check_only and stale), "check": check_only, "repos": reports})
    else:
        for report in reports:
            verb = "would be" if check_only else ""
            for change in report.changes:
                if change.action != "unchanged":
                    click.echo(f"{report.upstream}: {change.action} {verb} {change.patch}".replace("  ", " "))
            for warning in report.warnings:
                click.echo(f"{report.upstream}: warning: {warning}", err=True)
        total = sum(len(r.changes) for r in reports)
        if not stale:
            click.echo(f"{model}: the series match the workspace ({total} patches)")
        elif check_only:
            click.echo(f"{model}: {len(stale)} patch file(s) are stale; run `patchkit export {model}`")
        else:
            click.echo(f"{model}: exported {len(stale)} change(s) to the series")
    sys.exit(1 if check_only and stale else 0)


def check_json(report: Any) -> dict[str, Any]:
    """The stable `rebase --check --json` document (schema: docs/rebase-check.md). Its series and their
    patches are jsonstream.Streams: made from the report each time the document is read or written."""
    from patchkit import jsonstream
    from patchkit.report.store import now

    counts = report.counts()
    return {
        "schema": "patchkit/rebase-check/1",
        "checked_at": now(),
        "ok": report.ok,
        "allow_fuzz": report.allow_fuzz,
        "upstreams": {name: dataclasses.asdict(t) for name, t in report.targets.items()},
        "series": jsonstream.Stream(lambda: (_series_json(s) for s in report.series)),
        "overlays": [o.as_json() for o in report.overlays],
        "summary": {**counts, "patches": sum(counts.values()),
                    "broken": report.broken()},
        **({"shard": {"index": report.shard.index, "count": report.shard.count}} if report.shard else {}),
    }


def _series_json(series: Any) -> dict[str, Any]:
    """A series of the check as dataclasses.asdict writes it, its patches a Stream."""
    from patchkit import jsonstream

    fields = {f.name: getattr(series, f.name) for f in dataclasses.fields(series)}
    return {**fields, "patches": jsonstream.Stream(lambda: (_patch_json(p) for p in series.patches))}


def _patch_json(patch: Any) -> dict[str, Any]:
    """dataclasses.asdict(PATCH), a PatchCheck, for the JSON writer: the same keys and values, without the deep
    copy of every field (the writer only reads them; asdict was most of the document's CPU)."""
    names = _FIELDS.get(type(patch)) or _FIELDS.setdefault(type(patch), [f.name for f in dataclasses.fields(patch)])
    record = {name: getattr(patch, name) for name in names}
    if record.get("files"):
        record["files"] = [dataclasses.asdict(f) for f in record["files"]]
    return record


_FIELDS: dict[type, list[str]] = {}


@cli.command("report")
@click.argument("models", nargs=-1)
@click.option("--html", "html_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the port-health page (one self-contained HTML file) to FILE.")
@click.option("--md", "md_file", type=click.Path(dir_okay=False, allow_dash=True), metavar="FILE",
              help="Write the markdown summary (for a pull-request comment) to FILE ('-': stdout).")
@click.option("--check", "check_files", multiple=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The rebase --check JSON to show (default: WORKSPACE/.patchkit/checks/latest.json); "
                   "repeated: the shards of one check, shown as one.")
@click.option("--history", type=click.Path(), metavar="DIR", help="Draw the check history kept in DIR/history.jsonl.")
@click.option("--runs", multiple=True, type=click.Path(exists=True), metavar="DIR",
              help="Training runs: results.json files under DIR (repeatable; default: WORKSPACE/MODEL/runs, "
                   "where `patchkit train` writes them).")
@workspace_option
@click.pass_obj
def report_cmd(obj: Ctx, models: tuple[str, ...], html_file: str | None, md_file: str | None,
               check_files: tuple[str, ...], history: str | None, runs: tuple[str, ...], workspace: str | None) -> None:
    """Write the port-health report: matrix of the newest check, patch metrics, history, training curves."""
    from patchkit.report import data, html, md, store
    from patchkit.paths import atomic_write, display

    if not html_file and not md_file:
        raise click.UsageError("say where the report goes: --html FILE and/or --md FILE")
    m = obj.manifest()
    files = [Path(f) for f in check_files] or [store.latest_path(obj.workspace(workspace))]
    check = store.merge_checks([store.load_check(f) for f in files]) if check_files or files[0].exists() else None
    hist = store.load_history(Path(history)) if history else None
    root = obj.workspace(workspace)
    folders = [Path(r) for r in runs] or [p for name in (models or m.models) if (p := root / name / "runs").is_dir()]
    sources = [f"{display(m.path)}", f"check {', '.join(display(f) for f in files)}" if check else "no check result",
               f"history {display(hist.path)} ({len(hist.entries)} checks)" if hist else "no history"]
    paths = data.find_runs(folders)
    sources.append(f"{len(paths)} training run(s) under {', '.join(display(f) for f in folders) or 'nothing'}")
    page = data.page(m, list(models), check, hist, paths, sources)
    if html_file:
        atomic_write(Path(html_file), html.render(page).encode())
        obj.progress(f"report written to {display(html_file)}")
    if md_file == "-":
        click.echo(md.render(page), nl=False)
    elif md_file:
        atomic_write(Path(md_file), md.render(page).encode())
        obj.progress(f"markdown summary written to {display(md_file)}")


@cli.group()
def overlay() -> None:
    """Runtime and whole-file overlays: list them, fingerprint them, check them against upstream."""


@overlay.command("list")
@click.argument("model")
@workspace_option
@json_option
@click.pass_obj
def overlay_list(obj: Ctx, model: str, workspace: str | None, as_json: bool) -> None:
    """Every overlay target of MODEL and its state against the pinned upstream."""
    from patchkit.overlay.commands import list_overlays
    from patchkit.report import overlay_lines

    report = list_overlays(obj.manifest(), model, obj.workspace(workspace))
    if as_json:
        _emit_json({"ok": report.ok, **report.as_json()})
    else:
        for up, where in report.sources.items():
            click.echo(f"{model}/{up}: read from {where}")
        for line in overlay_lines(report.targets, report.files):
            click.echo(line)
    sys.exit(0 if report.ok else 1)


@overlay.command("fingerprint")
@click.argument("model")
@workspace_option
@json_option
@click.pass_obj
def overlay_fingerprint(obj: Ctx, model: str, workspace: str | None, as_json: bool) -> None:
    """Compute the fingerprints of MODEL's overlay targets and write them into the overlay files."""
    from patchkit.overlay.commands import fingerprint
    from patchkit.report import overlay_lines

    report = fingerprint(obj.manifest(), model, obj.workspace(workspace))
    if as_json:
        _emit_json({"ok": True, **report.as_json()})
    else:
        for line in overlay_lines(report.targets, []):
            click.echo(line)
        updated = sum(t.state == "updated" for t in report.targets)
        click.echo(f"{model}: {updated} fingerprint(s) written, {len(report.targets) - updated} already current")


@overlay.command("check")
@click.argument("model")
@click.option("--onto", multiple=True, metavar="UPSTREAM=REF", help="Use REF instead of the track (repeatable).")
@click.option("--no-fetch", is_flag=True, help="Use the mirrors as cached; do not fetch first.")
@json_option
@click.pass_obj
def overlay_check(obj: Ctx, model: str, onto: tuple[str, ...], no_fetch: bool, as_json: bool) -> None:
    """Check MODEL's overlays against the newest upstream (the overlay part of rebase --check)."""
    from patchkit import check as check_mod
    from patchkit.report import overlay_lines

    m = obj.manifest()
    report = check_mod.check(m, [model], onto=check_mod.parse_onto(onto, m), fetch=not no_fetch,
                             progress=obj.progress)
    broken = sum(o.broken for o in report.overlays)
    if as_json:
        _emit_json({"ok": broken == 0, "overlays": [o.as_json() for o in report.overlays]})
    else:
        for o in report.overlays:
            t = report.targets[o.target_key]
            click.echo(f"{model}/{o.upstream}: against {t.ref} {t.commit[:12]}")
            for line in overlay_lines(o.targets, o.files):
                click.echo(line)
        click.echo(f"{model}: overlays {'all hold' if not broken else f'{broken} broken'}")
    sys.exit(1 if broken else 0)


@cli.command()
@click.argument("model")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
@click.option("--cards", type=click.IntRange(min=1), help="Processes (cards) per node (default: the recipe's).")
@click.option("--device", type=click.Choice(["auto", "npu", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("--performance", is_flag=True, help="The recipe's bounded performance run.")
@click.option("--smoke", is_flag=True,
              help="The real model on a synthetic nuScenes-shaped batch for a few steps (the recipe's smoke: script).")
@click.option("--overfit", is_flag=True,
              help="With --smoke: train one fixed batch until the loss halves (at most 60 steps; the recipe's "
                   "smoke: overfit:); exit 1 when it does not.")
@click.option("--steps", type=click.IntRange(min=1), help="Smoke steps (default: the recipe's).")
@click.option("--seed", type=click.IntRange(min=0),
              help="With --smoke: the seed of the weights, the synthetic batch and the upstream's own random draws "
                   "(default 0; a run with the same seed repeats itself).")
@click.option("--venv", type=click.Path(file_okay=False, exists=True),
              help="Run the workers with this virtual environment's Python (default: the one `patchkit install "
                   "MODEL --venv` recorded).")
@click.option("--work-dir", type=click.Path(file_okay=False),
              help="Logs and results.json (default: <workspace>/MODEL/runs/TIME).")
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default="127.0.0.1", show_default=True)
@click.option("--master-port", type=click.IntRange(1, 65535), help="Default: a free port (one node) or 29500.")
@click.option("--dry-run", is_flag=True, help="Print the command line and environment of every node; run nothing. "
              "Plans for any device and card count; says what this machine could not verify.")
@workspace_option
@json_option
@click.pass_obj
def train(obj: Ctx, model: str, extra: tuple[str, ...], cards: int | None, device: str, performance: bool,
          smoke: bool, overfit: bool, steps: int | None, seed: int | None, venv: str | None, work_dir: str | None,
          nnodes: int, node_rank: int,
          master_addr: str, master_port: int | None, dry_run: bool, workspace: str | None, as_json: bool) -> None:
    """Train MODEL with its recipe (train/MODEL.yaml) through torchrun; `-- ARGS` go to the entry script."""
    from patchkit.train import device as device_mod, launch, recipe as recipe_mod, workers
    from patchkit.train.results import overfit_line, table

    m = obj.manifest()
    m.model(model)
    recipe = recipe_mod.load(m.root, model)
    root = obj.workspace(workspace)
    python, notes = workers.resolve(model, root / model, venv, plan_only=dry_run)
    options = launch.Options(cards, performance, Path(work_dir) if work_dir else None, nnodes, node_rank,
                             master_addr, master_port, extra, smoke, steps, overfit=overfit, seed=seed,
                             python=python, dry_run=dry_run)
    try:
        found = device_mod.detect(device, options.python)
    except BadInput as exc:
        if not dry_run or device == "auto":
            raise
        found = device_mod.Device(device, 0, device_mod.BACKENDS[device])
        notes.append(f"no {device.upper()} seen here ({exc.message}): this {device} plan is not verified on this machine")
    plan = launch.plan(m, recipe, found, root, options)
    plan.notes[:0] = notes
    if dry_run:
        _emit(as_json, {"model": model, "repo": str(plan.repo), "env": plan.env, "notes": plan.notes,
                        "nodes": [plan.argv(r) for r in range(nnodes)]}, lambda: launch.dry_run(plan))
        return
    check = "overfit" if overfit else "smoke" if smoke else None
    # an overfit run's record says how it was set up (lr, warmup, schedule, config overrides: the recipe's)
    setup = {"settings": recipe.smoke.overfit.settings()} if overfit and recipe.smoke else {}
    setup |= {"seed": seed} if check and seed is not None else {}
    try:
        result = launch.run(plan, progress=obj.progress)
    except launch.TrainFailed as exc:
        if check:
            _record(obj, m, model, root, check, plan.device.kind, False, {"error": exc.message, **setup},
                    plan.fingerprint)
        raise
    ok = result.overfit.passed if overfit and result.overfit else not overfit
    if check:
        _record(obj, m, model, root, check, plan.device.kind, ok, {**_run_detail(result), **setup}, plan.fingerprint)
    if as_json:
        _emit_json({"ok": ok, **dataclasses.asdict(result)})
    else:
        click.echo(f"{model}: {result.steps_seen} steps in {result.seconds:.1f} s "
                   f"({result.warmup_steps} warm-up steps excluded); results in {plan.work_dir / 'results.json'}")
        for line in table(result):
            click.echo(line)
        for note in result.notes:
            click.echo(f"note: {note}")
    if overfit and not as_json:
        click.echo(overfit_line(result), err=not ok)
    sys.exit(0 if ok else 1)


@cli.command("import")
@click.argument("port_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--name", help="The model's name in the port repository (default: the folder's name, lower-case).")
@click.option("--all", "every", is_flag=True,
              help="PORT_DIR is a folder of port folders (DrivingSDK model_examples): import each into this one "
                   "port repository, with shared layers and variants, and write imports/fleet.json.")
@json_option
@click.pass_obj
def import_cmd(obj: Ctx, port_dir: str, name: str | None, every: bool, as_json: bool) -> None:
    """Bring the DrivingSDK-style port folder PORT_DIR into this port repository as one model.

    \b
    patchkit import PORT_DIR [--name NAME]        one port folder, one model
    patchkit import --all MODEL_EXAMPLES_DIR      every folder in it; exit 1 when one failed
    """
    from patchkit.importer import import_port

    root = Path(obj.manifest_path).parent if obj.manifest_path else _port_root()
    if every:
        if name:
            raise BadInput("--name names one model: it does not go with --all (each folder's name is its model's)")
        _import_all(obj, Path(port_dir), root, as_json)
        return
    report = import_port(Path(port_dir), root, name, progress=obj.progress)
    _emit(as_json, {"ok": True, **dataclasses.asdict(report)}, lambda: import_lines(report))


def _import_all(obj: Ctx, examples: Path, root: Path, as_json: bool) -> None:
    from patchkit.importer import fleet

    report = fleet.import_all(examples, root, progress=obj.progress)
    _emit(as_json, {"ok": not report.failed, "seconds": report.seconds, "changed": report.changed,
                    **fleet.report_data(report)}, lambda: fleet_lines(report))
    sys.exit(1 if report.failed else 0)


def fleet_lines(report: Any) -> list[str]:
    t = report.totals
    lines = [f"{f.folder}: {f.status}" + (f" ({f.reason})" if f.reason else "") +
             (f"; {f.patches} patches" + (f", shared layers {', '.join(f.shared_layers)}" if f.shared_layers else "") +
              (f", variants {', '.join(f.variants)}" if f.variants else "") if f.status == "added" else "")
             for f in report.folders]
    lines += [f"shared layer {d['name']} ({d['upstream']} at {str(d['pin'])[:12]}): {d['hunks']} hunks from "
              f"{len(d['models'])} models ({', '.join(d['models'])})" for d in report.shared_layers]
    lines += [f"variant {v['model']}/{v['name']}: {v['summary']}" for v in report.variants]
    lines += [f"not converted, {len(items)} x {reason}" for reason, items in report.not_converted.items()]
    lines.append(f"{t['folders']} folders: {t['added']} added, {t['not_added']} not added, {t['failed']} failed; "
                 f"{t['patches']} patches in the models' own layers, {t['shared_layers']} shared layers absorbing "
                 f"{t['hunks_absorbed']} hunks, {t['variants']} variants; "
                 + (f"{len(report.changed)} files changed" if report.changed else "nothing changed")
                 + f"; {report.seconds:.0f} s (imports/fleet.json)")
    return lines


def _port_root() -> Path:
    """The folder holding upstreams.yaml here or above; else the current folder (a new port repository)."""
    try:
        return manifest_mod.find().parent
    except BadInput:
        return Path.cwd()


def import_lines(report: Any) -> list[str]:
    lines = [f"{report.model}: imported from {report.port}"]
    for name, d in report.upstreams.items():
        lines.append(f"  upstream {name}: {d.pin[:12]} ({d.how}, track {d.track})")
    sections = (("contradiction", report.contradictions), ("repaired", report.repairs),
                ("external hook", report.external_hooks), ("NOT CONVERTED", report.not_converted),
                ("note", report.notes))
    for label, items in sections:
        for f in items:
            lines.append(f"  {label}: {f.where}: {f.what}: {f.reason}")
    lines += [f"  TODO in train/{report.model}.yaml: {t}" for t in report.todos]
    if not report.added:
        lines.append(f"{report.model}: NOT added to upstreams.yaml: no upstream of it could be obtained here "
                     f"(imports/{report.model}.json lists why)")
    lines.append(f"{report.model}: {len(report.patches)} patches, {len(report.overlays)} file overlays, "
                 f"{len(report.not_converted)} not converted; "
                 + (f"{len(report.changed)} files changed" if report.changed else "nothing changed"))
    return lines


def _record(obj: Ctx, m: manifest_mod.Manifest, model: str, root: Path, check: str, device: str, ok: bool,
            detail: dict[str, Any], workspace: dict[str, Any] | None = None) -> None:
    from patchkit import verify

    if verify.disabled():
        obj.progress(f"{model}: {check} on {device} not recorded ({verify.OFF} is set)")
        return
    where = verify.record(m, model, root, check, device, ok, detail, workspace)
    obj.progress(f"{model}: {check} on {device} recorded in {where}" if where
                 else f"{model}: could not write the verification record into {m.root / verify.FOLDER}")


def _run_detail(result: Any) -> dict[str, Any]:
    loss = result.series.loss
    detail = {"cards": result.cards, "backend": result.backend, "steps": result.steps_seen,
              "seconds": result.seconds, "mean_step_ms": result.mean_step_ms,
              "loss": [loss[0], loss[-1]] if loss else None}
    if result.overfit:
        detail["overfit"] = dataclasses.asdict(result.overfit)
    return detail


def _json_error(args: list[str], exc: PatchkitError) -> None:
    """With --json, a machine reading stdout gets the error as JSON too."""
    if "--json" not in args:
        return
    data: dict[str, Any] = {"ok": False, "exit_code": exc.exit_code, "error": exc.message, "details": exc.details}
    if isinstance(exc, InvalidInput):
        data["errors"] = [dataclasses.asdict(d) for d in exc.diagnostics]
    _emit_json(data)


@contextlib.contextmanager
def _stopping_children() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP stop the git children first (they run in their own process groups),
    then patchkit; a second signal kills them outright and changes nothing else."""
    def handler(signum: int, _frame: object) -> None:
        first = not git.stopped()
        git.stop_all(signum, hard=not first)
        if first:
            raise Interrupted(signum)

    signals = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    try:
        old = {s: signal.signal(s, handler) for s in signals}
    except ValueError:  # not the main thread (an embedding program): leave signals alone
        yield
        return
    git.reset_stop()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        git.reset_stop()


def _interrupted(exc: Interrupted) -> None:
    click.echo(f"patchkit: interrupted ({exc.message}); what was under way is marked interrupted, and "
               "running the command again repairs it", err=True)
    sys.exit(exc.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with its code; errors become messages, never tracebacks."""
    args = sys.argv[1:] if argv is None else argv
    try:
        with _stopping_children():
            cli.main(args=argv, prog_name="patchkit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except click.exceptions.Abort as exc:  # click turns a KeyboardInterrupt (and so Interrupted) into Abort
        _interrupted(exc.__cause__ if isinstance(exc.__cause__, Interrupted) else Interrupted(signal.SIGINT))
    except Interrupted as exc:
        _interrupted(exc)
    except InvalidInput as exc:
        for diag in exc.diagnostics:  # file:line: message, one a line, as compilers do
            click.echo(str(diag), err=True)
        click.echo(f"patchkit: {exc.message}", err=True)
        _json_error(args, exc)
        sys.exit(exc.exit_code)
    except PatchkitError as exc:
        _json_error(args, exc)
        lines = exc.lines()
        click.echo(f"patchkit: error: {lines[0]}", err=True)
        for line in lines[1:]:
            click.echo(f"  {line}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("patchkit: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # the file system said no: a permission, a full disk, a name too long
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"patchkit: error: {exc.strerror or exc}{where}", err=True)
        _json_error(args, PatchkitError(f"{exc.strerror or exc}{where}"))
        sys.exit(1)
    except Exception as exc:  # a bug in patchkit: say so plainly
        click.echo(f"patchkit: internal error: {type(exc).__name__}: {exc}", err=True)
        if os.environ.get("PATCHKIT_DEBUG"):
            traceback.print_exc()
        else:
            click.echo("  (set PATCHKIT_DEBUG=1 for the traceback; please report it)", err=True)
        sys.exit(EXIT_INTERNAL)

