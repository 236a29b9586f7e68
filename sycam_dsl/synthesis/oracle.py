"""The multi-level correctness oracle's test (docs/search.md#the-oracle).

A candidate passes a level when it beats the incumbent's per-image score on at least half of the
level's images and its mean score is better. Scores are compared in float64.

Small levels: on a level of fewer than ``SMALL_LEVEL`` (10) images the "at least half the images"
rule says little, since one image moves the share of wins by more than 10 points (3 of 5 images
must be won: a method better on average loses it to one or two unlucky images, and is never seen
again). There the test falls back to the mean alone, with a margin: the candidate's mean must beat
the incumbent's by ``SMALL_LEVEL_MARGIN`` (0.5%) of the incumbent's mean's magnitude, so that a
near-copy of the incumbent does not replace it on noise. ``small_level=0`` gives the plain rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Levels with fewer images than this are judged by the mean with a margin (see the module docstring).
SMALL_LEVEL = 10
#: The relative margin of the small-level mean test.
SMALL_LEVEL_MARGIN = 0.005


@dataclass(frozen=True)
class Verdict:
    """The outcome on one level: ``wins`` images of ``n`` where the candidate is strictly better;
    ``small``: the level was judged by the mean with a margin (fewer than ``small_level`` images)."""

    passed: bool
    wins: int
    n: int
    mean: float
    incumbent_mean: float
    small: bool = False


def is_small(n: int, small_level: int = SMALL_LEVEL) -> bool:
    """Whether a level of ``n`` images is judged by the mean with a margin."""
    return n < small_level


def needed_mean(incumbent_mean: float, higher_is_better: bool, small: bool) -> float:
    """The mean a candidate must strictly beat (in the metric's direction) to pass the level."""
    if not small:
        return incumbent_mean
    margin = SMALL_LEVEL_MARGIN * abs(incumbent_mean)
    return incumbent_mean + margin if higher_is_better else incumbent_mean - margin


def judge(candidate: torch.Tensor, incumbent: torch.Tensor, higher_is_better: bool,
          small_level: int = SMALL_LEVEL) -> Verdict:
    """Candidate vs. incumbent per-image scores ``[n]`` on one level."""
    c = candidate.detach().to("cpu", torch.float64)
    i = incumbent.detach().to("cpu", torch.float64)
    if c.shape != i.shape or c.dim() != 1:
        raise ValueError(f"per-image scores must both be [n], got {list(c.shape)} and {list(i.shape)}")
    better = c > i if higher_is_better else c < i
    wins, n = int(better.sum()), int(c.shape[0])
    mc, mi = float(c.mean()), float(i.mean())
    small = is_small(n, small_level)
    need = needed_mean(mi, higher_is_better, small)
    mean_better = mc > need if higher_is_better else mc < need
    return Verdict((small or 2 * wins >= n) and mean_better, wins, n, mc, mi, small)


def hopeless(candidate: torch.Tensor, incumbent: torch.Tensor, level_size: int, incumbent_mean: float,
             higher_is_better: bool, best_rest: float | None = None, small_level: int = SMALL_LEVEL) -> bool:
    """Whether a candidate scored on only some of a level's images can no longer pass it.

    ``candidate`` / ``incumbent``: per-image scores ``[s]`` on the images scored so far (of
    ``level_size``); ``incumbent_mean``: the incumbent's mean on the whole level; ``best_rest``: the
    sum of the best scores the remaining images could get (the metric's bounds), None if unknown.
    True only when failing is certain: too few images are left to reach half the wins (not on a
    small level, which has no such rule), or even the best possible scores on the rest leave the
    mean no better than the one ``judge`` needs."""
    c = candidate.detach().to("cpu", torch.float64)
    i = incumbent.detach().to("cpu", torch.float64)
    small = is_small(level_size, small_level)
    remaining = level_size - int(c.shape[0])
    wins = int((c > i).sum() if higher_is_better else (c < i).sum())
    if not small and 2 * (wins + remaining) < level_size:
        return True
    if best_rest is None:
        return False
    best_mean = (float(c.sum()) + best_rest) / level_size
    need = needed_mean(incumbent_mean, higher_is_better, small)
    margin = 1e-9 * (1.0 + abs(need))  # float sums differ in the last bits: never decide on those
    return best_mean < need - margin if higher_is_better else best_mean > need + margin
