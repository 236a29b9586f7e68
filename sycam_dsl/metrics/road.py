"""ROAD: Remove And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
Attribution Methods"), with the noisy linear imputation of the paper and of grad-cam's
``pytorch_grad_cam/metrics/road.py``.

For each percentile ``p`` the pixels of the heatmap ``H`` at or above its ``p``-th percentile are
removed (most relevant first, MoRF; least relevant first, LeRF, ranks ``1 - H`` the same way) and
filled in by noisy linear imputation: every removed pixel becomes the weighted mean of its 8
neighbours (1/6 for the 4 direct ones, 1/12 for the diagonals, neighbours outside the image left
out), a sparse linear system over the removed pixels solved with scipy (float64, on the host),
plus Gaussian noise of standard deviation ``noise``. The
per-image score is ``mean_p (y_c(x_p) - y_c(x))`` (softmax of the target class, as grad-cam's
metric with ``ClassifierOutputSoftmaxTarget``): lower is better for MoRF, higher for LeRF.

The noise of each imputation is drawn from a generator seeded with ``seed`` alone, so an imputed
image depends only on the image and its set of removed pixels: scores are reproducible, and the
memoized engine (``memo.ScoreCache``) keys them by that set. Seeding torch's global generator with
``seed`` before each of grad-cam's imputations gives grad-cam's images bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..models.precision import DEFAULT_PRECISION
from ..models.targets import Target
from .errors import MetricError
from .memo import ScoreCache
from .scoring import DEFAULT_BATCH_SIZE, Device, check_inputs, scores_of

#: grad-cam's and the paper's default percentiles.
DEFAULT_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
DEFAULT_NOISE = 0.01
DEFAULT_SEED = 0
# The neighbour offsets and weights of the imputation (grad-cam's neighbors_weights).
_NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
               (1, 0, 1 / 6), (-1, 0, 1 / 6))


def _sparse():
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError:
        raise MetricError("ROAD's imputation solves a sparse system with scipy: pip install scipy") from None
    return coo_matrix, spsolve


def linear_imputation(image: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """``image`` ``[C, H, W]`` with the pixels where ``removed`` ``[H, W]`` (bool) is True replaced by the
    solution of the imputation system (each the weighted mean of its in-image neighbours), without
    noise: ``[C, H, W]`` float32 on the image's device (the system is solved on the host, in float64). With every
    pixel removed the system has no unique solution; the result is then the image's per-channel mean."""
    coo_matrix, spsolve = _sparse()
    c, h, w = image.shape
    miss = removed.cpu().numpy().reshape(-1)
    img = image.detach().cpu().double().numpy().reshape(c, -1)
    idx = np.flatnonzero(miss)
    if idx.size == h * w:
        # a constant heatmap removes every pixel (nothing lies below its percentile): the system is singular (any
        # constant image solves it; grad-cam's spsolve gives NaN) and the image becomes its per-channel mean
        mean = image.detach().float().mean(dim=(1, 2), keepdim=True)
        return mean.expand(c, h, w).clone()
    var = np.zeros(h * w, dtype=np.int64)
    var[idx] = np.arange(idx.size)
    rows, cols, vals = [], [], []
    diag = np.ones(idx.size)
    rhs = np.zeros((idx.size, c))
    r0, c0 = idx // w, idx % w
    for dr, dc, weight in _NEIGHBOURS:
        r, cc = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < h) & (cc >= 0) & (cc < w)
        diag[~inside] -= weight
        nb = (r * w + cc)[inside]
        eq = np.flatnonzero(inside)
        known = ~miss[nb]
        rhs[eq[known]] -= weight * img[:, nb[known]].T
        rows.append(eq[~known])
        cols.append(var[nb[~known]])
        vals.append(np.full(int((~known).sum()), weight))
    rows.append(np.arange(idx.size))
    cols.append(np.arange(idx.size))
    vals.append(-diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(idx.size, idx.size)).tocsc()
    solution = np.asarray(spsolve(a, rhs)).reshape(idx.size, c)
    out = image.detach().float().cpu().reshape(c, -1).clone()
    out[:, torch.from_numpy(idx)] = torch.from_numpy(solution.T).float()
    return out.reshape(c, h, w).to(image.device)


def noisy_imputation(images: torch.Tensor, removed: torch.Tensor, noise: float = DEFAULT_NOISE,
                     seed: int = DEFAULT_SEED) -> torch.Tensor:
    """``linear_imputation`` of each image ``[B, C, H, W]`` at its ``removed`` ``[B, H, W]`` pixels plus
    noise ``N(0, noise^2)`` there, each image's noise drawn from a generator seeded with ``seed`` (as
    grad-cam draws it: ``[C, n]`` for ``n`` removed pixels): ``[B, C, H, W]`` float32."""
    out = []
    for x, rem in zip(images, removed):
        filled = linear_imputation(x, rem)
        if noise:
            c = x.shape[0]
            where = rem.flatten().nonzero()[:, 0].to(filled.device)
            eps = torch.randn((c, where.shape[0]), generator=torch.Generator().manual_seed(int(seed)))
            flat = filled.reshape(c, -1)
            flat[:, where] += noise * eps.to(filled.device)
        out.append(filled)
    return torch.stack(out)


