"""Stage 2: bottom-up enumeration of a grammar's terms, smallest first, streaming."""

from .bank import compositions
from .enumerator import Candidate, EnumerationStats, Enumerator, SizeStats
from .grammar_order import smallest_size

__all__ = ["Candidate", "EnumerationStats", "Enumerator", "SizeStats", "compositions", "smallest_size"]
