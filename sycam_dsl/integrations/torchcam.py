"""A synthesized CAM method as a torchcam method: ``SyCAMTorchCAM`` is a torchcam ``_CAM`` whose
``_get_weights`` gives the expression's weights, so it is used like torchcam's ``ScoreCAM``::

    from sycam_dsl.integrations.torchcam import SyCAMTorchCAM

    with SyCAMTorchCAM(model, "layer4", "(* grads cic)") as cam_extractor:
        out = model(input_tensor)
        cams = cam_extractor(class_idx=out.argmax(dim=1).tolist())   # one [N, h, w] map per target layer

torchcam multiplies the weights with the hooked activations (``nansum(W * A, dim=1)``, then ReLU and
min-max normalization), so Vec weights ``[N, K]`` and Map weights ``[N, K, h, w]`` both fit. The
terminals are computed by this package's engine from the input of the last forward pass (stored by a
pre-hook, as torchcam's ScoreCAM does), for the classes ``class_idx`` names; arbitrary ``targets``
callables are refused (torchcam's own check: the terminals are defined on a class logit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..cam.compute import DEFAULT_CHUNK_SIZE
from ..deploy.sycam import check_model
from ..lang.ast import Node
from ..models.batching import BatchSize
from ..models.precision import DEFAULT_PRECISION
from .engine import expression_weights, weight_expression
from .errors import IntegrationError, missing

try:
    from torchcam.methods.core import _CAM
except ImportError:
    raise missing("torchcam", "torchcam") from None


class SyCAMTorchCAM(_CAM):
    """torchcam extractor for the weight expression ``expression`` (s-expression text or a parsed ``Node``)
    at ``target_layer`` (a module, its name, or a list of those). ``chunk_size``, ``ablation`` and
    ``precision``: how the terminal engine runs (``cam.compute.compute_terminals``)."""

    def __init__(self, model: nn.Module, target_layer: Any = None, expression: str | Node | None = None,
                 input_shape: tuple[int, ...] = (3, 224, 224), *, chunk_size: BatchSize = DEFAULT_CHUNK_SIZE,
                 ablation: str = "auto", precision: str = DEFAULT_PRECISION, **kwargs: Any) -> None:
        check_model(model)
        if expression is None:
            raise IntegrationError("SyCAMTorchCAM needs a weight expression, e.g. expression='(* grads cic)'")
        if kwargs.get("reshape_transform") is not None:
            raise IntegrationError("SyCAMTorchCAM takes no reshape_transform: the terminal engine reads the "
                                   "layer's [N, K, h, w] output itself")
        self.expression = weight_expression(expression)
        self._engine: dict[str, Any] = {"chunk_size": chunk_size, "ablation": ablation, "precision": precision}
        super().__init__(model, target_layer, input_shape, **kwargs)
        self.hook_handles.append(model.register_forward_pre_hook(self._store_input))
        self._relu = True  # S = ReLU(sum_k W_k A_k)

    def _store_input(self, _: nn.Module, input_: tuple[Any, ...]) -> None:
        if self._hooks_enabled:
            self._input = input_[0].detach()

    def _get_weights(self, class_idx: int | list[int], *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        """The expression's weights for the last input, one ``[N, K]`` / ``[N, K, h, w]`` tensor per layer."""
        x = getattr(self, "_input", None)
        if x is None:
            raise IntegrationError("run the model on the images before asking SyCAMTorchCAM for their maps")
        classes = [class_idx] * x.shape[0] if isinstance(class_idx, int) else list(class_idx)
        with torch.inference_mode(False), self._hooks_off():
            # a clone outside inference mode: the input of an inference-mode forward cannot enter autograd
            images = x.clone()
            return [expression_weights(self.model, name, self.expression, images, classes, **self._engine)[0]
                    for name in self.target_names]
