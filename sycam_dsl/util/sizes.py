"""Sizes in bytes as people write them: ``500MB``, ``2GB``, ``1.5G`` (binary units: 1 MB = 2**20 bytes)."""

from __future__ import annotations

import math
import re

_UNITS = {"b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30, "t": 2**40, "tb": 2**40}


def parse_size(text: str) -> int:
    """Bytes of a size such as ``500MB``, ``2GB``, ``1.5g`` or ``800`` (a bare number is MB); raises
    ``ValueError`` (with a one-line message) unless it is a positive size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in ("", *_UNITS):
        raise ValueError(f"expected a size such as 500MB or 2GB, got {text!r}")
    size = float(m.group(1)) * _UNITS[unit or "mb"]
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"expected a positive size such as 500MB or 2GB, got {text!r}")
    return int(size)


def format_size(size: int) -> str:
    """``size`` bytes for people: ``512 B``, ``12.0 KB``, ``153.2 MB``, ``2.0 GB``."""
    for unit in ("TB", "GB", "MB", "KB"):
        scale = _UNITS[unit.lower()]
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
