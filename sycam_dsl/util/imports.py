"""Python objects named by ``package.module:name`` text (model factories, reshape callables)."""

from __future__ import annotations

import importlib
from typing import Any


def import_attr(spec: str) -> Any:
    """The object ``package.module:name`` (``name`` may be dotted: ``module:Class.method``) names.
    Raises ``ImportError`` when the module cannot be imported, ``AttributeError`` naming the missing
    part when the module has no such object, ``ValueError`` when ``spec`` has no ``:``."""
    mod_name, sep, attr_path = spec.partition(":")
    if not sep or not mod_name or not attr_path:
        raise ValueError(f"{spec!r} is not package.module:name")
    obj: Any = importlib.import_module(mod_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            raise AttributeError(f"module {mod_name!r} has no {attr_path!r}")
    return obj
