"""Typed errors. Each carries the exit code the CLI uses and a message that names the place.

Exit codes: 1 = something did not apply / was refused, 2 = bad input, 3 = an upstream
cannot be reached.
"""

from __future__ import annotations

from dataclasses import dataclass


class PatchkitError(Exception):
    """Base of every error patchkit reports to a user (never as a traceback)."""

    exit_code = 1

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def lines(self) -> list[str]:
        return [self.message, *self.details]


class BadInput(PatchkitError):
    exit_code = 2


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in an input file, at a line (1-based; 0 when unknown)."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class InvalidInput(BadInput):
    """Several diagnostics at once: every schema error is reported in one run."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        n = len(self.diagnostics)
        super().__init__(f"{n} error{'s' if n != 1 else ''} found", details=[str(d) for d in diagnostics])

    def lines(self) -> list[str]:
        return [*self.details, self.message]


class UnsafePatch(BadInput):
    """A patch would write outside its repository, into .git/, or through a symlink."""


class PinNotFound(BadInput):
    """The pinned commit is not in the upstream (force-pushed away, or a typo)."""


class UpstreamUnreachable(PatchkitError):
    exit_code = 3


class GitError(PatchkitError):
    """A git command failed in a way patchkit did not expect."""


class LocalEdits(PatchkitError):
    """A workspace repo has work of the user's that a rebuild would overwrite."""


class PatchFailed(PatchkitError):
    """A patch did not apply."""


class LockTimeout(PatchkitError):
    """Another patchkit holds the workspace lock."""


class Interrupted(KeyboardInterrupt):
    """Patchkit was told to stop (Ctrl-C, SIGTERM, SIGHUP) or a git it ran was killed.

    A KeyboardInterrupt: no `except Exception` on the way may turn it into a failed patch, and
    code that cleans up after a Ctrl-C (the training launcher) does so for every signal. The CLI
    exits 128 + the signal number.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"stopped by {_signal_name(signum)}")
        self.signum = signum
        self.message = message or f"stopped by {_signal_name(signum)}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
