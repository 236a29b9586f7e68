"""Stage 4: observational equivalence of values, and of heatmaps."""

from .heatmaps import HeatmapIndex
from .observational import DEFAULT_MANTISSA_BITS, ValueIndex, fingerprints

__all__ = ["DEFAULT_MANTISSA_BITS", "ValueIndex", "fingerprints", "HeatmapIndex"]
