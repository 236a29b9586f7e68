"""Transitional: ``load_model`` moved to ``sycam_dsl.models``; this module only keeps the import of
the command modules (``cam.commands``, ``metrics.commands``, ``synthesis.commands``) working until
they import ``sycam_dsl.models`` themselves. Do not add to it."""

from ..models.registry import load_model

__all__ = ["load_model"]
