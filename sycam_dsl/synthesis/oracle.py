"""The multi-level correctness oracle's test (SPEC section 7).

A candidate passes a level when it beats the incumbent's per-image score on at least half of the
level's images and its mean score is better. Scores are compared in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verdict:
    """The outcome on one level: ``wins`` images of ``n`` where the candidate is strictly better."""

    passed: bool
    wins: int
    n: int
    mean: float
    incumbent_mean: float


def judge(candidate: torch.Tensor, incumbent: torch.Tensor, higher_is_better: bool) -> Verdict:
    """Candidate vs. incumbent per-image scores ``[n]`` on one level."""
    c = candidate.detach().to("cpu", torch.float64)
    i = incumbent.detach().to("cpu", torch.float64)
    if c.shape != i.shape or c.dim() != 1:
        raise ValueError(f"per-image scores must both be [n], got {list(c.shape)} and {list(i.shape)}")
    better = c > i if higher_is_better else c < i
    wins, n = int(better.sum()), int(c.shape[0])
    mc, mi = float(c.mean()), float(i.mean())
    mean_better = mc > mi if higher_is_better else mc < mi
    return Verdict(2 * wins >= n and mean_better, wins, n, mc, mi)


def hopeless(candidate: torch.Tensor, incumbent: torch.Tensor, level_size: int, incumbent_mean: float,
             higher_is_better: bool, best_rest: float | None = None) -> bool:
    """Whether a candidate scored on only some of a level's images can no longer pass it.

    ``candidate`` / ``incumbent``: per-image scores ``[s]`` on the images scored so far (of
    ``level_size``); ``incumbent_mean``: the incumbent's mean on the whole level; ``best_rest``: the
    sum of the best scores the remaining images could get (the metric's bounds), None if unknown.
    True only when failing is certain: too few images are left to reach half the wins, or even the
    best possible scores on the rest leave the mean no better than the incumbent's."""
    c = candidate.detach().to("cpu", torch.float64)
    i = incumbent.detach().to("cpu", torch.float64)
    remaining = level_size - int(c.shape[0])
    wins = int((c > i).sum() if higher_is_better else (c < i).sum())
    if 2 * (wins + remaining) < level_size:
        return True
    if best_rest is None:
        return False
    best_mean = (float(c.sum()) + best_rest) / level_size
    margin = 1e-9 * (1.0 + abs(incumbent_mean))  # float sums differ in the last bits: never decide on those
    return best_mean < incumbent_mean - margin if higher_is_better else best_mean > incumbent_mean + margin
