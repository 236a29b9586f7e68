"""Weights to heatmaps (docs/language.md#the-cam-template): ``S = ReLU(sum_k W_k A_k)`` at the target layer's
resolution, and ``H`` = ``S`` upsampled bilinearly (``align_corners=False``, as ``cv2.resize`` and
grad-cam do) to the input size and min-max normalized per image (a constant map gives zeros).

Weights may carry leading candidate dimensions: ``[C, N, K]`` / ``[C, N, K, h, w]`` give
``[C, N, H, W]``. Candidates are processed in chunks so that the ``[c, N, K, h, w]`` product
inside ``saliency`` stays under ``max_elements``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ShapeError
from ..lang.types import Type
from .saliency import minmax_normalize, saliency
from .upsampling import upsample

#: Default bound on the elements of one chunk's weight-times-activation product (256 MiB in float32).
MAX_ELEMENTS = 1 << 26


def _check(weights: torch.Tensor, acts: torch.Tensor, weight_type: Type) -> None:
    if acts.dim() != 4:
        raise ShapeError(f"activations must be [N, K, h, w], got shape {list(acts.shape)}")
    if weight_type not in (Type.VEC, Type.MAP):
        raise ShapeError(f"weights must be a Vec or a Map, got {weight_type}")
    n, k, h, w = acts.shape
    if weight_type == Type.VEC:
        ok = weights.dim() >= 2 and tuple(weights.shape[-2:]) == (n, k)
        want = f"[..., {n}, {k}]"
    else:
        ok = weights.dim() >= 4 and tuple(weights.shape[-4:-2]) == (n, k) \
            and weights.shape[-2] in (1, h) and weights.shape[-1] in (1, w)
        want = f"[..., {n}, {k}, {h}, {w}] (or [..., {n}, {k}, 1, 1])"
    if not ok:
        raise ShapeError(f"{weight_type} weights must be {want} for activations of shape "
                         f"{list(acts.shape)}, got {list(weights.shape)}")


def _lead(weights: torch.Tensor, weight_type: Type) -> torch.Size:
    """The candidate dimensions in front of ``[N, K]`` / ``[N, K, h, w]``."""
    return weights.shape[:-2] if weight_type == Type.VEC else weights.shape[:-4]


def _chunks(weights: torch.Tensor, weight_type: Type, per_candidate: int, max_elements: int):
    """Yield ``[c, N, K(, h, w)]`` slices of the weights flattened to one leading dimension, ``c``
    chosen so that ``c * per_candidate <= max_elements`` (at least one candidate)."""
    lead = _lead(weights, weight_type)
    flat = weights.reshape(-1, *weights.shape[len(lead):])
    step = max(1, max_elements // max(1, per_candidate))
    for i in range(0, flat.shape[0], step):
        yield flat[i:i + step]


def layer_saliency(weights: torch.Tensor, acts: torch.Tensor, weight_type: Type,
                   max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """``S = ReLU(sum_k W_k A_k)`` at layer resolution, not normalized.

    ``weights``: ``[..., N, K]`` (Vec) or ``[..., N, K, h, w]`` (Map); ``acts``: ``[N, K, h, w]``.
    Returns ``[..., N, h, w]``."""
    _check(weights, acts, weight_type)
    parts = [saliency(c, acts, weight_type)
             for c in _chunks(weights, weight_type, acts.numel(), max_elements)]
    lead = _lead(weights, weight_type)
    return torch.cat(parts).reshape(*lead, *acts.shape[:1], *acts.shape[2:])


def normalize_upsampled(s: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The heatmaps ``H`` of layer-resolution saliency ``S`` ``[..., N, h, w]``: ``[..., N, H, W]``
    in ``[0, 1]``."""
    return minmax_normalize(upsample(s, size))


def heatmaps(weights: torch.Tensor, acts: torch.Tensor, weight_type: Type, size: Sequence[int],
             max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Heatmaps ``H`` of the input size ``(H, W)``, in ``[0, 1]`` per image.

    ``weights``: ``[..., N, K]`` (Vec) or ``[..., N, K, h, w]`` (Map), e.g. ``[C, N, K]`` for ``C``
    candidates; ``acts``: ``[N, K, h, w]``. Returns ``[..., N, H, W]``, computed a chunk of
    candidates at a time (each chunk's upsampling is bounded by ``max_elements`` too)."""
    _check(weights, acts, weight_type)
    if len(size) != 2 or min(size) < 1:
        raise ShapeError(f"size must be (H, W) with positive entries, got {tuple(size)}")
    n = acts.shape[0]
    per_candidate = max(acts.numel(), n * size[0] * size[1])
    parts = [normalize_upsampled(saliency(c, acts, weight_type), size)
             for c in _chunks(weights, weight_type, per_candidate, max_elements)]
    return torch.cat(parts).reshape(*_lead(weights, weight_type), n, *size)

