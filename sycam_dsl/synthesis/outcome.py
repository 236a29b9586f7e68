"""What one search returns (``SearchOutcome``): its result, its state and why it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..lang.ast import Node
from ..metrics.registry import Metric
from .front import Member
from .oracle import SMALL_LEVEL
from .state import SearchState
from .subsets import Subsets


@dataclass
class SearchOutcome:
    """What one search returns: the incumbent (None if nothing could be scored) and how it got there.

    ``baselines``: name -> per-image scores on ``I1`` in ``subsets`` order; ``enumeration``: the
    enumerator's counts; ``stopped_by``: ``exhausted``, ``time``, ``candidates``, ``threshold`` or
    ``interrupted``; ``threshold``: the ``until`` threshold's value (None: none, or not reached the
    baselines; one per metric over several); ``baseline_check``: whether the best baseline the grammar
    expresses was checked against the result at the end; ``small_level``: the oracle's small-level size;
    over several metrics ``best`` is the front's knee member, at ``knee`` in ``front`` (``pareto.knee``);
    ``metrics``: the metrics optimized, in the order of the scores' columns."""

    best: Node | None
    state: SearchState
    subsets: Subsets
    stopped_by: str
    enumeration: dict[str, Any]
    seconds: float
    level_names: list[str] = field(default_factory=list)
    threshold: float | list[float] | None = None
    baseline_check: bool = True
    small_level: int = SMALL_LEVEL
    knee: int | None = None
    metrics: list[Metric] = field(default_factory=list)

    @property
    def front(self) -> list[Member]:
        """A search over several metrics: the front's members, in the order they entered (``best`` is
        the one at ``knee``); empty for one metric."""
        return self.state.front

    @property
    def level_means(self) -> dict[str, float]:
        """The incumbent's mean score on each level (empty for a front)."""
        if self.state.incumbent is None:
            return {}
        out, flat = {}, []
        for name, block in zip(self.level_names, self.state.incumbent.blocks):
            flat += block
            out[name] = sum(flat) / len(flat)
        return out
