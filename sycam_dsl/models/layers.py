"""Target layers: default choices (docs/cam-engine.md#target-layers) and dotted module paths to modules."""

from __future__ import annotations

import difflib
import re
from typing import cast

import torch
from torch import nn

from ..util.modes import eval_mode
from .errors import LayerError
from .loaded import LoadedModel

#: Class names of layers whose output is a sensible CAM target (for the "did you mean" list).
_CONV_LIKE = re.compile(r"conv|relu|block|bottleneck|layer|stage", re.IGNORECASE)
#: ``PATH@N``: the output of call ``N`` of a module that runs more than once per forward pass.
_CALL = re.compile(r"@\s*(first|last|[+-]?\d+)\s*$", re.IGNORECASE)


def kind(module: nn.Module) -> str:
    """The class name of ``module``; for a TorchScript module, the class it was scripted from."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", type(module).__name__)
    return type(module).__name__


def _features_layer(model: nn.Module) -> str | None:
    """VGG / AlexNet layout: the last ReLU of ``features`` before its final max-pool.

    Counted from the module, not hard-coded, so VGG16 gives ``features.29`` and VGG19
    ``features.35`` (512 x 14 x 14 at 224 px)."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Module) or kind(features) != "Sequential":
        return None
    children = list(features.named_children())
    # Only the VGG layout ends ``features`` with the pool; DenseNet's max-pool is its stem's.
    if not children or "MaxPool" not in kind(children[-1][1]):
        return None
    for name, child in reversed(children[:-1]):
        if "ReLU" in kind(child):
            return f"features.{name}"
    return None


def _last(container: object) -> str | None:
    """The name of the last child of ``container`` (a module), None when it has none."""
    names = list(container._modules) if isinstance(container, nn.Module) else []
    return names[-1] if names else None


def _transformer_layer(model: nn.Module, names: dict[str, nn.Module]) -> str | None:
    """The first norm of the last transformer block, as pytorch-grad-cam recommends
    (docs/cam-engine.md#vision-transformers): torchvision ``vit_*`` ``encoder.layers.<last>.ln_1``,
    torchvision ``swin_*`` ``features.<last>.<last>.norm1``, timm ViT / DeiT ``blocks.<last>.norm1``,
    timm Swin ``layers.<last>.blocks.<last>.norm1``."""
    encoder, features = names.get("encoder"), names.get("features")
    if "heads" in names and isinstance(encoder, nn.Module) and (last := _last(getattr(encoder, "layers", None))):
        return f"encoder.layers.{last}.ln_1"
    if "Swin" in kind(model) and features is not None and (stage := _last(features)):
        block = _last(features._modules[stage])
        return f"features.{stage}.{block}.norm1" if block else None
    if "blocks" in names and "head" in names and (last := _last(names["blocks"])):
        return f"blocks.{last}.norm1"
    layers = names.get("layers")
    if "Swin" in kind(model) and layers is not None and (stage := _last(layers)):
        block = _last(getattr(layers._modules[stage], "blocks", None))
        return f"layers.{stage}.blocks.{block}.norm1" if block else None
    return None


def default_layer(model: nn.Module) -> str | None:
    """The default target layer path of ``model``, or None when there is no known default.

    ResNet-like models (``layer4`` and ``fc``): ``layer4``; VGG-like models: the last ReLU of
    ``features`` before the final max-pool; EfficientNet-Lite (efficientnet-lite-pytorch):
    ``_swish@last``, the activated head features (1280 x 7 x 7 at 224 px). The package calls one
    shared ReLU6 module, ``_swish``, for the stem and for the head, so the head's activation is that
    module's last call; its batch norm ``_bn1`` is pre-activation (mostly negative on photos, which
    makes ScoreCAM's ``ReLU(sum_k w_k A_k)`` blank). Vision transformers (torchvision and timm ViT,
    DeiT, Swin): the last block's first norm (``_transformer_layer``), read through a reshape."""
    names = dict(model.named_children())
    if "layer4" in names and "fc" in names:
        return "layer4"
    if "features" in names and "classifier" in names:
        found = _features_layer(model)
        if found:
            return found
    if kind(model) == "EfficientNet" and "_swish" in names and "_blocks" in names:
        return "_swish@last"
    return _transformer_layer(model, names)


def split_call(path: str) -> tuple[str, int | None]:
    """``PATH@N`` as (``PATH``, ``N``): which call of a module that runs more than once per forward pass
    (0-based; negative counts from the end; ``@first`` is ``@0``, ``@last`` is ``@-1``); a path
    without ``@`` gives (``path``, None), every call's output (the module must run once)."""
    m = _CALL.search(path)
    if m is None:
        if "@" in path:
            raise LayerError(f"bad call suffix in layer {path!r}; use PATH@last, PATH@first or PATH@N "
                             f"(0-based call index, negative from the end)")
        return path, None
    word = m.group(1).lower()
    index = {"first": 0, "last": -1}.get(word)
    return path[:m.start()], int(word) if index is None else index


