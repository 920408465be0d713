"""What patchkit shows: text lines for the terminal, and the port-health page.

- `text`: the lines `apply`, `status`, `rebase --check` and `overlay` print, and JUnit XML;
- `store`: where each `rebase --check` keeps its JSON, and the history of checks (JSON lines);
- `data`: the page's content, computed from the manifest, a check, the history and training runs;
- `svg`: the small SVG writer every picture goes through (also `curve.svg` beside a run's results.json);
- `html`, `md`: one self-contained page, and the markdown summary for a pull-request comment.

The text renderers are importable from here (`from patchkit.report import check_lines`); they are loaded
on first use, so `patchkit.report.svg` stays cheap to import for the training launcher.
"""

from __future__ import annotations

from typing import Any

_TEXT = ("apply_lines", "status_lines", "check_lines", "overlay_lines", "junit_xml")


def __getattr__(name: str) -> Any:
    if name in _TEXT:
        from patchkit.report import text

        return getattr(text, name)
    raise AttributeError(f"module 'patchkit.report' has no attribute {name!r}")
