"""sycam-dsl: synthesize class activation mapping methods from a grammar and a metric.

``from sycam_dsl import synthesize`` gives the search's Python API (``sycam_dsl.synthesis``), and
``from sycam_dsl import SyCAM`` a synthesized method with pytorch-grad-cam's calling convention
(``sycam_dsl.deploy``); both are imported on first use so that ``import sycam_dsl`` stays light.
"""

from .version import __version__

__all__ = ["SyCAM", "__version__", "synthesize"]


def __getattr__(name: str):
    if name == "synthesize":
        from .run.runner import synthesize
        return synthesize
    if name == "SyCAM":
        from .deploy.sycam import SyCAM
        return SyCAM
    raise AttributeError(f"module 'sycam_dsl' has no attribute {name!r}")
