"""The CAM template (docs/language.md#the-cam-template): weights and activations to saliency maps ``S``, and min-max
normalization."""

from __future__ import annotations

import torch

from ..lang.types import Type


def saliency(weights: torch.Tensor, acts: torch.Tensor, weight_type: Type) -> torch.Tensor:
    """``S = ReLU(sum_k W_k * A_k)``.

    ``weights``: a Vec ``[..., N, K]`` (one weight per channel) or a Map ``[..., N, K, h, w]`` /
    ``[..., N, K, 1, 1]`` (per position); ``acts``: ``[N, K, h, w]``. Returns ``[..., N, h, w]``."""
    if weight_type == Type.VEC and acts.dim() == 4 and tuple(weights.shape[-2:]) == tuple(acts.shape[:2]):
        return vec_saliency(weights, acts)
    if weight_type == Type.VEC:
        weights = weights.unsqueeze(-1).unsqueeze(-1)
    return map_saliency(weights, acts)


def vec_saliency(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``saliency`` of Vec weights ``[..., N, K]`` and activations ``[N, K, h, w]``: ``[..., N, h, w]``
    (TorchScript-compatible: the explainer file runs it too)."""
    # one batched matrix product per image over all leading (candidate) dimensions: the broadcast
    # product [..., N, K, h, w] would be far larger than its result. It accumulates in float64 so
    # that S does not depend on how many candidates share the call (the matrix kernel's blocking
    # changes the rounding; float64 keeps that far below float32's precision).
    n, k, h, w = acts.shape[0], acts.shape[1], acts.shape[2], acts.shape[3]
    lead = list(weights.shape[:-2])
    dtype = torch.promote_types(weights.dtype, acts.dtype)
    wt = weights.reshape(-1, n, k).transpose(0, 1).double()              # [N, C, K]
    s = torch.bmm(wt, acts.reshape(n, k, h * w).double())                # [N, C, h*w]
    return torch.relu(s.transpose(0, 1).reshape(lead + [n, h, w])).to(dtype)


def map_saliency(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """``saliency`` of Map weights ``[..., N, K, h, w]`` (or ``[..., N, K, 1, 1]``) and activations
    ``[N, K, h, w]``: ``[..., N, h, w]`` (TorchScript-compatible)."""
    return torch.relu((weights * acts).sum(dim=-3))


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalize each map ``[..., h, w]`` to ``[0, 1]``; a constant map becomes all zeros
    (TorchScript-compatible)."""
    flat = maps.flatten(-2)
    lo = flat.amin(dim=-1, keepdim=True)
    span = flat.amax(dim=-1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                      torch.zeros_like(flat))
    return out.reshape(maps.shape)


def normalized_saliency(weights: torch.Tensor, acts: torch.Tensor, weight_type: Type) -> torch.Tensor:
    """Min-max normalized ``ReLU(sum_k W_k A_k)``: ``[..., N, h, w]`` for weights ``[..., N, K(, h, w)]``."""
    return minmax_normalize(saliency(weights, acts, weight_type))
