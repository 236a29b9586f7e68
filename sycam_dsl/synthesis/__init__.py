"""Synthesis (SPEC section 7): the oracle-guided search over a grammar, per class if asked, and the
files it writes. ``synthesize`` is the entry point; ``Search`` runs one search on a ``Problem``."""

from .api import Result, build_problem, resolve_grammar, synthesize
from .dispatch import Dispatch
from .oracle import Verdict, judge
from .problem import Problem
from .search import Budget, Search, SearchConfig, SearchOutcome
from .subsets import Subsets, make_subsets, parse_level_sizes

__all__ = ["Budget", "Dispatch", "Problem", "Result", "Search", "SearchConfig", "SearchOutcome", "Subsets",
           "Verdict", "build_problem", "judge", "make_subsets", "parse_level_sizes", "resolve_grammar", "synthesize"]
