"""The search engine (docs/search.md): the oracle-guided search over a grammar on a ``Problem``, per
class if asked. ``Search`` runs one search; ``build_problem`` makes a ``Problem`` from terminals and
metrics. Loading the data, running a whole synthesis and writing its folder is ``sycam_dsl.run``'s job."""

from ..parse import resolve_grammar
from .build import build_problem
from .config import Budget, SearchConfig, SearchOptions
from .dispatch import Dispatch
from .problem import Problem
from .scorer import LocalScorer, Scorer
from .search import Search, SearchOutcome
from .subsets import Subsets, parse_level_sizes

__all__ = ["Budget", "Dispatch", "LocalScorer", "Problem", "Scorer", "Search", "SearchConfig", "SearchOptions",
           "SearchOutcome", "Subsets", "build_problem", "parse_level_sizes", "resolve_grammar"]