def removed_pixels(heatmaps: torch.Tensor, percentiles: Sequence[float], most_relevant_first: bool) -> torch.Tensor:
    """Pixels removed at each percentile: ``[N, P, H, W]`` bool for heatmaps ``[N, H, W]``. MoRF removes
    ``H >= q_p(H)``, LeRF ``1 - H >= q_p(1 - H)`` (grad-cam's thresholds: numpy percentiles of float32)."""
    h = heatmaps.detach().float().cpu()
    if not most_relevant_first:
        h = 1 - h
    arr = h.numpy()
    out = np.empty((arr.shape[0], len(percentiles), *arr.shape[1:]), dtype=bool)
    for i, a in enumerate(arr):
        for j, q in enumerate(percentiles):
            out[i, j] = ~(a < np.percentile(a, q))
    return torch.from_numpy(out).to(heatmaps.device)


def check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
    """``percentiles`` as a tuple of numbers in ``(0, 100)``; raises ``MetricError`` otherwise."""
    if isinstance(percentiles, int | float):
        percentiles = [percentiles]
    try:
        out = tuple(float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise MetricError(f"percentiles must be numbers in (0, 100), got {percentiles!r}") from None
    if not out or any(not 0 < p < 100 for p in out):
        raise MetricError(f"percentiles must be numbers in (0, 100), got {list(percentiles)}")
    return out


def road_curve(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, heatmaps: torch.Tensor,
               percentiles: Sequence[float] = DEFAULT_PERCENTILES, most_relevant_first: bool = True,
               noise: float = DEFAULT_NOISE, seed: int = DEFAULT_SEED, device: Device = "cpu",
               batch_size: int = DEFAULT_BATCH_SIZE, memo: ScoreCache | None = None,
               image_ids: torch.Tensor | None = None, *, precision: str = DEFAULT_PRECISION,
               channels_last: bool = False, target: Target | None = None) -> torch.Tensor:
    """``y_c`` of the imputed image at each percentile: ``[N, P]`` for heatmaps ``H`` ``[N, H, W]``.

    ``memo``: a ``ScoreCache`` that keeps the scores by image (``image_ids`` ``[N]``), target and set of
    removed pixels, so a candidate whose heatmap removes the same pixels costs no imputation and no
    forward pass."""
    check_inputs(images, targets)
    n = images.shape[0]
    if heatmaps.dim() != 3 or heatmaps.shape[0] != n or heatmaps.shape[-2:] != images.shape[-2:]:
        raise MetricError(f"ROAD needs heatmaps [N, H, W] = [{n}, {images.shape[-2]}, {images.shape[-1]}], "
                          f"got {list(heatmaps.shape)}")
    pct = check_percentiles(percentiles)
    removed = removed_pixels(heatmaps, pct, most_relevant_first)  # [N, P, H, W]
    ids = (torch.arange(n) if image_ids is None else image_ids).tolist()
    tgt = targets.tolist()
    values = np.empty(n * len(pct), dtype=np.float64)
    pending: dict[tuple, list[int]] = {}
    kind = f"road:noise={float(noise)!r}:seed={int(seed)}:{precision}" + (f":{target.name}" if target else "")
    for i in range(n):
        packed = np.packbits(removed[i].flatten(1).cpu().numpy(), axis=-1)
        for j in range(len(pct)):
            slot = i * len(pct) + j
            key = (kind, ids[i], tgt[i], packed[j].tobytes())
            v = None if memo is None else memo.get(key)
            if v is not None:
                values[slot] = v
                memo.stats.hits += 1  # type: ignore[union-attr]
            elif key in pending:
                pending[key].append(slot)
                if memo is not None:
                    memo.stats.deduplicated += 1
            else:
                pending[key] = [slot]
    if pending:
        slots = torch.tensor([s[0] for s in pending.values()], dtype=torch.long)
        img, per = slots // len(pct), slots % len(pct)
        dev = images.device
        rows_removed = removed[img.to(removed.device), per.to(removed.device)]

        def build(rows: torch.Tensor) -> torch.Tensor:
            r = rows.cpu()
            return noisy_imputation(images[img[r].to(dev)], rows_removed[r.to(rows_removed.device)], noise, seed)

        scores = scores_of(model, build, targets[img.to(targets.device)], device, batch_size, precision=precision,
                           channels_last=channels_last, target=target).double().cpu()
        if memo is not None:
            memo.stats.misses += len(pending)
        for (key, where), v in zip(pending.items(), scores.tolist()):
            if memo is not None:
                memo.put(key, v)
            values[where] = v
    return torch.from_numpy(values).to(device=torch.device(device), dtype=torch.float32).reshape(n, len(pct))


def road_from_curve(curve: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """ROAD ``[N]``: ``mean_p (y_c(x_p) - y_c(x))`` from the curve ``[N, P]`` and ``y_c(x)`` ``[N]``."""
    return (curve - base[:, None]).mean(dim=-1)
