"""A whole synthesis run (docs/search.md): load the model and images, compute the terminals, split
them, run the search engine (``sycam_dsl.synthesis``), evaluate the result against the baselines and
write the output folder. ``synthesize`` is the entry point; it builds one ``Run`` (``runner``), whose
phases are its methods."""

from ..synthesis.config import Budget, SearchOptions
from .options import DataOptions, OutputOptions, RunOptions
from .result import Result, RunRecord
from .runner import Run, synthesize

__all__ = ["Budget", "DataOptions", "OutputOptions", "Result", "Run", "RunOptions", "RunRecord", "SearchOptions",
           "synthesize"]
