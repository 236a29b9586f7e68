"""Models whose parameters are not float32 run as float32 copies: images are float32, and CPU kernels
for float16 / bfloat16 are missing or slow, so a float64 or float16 model would fail on its first
forward pass or, worse, after the terminals were computed (when a metric reruns it).

Lower precision is a property of forward passes, not of the model: ``forward_precision`` runs the
float32 model under autocast (``--precision bf16|fp16``)."""

from __future__ import annotations

import copy
import logging
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from .errors import ModelError

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


#: The precisions of the forward passes that only read the model's output (``cic``, ``abl`` and the
#: perturbation metrics); gradients are always float32.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PRECISION = "fp32"


def check_precision(precision: str) -> str:
    """``precision`` when it is one of ``PRECISIONS``; else a one-line ``ModelError``."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    return precision


def forward_precision(precision: str, device: str | torch.device) -> AbstractContextManager[object]:
    """The context for forward passes at ``precision`` on ``device``: nothing at all for fp32 (so
    results are bit-identical to running without it), else ``torch.autocast`` on the device's type
    with bfloat16 / float16 (matrix products and convolutions in that type, reductions and softmax in
    float32). Callers cast the logits to float32 after it."""
    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    kind = torch.device(device).type
    if not torch.amp.is_autocast_available(kind):
        raise ModelError(f"precision {precision} needs autocast, which torch has no support for on {kind}; "
                         f"use --precision fp32")
    return torch.autocast(kind, dtype=PRECISIONS[precision])
