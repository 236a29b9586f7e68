"""Stage 1 of the pipeline: grammar files to typed production rules."""

from .grammar import Grammar, NonTerminal, Production
from .grammar_file import load_grammar, parse_grammar

__all__ = ["Grammar", "NonTerminal", "Production", "load_grammar", "parse_grammar"]
