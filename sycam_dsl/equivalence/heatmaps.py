"""Heatmap-level equivalence (docs/language.md#heatmap-level-check): candidates whose normalized heatmaps agree on the
equivalence subset are scored once. ``grads`` and ``(+ grads grads)`` differ as weights but give
the same heatmap, because min-max normalization ignores a positive factor.

Heatmaps are compared at the target layer's resolution: the upsampled heatmap is a fixed function
of it, so agreement there implies agreement after upsampling. Normalized heatmaps live on
``[0, 1]``, so they are compared on an absolute grid: two agree when every position rounds to the
same multiple of ``2**-grid_bits`` (default 10, about 1e-3). A relative tolerance would not do:
near 0 the float noise of two equal heatmaps computed differently is large relative to the value.
"""

from __future__ import annotations

import torch

from ..lang.types import Type
from ..template.saliency import normalized_saliency
from .observational import ValueIndex, fingerprints

DEFAULT_GRID_BITS = 10


class HeatmapIndex:
    """Remembers the normalized heatmaps already scored; ``seen`` tells whether one is new."""

    def __init__(self, acts: torch.Tensor, weight_type: Type, grid_bits: int = DEFAULT_GRID_BITS) -> None:
        """``acts``: activations ``[N, K, h, w]`` of the equivalence subset; ``weight_type``: Vec or Map."""
        self.acts = acts
        self.weight_type = weight_type
        self.scale = float(2 ** grid_bits)
        self._index = ValueIndex()

    def check(self, weights: torch.Tensor, term: object) -> object | None:
        """Record ``term`` (weights ``[N, K]`` or ``[N, K, h, w]``, as ``weight_type``); returns the earlier term
        with the
        same normalized heatmaps, or None when this heatmap is new."""
        h = normalized_saliency(weights, self.acts, self.weight_type)
        # grid steps are integers below 2**grid_bits: exact as floats, so fingerprints compare them exactly
        key = fingerprints(torch.round(h * self.scale).unsqueeze(0))[0]
        return self._index.add(key, term)

    def __len__(self) -> int:
        return len(self._index)
