"""The enumerator's bank: the kept terms of each non-terminal and size with their values
(``Bucket``), the per-non-terminal pruning state (``NTState``), how a production's terms depend on
positions (``Positions``, the rule of ``gsum``) and the splits of a size among a production's holes
(``compositions``)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import NamedTuple

import torch

from ..equivalence.observational import ValueIndex
from ..lang.ast import HOLE, OP, Node, varies_over_positions
from ..lang.types import Type
from ..parse.grammar import NonTerminal, Production


class Bucket:
    """The kept terms of one non-terminal and size, with their canonical ids and values.

    Values live in compact per-chunk tensors (``parts``: only the kept rows of each evaluated
    chunk, so pruned rows are freed at once); ``starts[p]`` is the index of part ``p``'s first
    term. They are never concatenated: that would copy the whole bank once more. Int buckets hold
    Python ints instead. ``varies[i]`` says whether Map term ``i`` varies over positions (kept only
    when the grammar has a ``gsum``, the one operator that asks)."""

    __slots__ = ("terms", "canon", "parts", "starts", "ints", "varies")

    def __init__(self) -> None:
        self.terms: list[Node] = []
        self.canon: list[int] = []
        self.parts: list[torch.Tensor] = []
        self.starts: list[int] = []
        self.ints: list[int] = []
        self.varies: list[bool] = []

    def __len__(self) -> int:
        return len(self.terms)

    def add_part(self, values: torch.Tensor, rows: list[int], first: int) -> None:
        """Store ``values[rows]`` as the values of terms ``first, first + 1, ...``."""
        part = values if len(rows) == values.shape[0] else values.index_select(
            0, torch.as_tensor(rows, device=values.device))
        self.parts.append(part)
        self.starts.append(first)

    def gather(self, index: list[int]) -> torch.Tensor:
        """Rows ``index`` as ``[B, ...]``, or ``[1, ...]`` when they are all one row (it broadcasts).

        Combinations come in lexicographic order, so within a chunk the first child's index is
        mostly constant and the last one's a run: a constant is one row, a run inside one part is a
        view, and anything else is one copy of the rows, segment by segment."""
        first = index[0]
        if all(i == first for i in index):
            p = bisect.bisect_right(self.starts, first) - 1
            return self.parts[p][first - self.starts[p]:first - self.starts[p] + 1]
        segments: list[list[int]] = []  # [part, lo, hi) runs of consecutive rows
        p, lo, hi = -1, 0, 0
        for i in index:
            if p < 0 or not lo <= i - self.starts[p] < hi:
                p = bisect.bisect_right(self.starts, i) - 1
                lo, hi = 0, self.parts[p].shape[0]
            r = i - self.starts[p]
            if segments and segments[-1][0] == p and segments[-1][2] == r:
                segments[-1][2] += 1
            else:
                segments.append([p, r, r + 1])
        views = [self.parts[q][a:b] for q, a, b in segments]
        return views[0] if len(views) == 1 else torch.cat(views)

    def runs(self, longest: int) -> Iterator[tuple[int, int]]:
        """``[lo, hi)`` ranges covering all terms, none longer than ``longest`` or crossing a part."""
        ends = self.starts[1:] + [self.starts[-1] + self.parts[-1].shape[0]]
        for lo, end in zip(self.starts, ends):
            for a in range(lo, end, longest):
                yield a, min(a + longest, end)

    def drop_values(self) -> None:
        self.parts, self.starts = [], []


class NTState:
    def __init__(self, nt: NonTerminal, mantissa_bits: int) -> None:
        self.nt = nt
        self.buckets: dict[int, Bucket] = {}
        # canonical id -> the first term with that form (None until built, when nobody asks for it)
        self.canon_seen: dict[int, Node | None] = {}
        self.syntax_seen: set[Node] = set()
        self.values_seen = ValueIndex(mantissa_bits)
        # (production, size) -> entries of the child bucket a unit production has consumed
        self.unit_done: dict[tuple[Production, int], int] = {}

    def bucket(self, size: int) -> Bucket:
        b = self.buckets.get(size)
        if b is None:
            b = self.buckets[size] = Bucket()
        return b


class Positions(NamedTuple):
    """How a production's terms depend on positions, from its template (the rule of ``gsum``).

    ``guards``: for each ``gsum`` of the template whose operand does not vary by itself, the Map
    holes through which it may vary; a combination is defined only if, for every guard, one of
    those holes holds a varying term. ``varies`` / ``holes``: the same for the template's root, to
    set the ``varies`` flag of a new Map term."""

    guards: tuple[tuple[int, ...], ...]
    varies: bool
    holes: tuple[int, ...]


def positions(tmpl: Node) -> Positions:
    guards: list[tuple[int, ...]] = []
    count = 0

    def map_holes(n: Node) -> list[int]:
        """Indices (in fill order) of the Map holes reached from ``n`` through Map-typed nodes only."""
        nonlocal count
        if n.kind == HOLE:
            count += 1
            return [count - 1] if n.type == Type.MAP else []
        found = [map_holes(a) for a in n.args]  # every child, so the hole count stays in fill order
        if n.kind == OP and n.head == "gsum" and not varies_over_positions(n.args[0]):
            guards.append(tuple(found[0]))
        return [h for f in found for h in f] if n.type == Type.MAP else []

    holes = map_holes(tmpl)
    return Positions(tuple(guards), varies_over_positions(tmpl), tuple(holes))


def compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Ways to write ``total`` as ``parts`` positive integers, in lexicographic order."""
    if parts == 0:
        if total == 0:
            yield ()
        return
    if parts == 1:
        if total >= 1:
            yield (total,)
        return
    for first in range(1, total - parts + 2):
        for rest in compositions(total - first, parts - 1):
            yield (first,) + rest
