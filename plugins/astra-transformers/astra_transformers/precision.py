"""Precision and placement of the system's models: per-role dtypes, bf16 autocast for the
tester, and device mix-ups reported with the devices named.

Each role (tester, target, baseline) has its own dtype and device. Log-probs always come out in
float32 whatever the parameters' dtype or the autocast mode, because the log-softmax runs on
float32 logits. A forward whose tensors sit on different devices fails inside torch with a
message that names neither the model nor the option to change; `placement_guard` turns it into a
`DevicePlacementError` that names both.

>>> resolve_dtype("bfloat16")
torch.bfloat16
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from astra_core.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The option values of `dtype` (and the per-role ``*_dtype``) and the torch dtypes they name."""

# Fragments of torch's messages for an op whose tensors sit on different devices (CUDA kernels,
# the dispatcher's meta/fake checks, index ops, convolutions).
_MISMATCH_MARKERS = (
    "expected all tensors to be on the same device",
    "is not on the expected device",
    "on the same device as the indexed tensor",
    "are not at the same device",
    "must be on the same device",
    "expected device",
)


class DevicePlacementError(ConfigError):
    """A model's forward met a tensor on another device than its own (a placement mistake)."""


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype an option value names (``"float32"``, ``"bfloat16"`` or ``"float16"``)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None


def check_autocast(mode: str | None, device: torch.device) -> None:
    """Raise `ConfigError` when autocast `mode` (``"bf16"`` or None) cannot run on `device`.

    CPU and CUDA devices with bfloat16 support qualify; asking for autocast where it cannot run
    is an error rather than a silent fall-back to full precision.
    """
    if mode is None:
        return
    if mode != "bf16":
        raise ConfigError(f"unknown autocast mode {mode!r}; use 'bf16' or leave autocast unset")
    if not torch.amp.is_autocast_available(device.type):
        raise ConfigError(
            f"autocast='bf16' is not available on device {str(device)!r}; leave autocast unset "
            f"or put the tester on a device that supports it (tester_device = 'cpu' or 'cuda')"
        )
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"autocast='bf16': the GPU {str(device)!r} does not support bfloat16; leave autocast unset")


def autocast(mode: str | None, device: torch.device) -> AbstractContextManager[object]:
    """A context running forwards on `device` under bfloat16 autocast (``mode="bf16"``), or a
    no-op context for ``mode=None``. The backward of a graph built inside runs in the dtypes the
    forward chose, so wrapping the forward is enough."""
    if mode is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def is_device_mismatch(error: BaseException) -> bool:
    """Whether `error` is torch's complaint about tensors on different devices."""
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(marker in text for marker in _MISMATCH_MARKERS)


def weight_devices(module: nn.Module) -> list[str]:
    """The devices `module`'s parameters and buffers sit on, sorted, each once."""
    tensors = [*module.parameters(), *module.buffers()]
    return sorted({str(tensor.device) for tensor in tensors})


@contextmanager
def placement_guard(role: str, device: torch.device, module: nn.Module, option: str | None = None) -> Iterator[None]:
    """Re-raise torch's device-mismatch `RuntimeError` inside the block as a `DevicePlacementError`
    naming the `role`, the device its inputs were put on, the devices its weights are on, and the
    option that places it (`option`, by default ``"<role>_device"``).

    Other errors pass through unchanged.
    """
    try:
        yield
    except RuntimeError as error:
        if not is_device_mismatch(error):
            raise
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        weights = ", ".join(weight_devices(module)) or "nowhere (no parameters)"
        raise DevicePlacementError(
            f"the {role} model's forward mixed devices: its inputs are on {device}, its weights on {weights} "
            f"(torch: {detail}); keep each model whole on one device ({option or role + '_device'} = ...) and pass it "
            f"tensors on that device"
        ) from error
