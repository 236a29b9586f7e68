"""Stage 1 of the pipeline: grammar files to typed production rules."""

from .grammar import Grammar, NonTerminal, Production
from .grammar_file import load_grammar, parse_grammar
from .shipped_grammars import bundled_grammar_names, resolve_grammar

__all__ = ["Grammar", "NonTerminal", "Production", "bundled_grammar_names", "load_grammar", "parse_grammar",
           "resolve_grammar"]
