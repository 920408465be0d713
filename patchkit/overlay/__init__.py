"""Overlays: runtime replacements of upstream functions, methods, classes and attributes.

An overlay module (overlays/<set>/*.py) declares what it replaces:

    from patchkit.overlay import original, replace, replace_value

    @replace("mmcv.parallel.distributed:MMDistributedDataParallel.train_step", upstream="mmcv",
             fingerprint="0123456789abcdef-01234567")
    def train_step(self, *inputs, **kwargs):
        ...
        return original(train_step)(self, *inputs, **kwargs)

    replace_value("mmcv.utils:IS_NPU", True, upstream="mmcv", fingerprint="...")

The target is `module.path:Qualified.name`. The fingerprint is a hash of the upstream target's
normalised AST (see patchkit.overlay.fingerprint), written by `patchkit overlay fingerprint`, so a
changed upstream is noticed statically. This package must import fast and need nothing but the
standard library: training workers import it before anything else.
"""

from patchkit.overlay.api import Declaration, declarations, original, replace, replace_value

__all__ = ["Declaration", "activate", "activate_from_env", "deactivate", "declarations", "original", "replace",
           "replace_value", "report"]


def activate(model: str | None = None, **kwargs):  # type: ignore[no-untyped-def]
    """Activate the overlays of MODEL (see patchkit.overlay.runtime.activate)."""
    from patchkit.overlay.runtime import activate as _activate

    return _activate(model, **kwargs)


def activate_from_env():  # type: ignore[no-untyped-def]
    """Activate from PATCHKIT_OVERLAYS, as a training worker does (see runtime.activate_from_env)."""
    from patchkit.overlay.runtime import activate_from_env as _activate_from_env

    return _activate_from_env()


def deactivate() -> None:
    from patchkit.overlay.runtime import deactivate as _deactivate

    _deactivate()


def report():  # type: ignore[no-untyped-def]
    """What the active overlays replaced so far."""
    from patchkit.overlay.runtime import report as _report

    return _report()
