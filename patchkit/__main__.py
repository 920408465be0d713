"""`python -m patchkit` and the `patchkit` command: a signal is handled from the first line on.

Until the CLI takes over (patchkit.cli.main stops git children and marks work interrupted), a
Ctrl-C or SIGTERM during start-up (imports take a moment) ends patchkit with a plain message and
exit 128+N, never a traceback. Signals the caller ignores (nohup, a background job) stay ignored.
"""

import signal
import sys

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _before_start(signum: int, _frame: object) -> None:
    sys.stderr.write(f"patchkit: interrupted by {signal.Signals(signum).name} while starting; nothing was changed\n")
    sys.exit(128 + signum)


def run() -> None:
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _before_start)
    from patchkit.cli import main

    main()


if __name__ == "__main__":
    run()
