"""Independent reference code for the tests: brute-force expansion of terms (and ``derivable``, now
``sycam_dsl.parse.grammar.derivable``: a matcher independent of the enumerator)."""

from __future__ import annotations

import itertools
from functools import cache

from sycam_dsl.lang.ast import HOLE, Node, fill
from sycam_dsl.parse.grammar import Grammar, derivable

__all__ = ["brute_force_terms", "derivable"]


def brute_force_terms(grammar: Grammar, max_size: int,
                      costs: dict | None = None) -> dict[str, dict[int, set[Node]]]:
    """All terms of each non-terminal by size, by top-down expansion (no pruning, no bank); with
    ``costs`` (production -> cost; others cost their size), by the cost of each of their derivations."""
    cost = (lambda p: (costs or {}).get(p, p.template.size))

    @cache
    def terms(nt: str, size: int, depth: int = 0) -> frozenset[Node]:
        out: set[Node] = set()
        if depth > 2 * len(grammar.nonterminals) + 2:  # unit-production cycles add nothing new
            return frozenset()
        for prod in grammar.nonterminals[nt].productions:
            holes = prod.template.holes()
            rest = size - cost(prod)
            if not holes:
                if rest == 0:
                    out.add(prod.template)
                continue
            if prod.template.kind == HOLE:
                if rest >= 1:
                    out |= terms(holes[0].head, rest, depth + 1 if rest == size else 0)
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
