"""What the benchmarks share: a hermetic environment, a checked subprocess, synthetic modules."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def hermetic_env(tmp: Path, tmpdir: Path | None = None) -> dict[str, str]:
    """Its own HOME and .gitconfig, no system git config, its own patchkit cache."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    (home / ".gitconfig").write_text("[user]\n\tname = Bench\n\temail = bench@example.invalid\n"
                                     "[init]\n\tdefaultBranch = main\n")
    return {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1",
            "PATCHKIT_CACHE": str(tmp / "cache"), "LC_ALL": "C", "TMPDIR": str(tmpdir or tmp)}


def sh(args: list[str], env: dict[str, str], cwd: Path | None = None, stdin: bytes | None = None) -> str:
    """Stdout of a command that must succeed; the benchmark stops with its output otherwise."""
    proc = subprocess.run(args, check=False, cwd=cwd, env=env, input=stdin, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"bench: FAILED ({proc.returncode}): {' '.join(args)}\n"
                 f"{proc.stdout.decode(errors='replace')}{proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def python_lines(rng: random.Random, tag: str, length: int) -> list[str]:
    """LENGTH lines of a module: a 4-line preamble, then 4-line functions (def, total, return, blank)."""
    lines = [f'"""Synthetic module {tag}."""', "", "import math", ""]
    while len(lines) < length:
        n = len(lines)
        lines += [f"def {tag}_f{n}(x, y={rng.randint(0, 999)}):",
                  f"    total = x * {rng.randint(1, 99)} + y  # step {n}",
                  "    return math.sqrt(abs(total))", ""]
    return lines[:length]
