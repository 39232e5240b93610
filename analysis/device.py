"""Where computation runs: the device behind every ``--device``, and mixed-precision autocast.

One resolution rule for every command: ``None`` or ``"auto"`` means this process's GPU when CUDA
is available (``cuda:LOCAL_RANK`` under torchrun), else the CPU; anything else must name a device
this machine has, or the command stops with one line.

torch is imported by the functions that use it, so that the command line offers
:data:`MIXED_PRECISION` without importing torch.
"""

from __future__ import annotations

import platform
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from memekit.space.errors import MemekitError

if TYPE_CHECKING:
    import torch

MIXED_PRECISION = ("no", "bf16", "fp16")


def resolve_device(device: str | torch.device | None, local_rank: int | None = None) -> torch.device:
    """``device``, or (``None`` / ``"auto"``) CUDA when available (``cuda:local_rank`` for a process
    of a group), else cpu; a one-line error for an unknown device or a CUDA device on a machine
    without one."""
    import torch

    if device is None or device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise MemekitError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MemekitError(f"device {device!r} requested but CUDA is not available: use --device cpu")
    return resolved


def device_name(device: str | torch.device) -> str:
    """The GPU's name for a CUDA device, else the processor's (recorded next to timings)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device.index or 0)
    return platform.processor() or "cpu"


def autocast(device: str | torch.device, mixed_precision: str) -> AbstractContextManager:
    """``torch.autocast`` to bf16 or fp16 on ``device``'s type, or a no-op for ``"no"``."""
    if mixed_precision not in MIXED_PRECISION:
        raise MemekitError(f"unknown mixed precision {mixed_precision!r}: choose no, bf16 or fp16")
    if mixed_precision == "no":
        return nullcontext()
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
