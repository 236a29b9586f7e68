"""Ground-truth overlap and SCH (docs/metrics.md#ground-truth-overlap-higher-is-better): heatmaps against object masks.

Heatmaps ``[..., N, H, W]`` (e.g. ``[C, N, H, W]`` for ``C`` candidates) against boolean masks
``M`` ``[N, H, W]``; per-image scores ``[..., N]``, both higher is better.

* Ground-truth overlap: with ``m = |M|``, the share of the ``m`` highest pixels of ``H`` that lie
  in ``M``. Pixels with equal values are taken in row-major index order (a stable sort), so a
  heatmap that is constant over a tie scores as if the earlier pixels ranked higher.
* SCH: ``sum_{p in M} H(p) / sum_p H(p)``; an all-zero heatmap scores 0.
"""

from __future__ import annotations

import torch

from ..template.heatmaps import normalize_upsampled
from ..template.upsampling import Upsampler
from .errors import MetricError

#: Heatmaps sorted at once by ``gt_overlap`` (bounds the sort's memory: ~16 bytes per pixel).
DEFAULT_CHUNK = 64


def check_masks(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``masks`` as a bool tensor ``[N, H, W]`` matching heatmaps ``[..., N, H, W]``."""
    if heatmaps.dim() < 3:
        raise MetricError(f"heatmaps must be [..., N, H, W], got shape {list(heatmaps.shape)}")
    if masks.dim() != 3 or masks.shape != heatmaps.shape[-3:]:
        raise MetricError(f"masks must be [N, H, W] = {list(heatmaps.shape[-3:])} to match the heatmaps "
                          f"(one mask per image, at the input size), got {list(masks.shape)}")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() and not bool(((masks == 0) | (masks == 1)).all()):
            raise MetricError("masks must be binary (0/1 or bool); threshold soft masks first")
        masks = masks != 0
    return masks.to(heatmaps.device)


def mask_areas(masks: torch.Tensor) -> torch.Tensor:
    """``|M|`` of each mask ``[N, H, W]`` -> ``[N]``; an empty mask is an error (no top pixels to take)."""
    m = masks.flatten(1).sum(dim=1)
    if bool((m == 0).any()):
        i = int((m == 0).nonzero()[0])
        raise MetricError(f"the mask of image {i} is empty; ground-truth overlap needs at least one "
                          f"mask pixel per image")
    return m


def gt_overlap(heatmaps: torch.Tensor, masks: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Share of the ``|M|`` highest pixels of each heatmap inside its mask: ``[..., N]``."""
    masks = check_masks(heatmaps, masks)
    n = masks.shape[0]
    m = mask_areas(masks)
    flat = heatmaps.reshape(-1, n, masks.shape[1] * masks.shape[2])
    inside = masks.flatten(1)
    out = []
    for c in range(0, flat.shape[0], max(1, chunk)):
        order = torch.sort(flat[c:c + chunk], dim=-1, descending=True, stable=True).indices
        hits = inside.expand_as(order).gather(-1, order).cumsum(dim=-1)   # mask pixels among the top j+1
        out.append(hits.gather(-1, (m - 1).expand(order.shape[0], -1)[..., None]).squeeze(-1))
    return (torch.cat(out).to(heatmaps.dtype) / m.to(heatmaps.dtype)).reshape(heatmaps.shape[:-2])


def sch(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``sum_{p in M} H(p) / sum_p H(p)`` per image: ``[..., N]`` (0 for an all-zero heatmap)."""
    masks = check_masks(heatmaps, masks)
    total = heatmaps.sum(dim=(-2, -1))
    inside = (heatmaps * masks).sum(dim=(-2, -1))
    return torch.where(total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.zeros_like(total))


def sch_from_saliency(saliency: torch.Tensor, masks: torch.Tensor, up: Upsampler) -> torch.Tensor:
    """SCH of the heatmaps of layer-resolution saliency ``S`` ``[..., N, h, w]``, without building them:
    with ``U`` the upsampling, ``H = (U - lo) / (hi - lo)``, so
    ``SCH = (sum_M U - |M| lo) / (sum U - H W lo)`` (0 for a constant map). Computed in float64;
    equal to ``sch(heatmaps, masks)`` up to float rounding."""
    s = saliency.double()
    m = masks.to(s.device)
    proj = up.project(m).double()
    inside = (s * proj).sum(dim=(-2, -1))
    total = (s * up.total().double()).sum(dim=(-2, -1))
    lo, hi = up.extremes(s)
    area = m.flatten(1).sum(dim=1).double()
    den = total - up.pixels * lo
    ok = (hi > lo) & (den > 0)
    out = torch.where(ok, (inside - area * lo) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
    return out.to(saliency.dtype)


def gt_overlap_from_saliency(saliency: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Ground-truth overlap of the heatmaps of ``S`` ``[..., N, h, w]``: the same heatmaps as the
    heatmap path (``normalize_upsampled``), built one image at a time for all candidates (small,
    cache-friendly tensors), and the ``|M|`` highest pixels found with ``kthvalue`` (linear time)
    instead of a sort; ties at the threshold are taken in row-major order, as the stable sort of
    ``gt_overlap`` takes them, so the scores are equal."""
    m = masks.to(saliency.device)
    n = m.shape[0]
    area = mask_areas(m)
    flat_s = saliency.reshape(-1, n, *saliency.shape[-2:])
    out = torch.empty(flat_s.shape[0], n, dtype=saliency.dtype, device=saliency.device)
    for i, k in enumerate(area.tolist()):
        h = normalize_upsampled(flat_s[:, i], size).flatten(1)             # [C, H*W]
        v = torch.kthvalue(h, h.shape[1] - k + 1, dim=1).values[:, None]   # the k-th largest value
        above = h > v
        ties = h == v
        take = ties & (ties.cumsum(dim=1) <= (k - above.sum(dim=1, keepdim=True)))
        out[:, i] = ((above | take) & m[i].flatten()).sum(dim=1).to(saliency.dtype) / k
    return out.reshape(saliency.shape[:-2])
