"""Canonical forms with sympy, without ever calling ``simplify()``.

A term's sympy form is built from its children's cached forms: terminals are symbols, literals
are exact rationals, ``+ - * neg sq pow`` are sympy arithmetic and every other operator is an
uninterpreted function (``relu(x)``, ``topk(x, 5)``, ...), with protected division written as
``a * inv(b)``. sympy's automatic normalisation (flattening, ordering, collecting like terms,
folding numbers) is then the only rewriting, and each of its rules holds for our element-wise
float semantics: ``x - x = 0``, ``x + x = 2*x``, ``x * x = x**2``, ``2*(x + y) = 2*x + 2*y``.
Nothing identifies ``x * inv(x)`` with 1, which protected division would break at ``x = 0``.

Inside a ``Canonicalizer`` an uninterpreted application is replaced by an atom, a symbol named
by the function and its arguments' canonical ids (``relu[12]``): that is exactly the identity an
uninterpreted function has, and sympy sorts, hashes and compares plain symbols far faster than
nested applications, so forms stay flat sums of products of atoms.

Forms are interned: each distinct form gets an integer id, and ``combine`` memoizes
``(production, children's ids) -> id`` (children sorted for a commutative operator over two holes),
so the enumerator pays for sympy at most once per distinct combination. A second memo catches
re-associations without calling sympy: when a production's form is ``a + b``, ``a - b`` or
``a * b`` of its two holes (found by translating it once on placeholder symbols), sympy's result
depends only on the multiset of the flattened arguments (``Add.make_args``), so
``(+ a (+ b c))`` reuses the id that ``(+ (+ a b) c)`` computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import sympy
from sympy.core.function import UndefinedFunction

from ..lang.ast import CONST, HOLE, OP, VAR, Node
from ..lang.operators import OPERATORS, uninterpreted


def to_sympy(node: Node, holes: list[sympy.Expr] | None = None,
             functions: Callable[..., sympy.Expr] = uninterpreted) -> sympy.Expr:
    """The sympy form of ``node``; ``holes`` gives the forms of its holes, left to right;
    ``functions(name, *args)`` builds each uninterpreted application."""
    it = iter(holes or ())

    def go(n: Node) -> sympy.Expr:
        if n.kind == OP:  # an operator node's head is the operator's name
            return OPERATORS[cast(str, n.head)].sympy(functions, *(go(a) for a in n.args))
        if n.kind == VAR:
            return sympy.Symbol(n.head)
        if n.kind == CONST:
            return sympy.Integer(n.head) if isinstance(n.head, int) else sympy.Rational(n.head)
        if n.kind == HOLE:
            return next(it)
        raise ValueError(n.kind)

    return go(node)


class Canonicalizer:
    """Interns canonical forms as integer ids; one instance per enumeration."""

    def __init__(self) -> None:
        self._ids: dict[sympy.Expr, int] = {}
        self.forms: list[sympy.Expr] = []
        self._memo: dict[tuple, int] = {}
        self._commutative: dict[Node, bool] = {}
        self._atoms: dict[tuple, sympy.Symbol] = {}
        self._flat: dict[tuple, int] = {}
        self._flat_kind: dict[Node, tuple[str, str, str] | None] = {}
        self._derived: dict[tuple[str, int], sympy.Expr] = {}
        self.flat = True  # the re-association memo; off only to measure what it saves
        self.sympy_calls = 0

    def _intern(self, expr: sympy.Expr) -> int:
        i = self._ids.get(expr)
        if i is None:
            i = self._ids[expr] = len(self.forms)
            self.forms.append(expr)
        return i

    def term_id(self, node: Node) -> int:
        """Canonical id of a complete term (no holes)."""
        return self.combine(node, ())

    def combine(self, template: Node, child_ids: tuple[int, ...]) -> int:
        """Canonical id of ``template`` with its holes filled by terms of ``child_ids``."""
        sym = self._commutative.get(template)
        if sym is None:
            sym = self._commutative[template] = (
                template.kind == OP and OPERATORS[cast(str, template.head)].commutative  # head: the op's name
                and all(a.kind == HOLE for a in template.args))
        key = (template, tuple(sorted(child_ids)) if sym else child_ids)
        cid = self._memo.get(key)
        if cid is None:
            flat = self._flat_key(template, child_ids) if self.flat else None
            cid = self._flat.get(flat) if flat is not None else None
            if cid is None:
                self.sympy_calls += 1
                cid = self._intern(to_sympy(template, [self.forms[i] for i in child_ids], self._atom))
                if flat is not None:
                    self._flat[flat] = cid
            self._memo[key] = cid
        return cid

    def _flat_key(self, template: Node, child_ids: tuple[int, ...]) -> tuple | None:
        kind = self._flat_kind.get(template, "?")
        if isinstance(kind, str):  # the "?" default: not looked at yet
            kind = self._flat_kind[template] = _flat_kind(template)
        if kind is None:
            return None
        op, left, right = kind
        split = sympy.Add.make_args if op == "+" else sympy.Mul.make_args
        args = split(self._transformed(left, child_ids[0])) + split(self._transformed(right, child_ids[1]))
        return (op,) + tuple(sorted(args, key=hash))

    def _transformed(self, how: str, cid: int) -> sympy.Expr:
        """A child's form as it enters its parent: itself, negated, or inside function ``how``."""
        if how == "":
            return self.forms[cid]
        key = (how, cid)
        e = self._derived.get(key)
        if e is None:
            e = self._derived[key] = -self.forms[cid] if how == "-" else self._atom(how, self.forms[cid])
        return e

    def _atom(self, name: str, *args: sympy.Expr) -> sympy.Symbol:
        """An uninterpreted application as a symbol named by the function and its arguments' ids."""
        key = (name,) + tuple(self._intern(a) for a in args)
        atom = self._atoms.get(key)
        if atom is None:
            atom = self._atoms[key] = sympy.Symbol(f"{key[0]}[{','.join(map(str, key[1:]))}]")
        return atom

    def form(self, cid: int) -> sympy.Expr:
        return self.forms[cid]


def _flat_kind(template: Node) -> tuple[str, str, str] | None:
    """How a production over two holes combines them, when it is sympy's ``Add`` or ``Mul`` of the
    two children each taken as is (``""``), negated (``"-"``) or inside one uninterpreted function
    (its name): ``(+ a b)`` is ``("+", "", "")``, ``(- a b)`` is ``("+", "", "-")``, ``(/ a b)`` is
    ``("*", "", "inv")``. Found by translating the production once on placeholder symbols."""
    if template.kind != OP or len(template.args) != 2 or any(a.kind != HOLE for a in template.args):
        return None
    x, y = sympy.Dummy(), sympy.Dummy()
    e = to_sympy(template, [x, y])
    for op, cls in (("+", sympy.Add), ("*", sympy.Mul)):
        args = cls.make_args(e)
        if len(args) != 2:
            continue
        left = next((w for a in args if (w := _way(a, x)) is not None), None)
        right = next((w for a in args if (w := _way(a, y)) is not None), None)
        if left is not None and right is not None and cls(_apply_way(left, x), _apply_way(right, y)) == e:
            return op, left, right
    return None


def _way(arg: sympy.Expr, v: sympy.Dummy) -> str | None:
    if arg == v:
        return ""
    if arg == -v:
        return "-"
    if isinstance(arg.func, UndefinedFunction) and arg.args == (v,):
        return arg.func.__name__
    return None


def _apply_way(how: str, v: sympy.Expr) -> sympy.Expr:
    return v if how == "" else -v if how == "-" else uninterpreted(how, v)