def call_name(path: str, call: int | None) -> str:
    """The canonical name of call ``call`` of the module at ``path`` (``@last`` for -1)."""
    if call is None:
        return path
    return f"{path}@{'last' if call == -1 else call}"


def _parse_path(path: str) -> list[str]:
    """``features[-1].conv`` and ``model.features.29`` style paths as a list of parts."""
    text = re.sub(r"\[\s*(-?\d+)\s*\]", r".\1", path.strip())
    return [p for p in text.split(".") if p != ""]


def _walk(model: nn.Module, parts: list[str]) -> tuple[str, nn.Module] | None:
    module: nn.Module = model
    canonical = []
    for part in parts:
        children = module._modules
        child = children.get(part)
        if child is not None:
            module = child
            canonical.append(part)
            continue
        if re.fullmatch(r"-?\d+", part) and children:
            keys = [k for k, v in children.items() if v is not None]
            i = int(part)
            if -len(keys) <= i < len(keys):
                key = keys[i]
                module = cast(nn.Module, children[key])  # keys holds only the non-None children
                canonical.append(key)
                continue
        return None
    return ".".join(canonical), module


def _candidates(model: nn.Module, path: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    conv = [n for n, m in model.named_modules() if n and _CONV_LIKE.search(kind(m))][-5:]
    parts = []
    if close:
        parts.append("close names: " + ", ".join(close))
    if conv:
        parts.append("last conv-like layers: " + ", ".join(conv))
    tops = [n for n, _ in model.named_children()]
    if tops:
        parts.append("top-level modules: " + ", ".join(tops[:12]) + (" ..." if len(tops) > 12 else ""))
    return "; ".join(parts)


def _shape_candidates(model: nn.Module, size: int, n: int = 5) -> list[str]:
    """The last ``n`` modules, in call order, whose output on one zero image of ``size`` px is a
    spatial map ``[1, C, h, w]`` or tokens ``[1, T, C]``, as ``name [shape]``; ``[]`` when the model
    does not run on it (TorchScript runs no hooks)."""
    found: dict[str, list[int]] = {}

    def record(name: str):
        def hook(_m: nn.Module, _inputs: object, out: object) -> None:
            if isinstance(out, torch.Tensor) and (out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1
                                                  or out.dim() == 3 and out.shape[1] > 1):
                found.setdefault(name, list(out.shape))
        return hook

    if isinstance(model, torch.jit.ScriptModule):
        return []
    param = next(model.parameters(), None)
    image = torch.zeros(1, 3, size, size, device=param.device if param is not None else None)
    handles = [m.register_forward_hook(record(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad(), eval_mode(model):
            model(image)
    except Exception:  # a model that does not take this image: the candidates by class name instead
        return []
    finally:
        for h in handles:
            h.remove()
    return [f"{name} {shape}" for name, shape in list(found.items())[-n:]]


def _no_default(model: nn.Module, size: int) -> LayerError:
    """The error for a model without a known default layer: the last layers with spatial or token outputs."""
    shaped = _shape_candidates(model, size)
    found = (f"the last layers with spatial or token outputs at {size} px: {', '.join(shaped)}" if shaped
             else _candidates(model, ""))
    return LayerError(f"no default target layer for {kind(model)}; name one with --layer PATH ({found})")


def resolve_layer(model: nn.Module, path: str | None) -> tuple[str, nn.Module]:
    """The module at dotted path ``path`` in ``model`` and its canonical name.

    ``path`` may index containers (``features.29``, ``features[-1]``, ``features.-1``), may
    start with ``model.`` and may end in a call suffix (``_swish@last``, ``relu@0``: see
    ``split_call``), which the canonical name keeps; None means the model's default layer
    (``default_layer``). A ``LoadedModel`` may be passed for ``model`` and then supplies its own
    default. Raises ``LayerError`` listing close candidate names and the last conv-like layers when
    nothing matches, and the last layers with spatial or token outputs (one forward pass of a zero
    image) when the model has no known default."""
    size = 224
    if isinstance(model, LoadedModel):
        path = path if path is not None else model.target_layer
        size = model.input_size
        model = model.module
    if path is None:
        path = default_layer(model)
        if path is None:
            raise _no_default(model, size)
    path, call = split_call(path)
    parts = _parse_path(path)
    if not parts:
        raise LayerError(f"empty layer path {path!r}; name a module such as {_candidates(model, path)}")
    found = _walk(model, parts)
    if found is None and parts[0] == "model" and len(parts) > 1:
        found = _walk(model, parts[1:])
    if found is None:
        raise LayerError(f"no layer {path!r} in {kind(model)}; {_candidates(model, path)}")
    return call_name(found[0], call), found[1]
