"""Stage 3: canonical forms of terms with sympy, built incrementally from children's forms."""

from .canonicalizer import Canonicalizer, to_sympy

__all__ = ["Canonicalizer", "to_sympy"]
