"""Model specs by kind: the built-in kinds (``kinds``) and any a user registers from Python.

A kind says whether a spec string is one of its own (``matches``) and loads it (``load``). Specs are
tried against the kinds in registration order; the first that matches loads the model. The built-in
order is: ``bundled``, ``efficientnet_lite0``, a TorchScript file, a missing model file, a timm model
``timm:NAME``, a factory ``package.module:function``, a torchvision name. Register your own without
editing the package::

    from sycam_dsl.models import LoadedModel, ModelKind, register_model_kind

    def load_mine(spec, weights, device):
        module = build_mine().to(device).eval()
        return LoadedModel(module, spec, "backbone.layer4", source="mine")

    register_model_kind(ModelKind("mine", lambda spec: spec.startswith("mine-"), load_mine), before="factory")
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .devices import resolve_device
from .errors import ModelError
from .loaded import LoadedModel

LoadFn = Callable[[str, "str | None", torch.device], LoadedModel]


@dataclass(frozen=True)
class ModelKind:
    """One kind of model spec.

    ``matches(spec)``: whether the (stripped) spec is of this kind; ``load(spec, weights, device)``:
    the model in eval mode on ``device``; ``names()``: spec names this kind knows, offered as "did
    you mean" hints for an unknown spec (None: none)."""

    name: str
    matches: Callable[[str], bool]
    load: LoadFn
    names: Callable[[], list[str]] | None = None


_KINDS: list[ModelKind] = []


def register_model_kind(kind: ModelKind, *, before: str | None = None) -> None:
    """Add ``kind`` after the registered kinds, or ahead of the kind named ``before``; a kind of the
    same name is replaced in place."""
    for i, k in enumerate(_KINDS):
        if k.name == kind.name:
            _KINDS[i] = kind
            return
    if before is None:
        _KINDS.append(kind)
        return
    for i, k in enumerate(_KINDS):
        if k.name == before:
            _KINDS.insert(i, kind)
            return
    raise ValueError(f"no model kind {before!r} (known: {', '.join(k.name for k in _KINDS)})")


def unregister_model_kind(name: str) -> None:
    """Remove the kind called ``name`` (no error when there is none)."""
    _KINDS[:] = [k for k in _KINDS if k.name != name]


def model_kinds() -> list[ModelKind]:
    """The registered kinds, in the order specs are tried."""
    return list(_KINDS)


def load_model(spec: str, weights: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load the classifier ``spec`` in eval mode on ``device``.

    ``spec``: a torchvision classifier or segmentation name (``resnet50``, ``vgg16``, ...: any of
    ``torchvision.models.list_models(module=torchvision.models)``; ``lraspp_mobilenet_v3_large``,
    ``deeplabv3_resnet50``, ...: of ``torchvision.models.segmentation``), ``efficientnet_lite0`` (optional
    ``efficientnet`` extra), ``timm:NAME`` (optional ``timm`` extra: ``models.timm_models``), a
    TorchScript file, or a Python factory ``package.module:function``
    (called with no arguments, returns an ``nn.Module``), or ``bundled`` (the packaged SmallCNN), or
    a spec of a registered kind (``register_model_kind``).
    ``weights``: a state-dict file, ``random:SEED`` (seeded random init), or None (TorchScript files,
    factories that load their own weights, efficientnet_lite0's packaged weights)."""
    dev = resolve_device(device)
    spec = spec.strip()
    for kind in _KINDS:
        if kind.matches(spec):
            return kind.load(spec, weights, dev)
    known = [n for kind in _KINDS if kind.names is not None for n in kind.names()]
    close = difflib.get_close_matches(spec.lower(), known, n=4)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ModelError(f"unknown model {spec!r}{hint}: give a torchvision classifier or segmentation name, "
                     f"efficientnet_lite0, timm:NAME, a TorchScript file, or a factory package.module:function")
