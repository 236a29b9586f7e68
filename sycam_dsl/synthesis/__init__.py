"""Synthesis (SPEC section 7): the oracle-guided search over a grammar, per class if asked, and the
files it writes. ``synthesize`` is the entry point; ``Search`` runs one search on a ``Problem``."""

from .api import Result, build_problem, resolve_grammar, synthesize
from .dispatch import Dispatch
from .oracle import Verdict, judge
from .config import Budget, SearchConfig
from .problem import Problem
from .scorer import LocalScorer, Scorer
from .search import Search, SearchOutcome
from .subsets import Subsets, make_subsets, parse_level_sizes

__all__ = ["Budget", "Dispatch", "LocalScorer", "Problem", "Result", "Scorer", "Search", "SearchConfig",
           "SearchOutcome", "Subsets",
           "Verdict", "build_problem", "judge", "make_subsets", "parse_level_sizes", "resolve_grammar", "synthesize"]
