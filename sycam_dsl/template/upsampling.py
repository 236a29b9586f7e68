"""Bilinear upsampling as two small matrices, for metrics computed from the layer-resolution
saliency ``S`` without building the full-resolution heatmaps of many candidates.

``F.interpolate(S, (H, W), mode="bilinear", align_corners=False)`` is separable and linear:
``U(S) = Ly @ S @ Lx.T`` with ``Ly`` ``[H, h]`` and ``Lx`` ``[W, w]`` (the 1-D linear weights). So

* a masked sum is a dot product at layer resolution: ``sum_M U(S) = <S, Ly.T @ M @ Lx>``;
* the extremes of ``U(S)`` lie on few rows and columns: along each axis an output is a linear blend
  of two neighbouring inputs, linear in the output position between two input centres, so its
  maximum and minimum over a stretch are at the stretch's first or last output (and bilinear is
  linear along each axis, so the 2-D extremes lie on those rows x columns).

Heatmaps are ``H = (U - min U) / (max U - min U)`` (docs/language.md#the-cam-template), so SCH needs only these sums
and extremes: ``O(h w)`` work per image instead of ``O(H W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F


def linear_weights(n_in: int, n_out: int) -> torch.Tensor:
    """``L`` ``[n_out, n_in]`` (float64, CPU): 1-D linear upsampling (``align_corners=False``) from
    ``n_in`` to ``n_out`` samples as a matrix (TorchScript-compatible: the explainer file builds its
    upsampling with it)."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in)
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False).view(n_in, n_out).T.contiguous()


@lru_cache(maxsize=32)
def _weights(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``L`` ``[n_out, n_in]`` (float64) and the indices of the outputs where extremes can lie."""
    lw = linear_weights(n_in, n_out)
    # an output's pair of inputs (and its weights) change only where the source coordinate crosses an
    # input centre: keep the first and last output of every run with the same pair of inputs
    support = [tuple((lw[i] > 0).nonzero().flatten().tolist()) for i in range(n_out)]
    keep = [i for i in range(n_out) if i in (0, n_out - 1) or support[i] != support[i - 1]
            or support[i] != support[i + 1]]
    return lw, torch.tensor(keep, dtype=torch.long)


class Upsampler:
    """``U`` from ``(h, w)`` to ``(H, W)`` as matrices, on ``device`` in ``dtype``."""

    def __init__(self, layer_hw: tuple[int, int], size: Sequence[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        (h, w), (H, W) = layer_hw, size
        ly, ry = _weights(h, H)
        lx, rx = _weights(w, W)
        self.ly, self.lx = ly.to(device, dtype), lx.to(device, dtype)
        self.ly_ext, self.lx_ext = ly[ry].to(device, dtype), lx[rx].to(device, dtype)
        self.pixels = H * W

    def full(self, s: torch.Tensor) -> torch.Tensor:
        """``U(S)``: ``[..., h, w]`` -> ``[..., H, W]``."""
        return self.ly @ s @ self.lx.T

    def extremes(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(min U(S), max U(S))`` per map, ``[...]`` each, from the few rows and columns where they lie."""
        e = (self.ly_ext @ s @ self.lx_ext.T).flatten(-2)
        return e.amin(dim=-1), e.amax(dim=-1)

    def project(self, masks: torch.Tensor) -> torch.Tensor:
        """``Ly.T @ M @ Lx``: ``[N, H, W]`` masks -> ``[N, h, w]``, so that ``<S, proj> = sum_M U(S)``."""
        return self.ly.T @ masks.to(self.ly.dtype) @ self.lx

    def total(self) -> torch.Tensor:
        """``[h, w]`` with ``<S, total> = sum U(S)``."""
        return self.ly.sum(dim=0)[:, None] * self.lx.sum(dim=0)[None, :]


@lru_cache(maxsize=16)
def _upsampler(layer_hw: tuple[int, int], size: Sequence[int], device: torch.device,
               dtype: torch.dtype) -> Upsampler:
    return Upsampler(layer_hw, size, device, dtype)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``, as ``F.interpolate``) of ``[..., h, w]`` maps to
    ``[..., H, W]``, as two small matrix products (``Upsampler``): several times faster than
    ``F.interpolate`` on the CPU, equal to it up to float rounding, and the one upsampling every
    heatmap and metric uses."""
    if not maps.is_floating_point():
        maps = maps.float()
    return _upsampler(tuple(maps.shape[-2:]), tuple(size), maps.device, maps.dtype).full(maps)
