"""Typed production rules: what a parsed grammar file is."""

from __future__ import annotations

from dataclasses import dataclass

from ..lang.ast import Node, to_sexpr
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
