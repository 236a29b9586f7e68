"""Atomic file writes: the data goes to a temporary file next to the target, which then replaces
it (``os.replace``), so an interrupt or a concurrent reader never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Create ``path``'s folder, call ``write(tmp)`` on a temporary file in it, then move that file
    to ``path``; the temporary file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON (one-space indent) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(data, indent=1))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
