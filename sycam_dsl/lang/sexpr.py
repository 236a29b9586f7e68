"""Expressions from s-expression text: the typed builder shared with grammar files.

``parse_expr`` inverts the printer ``ast.to_sexpr``: ``parse_expr(to_sexpr(t), ...) == t``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from ..errors import GrammarError
from .ast import CONST, Node, apply, const, var, varies_over_positions
from .operators import OPERATORS
from .reader import SAtom, SExpr, read
from .types import Type

Resolver = Callable[[SAtom], Node]

POSITION_FREE_GSUM = ("'gsum' sums a Map over its positions, but this operand is the same at every position "
                      "(no Map terminal such as A or G reaches it other than through a Vec), so its sum would "
                      "depend on the layer's size; use the operand itself, or gap")


def build(sx: SExpr, resolve: Resolver, source: str) -> Node:
    """Turn an s-expression into a typed node, checking operators, arity, types and Int params.

    ``resolve`` maps a symbol atom to a terminal or hole node, or raises ``GrammarError``."""
    if isinstance(sx, SAtom):
        if sx.is_number:
            return const(sx.value)
        return resolve(sx)
    if not sx.items:
        raise GrammarError("empty list '()' where an expression was expected", sx.line, sx.column, source)
    head, *rest = sx.items
    if not isinstance(head, SAtom) or head.is_number:
        raise GrammarError("expected an operator name after '('", head.line, head.column, source)
    if head.text in ("Constant", "Variable"):
        raise GrammarError(f"({head.text} TYPE) stands for whole productions and cannot be an operand",
                           head.line, head.column, source)
    op = OPERATORS.get(head.text)
    if op is None:
        raise GrammarError(f"unknown operator {head.text!r} (known: {' '.join(OPERATORS)})",
                           head.line, head.column, source)
    if len(rest) != op.arity:
        raise GrammarError(f"operator {op.name!r} takes {op.arity} operand{'s' * (op.arity > 1)}, "
                           f"got {len(rest)}", head.line, head.column, source)
    args = tuple(build(a, resolve, source) for a in rest)
    for i in op.int_params:
        a, at = args[i], rest[i]
        if a.type != Type.INT:
            raise GrammarError(f"operand {i + 1} of {op.name!r} must be an Int, got {a.type}",
                               at.line, at.column, source)
        if a.kind == CONST and cast(int, a.head) < 1:  # an Int literal's head is its int
            raise GrammarError(f"operand {i + 1} of {op.name!r} must be a positive Int, got {a.head}",
                               at.line, at.column, source)
    result = op.result(*(a.type for a in args))
    if result is None:
        got = ", ".join(str(a.type) for a in args)
        raise GrammarError(f"type mismatch: {op.name!r} expects {op.expects}, got ({got})",
                           head.line, head.column, source)
    if op.name == "gsum" and not varies_over_positions(args[0], holes_vary=True):
        # The rule of gsum (see ``operators``); a Map hole may still vary once the enumerator fills it.
        raise GrammarError(POSITION_FREE_GSUM, head.line, head.column, source)
    return apply(op.name, args, result)


def terminal_resolver(terminals: Mapping[str, Type], source: str) -> Resolver:
    def resolve(atom: SAtom) -> Node:
        t = terminals.get(atom.text)
        if t is None:
            known = " ".join(terminals) or "none"
            raise GrammarError(f"unknown terminal {atom.text!r} (known: {known})", atom.line, atom.column, source)
        return var(atom.text, t)
    return resolve


def parse_expr(text: str, terminals: Mapping[str, Type], source: str = "<expression>") -> Node:
    """Parse one expression over the given terminals (name -> type)."""
    items = read(text, source)
    if len(items) != 1:
        where = items[1] if len(items) > 1 else None
        msg = "expected one expression" + (", found more" if where else ", found none")
        raise GrammarError(msg, where.line if where else 1, where.column if where else 1, source)
    return build(items[0], terminal_resolver(terminals, source), source)
