"""Typed production rules: what a parsed grammar file is."""

from __future__ import annotations

from dataclasses import dataclass

from ..lang.ast import CONST, HOLE, VAR, Node, to_sexpr
from ..lang.types import Type

DEFAULT_REAL_CONSTANTS: tuple[float, ...] = (0.5, 1.0, 2.0)
DEFAULT_INT_CONSTANTS: tuple[int, ...] = (1, 2, 3, 5, 10)


@dataclass(frozen=True)
class Production:
    """A template expression whose holes are non-terminals, with where it was written."""

    template: Node
    line: int
    column: int

    @property
    def holes(self) -> tuple[Node, ...]:
        return tuple(self.template.holes())

    @property
    def fixed_size(self) -> int:
        """Nodes the production adds besides its holes."""
        return self.template.size

    def __str__(self) -> str:
        return to_sexpr(self.template)


@dataclass(frozen=True)
class NonTerminal:
    name: str
    type: Type
    productions: tuple[Production, ...]
    line: int
    column: int


@dataclass(frozen=True)
class Grammar:
    """A ``synth-cam`` declaration: the function's inputs (terminals), output type and rules.

    ``nonterminals`` keeps file order; the first is the start symbol."""

    name: str
    inputs: dict[str, Type]
    output: Type
    nonterminals: dict[str, NonTerminal]
    source: str = "<string>"

    @property
    def start(self) -> NonTerminal:
        return next(iter(self.nonterminals.values()))

    def summary(self) -> str:
        lines = [f"{self.source}: synth-cam {self.name} -> {self.output}",
                 "  inputs: " + " ".join(f"{n}:{t}" for n, t in self.inputs.items())]
        for nt in self.nonterminals.values():
            prods = " | ".join(str(p) for p in nt.productions)
            lines.append(f"  {nt.name} : {nt.type} ::= {prods}")
        return "\n".join(lines)


def derivable(grammar: Grammar, nt: str, term: Node) -> bool:
    """Whether the complete ``term`` can be derived from non-terminal ``nt`` of ``grammar``, i.e. is in
    the language the enumerator searches (at any size)."""
    return derivation(grammar, nt, term) is not None


def derivation(grammar: Grammar, nt: str, term: Node) -> list[Production] | None:
    """The productions of a derivation of the complete ``term`` from non-terminal ``nt`` (top-down,
    the first that matches in file order), or None when ``term`` is not in the language: a recursive
    match of the term against the productions. A (term, non-terminal) pair already being matched up
    the stack fails, which cuts unit-production cycles (``E -> T -> E``) without losing a derivation:
    one without the cycle exists."""

    def from_nt(t: Node, name: str, active: frozenset[tuple[Node, str]]) -> list[Production] | None:
        if (t, name) in active:
            return None
        active = active | {(t, name)}
        for p in grammar.nonterminals[name].productions:
            used = matches(t, p.template, active)
            if used is not None:
                return [p, *used]
        return None

    def matches(t: Node, tmpl: Node, active: frozenset[tuple[Node, str]]) -> list[Production] | None:
        if tmpl.kind == HOLE:
            return from_nt(t, str(tmpl.head), active) if t.type == tmpl.type else None
        if tmpl.kind in (VAR, CONST):
            return [] if t == tmpl else None
        if t.kind != tmpl.kind or t.head != tmpl.head or len(t.args) != len(tmpl.args):
            return None
        used: list[Production] = []
        for a, b in zip(t.args, tmpl.args):
            part = matches(a, b, active)
            if part is None:
                return None
            used += part
        return used

    return from_nt(term, nt, frozenset()) if nt in grammar.nonterminals else None
