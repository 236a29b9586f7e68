"""The candidates a search judges, in order (``CandidateStream``): the enumerator's, by size, or with
a guide (``guide``) by its learned costs, the enumerator started again whenever they change."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..enumerate import Enumerator
from ..evaluate.terminal_values import Terminals
from ..lang.ast import Node, to_sexpr
from ..parse.grammar import Grammar
from .guide import Guide


class CandidateStream:
    """Iterates over ``(term, value on the equivalence subset, index)`` of ``grammar``'s candidates up
    to ``max_size`` (``eq_terms``: the terminals on the equivalence subset). With a guide, the
    enumerator starts again whenever its costs change (after the batch that changed them), the
    candidates already yielded skipped, so that indices count distinct candidates and none is judged
    twice; ``restarts`` counts those starts. ``interrupt`` is the enumerator's (it may raise to stop)."""

    def __init__(self, grammar: Grammar, eq_terms: Terminals, max_size: int, guide: Guide | None,
                 interrupt: Callable[[], None] | None) -> None:
        self.grammar, self.eq_terms, self.max_size, self.guide = grammar, eq_terms, max_size, guide
        self.interrupt = interrupt
        self.restarts = 0
        self.enum: Enumerator | None = None  # the enumerator now running (the last one started)
        self._earlier: list[dict[str, Any]] = []  # the stats of the enumerators it restarted

    def __iter__(self) -> Iterator[tuple[Node, torch.Tensor, int]]:
        guide = self.guide
        if guide is None:
            self.enum = Enumerator(self.grammar, self.eq_terms, self.max_size, interrupt=self.interrupt)
            for cand in self.enum.candidates():
                yield cand.term, cand.value, cand.index
            return
        seen: set[str] = set()
        while True:
            version = guide.version
            self.enum = Enumerator(self.grammar, self.eq_terms, guide.max_cost(self.max_size),
                                   costs=guide.costs(), interrupt=self.interrupt)
            for cand in self.enum.candidates():
                if guide.version != version:
                    break
                key = to_sexpr(cand.term)
                if key in seen:
                    continue
                seen.add(key)
                yield cand.term, cand.value, len(seen) - 1
            else:
                return
            self.restarts += 1
            self._earlier.append(self.enum.stats.as_dict())

    def stats(self) -> dict[str, Any]:
        """The enumeration's counts (empty before it starts); with a guide, the work of every
        enumerator it started, the last one's sizes."""
        stats: dict[str, Any] = self.enum.stats.as_dict() if self.enum is not None else {}
        if self.guide is not None:
            for earlier in self._earlier:
                for key, v in earlier["total"].items():
                    stats["total"][key] = stats["total"].get(key, 0) + v
                stats["seconds"] += earlier["seconds"]
        return stats
