"""The Pareto front of a search over several metrics (``Objectives``) and its oracle.

The single-metric oracle (``oracle.judge``) keeps one incumbent; a search over ``M`` metrics keeps a
front of members instead, with this rule on each level (``I3``, ``I2``, ``I1``):

* a candidate **passes against a member** when, on at least one metric, it passes the single-metric
  test against that member: it beats the member on at least half of the level's images and its mean
  is strictly better (on a level of fewer than ``small_level`` images, its mean beats the member's by
  the small-level margin instead);
* it **passes the level** when it passes against every member: no member dominates it there;
* after passing ``I1`` it **enters the front**, and every member that would not pass against it on
  ``I1`` (on no metric does the member pass the test against the newcomer) leaves: it is dominated.

With one metric this is the single-metric oracle (the front is the incumbent). Consequences: a
candidate whose means a member's equal or beat on every metric of a level never passes that level
(it needs a strictly better mean on some metric), and no member's ``I1`` means are at least as good
as another's on every metric: the front is a Pareto front of its members' means. Early stopping
stops a candidate once it cannot pass against some member on any metric (``oracle.hopeless`` per
metric). At the end the baselines the grammar expresses are offered to the front on their ``I1``
means alone (the single-metric search's final check does the same with one incumbent): one enters
when no member's means are at least as good on every metric, and evicts the members whose means it
equals or beats on every metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .oracle import SMALL_LEVEL, hopeless, judge


@dataclass
class Member:
    """A member of the front: its expression, its per-image scores on every metric (``blocks``: one
    list per level block, of one ``[M]`` list per image), when it entered (search seconds, its
    candidate index; None for a baseline, named in ``baseline``) and the expressions it evicted."""

    expression: str
    blocks: list[list[list[float]]]
    seconds: float
    candidate: int | None
    baseline: str | None = None
    evicted: list[str] = field(default_factory=list)

    @property
    def means(self) -> list[float]:
        """The mean score on each metric over ``I1`` (every block), summed in ``I1`` order."""
        return column_means([x for b in self.blocks for x in b])


def column_means(rows: Sequence[Sequence[float]]) -> list[float]:
    """The mean of each metric over per-image rows of one score per metric (summed in row order)."""
    return [sum(r[m] for r in rows) / len(rows) for m in range(len(rows[0]))]


def covers(a: Sequence[float], b: Sequence[float], higher: Sequence[bool]) -> bool:
    """Whether means ``a`` are at least as good as ``b`` on every metric."""
    return all((x >= y) if h else (x <= y) for x, y, h in zip(a, b, higher))


def passes_against(candidate: torch.Tensor, member: torch.Tensor, higher: Sequence[bool],
                   small_level: int = SMALL_LEVEL) -> tuple[bool, float]:
    """Whether a candidate with per-image scores ``[n, M]`` passes against a member's ``[n, M]`` on
    this level (on some metric it passes ``judge``), and the best share of images it wins on a metric."""
    passed, share = False, 0.0
    for m, h in enumerate(higher):
        v = judge(candidate[:, m], member[:, m], h, small_level)
        passed = passed or v.passed
        share = max(share, v.wins / max(1, v.n))
    return passed, share


def cannot_pass(candidate: torch.Tensor, member: torch.Tensor, level_size: int, member_means: Sequence[float],
                higher: Sequence[bool], best_rest: torch.Tensor | None, small_level: int = SMALL_LEVEL) -> bool:
    """Whether a candidate scored on only some of a level's images (``[s, M]``, against the member's
    ``[s, M]`` there) can no longer pass against the member: it can pass the test on no metric
    (``oracle.hopeless`` on each; ``best_rest`` ``[M]`` the best the remaining images could add)."""
    return all(hopeless(candidate[:, m], member[:, m], level_size, member_means[m], h,
                        None if best_rest is None or not torch.isfinite(best_rest[m]) else float(best_rest[m]),
                        small_level)
               for m, h in enumerate(higher))


def reached(means: Sequence[float], thresholds: Sequence[float], higher: Sequence[bool]) -> bool:
    """Whether means beat every threshold (strictly, each in its metric's direction)."""
    return all((x > t) if h else (x < t) for x, t, h in zip(means, thresholds, higher))
