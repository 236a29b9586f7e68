"""The model loader's error types; each message says what to change."""

from __future__ import annotations

from ..errors import SycamError


class ModelError(SycamError):
    """A model spec, weights file or device that cannot be used."""


class ConversionError(ModelError):
    """A model (or part of one) that a runtime cannot run."""


class LayerError(SycamError):
    """A target layer that does not exist or cannot be read."""


class TargetError(SycamError):
    """A target (``models.targets``) that does not fit the model's output."""
