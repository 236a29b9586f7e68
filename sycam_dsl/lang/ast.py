"""Immutable, hashable typed AST nodes.

A node is a terminal (``var``), a literal (``const``), an operator application (``op``) or,
inside grammar productions only, a hole standing for a non-terminal (``hole``).
Hash and size are computed once at construction, so nodes are cheap dictionary keys.
``to_sexpr`` prints a node as s-expression text (``sexpr.parse_expr`` reads it back).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import cast

from .types import Type

VAR, CONST, OP, HOLE = "var", "const", "op", "hole"


class Node:
    """One typed AST node. ``head`` is the terminal, operator or non-terminal name, or the literal."""

    __slots__ = ("kind", "head", "args", "type", "size", "_hash")

    def __init__(self, kind: str, head: str | int | float, args: tuple[Node, ...], type: Type) -> None:
        self.kind = kind
        self.head = head
        self.args = args
        self.type = type
        self.size: int = (0 if kind == HOLE else 1) + sum(a.size for a in args)
        self._hash = hash((kind, head, args, type))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Node) or self._hash != other._hash:
            return False
        return (self.kind == other.kind and self.type == other.type and self.head == other.head
                and type(self.head) is type(other.head) and self.args == other.args)

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "_hash"):
            raise AttributeError("Node is immutable")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"Node({to_sexpr(self)!r}: {self.type})"

    def __str__(self) -> str:
        return to_sexpr(self)

    def walk(self) -> Iterator[Node]:
        """All nodes, pre-order."""
        yield self
        for a in self.args:
            yield from a.walk()

    def terminals(self) -> list[str]:
        """Terminal names used, in order of first appearance."""
        seen: dict[str, None] = {}
        for n in self.walk():
            if n.kind == VAR:
                seen.setdefault(str(n.head), None)  # a terminal's head is its name
        return list(seen)

    def holes(self) -> list[Node]:
        """Hole nodes, left to right (the order in which a production's children are filled)."""
        return [n for n in self.walk() if n.kind == HOLE]


def var(name: str, type: Type) -> Node:
    return Node(VAR, name, (), type)


def const(value: int | float) -> Node:
    if isinstance(value, bool):
        raise TypeError("booleans are not literals")
    return Node(CONST, value, (), Type.INT if isinstance(value, int) else Type.REAL)


def hole(nonterminal: str, type: Type) -> Node:
    return Node(HOLE, nonterminal, (), type)


def apply(op: str, args: tuple[Node, ...], type: Type) -> Node:
    return Node(OP, op, tuple(args), type)


def fill(template: Node, children: tuple[Node, ...]) -> Node:
    """Replace the holes of ``template``, left to right, by ``children``."""
    it = iter(children)

    def go(n: Node) -> Node:
        if n.kind == HOLE:
            return next(it)
        if not n.args:
            return n
        return Node(n.kind, n.head, tuple(go(a) for a in n.args), n.type)

    out = go(template)
    if next(it, None) is not None:
        raise ValueError("more children than holes")
    return out


def varies_over_positions(node: Node, holes_vary: bool = False) -> bool:
    """Whether ``node`` is a Map that can differ between positions (the rule for ``gsum``, see
    ``operators``): a Map terminal reached through Map-typed nodes only. A Vec on the way, as in
    ``(bcast (gap A))``, is the same at every position. With ``holes_vary`` a Map hole counts as
    varying: a production template may vary once its holes are filled."""
    if node.type != Type.MAP:
        return False
    if node.kind == VAR or (node.kind == HOLE and holes_vary):
        return True
    return any(varies_over_positions(a, holes_vary) for a in node.args)


def to_sexpr(node: Node) -> str:
    """The s-expression text of ``node`` (holes print as their non-terminal's name)."""
    if node.kind == CONST:
        return _number_text(cast(float, node.head))  # a literal's head is its number
    if node.kind in (VAR, HOLE):
        return str(node.head)
    return "(" + " ".join([str(node.head)] + [to_sexpr(a) for a in node.args]) + ")"


def _number_text(v: int | float) -> str:
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        raise ValueError(f"literal {v} cannot be written as text")
    return repr(float(v))  # shortest text that reads back to the same float, always with '.' or 'e'
