"""sycam-dsl: synthesize class activation mapping methods from a grammar and a metric."""

__version__ = "0.1.0"
