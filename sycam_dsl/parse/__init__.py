"""Stage 1 of the pipeline: grammar files to typed production rules."""

from .grammar import Grammar, NonTerminal, Production
from .grammar_file import load_grammar, parse_grammar
from .shipped_grammars import resolve_grammar, shipped_grammar_names

__all__ = ["Grammar", "NonTerminal", "Production", "shipped_grammar_names", "load_grammar", "parse_grammar",
           "resolve_grammar"]
