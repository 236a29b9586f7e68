"""Synthesis (SPEC section 7): the oracle-guided search over a grammar, per class if asked, and the
files it writes. ``synthesize`` is the entry point; ``Search`` runs one search on a ``Problem``."""

from ..parse import resolve_grammar
from .api import synthesize
from .build import build_problem
from .config import Budget, DataOptions, OutputOptions, SearchConfig, SearchOptions
from .dispatch import Dispatch
from .oracle import Verdict, judge
from .problem import Problem
from .result import Result, RunRecord
from .scorer import LocalScorer, Scorer
from .search import Search, SearchOutcome
from .subsets import Subsets, make_subsets, parse_level_sizes

__all__ = ["Budget", "DataOptions", "Dispatch", "LocalScorer", "OutputOptions", "Problem", "Result", "RunRecord",
           "Scorer", "Search", "SearchConfig", "SearchOptions", "SearchOutcome", "Subsets", "Verdict",
           "build_problem", "judge", "make_subsets", "parse_level_sizes", "resolve_grammar", "synthesize"]
