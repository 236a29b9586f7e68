"""Models whose parameters are not float32 run as float32 copies: images are float32, and CPU kernels
for float16 / bfloat16 are missing or slow, so a float64 or float16 model would fail on its first
forward pass or, worse, after the terminals were computed (when a metric reruns it)."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def float_dtypes(module: nn.Module) -> set[torch.dtype]:
    """The floating-point dtypes of ``module``'s parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return {t.dtype for t in tensors if t.is_floating_point()}


def float32_model(module: nn.Module, what: str = "the model", *, copy_first: bool = True,
                  allow_float64: bool = False) -> nn.Module:
    """``module`` when its floating-point parameters and buffers are all float32 (or float64, with
    ``allow_float64``: exact reference computations); otherwise a float32 copy (``copy_first``; else
    ``module`` cast in place), with one warning line naming ``what``."""
    keep = {torch.float32, torch.float64} if allow_float64 else {torch.float32}
    dtypes = float_dtypes(module)
    if dtypes <= keep and len(dtypes) <= 1:
        return module
    other = sorted(str(d).removeprefix("torch.") for d in dtypes - {torch.float32})
    if not other:
        return module
    log.warning("%s has %s parameters; running it in float32 (cast it with .float() to silence this)",
                what, "/".join(other))
    return (copy.deepcopy(module) if copy_first else module).float()
