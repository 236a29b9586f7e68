"""The adapters' error type."""

from __future__ import annotations

from ..errors import SycamError


class IntegrationError(SycamError):
    """An adapter that cannot run: its library is missing, or an argument it cannot honour."""


class MissingPackageError(IntegrationError, ImportError):
    """An adapter's library is not installed (an ``ImportError`` too, for code that tries an import)."""


def missing(package: str, extra: str) -> MissingPackageError:
    """The one-line error for an adapter whose library is not installed."""
    return MissingPackageError(f"{package} is not installed: pip install 'sycam-dsl[{extra}]'")
