"""Stage 4: observational equivalence of values, and of heatmaps."""

from .observational import DEFAULT_MANTISSA_BITS, ValueIndex, fingerprints
from .heatmaps import HeatmapIndex

__all__ = ["DEFAULT_MANTISSA_BITS", "ValueIndex", "fingerprints", "HeatmapIndex"]
