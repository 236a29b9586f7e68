"""The CAM engine's error types; each message says what to change."""

from __future__ import annotations

from ..errors import SycamError


class ImageError(SycamError):
    """An image or mask folder or file that cannot be loaded."""


class TerminalError(SycamError):
    """Terminals that cannot be computed (bad targets, NaN or Inf values, ...)."""


class StoreError(SycamError):
    """A terminal store that cannot be used as asked (its folder is a file, a bad size bound)."""
