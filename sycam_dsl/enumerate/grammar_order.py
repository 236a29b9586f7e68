"""What the enumerator reads off a grammar before it starts: the smallest term a non-terminal derives
(``smallest_size``), every production's cost (``check_costs``) and the order of the non-terminals
with unit productions (``unit_order``, ``unit_forwards``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from ..lang.ast import HOLE
from ..parse.grammar import Grammar, Production


def smallest_size(grammar: Grammar, nt: str | None = None) -> int | None:
    """The size of the smallest term non-terminal ``nt`` (default: the start symbol) derives, None if
    it derives none: a search with a smaller ``max_size`` can only grow its other non-terminals."""
    least: dict[str, int] = {}
    changed = True
    while changed:  # a fixed point: each pass may lower a non-terminal through another's new minimum
        changed = False
        for name, n in grammar.nonterminals.items():
            for p in n.productions:
                holes = [least.get(cast(str, h.head)) for h in p.holes]
                if all(h is not None for h in holes):
                    size = p.fixed_size + sum(cast(int, h) for h in holes)
                    if size < least.get(name, size + 1):
                        least[name] = size
                        changed = True
    return least.get(nt if nt is not None else grammar.start.name)


def check_costs(grammar: Grammar, costs: Mapping[Production, int] | None) -> dict[Production, int]:
    """Every production's cost: ``costs``' where given, else its fixed size (see ``Enumerator``)."""
    given = dict(costs or {})
    out = {}
    for nt in grammar.nonterminals.values():
        for p in nt.productions:
            c = given.pop(p, p.fixed_size)
            least = 0 if p.template.kind == HOLE else 1
            if not isinstance(c, int) or isinstance(c, bool) or c < least:
                raise ValueError(f"production {nt.name} -> {p.template} needs an integer cost of at least {least}, "
                                 f"got {c!r}")
            out[p] = c
    if given:
        raise ValueError(f"costs given for productions not in grammar {grammar.source}")
    return out


def unit_forwards(grammar: Grammar) -> dict[str, list[str]]:
    """``T -> [E, ...]``: the non-terminals whose first production is the unit ``E -> T``, when the
    unit productions form no cycle (then ``unit_order`` puts ``T`` before ``E`` and every reader of
    ``E``'s bucket after ``E``, so taking ``T``'s terms early changes no order); ``{}`` otherwise."""
    deps = {n: {cast(str, p.template.head) for p in nt.productions if p.template.kind == HOLE}
            for n, nt in grammar.nonterminals.items()}
    done: set[str] = set()

    def cyclic(n: str, path: tuple[str, ...]) -> bool:
        if n in path:
            return True
        if n in done:
            return False
        found = any(cyclic(d, path + (n,)) for d in deps[n])
        done.add(n)
        return found

    if any(cyclic(n, ()) for n in deps):
        return {}
    forward: dict[str, list[str]] = {}
    for name, nt in grammar.nonterminals.items():
        first = nt.productions[0].template if nt.productions else None
        if first is not None and first.kind == HOLE:
            forward.setdefault(cast(str, first.head), []).append(name)
    return forward


def unit_order(grammar: Grammar) -> list[str]:
    """Non-terminals in file order, except that ``T`` comes before ``E`` when ``E -> T``."""
    names = list(grammar.nonterminals)
    # A hole's head is the name of its non-terminal.
    deps = {n: [cast(str, p.template.head) for p in grammar.nonterminals[n].productions if p.template.kind == HOLE]
            for n in names}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in order or n in visiting:
            return
        visiting.add(n)
        for d in deps[n]:
            visit(d)
        visiting.discard(n)
        order.append(n)

    for n in names:
        visit(n)
    return order
