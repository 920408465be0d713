"""Accelerators as torch sees them, in this interpreter or, run as a script, in another one.

Standard library and torch only: a training venv's Python runs this file's text (`python -c`), and
that venv need not have patchkit. As a script it prints {"npu": N, "cuda": N} as JSON.
"""

from __future__ import annotations

import json


def npu() -> int:
    """NPUs visible to torch_npu, 0 when torch_npu is not importable or sees none."""
    try:
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)

        return int(torch.npu.device_count())  # type: ignore[attr-defined]
    except Exception:  # an absent or broken torch_npu means: no NPU here
        return 0


def cuda() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


if __name__ == "__main__":
    print(json.dumps({"npu": npu(), "cuda": cuda()}))
