"""The raw-git floor of `rebase --check`, and a git process counter, for the benchmarks.

The floor is the least git work that replays the same series: per upstream, one `rev-parse` of the
target, one `read-tree` of it into a temporary index, then one `git apply --cached` per patch of
the trie of all series on that upstream (a layer several models share is applied once; where the
series part, the index file is copied aside and copied back before each other branch: no git process).
New objects go to a temporary object directory (the mirror's objects are an alternate), so no mirror is
written. No overlay is looked at: patchkit's overlay check is measured against this floor as it stands.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from common import Timed

from patchkit import cache, patchfile
from patchkit import manifest as manifest_mod
from patchkit.check import target_key

SHIM = '#!/bin/sh\necho "$1" >> "$GIT_COUNT_LOG"\nexec {git} "$@"\n'


def script(manifest_path: Path, cache_root: Path, targets: dict[str, dict[str, str]]) -> str:
    """A bash script replaying every series of MANIFEST_PATH on TARGETS (`rebase --check --json`'s
    "upstreams": target key -> {"ref", "commit"}); every model and variant, one trie per target (an
    upstream at another base of a model is a target of its own, as in `rebase --check`); it prints how
    many patches did not apply."""
    manifest = manifest_mod.load(manifest_path)
    lines = ["#!/bin/bash", "set -u", "failed=0", "s=$(mktemp -d)", 'mkdir "$s/objects"',
             'export GIT_OBJECT_DIRECTORY="$s/objects" GIT_INDEX_FILE="$s/index"']
    tries: dict[str, dict] = {}  # target key (check.target_key: `up`, or `up@pin12~track` for another base)
    for view in manifest.views():  # every model and variant, at its effective pins (manifest version 2)
        for name, refs in view.patches.items():
            key = target_key(manifest, view.upstreams[name])
            node = tries.setdefault(key, {})
            for patch in patchfile.load_series(refs):
                node = node.setdefault((str(patch.ref.path), patch.sha256), {})
    q = shlex.quote
    for key in sorted(targets):
        mirror = cache.mirror_path(manifest.upstreams[key.split("@")[0]], cache_root)  # key: `up` or `up@...`
        trie = tries.get(key, {})
        lines += [f"export GIT_DIR={q(str(mirror))} GIT_ALTERNATE_OBJECT_DIRECTORIES={q(str(mirror / 'objects'))}",
                  f"c=$(git rev-parse --verify -q {q(_candidate(mirror, targets[key]['ref']))})"]
        if trie:
            lines.append('git read-tree "$c"')
            lines += _walk(trie, [0])
    lines += ['rm -rf "$s"', 'echo "$failed"']
    return "\n".join(lines) + "\n"


def _candidate(mirror: Path, ref: str) -> str:
    """The spelling of REF that resolves in MIRROR, as `rebase --check` tries them."""
    for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
        spec = f"{candidate}^{{commit}}"
        if subprocess.run(["git", "--git-dir", str(mirror), "rev-parse", "--verify", "-q", spec],
                          capture_output=True).returncode == 0:
            return spec
    raise SystemExit(f"bench: FAILED: {ref} does not resolve in {mirror}")


def _walk(trie: dict, counter: list[int]) -> list[str]:
    """Depth first, with an explicit stack (a series may be thousands of patches long)."""
    lines: list[str] = []
    stack: list[tuple[str, dict, str | None]] = []

    def push(node: dict) -> None:
        saved = None
        if len(node) > 1:
            counter[0] += 1
            saved = f"t{counter[0]}"
            lines.append(f'cp "$GIT_INDEX_FILE" "$s/{saved}"')
        stack.extend((p, child, saved if i else None) for i, ((p, _), child) in reversed(list(enumerate(node.items()))))

    push(trie)
    while stack:
        path, node, restore = stack.pop()
        if restore:
            lines.append(f'cp "$s/{restore}" "$GIT_INDEX_FILE"')
        lines.append(f"git apply --cached {shlex.quote(path)} 2>/dev/null || failed=$((failed + 1))")
        push(node)
    return lines


def targets_of(check_json: str) -> dict[str, dict[str, str]]:
    return {name: {"ref": t["ref"], "commit": t["commit"]} for name, t in json.loads(check_json)["upstreams"].items()}


def floor_case(folder: Path, port: Path, cache_root: Path, check_json: str, env: dict[str, str]) -> Timed:
    """The timed case "raw floor": the floor of PORT on the targets a `rebase --check --json` run
    printed (CHECK_JSON), its script written to FOLDER/floor.sh."""
    path = folder / "floor.sh"
    path.write_text(script(port / "upstreams.yaml", cache_root, targets_of(check_json)))
    return Timed("raw floor", lambda _r: ["bash", str(path)], port, env)


def count_git(args: list[str], cwd: Path, env: dict[str, str]) -> dict[str, int]:
    """Run ARGS with a `git` on PATH that logs each call; the number of git processes, by subcommand."""
    real = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True, env=env).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="patchkit-gitcount-") as tmp:
        shim = Path(tmp) / "bin" / "git"
        shim.parent.mkdir()
        shim.write_text(SHIM.format(git=shlex.quote(real)))
        shim.chmod(0o755)
        log = Path(tmp) / "calls"
        log.touch()
        run_env = {**env, "PATH": f"{shim.parent}{os.pathsep}{env.get('PATH', '')}", "GIT_COUNT_LOG": str(log)}
        subprocess.run(args, cwd=cwd, env=run_env, capture_output=True, check=False)
        calls = log.read_text().split()
    counts: dict[str, int] = {"total": len(calls)}
    for call in calls:
        counts[call] = counts.get(call, 0) + 1
    return counts


# VmHWM (the peak of this process's own memory map, new at exec): ru_maxrss would also count the
# pages of the benchmark process it was forked from
RSS_CODE = ("import atexit, sys\n"
            "def hwm():\n"
            "    kb = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
            "    sys.stderr.write('\\nBENCH-RSS-KB %s\\n' % (kb[0] if kb else 'nan'))\n"
            "atexit.register(hwm)\n"
            "sys.argv = ['patchkit', *sys.argv[1:]]\n"
            "from patchkit.cli import main\n"
            "main()\n")


def own_rss_mb(python: list[str], patchkit_args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    """Peak resident memory of patchkit's own process (not its git children), in MB, from one run,
    and that run's output."""
    proc = subprocess.run([*python, "-c", RSS_CODE, *patchkit_args], cwd=cwd, env=env, capture_output=True, text=True)
    found = [ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("BENCH-RSS-KB ")]
    return (round(int(found[-1]) / 1024, 1) if found and found[-1].isdigit() else float("nan")), proc.stdout
