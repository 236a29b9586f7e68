"""The adapters' error type."""

from __future__ import annotations

from ..errors import SycamError


class IntegrationError(SycamError):
    """An adapter that cannot run: its library is missing, or an argument it cannot honour."""


def missing(package: str, extra: str) -> IntegrationError:
    """The one-line error for an adapter whose library is not installed."""
    return IntegrationError(f"{package} is not installed: pip install 'sycam-dsl[{extra}]'")
