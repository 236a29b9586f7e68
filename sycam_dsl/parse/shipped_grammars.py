"""The grammars that ship inside the package (``sycam_dsl/grammars/*.sy``, also ``grammars/`` in the
repository), usable by name: ``g1``, ``g2``, ``maps``. They are package data, so they are found in
a wheel or a non-editable install as in a checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import SycamError
from .grammar import Grammar
from .grammar_file import load_grammar, parse_grammar

SUFFIX = ".sy"


def shipped_grammar_names() -> list[str]:
    """The names of the shipped grammars, sorted."""
    folder = resources.files("sycam_dsl").joinpath("grammars")
    return sorted(p.name[:-len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))


def resolve_grammar(grammar: str | Path | Grammar) -> Grammar:
    """A ``Grammar``, a grammar file, or the name of a shipped grammar (``g2``)."""
    if isinstance(grammar, Grammar):
        return grammar
    path = Path(grammar)
    if path.is_file():
        return load_grammar(path)
    names = shipped_grammar_names()
    if str(grammar) in names:
        resource = resources.files("sycam_dsl").joinpath("grammars", f"{grammar}{SUFFIX}")
        return parse_grammar(resource.read_text(encoding="utf-8-sig"), f"{grammar}{SUFFIX}")
    if path.suffix or len(path.parts) > 1:  # meant as a file: the file's own error says what is wrong
        return load_grammar(path)
    raise SycamError(f"grammar {str(grammar)!r} is neither a file nor a shipped grammar ({', '.join(names)})")
