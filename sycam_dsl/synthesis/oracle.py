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
