"""Guided search (``strategy="guided"``): production costs learned from partial solutions while the
search runs, after Probe (Barke, Peleg and Polikarpova, OOPSLA 2020).

The enumerator streams terms cheapest first (``Enumerator(costs=)``). A production ``R`` starts at
``SCALE * size(R)`` (so the first order is the size order), and every candidate the oracle judges
reports its *fit*: the share of the images of the last level it was scored on where it beat the
incumbent (0 before there is an incumbent). A candidate with fit at least ``FIT_MIN`` is a partial
solution. Probe's update ``p(R) ~ p_u(R) ** (1 - fit(R))``, with ``fit(R)`` the best fit of a
partial solution whose derivation uses ``R``, is in costs (``-log p``):

    cost(R) = max(least(R), round(SCALE * size(R) * (1 - min(fit(R), FIT_MAX))))

(``least``: 1, or 0 for a unit production ``E -> T``). Fits only grow, so costs only fall: a term
costs at most ``SCALE`` times its size, none is starved, and a search bounded at ``SCALE *
max_size`` still reaches every term of size up to ``max_size``. When a cost changes the search
restarts the enumerator with the new costs; the candidates it already judged are skipped (a set of
their s-expressions), so nothing is scored twice, and the heatmap index keeps them.
"""

from __future__ import annotations

from ..lang.ast import HOLE, Node
from ..parse.grammar import Grammar, Production, derivation

#: Cost units per node: integer costs can then fall below a production's size.
SCALE = 4
#: The least fit that makes a partial solution.
FIT_MIN = 0.3
#: Fits above this count as this much, so that no production becomes free.
FIT_MAX = 0.75
STRATEGIES = ("size", "guided")


class Guide:
    """Production costs learned during one search of ``grammar`` (see the module docstring)."""

    def __init__(self, grammar: Grammar) -> None:
        self.grammar = grammar
        self.fit: dict[Production, float] = {}
        self.version = 0  # bumped when a cost changes: the search restarts its enumerator
        self.partial_solutions = 0
        self._costs = self._compute()

    def costs(self) -> dict[Production, int]:
        """The current cost of every production."""
        return dict(self._costs)

    def max_cost(self, max_size: int) -> int:
        """The enumerator's bound that keeps every term of size up to ``max_size``."""
        return SCALE * max_size

    def _compute(self) -> dict[Production, int]:
        out = {}
        for nt in self.grammar.nonterminals.values():
            for p in nt.productions:
                least = 0 if p.template.kind == HOLE else 1
                fit = min(self.fit.get(p, 0.0), FIT_MAX)
                out[p] = max(least, round(SCALE * p.fixed_size * (1 - fit)))
        return out

    def observe(self, term: Node, fit: float) -> bool:
        """Learn from a judged candidate ``term`` with ``fit``; True when a cost changed."""
        if fit < FIT_MIN:
            return False
        used = derivation(self.grammar, self.grammar.start.name, term)
        if not used:
            return False
        self.partial_solutions += 1
        for p in set(used):
            self.fit[p] = max(self.fit.get(p, 0.0), fit)
        costs = self._compute()
        if costs == self._costs:
            return False
        self._costs = costs
        self.version += 1
        return True
