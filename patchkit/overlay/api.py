"""The declaration API overlay modules use. Declaring records; activation (runtime.py) patches."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class TargetName:
    """`module.path:Qualified.name`, split."""

    target: str

    @property
    def module(self) -> str:
        return self.target.partition(":")[0]

    @property
    def qualname(self) -> str:
        return self.target.partition(":")[2]


@dataclass
class Declaration(TargetName):
    target: str  # "module.path:Qualified.name"
    upstream: str
    fingerprint: str | None
    replacement: Any
    file: str  # where it was declared
    line: int


_DECLARED: list[Declaration] = []
_ORIGINALS: dict[int, Any] = {}  # id(replacement) -> the object it replaced


def _check_target(target: str) -> None:
    module, sep, qualname = target.partition(":")
    if not sep or not module or not qualname or any(not part.isidentifier() for part in
                                                    [*module.split("."), *qualname.split(".")]):
        raise ValueError(f"overlay target {target!r} is not 'module.path:Qualified.name'")


def _declare(target: str, value: Any, upstream: str, fingerprint: str | None, depth: int) -> None:
    _check_target(target)
    frame = sys._getframe(depth)
    _DECLARED.append(Declaration(target, upstream, fingerprint, value, frame.f_code.co_filename, frame.f_lineno))


def replace(target: str, *, upstream: str, fingerprint: str | None = None) -> Callable[[T], T]:
    """Decorator: the function, method, classmethod, property or class replaces TARGET."""
    _check_target(target)
    frame = sys._getframe(1)
    where = (frame.f_code.co_filename, frame.f_lineno)

    def decorate(obj: T) -> T:
        _DECLARED.append(Declaration(target, upstream, fingerprint, obj, *where))
        return obj

    return decorate


def replace_value(target: str, value: Any, *, upstream: str, fingerprint: str | None = None) -> None:
    """A module or class attribute TARGET becomes VALUE."""
    _declare(target, value, upstream, fingerprint, 2)


def original(replacement: Any) -> Any:
    """What REPLACEMENT replaced (the upstream object), once its overlay is active.

    For a classmethod or staticmethod this is the plain function underneath; for a property,
    the upstream property object.
    """
    try:
        return _ORIGINALS[id(replacement)]
    except KeyError:
        name = getattr(replacement, "__qualname__", repr(replacement))
        raise LookupError(f"{name} has not replaced anything yet: is its overlay activated?") from None


def declarations() -> list[Declaration]:
    """Everything declared so far, in declaration order."""
    return list(_DECLARED)


def _record_original(replacement: Any, original_obj: Any) -> None:
    _ORIGINALS[id(replacement)] = original_obj

