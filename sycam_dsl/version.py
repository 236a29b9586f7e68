"""The package's version (its one home; ``sycam_dsl.__version__`` re-exports it)."""

__version__ = "0.2.0"
