"""The metrics' error type."""

from __future__ import annotations

from ..errors import SycamError


class MetricError(SycamError):
    """A metric that cannot be computed on the given inputs; the message says what to change."""
