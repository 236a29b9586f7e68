"""sycam-dsl: synthesize class activation mapping methods from a grammar and a metric.

``from sycam_dsl import synthesize`` gives the search's Python API (``sycam_dsl.synthesis``),
imported on first use so that ``import sycam_dsl`` stays light.
"""

from .version import __version__

__all__ = ["__version__", "synthesize"]


def __getattr__(name: str):
    if name == "synthesize":
        from .synthesis.api import synthesize
        return synthesize
    raise AttributeError(f"module 'sycam_dsl' has no attribute {name!r}")
