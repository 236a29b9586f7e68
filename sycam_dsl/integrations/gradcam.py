"""A synthesized CAM method as a pytorch-grad-cam method: ``SyCAMGradCAM`` is a ``BaseCAM``, so it runs
wherever ``GradCAM`` does (``with SyCAMGradCAM(model, [layer], expr) as cam: cam(input_tensor, targets)``,
``aug_smooth``, several target layers, grad-cam's metrics such as ``ROADCombined``)::

    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from sycam_dsl.integrations.gradcam import SyCAMGradCAM

    with SyCAMGradCAM(model, [model.layer4], "(relu (* grads cic))") as cam:
        heatmaps = cam(input_tensor=images, targets=[ClassifierOutputTarget(281)] * len(images))  # [N, H, W]

Vec expressions give grad-cam per-channel weights (``get_cam_weights``); Map expressions give the
layer-resolution map ``ReLU(sum_k W_k A_k)`` (``get_cam_image``). The terminals (``grads``, ``cic``,
``abl``, ...) are computed by this package's engine for the class each target names: grad-cam
targets that single out one class (``ClassifierOutputTarget`` and the others with a ``category``, or
any that scores one class's logit highest; ``deploy.sycam.resolve_targets``, as for ``SyCAM``), and
the terminals use the class logit as everywhere in sycam-dsl.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..cam.compute import DEFAULT_CHUNK_SIZE
from ..cam.reshape import check_reshape
from ..deploy.sycam import check_model, layer_name, resolve_targets
from ..lang.ast import Node
from ..lang.types import Type
from ..models.batching import BatchSize
from ..models.layers import resolve_layer
from ..models.precision import DEFAULT_PRECISION
from ..template.heatmaps import layer_saliency
from .engine import expression_weights, weight_expression
from .errors import IntegrationError, missing

try:
    from pytorch_grad_cam.base_cam import BaseCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
except ImportError:
    raise missing("grad-cam (pytorch-grad-cam)", "gradcam") from None


def _layer_modules(model: nn.Module, target_layers: Any) -> list[nn.Module]:
    """grad-cam's list of layer modules from a list of modules or dotted names, or one of either (a name
    alone is not split into letters)."""
    layers = [target_layers] if isinstance(target_layers, (str, nn.Module)) else target_layers
    if not isinstance(layers, (list, tuple)) or not layers:
        raise IntegrationError(f"target_layers must be a list of layers (modules or dotted names), got "
                               f"{type(target_layers).__name__}")
    return [resolve_layer(model, layer)[1] if isinstance(layer, str) else layer for layer in layers]


class SyCAMGradCAM(BaseCAM):
    """pytorch-grad-cam ``BaseCAM`` for the weight expression ``expression`` (s-expression text or a parsed
    ``Node``). ``chunk_size``, ``ablation`` and ``precision``: how the terminal engine runs
    (``cam.compute.compute_terminals``). ``reshape_transform``: grad-cam's, for a layer with token or
    channels-last output (a vision transformer); the engine reads the layer through it too (it must only
    select and move elements), or through its own ``auto`` reshape when None (``cam.reshape``)."""

    def __init__(self, model: nn.Module, target_layers: list[nn.Module] | list[str] | nn.Module | str,
                 expression: str | Node, *, chunk_size: BatchSize = DEFAULT_CHUNK_SIZE, ablation: str = "auto",
                 precision: str = DEFAULT_PRECISION, reshape_transform: Callable[..., Any] | None = None) -> None:
        check_model(model)
        target_layers = _layer_modules(model, target_layers)
        self.expression = weight_expression(expression)
        self._layers = {id(layer): layer_name(model, layer) for layer in target_layers}
        reshape = check_reshape("auto" if reshape_transform is None else reshape_transform)
        self._engine: dict[str, Any] = {"chunk_size": chunk_size, "ablation": ablation, "precision": precision,
                                        "reshape": reshape}
        # the engine computes its own gradients: grad-cam's backward pass would be wasted work
        super().__init__(model, target_layers, reshape_transform=reshape_transform, uses_gradients=False)

    def __del__(self) -> None:
        if hasattr(self, "activations_and_grads"):  # not when __init__ failed before BaseCAM's
            super().__del__()

    @contextmanager
    def _own_passes(self) -> Iterator[None]:
        """grad-cam's activation hooks off while the engine runs its (masked, ablated) passes: they
        would keep a copy of every batch's activations."""
        aag = self.activations_and_grads
        for handle in aag.handles:
            handle.remove()
        aag.handles.clear()
        try:
            yield
        finally:
            for layer in self.target_layers:
                aag.handles.append(layer.register_forward_hook(aag.save_activation))
                aag.handles.append(layer.register_forward_hook(aag.save_gradient))

    def _weights(self, input_tensor: torch.Tensor, target_layer: nn.Module,
                 targets: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        with self._own_passes():
            classes = resolve_targets(list(targets), self.model, input_tensor)
            assert classes is not None  # BaseCAM passes targets for every image (the predicted ones when None)
            return expression_weights(self.model, self._layers[id(target_layer)], self.expression, input_tensor,
                                      classes, **self._engine)

    def get_cam_weights(self, input_tensor: torch.Tensor, target_layer: Any, targets: Any,
                        activations: Any, grads: Any) -> np.ndarray:
        """Per-channel weights ``[N, K]`` of a Vec expression."""
        if self.expression.type != Type.VEC:
            raise IntegrationError(f"{self.expression} is a Map: it has no per-channel weights (get_cam_image gives "
                                   f"its map)")
        w, _ = self._weights(input_tensor, target_layer, targets)
        return w.float().cpu().numpy()

    def get_cam_image(self, input_tensor: torch.Tensor, target_layer: nn.Module, targets: Any, activations: Any,
                      grads: Any, eigen_smooth: bool = False) -> np.ndarray:
        """``[N, h, w]``: grad-cam's weighted sum for a Vec expression, ``ReLU(sum_k W_k A_k)`` for a Map.
        On a layer that grad-cam reads unreshaped (tokens, no ``reshape_transform``), the weighted sum
        of a Vec expression is over the engine's reshaped activations."""
        vec = self.expression.type == Type.VEC
        if vec and np.ndim(activations) == 4:
            return super().get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)
        w, acts = self._weights(input_tensor, target_layer, targets)
        if vec:
            w = w[:, :, None, None]
        if eigen_smooth:
            return get_2d_projection((w * acts).float().cpu().numpy())
        if vec:
            return (w * acts).sum(dim=1).float().cpu().numpy()
        return layer_saliency(w, acts, Type.MAP).float().cpu().numpy()
