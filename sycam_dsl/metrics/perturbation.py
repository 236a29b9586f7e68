"""Deletion and Insertion with ``P`` steps (definitions: docs/metrics.md).

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
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from ..models.precision import DEFAULT_PRECISION
from ..models.targets import Target
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


class PerturbedRows:
    """The perturbed images of a list of (ranking row, step) pairs, built batch by batch for
    ``scores_of``; see ``perturbed_builder``."""

    def __init__(self, images: torch.Tensor, blurred_images: torch.Tensor, ranks: torch.Tensor, steps: int,
                 insert: bool, rows: torch.Tensor | None = None, step: torch.Tensor | None = None) -> None:
        n, _, H, W = images.shape
        dev = images.device
        self.shape = (H, W)
        self.start, self.paste = (blurred_images, images) if insert else (images, blurred_images)
        self.flat = ranks.reshape(ranks.shape[0], -1).to(dev)
        self.cells = pixel_cells((ranks.shape[-2], ranks.shape[-1]), (H, W), dev).flatten()
        self.steps, self.n = steps, n
        if rows is None:
            total = ranks.shape[0] * steps
            r_cpu = torch.arange(total) // steps
            self.r = torch.arange(total, device=dev) // steps
            self.p = torch.arange(total, device=dev) % steps + 1
        else:
            assert step is not None  # rows and step are given together
            r_cpu = rows.cpu()
            self.r, self.p = rows.to(dev), step.to(dev)
        self.img = self.r % n
        # where the image changes along the rows (host side, so that a batch's runs of rows of one
        # image are known without asking the device): each run is one broadcast, not a gather
        img_cpu = (r_cpu % n).numpy()
        self.run_starts = np.flatnonzero(np.diff(img_cpu)) + 1 if img_cpu.size else np.zeros(0, np.int64)
        self.run_images = img_cpu
        self._xor: tuple[torch.Tensor, torch.Tensor] | None = None
        self._xor_tried = False
        self._ones_block: tuple[int, int, torch.Tensor] | None = None

    def _masks(self, r: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        covered = self.flat[r] < p[:, None]                  # [B, h*w]: the p top-ranked cells
        return covered.gather(1, self.cells.expand(len(r), -1)).view(-1, 1, *self.shape)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """The inputs of the pairs ``idx`` ``[B]`` (any order)."""
        idx = idx.to(self.r.device)
        img = self.img[idx]
        return torch.where(self._masks(self.r[idx], self.p[idx]), self.paste[img], self.start[img])

    def _bits(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(``start``, ``start XOR paste``) as integers of the images' width, computed once; None when the
        two differ in type (then ``torch.where`` selects)."""
        if not self._xor_tried:
            self._xor_tried = True
            dtype = self.start.dtype
            bits = _BITS.get(torch.empty((), dtype=dtype).element_size())
            if dtype == self.paste.dtype and dtype.is_floating_point and bits is not None:
                start = self.start.contiguous().view(bits)
                self._xor = (start, start ^ self.paste.contiguous().view(bits))
        return self._xor

    def _ones(self, begin: int, end: int, dtype: torch.dtype) -> torch.Tensor:
        """``[end - begin, 1, H, W]`` integers, all ones where pair ``i``'s cells are perturbed, else 0;
        built for up to ``MASK_BLOCK_BYTES`` of pairs at once (``scores_of`` asks for consecutive
        ranges), so that a short batch pays few operations."""
        held = self._ones_block
        if held is None or not held[0] <= begin < end <= held[1]:
            width = torch.empty((), dtype=dtype).element_size() * self.shape[0] * self.shape[1]
            stop = min(self.r.shape[0], max(end, begin + MASK_BLOCK_BYTES // width))
            r, p = self.r[begin:stop], self.p[begin:stop]
            covered = (self.flat[r] < p[:, None]).to(dtype).neg_()  # [B, h*w]: all ones on the p top cells
            held = (begin, stop, covered.gather(1, self.cells.expand(stop - begin, -1)).view(-1, 1, *self.shape))
            self._ones_block = held
        return held[2][begin - held[0]:end - held[0]]

    def build_range(self, begin: int, end: int, memory_format: torch.memory_format) -> torch.Tensor:
        """The inputs of the pairs ``begin..end-1`` in ``memory_format``, the values of ``__call__``.

        Each run of rows of one image is selected by bits: ``start ^ ((start ^ paste) & M)`` with ``M``
        all ones where the cell is perturbed, two vectorized integer passes that give exactly
        ``torch.where(mask, paste, start)`` (whose CPU kernel is scalar, about ten times slower), with no
        gathered copies of the images."""
        bits = self._bits()
        lo = np.searchsorted(self.run_starts, begin, side="right")
        hi = np.searchsorted(self.run_starts, end, side="left")
        bounds = [begin, *self.run_starts[lo:hi].tolist(), end]
        if bits is None or len(bounds) - 1 > max(4, (end - begin) // 4):  # many short runs: one gather
            img = self.img[begin:end]
            out = torch.where(self._masks(self.r[begin:end], self.p[begin:end]), self.paste[img], self.start[img])
            return out.contiguous(memory_format=memory_format)
        start, diff = bits
        ones = self._ones(begin, end, start.dtype)
        out = torch.empty((end - begin, *start.shape[1:]), dtype=start.dtype, device=start.device)
        for s, e in zip(bounds[:-1], bounds[1:]):
            i = int(self.run_images[s])
            rows = out[s - begin:e - begin]
            torch.bitwise_and(diff[i:i + 1], ones[s - begin:e - begin], out=rows)
            rows.bitwise_xor_(start[i:i + 1])
        return out.view(self.start.dtype).contiguous(memory_format=memory_format)


#: Bytes of perturbation masks built at once (at least one batch).
MASK_BLOCK_BYTES = 4 * 2**20
#: Integer types as wide as each floating-point width, for selecting bits.
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def perturbed_builder(images: torch.Tensor, blurred_images: torch.Tensor, ranks: torch.Tensor, steps: int,
                      insert: bool, rows: torch.Tensor | None = None,
                      step: torch.Tensor | None = None) -> PerturbedRows:
    """``build(idx)`` for ``scores_of``: the perturbed images of a list of (ranking row, step) pairs.

    ``ranks`` ``[R, h, w]`` cell ranks (``cell_ranks``; row ``r`` belongs to image ``r % N``). Without
    ``rows``/``step`` the list is every pair in order (``idx = r * P + p - 1``); with them, pair ``i``
    is ``(rows[i], step[i])`` (steps counted from 1). ``scores_of`` builds consecutive pairs with
    ``build_range``, straight in the layout the model gets."""
    return PerturbedRows(images, blurred_images, ranks, steps, insert, rows, step)


def perturbation_curve(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, saliency: torch.Tensor,
                       steps: int, insert: bool, device: Device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
                       blur_sigma: float = DEFAULT_BLUR_SIGMA,
                       blurred_images: torch.Tensor | None = None, *, precision: str = DEFAULT_PRECISION,
                       channels_last: bool = False, target: Target | None = None) -> torch.Tensor:
    """``y_c`` after each step ``p = 1..P``: ``[..., N, P]`` for saliency ``[..., N, h, w]``.

    Deletion (``insert=False``) perturbs ``x`` towards ``x~``; insertion perturbs ``x~`` towards
    ``x``. ``blurred_images``: ``x~`` ``[N, C, H, W]`` if already computed. ``precision`` and
    ``channels_last``: how the model runs (``scores_of``)."""
    check_curve_inputs(images, targets, saliency, steps)
    n = images.shape[0]
    blur = checked_blur(images, blurred_images, blur_sigma)
    ranks = cell_ranks(saliency).reshape(-1, *saliency.shape[-2:])
    build = perturbed_builder(images, blur, ranks, steps, insert)
    rows_targets = targets.repeat_interleave(steps).repeat(ranks.shape[0] // n)
    scores = scores_of(model, build, rows_targets, device, batch_size, precision=precision,
                       channels_last=channels_last, target=target)
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
             base_scores: torch.Tensor | None = None, blurred_images: torch.Tensor | None = None, *,
             precision: str = DEFAULT_PRECISION, channels_last: bool = False,
             target: Target | None = None) -> torch.Tensor:
    """Per-image Deletion score ``[..., N]`` (higher is better).

    ``images`` ``[N, C, H, W]`` normalized, ``targets`` ``[N]``, ``saliency`` ``[..., N, h, w]``
    (``S`` at layer resolution), ``steps`` = ``P``; ``base_scores``: ``y_c(x)`` ``[N]`` and
    ``blurred_images``: ``x~`` ``[N, C, H, W]`` if known; ``precision``, ``channels_last``: see
    ``scores_of``."""
    fw: dict[str, Any] = {"precision": precision, "channels_last": channels_last, "target": target}
    curve = perturbation_curve(model, images, targets, saliency, steps, False, device, batch_size, blur_sigma,
                               blurred_images, **fw)
    base = class_scores(model, images, targets, device, batch_size, **fw) if base_scores is None \
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
              blurred_images: torch.Tensor | None = None, *, precision: str = DEFAULT_PRECISION,
              channels_last: bool = False, target: Target | None = None) -> torch.Tensor:
    """Per-image Insertion score ``[..., N]`` (higher is better); arguments as ``deletion``, plus
    ``blurred_scores`` ``y_c(x~)`` ``[N]`` and ``blurred_images`` ``x~`` if known."""
    fw: dict[str, Any] = {"precision": precision, "channels_last": channels_last, "target": target}
    blur = blurred(images, blur_sigma) if blurred_images is None else blurred_images
    curve = perturbation_curve(model, images, targets, saliency, steps, True, device, batch_size,
                               blur_sigma, blur, **fw)
    base = class_scores(model, images, targets, device, batch_size, **fw) if base_scores is None \
        else base_scores.to(device)
    start = class_scores(model, blur, targets, device, batch_size, **fw) if blurred_scores is None \
        else blurred_scores.to(device)
    return insertion_from_curve(curve, base, start)
