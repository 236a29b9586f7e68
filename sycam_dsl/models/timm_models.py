"""timm classifiers by name: ``timm:NAME`` (optional ``timm`` extra), built with ``pretrained=False``
and loaded from a local state-dict file or seeded random weights; nothing is downloaded.

``timm:NAME,key=value,...`` passes keyword arguments to ``timm.create_model`` (Python literals, else
text), e.g. ``timm:vit_tiny_patch16_224,img_size=32,depth=2`` for a small test model.
"""

from __future__ import annotations

import ast
import difflib
import re
from typing import Any

from torch import nn

from ..util.text import first_line
from .errors import ModelError
from .loaded import Normalization
from .weights import build_with_weights

#: The spec prefix of timm models.
PREFIX = "timm:"
INSTALL = 'pip install "sycam-dsl[timm]"'


def is_timm_spec(spec: str) -> bool:
    """Whether ``spec`` names a timm model (``timm:NAME``)."""
    return spec.lower().startswith(PREFIX)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ModelError(f"timm models need the optional package timm: {INSTALL}") from None
    return timm


def parse_timm_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``timm:NAME,key=value,...`` as (``NAME``, keyword arguments of ``timm.create_model``)."""
    # a comma starts the next argument only before key=, so tuples such as depths=(2,2) stay whole
    name, *pairs = [p.strip() for p in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", spec[len(PREFIX):])]
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ModelError(f"model {spec!r}: expected timm:NAME,key=value,... (e.g. timm:vit_tiny_patch16_224,"
                             f"img_size=32), got {pair!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = text.strip()
    if not name:
        raise ModelError(f"model {spec!r}: name a timm model after timm:, e.g. timm:vit_tiny_patch16_224")
    return name, kwargs


def _create(timm: Any, spec: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # timm raises RuntimeError, TypeError, ... on names and arguments it does not take
        first = first_line(e)
        raise ModelError(f"timm cannot build {spec!r} ({type(e).__name__}: {first})") from None


def build_timm(spec: str, weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """The timm model ``spec`` with ``weights`` (a state-dict file, whose classifier's rows set the number
    of classes unless ``num_classes`` is given, or ``random:SEED``), and the details to record."""
    timm = _timm()
    name, kwargs = parse_timm_spec(spec)
    known = timm.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"timm has no model {name!r}{hint}; timm.list_models() lists them")
    def make(classes: int | None) -> nn.Module:
        return _create(timm, spec, name, kwargs if classes is None else {**kwargs, "num_classes": classes})

    def classifier(model: nn.Module) -> str | None:
        # a fine-tuned checkpoint's number of classes, unless num_classes was given in the spec
        config: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
        return None if "num_classes" in kwargs else f"{config.get('classifier', 'head')}.weight"

    return build_with_weights(make, weights, spec, classifier)


def timm_preset(model: nn.Module, spec: str) -> tuple[Normalization, int]:
    """The input normalization and size of a timm model (its pretrained config; ``img_size`` when given)."""
    timm = _timm()
    config = timm.data.resolve_model_data_config(model)
    size = parse_timm_spec(spec)[1].get("img_size", config["input_size"][-1])
    size = size[-1] if isinstance(size, (list, tuple)) else size
    return Normalization(tuple(config["mean"]), tuple(config["std"])), int(size)
