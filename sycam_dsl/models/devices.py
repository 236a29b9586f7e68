"""Device names to ``torch.device``, checked against what this machine has."""

from __future__ import annotations

import torch

from .errors import ModelError


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checking that it exists here: cpu, cuda[:N] or mps (others, such
    as meta, which holds no data, or xpu, which this package does not support, are refused)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r} ({e}); use cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "meta":
        raise ModelError(f"device {str(device)!r} holds no data (meta tensors), so no model can run on it; "
                         f"use cpu, cuda[:N] or mps")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(f"device type {dev.type!r} is not supported; use cpu, cuda[:N] or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} asked for but MPS is not available here; use --device cpu")
    return dev
