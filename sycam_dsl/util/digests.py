"""Hashes of tensors and files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def update_digest(h: hashlib._Hash, t: torch.Tensor) -> None:
    """Feed a tensor (shape, dtype and bytes) into the hash ``h``."""
    t = t.detach()
    h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
    flat = t.cpu().contiguous().reshape(-1)
    try:
        h.update(flat.view(torch.uint8).numpy().tobytes())
    except (RuntimeError, TypeError):  # dtypes that cannot be viewed as bytes (quantized, ...)
        h.update(repr(flat.tolist()).encode())


def file_sha256(path: str | Path) -> str:
    """The SHA-256 hex digest of the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
