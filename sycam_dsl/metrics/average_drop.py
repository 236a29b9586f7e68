"""Average Drop % and Increase in Confidence (docs/metrics.md#average-drop--lower-is-better).

The explanation map masks the input, ``x * H``, in the model's normalized input space (as the
masks of ScoreCAM's ``cic``): a pixel with ``H = 0`` becomes the normalized value 0, the data
set's mean colour. Heatmaps may carry leading candidate dimensions: ``[..., N, H, W]`` gives
per-image scores ``[..., N]``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.precision import DEFAULT_PRECISION
from ..models.targets import Target
from .errors import MetricError
from .scoring import DEFAULT_BATCH_SIZE, Device, check_inputs, class_scores, safe_denominator, scores_of


def check_heatmaps(heatmaps: torch.Tensor, images: torch.Tensor) -> None:
    """``heatmaps`` must be ``[..., N, H, W]`` for ``images`` ``[N, C, H, W]``."""
    n, _, h, w = images.shape
    if heatmaps.dim() < 3 or tuple(heatmaps.shape[-3:]) != (n, h, w):
        raise MetricError(f"heatmaps must be [..., {n}, {h}, {w}] to match images of shape "
                          f"{list(images.shape)}, got {list(heatmaps.shape)}")


def masked_scores(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, heatmaps: torch.Tensor,
                  device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE, *,
                  precision: str = DEFAULT_PRECISION, channels_last: bool = False,
                  target: Target | None = None) -> torch.Tensor:
    """``y_c(x * H)`` for heatmaps ``[..., N, H, W]``: ``[..., N]`` on ``device`` (``precision``,
    ``channels_last``: see ``scores_of``)."""
    check_inputs(images, targets)
    check_heatmaps(heatmaps, images)
    n = images.shape[0]
    flat = heatmaps.reshape(-1, *heatmaps.shape[-2:])

    def build(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.to(images.device)
        return images[rows % n] * flat[rows.to(flat.device)].to(images.device)[:, None]

    return scores_of(model, build, targets.repeat(flat.shape[0] // n), device, batch_size, precision=precision,
                     channels_last=channels_last, target=target).reshape(heatmaps.shape[:-2])


def _both(model, images, targets, heatmaps, device, batch_size, base_scores, **forward):
    base = class_scores(model, images, targets, device, batch_size, **forward) if base_scores is None \
        else base_scores.to(device)
    if base.shape != (images.shape[0],):
        raise MetricError(f"base_scores must be [{images.shape[0]}], got {list(base.shape)}")
    return base, masked_scores(model, images, targets, heatmaps, device, batch_size, **forward)


def average_drop(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, heatmaps: torch.Tensor,
                 device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
                 base_scores: torch.Tensor | None = None, *, precision: str = DEFAULT_PRECISION,
                 channels_last: bool = False, target: Target | None = None) -> torch.Tensor:
    """Per-image drop ``100 * max(0, y_c(x) - y_c(x * H)) / y_c(x)``, ``[..., N]`` (lower is
    better; the mean over images is Average Drop %). ``base_scores``: ``y_c(x)`` ``[N]`` if known."""
    base, masked = _both(model, images, targets, heatmaps, device, batch_size, base_scores, precision=precision,
                         channels_last=channels_last, target=target)
    return 100.0 * (base - masked).clamp_min(0) / safe_denominator(base)


def increase_in_confidence(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                           heatmaps: torch.Tensor, device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
                           base_scores: torch.Tensor | None = None, *, precision: str = DEFAULT_PRECISION,
                           channels_last: bool = False, target: Target | None = None) -> torch.Tensor:
    """Per image 100 where ``y_c(x * H) > y_c(x)``, else 0, ``[..., N]`` (higher is better; the
    mean is the percentage of images whose score rises)."""
    base, masked = _both(model, images, targets, heatmaps, device, batch_size, base_scores, precision=precision,
                         channels_last=channels_last, target=target)
    return 100.0 * (masked > base).to(masked.dtype)
