"""Independent reference code for the tests: brute-force expansion and derivability of terms."""

from __future__ import annotations

import itertools
from functools import cache

from sycam_dsl.lang.ast import HOLE, Node, fill
from sycam_dsl.parse.grammar import Grammar


def brute_force_terms(grammar: Grammar, max_size: int) -> dict[str, dict[int, set[Node]]]:
    """All terms of each non-terminal by size, by top-down expansion (no pruning, no bank)."""

    @cache
    def terms(nt: str, size: int, depth: int = 0) -> frozenset[Node]:
        out: set[Node] = set()
        if depth > 2 * len(grammar.nonterminals) + 2:  # unit-production cycles add nothing new
            return frozenset()
        for prod in grammar.nonterminals[nt].productions:
            holes = prod.template.holes()
            rest = size - prod.template.size
            if not holes:
                if rest == 0:
                    out.add(prod.template)
                continue
            if prod.template.kind == HOLE:
                out |= terms(holes[0].head, size, depth + 1)
                continue
            for split in _splits(rest, len(holes)):
                choices = [sorted(terms(h.head, s), key=str) for h, s in zip(holes, split)]
                for kids in itertools.product(*choices):
                    out.add(fill(prod.template, kids))
        return frozenset(out)

    return {nt: {s: set(terms(nt, s)) for s in range(1, max_size + 1)} for nt in grammar.nonterminals}


def _splits(total: int, parts: int):
    if parts == 1:
        if total >= 1:
            yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in _splits(total - first, parts - 1):
            yield (first,) + rest


def derivable(grammar: Grammar, nt: str, term: Node) -> bool:
    """Whether ``term`` can be derived from non-terminal ``nt`` (independent recursive matcher)."""

    @cache
    def from_nt(name: str, t: Node, depth: int) -> bool:
        if depth > 3 * len(grammar.nonterminals) + t.size * 4:
            return False
        return any(match(p.template, t, depth) for p in grammar.nonterminals[name].productions)

    def match(tmpl: Node, t: Node, depth: int) -> bool:
        if tmpl.kind == HOLE:
            return from_nt(tmpl.head, t, depth + 1)
        if tmpl.kind != t.kind or tmpl.head != t.head or type(tmpl.head) is not type(t.head) \
                or len(tmpl.args) != len(t.args):
            return False
        return all(match(a, b, depth) for a, b in zip(tmpl.args, t.args))

    return from_nt(nt, term, 0)
