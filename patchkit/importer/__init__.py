"""`patchkit import PORT_DIR`: an existing DrivingSDK-style port folder brought in as data.

Small readers, each over one kind of evidence, feed one writer:

- readme.py     README reference blocks, prose pins, version tables and shell steps (and the install
                script it runs), with the working folder followed through `cd` and `git clone`
- upstreams.py  which upstreams the steps name, and every statement about their pins (five forms)
- pins.py       pins resolved in the mirrors (branch/tag -> SHA + track; the running step wins;
                an absent pin inferred from where the patches apply strictly)
- patches.py    a port `.patch` cut into one diff a file, malformed parts repaired or refused
- regen.py      those diffs re-derived at the pin as git's own diffs (strict, CRLF kept)
- copyover.py   `cp` steps into a checkout: patches, or whole-file overlays with their base blob
- patcher.py    `mx_driving.patcher` modules: fingerprinted overlays, or external hooks with a reason
- install.py    README build steps: the `install:` recipe of each upstream
- scripts.py    test/train_*.sh and test/env_npu.sh: the training recipe, TODOs where underivable
- run.py        the readers in order; writer.py writes the result inside the port repository

Nothing in the port folder is executed, nothing is written outside the port repository (the mirrors
live in patchkit's cache), and a second import of the same folder changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from patchkit.importer.model import ImportReport


def import_port(port: Path, root: Path, name: str | None = None,
                progress: Callable[[str], None] = lambda _m: None) -> ImportReport:
    """Import the port folder PORT into the port repository ROOT (created if absent) as model NAME."""
    from patchkit.importer import run, variants, writer

    report, outputs = run.run(port, root, name, progress)
    variants.find(port.resolve(), outputs, report)
    report.notes += _fleet_note(root, report.model)
    root.mkdir(parents=True, exist_ok=True)
    report.changed = writer.write(root, outputs, report)
    return report


def _fleet_note(root: Path, model: str) -> list:
    """A model that shared layers of an `import --all` served is imported alone with its whole series: say so."""
    from patchkit.importer.fleet import REPORT, previous_layers
    from patchkit.importer.model import Finding

    layers = [d["name"] for d in previous_layers(root) if model in (d.get("models") or ())]
    return [Finding(REPORT, f"shared layers {', '.join(layers)}", "imported alone, the model keeps all its changes in "
                    "its own layer (the shared layers still serve the others); `patchkit import --all` shares them "
                    "again")] if layers else []
