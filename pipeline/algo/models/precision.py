"""Choosing the compute precision: ``resolve_dtype("auto", device)``.

Policy: bfloat16 on CUDA GPUs with native bf16 (compute capability >= 8.0, Ampere and newer),
float16 on older CUDA GPUs, float32 elsewhere (CPU, MPS). The decision itself is the pure
function :func:`choose_dtype`, testable without a GPU. The chosen dtype drives autocast in the
aggregator and track head; the camera, depth and point heads always run in float32.
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

DTypeLike = None | str | torch.dtype


def choose_dtype(device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype:
    """The "auto" policy for a device type ("cuda", "cpu", ...) and CUDA compute capability (major,
    minor)."""
    if device_type != "cuda":
        return torch.float32
    if capability is None:
        raise ValueError("the CUDA compute capability is needed to choose a dtype")
    return torch.bfloat16 if tuple(capability) >= (8, 0) else torch.float16


def resolve_dtype(
    dtype: DTypeLike,
    device: str | torch.device = "cpu",
    *,
    capability: tuple[int, int] | None = None,
) -> torch.dtype:
    """Turn ``dtype`` (None = float32, "auto", a name such as "bf16", or a ``torch.dtype``) into a
    ``torch.dtype``.

    For "auto" on CUDA the capability is read from the device unless ``capability`` is given.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, str):
        raise TypeError(
            f"dtype must be None, a string or a torch.dtype, got {type(dtype).__name__}"
        )
    name = dtype.lower().replace("torch.", "")
    if name in _NAMES:
        return _NAMES[name]
    if name != "auto":
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    device = torch.device(device)
    if device.type == "cuda" and capability is None:
        capability = torch.cuda.get_device_capability(device)
    chosen = choose_dtype(device.type, capability)
    logger.info("dtype auto -> %s on %s (capability %s)", chosen, device, capability)
    return chosen


def autocast_context(device: torch.device, dtype: torch.dtype):
    """Autocast context for ``dtype`` on ``device`` (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
