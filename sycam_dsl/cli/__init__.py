"""The ``sycam-dsl`` command line: one module per command, the shared options in ``options``, the
entry point in ``main``. The library packages never import this one."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
