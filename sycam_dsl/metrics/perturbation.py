"""Deletion and Insertion with ``P`` steps (SPEC section 6).

Cells: the target layer's ``h x w`` grid splits the image; pixel row ``i`` of an ``H``-row image
lies in cell row ``floor(i * h / H)`` (columns likewise), so the cells tile the image exactly even
when ``H`` is not a multiple of ``h``. Cells are ranked by the layer-resolution saliency ``S``,
highest first, ties broken by cell index (row-major), i.e. a stable sort.

* Deletion: ``x^0 = x``; ``x^p`` is ``x^(p-1)`` with the ``p``-th ranked cell replaced by that
  cell of ``x~``. Per image ``1/P * sum_p (y_c(x) - y_c(x^p)) / y_c(x)`` (higher is better).
* Insertion: ``x~^0 = x~``; step ``p`` pastes the ``p``-th ranked cell of ``x``. Per image
  ``1/P * sum_p (y_c(x~^p) - y_c(x~)) / y_c(x)`` (higher is better).

``x~`` is ``x`` blurred with a Gaussian of standard deviation ``blur_sigma`` pixels (default 10)
and kernel size ``2 * ceil(2.5 * sigma) + 1`` (51 for sigma 10), reflect-padded, computed by
``torchvision.transforms.functional.gaussian_blur`` in the normalized input space (the same as
blurring the raw image, since normalization is per-channel affine and the kernel sums to 1). The
kernel is shrunk to the largest odd size below twice the image's shorter side when the image is
too small for it.

Step ``p`` touches exactly one more cell, so ``P <= h * w``. The ``P`` perturbed copies of every
image (and every candidate, for saliency with leading candidate dimensions ``[..., N, h, w]``)
are built per batch and go through the model ``batch_size`` at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from .errors import MetricError
from .scoring import DEFAULT_BATCH_SIZE, Device, check_inputs, class_scores, safe_denominator, scores_of

DEFAULT_BLUR_SIGMA = 10.0


def blur_kernel_size(sigma: float, size: tuple[int, int]) -> int:
    """Odd kernel size ``2 * ceil(2.5 * sigma) + 1``, shrunk to fit reflect padding of ``size``."""
    if not sigma > 0:
        raise MetricError(f"blur_sigma must be positive, got {sigma}")
    k = 2 * math.ceil(2.5 * sigma) + 1
    largest = 2 * min(size) - 1  # reflect padding needs kernel // 2 < the image's side
    return max(1, min(k, largest))


def blurred(images: torch.Tensor, sigma: float = DEFAULT_BLUR_SIGMA) -> torch.Tensor:
    """``x~``: ``images`` ``[N, C, H, W]`` under a deterministic Gaussian blur (see module doc)."""
    k = blur_kernel_size(sigma, (images.shape[-2], images.shape[-1]))
    return gaussian_blur(images, kernel_size=[k, k], sigma=[float(sigma), float(sigma)])


def cell_ranks(saliency: torch.Tensor) -> torch.Tensor:
    """Rank of each cell, 0 for the highest ``S``, ties by index: ``[..., h, w]`` -> ``[..., h*w]``."""
    flat = saliency.flatten(-2)
    order = torch.sort(flat, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(flat.shape[-1], device=flat.device).expand_as(order))
    return ranks


def pixel_cells(layer_hw: tuple[int, int], size: tuple[int, int], device: Device = "cpu") -> torch.Tensor:
    """Cell index (row-major over ``h x w``) of every input pixel: ``[H, W]`` long."""
    (h, w), (H, W) = layer_hw, size
    rows = torch.arange(H, device=device) * h // H
    cols = torch.arange(W, device=device) * w // W
    return rows[:, None] * w + cols[None, :]


def check_curve_inputs(images: torch.Tensor, targets: torch.Tensor, saliency: torch.Tensor, steps: int) -> None:
    """Check images ``[N, 3, H, W]``, targets ``[N]``, saliency ``S`` ``[..., N, h, w]`` and ``steps`` of a
    Deletion / Insertion curve; raises ``MetricError`` naming what is wrong."""
    check_inputs(images, targets)
    n, _, H, W = images.shape
    if saliency.dim() < 3 or saliency.shape[-3] != n:
        raise MetricError(f"saliency must be [..., {n}, h, w] (the layer-resolution S of the {n} "
                          f"images), got shape {list(saliency.shape)}")
    h, w = saliency.shape[-2:]
    if h > H or w > W:
        raise MetricError(f"the layer grid {h}x{w} is finer than the {H}x{W} images")
    if not 1 <= steps <= h * w:
        raise MetricError(f"steps must be between 1 and the {h}x{w} = {h * w} cells of the layer grid "
                          f"(each step perturbs one more cell), got {steps}")


def perturbed_builder(images: torch.Tensor, blurred_images: torch.Tensor, ranks: torch.Tensor, steps: int,
                      insert: bool, rows: torch.Tensor | None = None,
                      step: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``build(idx)`` for ``scores_of``: the perturbed images of a list of (ranking row, step) pairs.

    ``ranks`` ``[R, h, w]`` cell ranks (``cell_ranks``; row ``r`` belongs to image ``r % N``). Without
    ``rows``/``step`` the list is every pair in order (``idx = r * P + p - 1``); with them, pair ``i``
    is ``(rows[i], step[i])`` (steps counted from 1)."""
    n, _, H, W = images.shape
    start, paste = (blurred_images, images) if insert else (images, blurred_images)
    flat = ranks.reshape(ranks.shape[0], -1).to(images.device)
    cells = pixel_cells((ranks.shape[-2], ranks.shape[-1]), (H, W), images.device).flatten()
    if rows is not None:
        assert step is not None  # rows and step are given together
        rows, step = rows.to(images.device), step.to(images.device)

    def build(idx: torch.Tensor) -> torch.Tensor:
        idx = idx.to(images.device)
        # With rows there is a step (checked above); mypy cannot tie the two Optionals together.
        r, p = (idx // steps, idx % steps + 1) if rows is None else (rows[idx], cast(torch.Tensor, step)[idx])
        img = r % n
        covered = flat[r] < p[:, None]                  # [B, h*w]: the p top-ranked cells
        mask = covered.gather(1, cells.expand(len(idx), -1)).view(-1, 1, H, W)
        return torch.where(mask, paste[img], start[img])

    return build


def perturbation_curve(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, saliency: torch.Tensor,
                       steps: int, insert: bool, device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
                       blur_sigma: float = DEFAULT_BLUR_SIGMA,
                       blurred_images: torch.Tensor | None = None) -> torch.Tensor:
    """``y_c`` after each step ``p = 1..P``: ``[..., N, P]`` for saliency ``[..., N, h, w]``.

    Deletion (``insert=False``) perturbs ``x`` towards ``x~``; insertion perturbs ``x~`` towards
    ``x``. ``blurred_images``: ``x~`` ``[N, C, H, W]`` if already computed."""
    check_curve_inputs(images, targets, saliency, steps)
    n = images.shape[0]
    blur = checked_blur(images, blurred_images, blur_sigma)
    ranks = cell_ranks(saliency).reshape(-1, *saliency.shape[-2:])
    build = perturbed_builder(images, blur, ranks, steps, insert)
    rows_targets = targets.repeat_interleave(steps).repeat(ranks.shape[0] // n)
    scores = scores_of(model, build, rows_targets, device, batch_size)
    return scores.reshape(*saliency.shape[:-2], steps)


def checked_blur(images: torch.Tensor, blurred_images: torch.Tensor | None, blur_sigma: float) -> torch.Tensor:
    """``x~``: ``blurred_images`` when given (checked against the images' shape), else computed."""
    blur = blurred(images, blur_sigma) if blurred_images is None else blurred_images.to(images.device)
    if blur.shape != images.shape:
        raise MetricError(f"blurred_images must have the images' shape {list(images.shape)}, "
                          f"got {list(blur.shape)}")
    return blur


def deletion(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, saliency: torch.Tensor,
             steps: int, device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
             blur_sigma: float = DEFAULT_BLUR_SIGMA,
             base_scores: torch.Tensor | None = None, blurred_images: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image Deletion score ``[..., N]`` (higher is better).

    ``images`` ``[N, C, H, W]`` normalized, ``targets`` ``[N]``, ``saliency`` ``[..., N, h, w]``
    (``S`` at layer resolution), ``steps`` = ``P``; ``base_scores``: ``y_c(x)`` ``[N]`` and
    ``blurred_images``: ``x~`` ``[N, C, H, W]`` if known."""
    curve = perturbation_curve(model, images, targets, saliency, steps, False, device, batch_size, blur_sigma,
                               blurred_images)
    base = class_scores(model, images, targets, device, batch_size) if base_scores is None \
        else base_scores.to(device)
    return deletion_from_curve(curve, base)


def deletion_from_curve(curve: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Deletion ``[..., N]`` from ``y_c(x^p)`` ``[..., N, P]`` and ``y_c(x)`` ``[N]``."""
    return ((base[:, None] - curve) / safe_denominator(base)[:, None]).mean(dim=-1)


def insertion_from_curve(curve: torch.Tensor, base: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Insertion ``[..., N]`` from ``y_c(x~^p)`` ``[..., N, P]``, ``y_c(x)`` and ``y_c(x~)`` ``[N]``."""
    return ((curve - start[:, None]) / safe_denominator(base)[:, None]).mean(dim=-1)


def insertion(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, saliency: torch.Tensor,
              steps: int, device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
              blur_sigma: float = DEFAULT_BLUR_SIGMA,
              base_scores: torch.Tensor | None = None, blurred_scores: torch.Tensor | None = None,
              blurred_images: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image Insertion score ``[..., N]`` (higher is better); arguments as ``deletion``, plus
    ``blurred_scores`` ``y_c(x~)`` ``[N]`` and ``blurred_images`` ``x~`` if known."""
    blur = blurred(images, blur_sigma) if blurred_images is None else blurred_images
    curve = perturbation_curve(model, images, targets, saliency, steps, True, device, batch_size,
                               blur_sigma, blur)
    base = class_scores(model, images, targets, device, batch_size) if base_scores is None \
        else base_scores.to(device)
    start = class_scores(model, blur, targets, device, batch_size) if blurred_scores is None \
        else blurred_scores.to(device)
    return insertion_from_curve(curve, base, start)
