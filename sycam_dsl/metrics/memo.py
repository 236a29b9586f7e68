"""Memoized Deletion and Insertion: a bounded cache of the model's scores of perturbed images.

At step ``p`` of Deletion the image is ``x`` with its ``p`` top-ranked cells taken from ``x~``; at
step ``q`` of Insertion it is ``x~`` with its ``q`` top-ranked cells taken from ``x``, i.e. ``x``
with every cell *but* the top ``q`` taken from ``x~``. Either way the image, and so the model's
score of it, depends only on (image, target class, the *set* of cells taken from ``x~``), not on
the heatmap that ranked them nor on which of the two metrics built it. The cache maps that key to
``y_c``. A candidate computes its cell rankings, looks every step up, and sends only the misses
(deduplicated within the call too) through the model, in one batched pass for all its images and
steps. Two candidates whose top-``P`` rankings agree cost no forward pass for the second, and
Deletion (or AOPC) and Insertion share the images they both build: Deletion step ``p`` of a
ranking is Insertion step ``h*w - p`` of the reversed ranking (e.g. AOPC LeRF's and Insertion's of
one saliency without ties; of one ranking, Deletion and Insertion build no common image).

Keys are ``(kind, image id, target, cell set)``: the cells taken from ``x~`` (Deletion: the top
``p``; Insertion: all but the top ``q``) packed into a bit string (``ceil(h*w / 8)`` bytes, the
padding bits 0), the image id a stable index into the full image set (a subset keeps its images'
ids), so every subset, every candidate and every blur-based metric of a search shares one cache;
``kind`` names how ``x~`` is made and how the model runs (``"blur:sigma=10.0"``, plus
``":bf16"`` / ``":fp16"`` for a lower precision), never the metric, so only images built with the
same blur and precision meet. (ROAD keeps its own entries, under kinds that start with
``"road:"``.) The cache is LRU-bounded by an estimate of its memory (``max_mb``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.precision import DEFAULT_PRECISION
from ..models.targets import Target
from .errors import MetricError
from .perturbation import cell_ranks, check_curve_inputs, perturbed_builder
from .scoring import DEFAULT_BATCH_SIZE, Device, scores_of

#: Estimated bytes per cache entry besides the packed cell set: the key tuple, its bytes object,
#: the float and the ordered dict's node (measured with tracemalloc on CPython 3.11: ~230).
ENTRY_OVERHEAD = 240
DEFAULT_MAX_MB = 256.0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0          # lookups that went to the model (after deduplication within a call)
    deduplicated: int = 0    # misses that another row of the same call computed
    evictions: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses + self.deduplicated

    @property
    def hit_rate(self) -> float:
        """Share of lookups that cost no forward pass."""
        return (self.hits + self.deduplicated) / self.lookups if self.lookups else 0.0


class ScoreCache:
    """LRU map from perturbed-image keys to ``y_c``, at most about ``max_mb`` megabytes."""

    def __init__(self, max_mb: float = DEFAULT_MAX_MB) -> None:
        if not max_mb > 0:
            raise MetricError(f"the score cache needs a positive size in MB, got {max_mb}")
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.bytes = 0
        self._data: OrderedDict[tuple, float] = OrderedDict()
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def entry_bytes(key: tuple) -> int:
        return ENTRY_OVERHEAD + len(key[-1])

    def get(self, key: tuple) -> float | None:
        v = self._data.get(key)
        if v is not None:
            self._data.move_to_end(key)
        return v

    def put(self, key: tuple, value: float) -> None:
        if key in self._data:
            self._data.move_to_end(key)
            self._data[key] = value
            return
        size = self.entry_bytes(key)
        if size > self.max_bytes:
            return
        self._data[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            old, _ = self._data.popitem(last=False)
            self.bytes -= self.entry_bytes(old)
            self.stats.evictions += 1


def step_cell_sets(ranks: torch.Tensor, steps: int, insert: bool = False) -> np.ndarray:
    """The cells taken from ``x~`` at every ranking row and step ``p = 1..steps``, packed:
    ``[R, P, ceil(h*w/8)]`` uint8 for cell ranks ``[R, h*w]``. Deletion: the top-``p`` cells;
    Insertion (``insert``): every cell but the top ``p``. The padding bits are 0 either way."""
    rank = ranks[:, None, :]
    step = torch.arange(1, steps + 1, device=ranks.device)[None, :, None]
    taken = rank >= step if insert else rank < step
    return np.packbits(taken.cpu().numpy(), axis=-1)


def memoized_curve(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, saliency: torch.Tensor,
                   steps: int, insert: bool, blurred_images: torch.Tensor, image_ids: torch.Tensor,
                   cache: ScoreCache, kind: str, device: Device = "cpu",
                   batch_size: int = DEFAULT_BATCH_SIZE, *, precision: str = DEFAULT_PRECISION,
                   channels_last: bool = False, target: Target | None = None) -> torch.Tensor:
    """``perturbation_curve`` through ``cache``: ``y_c`` after each step, ``[..., N, P]``, for
    saliency ``[..., N, h, w]``; ``image_ids`` ``[N]`` name the images in the cache and ``kind``
    the perturbation (it must include everything the score depends on besides the image, its
    target and the set of cells taken from ``x~``, e.g. ``"blur:sigma=10.0"``, and the precision
    when it is not fp32, but not whether the curve is Deletion or Insertion: the two share the
    entries of the images they both build). ``precision``, ``channels_last``: how the model runs
    (``scores_of``)."""
    check_curve_inputs(images, targets, saliency, steps)
    if target is not None:  # a cache shared across targets never mixes their scores
        kind += f":{target.name}"
    n = images.shape[0]
    if image_ids.shape != (n,):
        raise MetricError(f"image_ids must be [{n}], one per image, got {list(image_ids.shape)}")
    ranks = cell_ranks(saliency).reshape(-1, *saliency.shape[-2:])
    packed = step_cell_sets(ranks.flatten(1), steps, insert)
    rows = packed.shape[0]
    ids, tgt = image_ids.tolist(), targets.tolist()
    values = np.empty(rows * steps, dtype=np.float64)
    pending: dict[tuple, list[int]] = {}
    stats = cache.stats
    width = packed.shape[-1]
    for r in range(rows):
        i = r % n
        base = r * steps
        row = packed[r].tobytes()  # one bytes object per ranking row, sliced per step
        for p in range(steps):
            key = (kind, ids[i], tgt[i], row[p * width:(p + 1) * width])
            v = cache.get(key)
            if v is not None:
                values[base + p] = v
                stats.hits += 1
            elif key in pending:
                pending[key].append(base + p)
                stats.deduplicated += 1
            else:
                pending[key] = [base + p]
    if pending:
        slots = [s[0] for s in pending.values()]
        flat = torch.tensor(slots, dtype=torch.long)
        r_img = (flat // steps) % n
        build = perturbed_builder(images, blurred_images, ranks, steps, insert, rows=flat // steps,
                                  step=flat % steps + 1)
        scores = scores_of(model, build, targets[r_img.to(targets.device)], device, batch_size, precision=precision,
                           channels_last=channels_last, target=target).double().cpu()
        stats.misses += len(slots)
        for (key, where), v in zip(pending.items(), scores.tolist()):
            cache.put(key, v)
            values[where] = v
    out = torch.from_numpy(values).to(device=torch.device(device), dtype=torch.float32)
    return out.reshape(*saliency.shape[:-2], steps)
