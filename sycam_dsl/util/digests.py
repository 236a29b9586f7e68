"""Hashes of tensors, files and JSON values."""

from __future__ import annotations

import hashlib
import json
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


def json_digest(value: object) -> str:
    """The first 40 hex digits of the SHA-256 of ``value`` as JSON: a file-name key of plain data."""
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:40]
