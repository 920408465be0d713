"""Collection without torch: the modules that import torch at module level are left out of doctest
collection when torch is absent (they hold no doctests; their tests in tests/ skip with the reason)."""

from __future__ import annotations

import importlib.util

TORCH_MODULES = ["patchkit/train/smoke.py", "patchkit/train/synthetic.py"]

collect_ignore = [] if importlib.util.find_spec("torch") else TORCH_MODULES
