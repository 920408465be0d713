"""Run-time device dispatch for ported ops: the NPU kernel on NPU, the upstream's CUDA op on CUDA, a
PyTorch path elsewhere, chosen from the tensor the op is given (never from a config or a build flag).

Overlays and patches of the model ports call this; it imports torch_npu / mx_driving only when a
tensor really is on an NPU, so the same code runs on a CPU machine that has neither.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

NPU_MODULES = ("mx_driving", "torch_npu")


class KernelMissing(RuntimeError):
    """An NPU kernel the port needs is not importable here."""


def kind(x: Any) -> str:
    """'npu', 'cuda', 'cpu' (or another torch device type) for a tensor, a torch.device or a device string."""
    device = getattr(x, "device", x)
    kind_ = getattr(device, "type", None)
    if kind_ is None:
        kind_ = str(device).partition(":")[0]
    return str(kind_)


def on_npu(x: Any) -> bool:
    return kind(x) == "npu"


def npu_op(name: str, module: str = "mx_driving") -> Callable[..., Any]:
    """`module.name` (dots allowed in name), imported now; KernelMissing says what is missing and why."""
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:  # ImportError, or torch_npu's RuntimeError without CANN
        raise KernelMissing(f"{module}.{name} is needed on NPU but {module} does not import: {exc}") from exc
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise KernelMissing(f"{module}.{name} is needed on NPU but this {module} "
                                f"({getattr(importlib.import_module(module), '__version__', 'unknown version')}) "
                                f"has no {part!r}") from None
    if not callable(obj):
        raise KernelMissing(f"{module}.{name} is not callable")
    return obj  # type: ignore[no-any-return]


def select(x: Any, *, npu: Callable[[], Any] | None = None, cuda: Callable[[], Any] | None = None,
           other: Callable[[], Any]) -> Any:
    """Call the branch for x's device: `npu` on NPU, `cuda` on CUDA, `other` anywhere else (or when the
    device's branch is not given)."""
    k = kind(x)
    if k == "npu" and npu is not None:
        return npu()
    if k == "cuda" and cuda is not None:
        return cuda()
    return other()


def autocast(x: Any, enabled: bool = True, dtype: Any = None) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for x's device type (fp16 on NPU/CUDA, bf16 on CPU unless dtype says otherwise)."""
    import torch

    k = kind(x)
    if not enabled:
        return contextlib.nullcontext()
    if dtype is None:
        dtype = torch.bfloat16 if k == "cpu" else torch.float16
    return torch.autocast(device_type=k, dtype=dtype, enabled=True)


@contextlib.contextmanager
def full_precision(x: Any = None) -> Iterator[None]:
    """Autocast off inside the block: for x's device type (a tensor, a torch.device or a type name), or,
    without x, for every device type where autocast is on now. The fp32 regions of the ports (what
    upstream wrote as `torch.cuda.amp.autocast(enabled=False)`, which only switches off CUDA autocast)."""
    import torch

    with contextlib.ExitStack() as stack:
        for device_type in [kind(x)] if x is not None else _autocasting(torch):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        yield


def _autocasting(torch: Any) -> list[str]:
    """The device types where autocast is on (npu only once torch_npu has registered it)."""
    types = ("cpu", "cuda", "npu") if hasattr(torch, "npu") else ("cpu", "cuda")
    return [t for t in types if torch.is_autocast_enabled(t)]


def backend(k: str) -> str:
    """The torch.distributed backend for a device type (the launcher's table; gloo for any other)."""
    from patchkit.train.device import BACKENDS

    return BACKENDS.get(k, "gloo")

