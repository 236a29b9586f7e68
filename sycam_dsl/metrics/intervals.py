"""Paired comparison of two methods on the same images: the mean per-image difference with a
bootstrap confidence interval, and the share of images on which the first is better.

The interval is the percentile bootstrap (Efron): ``resamples`` seeded resamples of the images
with replacement, the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled mean
differences. Percentile rather than BCa: it needs no jackknife, is exact for the degenerate cases
that matter here (all differences equal, one image), and with hundreds of images the two agree
to well under the metrics' noise. Differences are oriented so that positive means "the first
method is better" whatever the metric's direction.

Many comparisons at once (a run compares SyCAM with every method on every metric) are corrected
with Holm's step-down procedure on the bootstrap p-values (``holm``, ``family_verdicts``): the
family-wise verdicts all hold at once with probability ``level``, where each interval holds alone.
The two-sided bootstrap p-value is ``2 * (k + 1) / (B + 1)`` (capped at 1), where ``k`` is the smaller
of the counts of the ``B`` resampled means at or below 0 and at or above 0: the test the percentile
interval inverts (the interval excludes 0 about when ``p < 1 - level``), counted as a Monte Carlo
p-value so that it is never 0 (the smallest is about ``2 / B``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
#: Bound on the resample indices held at once (8 bytes each).
RESAMPLE_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PairedComparison:
    """``mean``: mean per-image improvement of the first method over the second (positive:
    better), ``low``/``high``: its bootstrap interval at ``level``, ``better_share``: the share of
    images on which the first is strictly better, ``n``: images, ``p_value``: the two-sided bootstrap
    p-value of "no difference" (1.0 for one image)."""

    mean: float
    low: float
    high: float
    better_share: float
    n: int
    level: float
    p_value: float = 1.0

    @property
    def verdict(self) -> str:
        """"better", "worse" or "no significant difference" (the interval must exclude 0)."""
        if self.n >= 2 and self.low > 0:
            return "better"
        if self.n >= 2 and self.high < 0:
            return "worse"
        return "no significant difference"

    def sentence(self, first: str, second: str, family: tuple[str, float, int] | None = None) -> str:
        """E.g. "SyCAM is better than ScoreCAM (+0.0046, 95% CI [+0.0021, +0.0071]; better on 61% of 40 images)".
        ``family``: the family-wise verdict, its Holm-adjusted p-value and the number of comparisons
        (``family_verdicts``): the sentence then says "better" only when that verdict does."""
        verdict = self.verdict if family is None else family[0]
        what = {"better": f"is better than {second}", "worse": f"is worse than {second}",
                "no significant difference": f"shows no significant difference from {second}"}[verdict]
        text = (f"{first} {what} ({self.mean:+.4f}, {100 * self.level:.0f}% CI [{self.low:+.4f}, {self.high:+.4f}]; "
                f"better on {100 * self.better_share:.0f}% of {self.n} images")
        if family is None:
            return text + ")"
        alone = "" if verdict == self.verdict else f"; {self.verdict} on this comparison alone"
        return text + f"; Holm-adjusted p = {family[1]:.4f} over {family[2]} comparisons{alone})"


def paired_bootstrap(first: torch.Tensor, second: torch.Tensor, higher_is_better: bool,
                     resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                     seed: int = 0) -> PairedComparison:
    """Compare per-image scores ``first`` and ``second`` ``[n]`` (the same images, in the same order)."""
    a = first.detach().to("cpu", torch.float64).flatten()
    b = second.detach().to("cpu", torch.float64).flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"paired scores must be two [n] tensors with n >= 1, got {list(a.shape)} and {list(b.shape)}")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level must be in (0, 1) and resamples >= 1, got {level} and {resamples}")
    d = a - b if higher_is_better else b - a
    n = d.numel()
    gen = torch.Generator().manual_seed(seed)
    # resampled in blocks, so that memory stays bounded for large test splits ([block, n] at a time)
    block = max(1, RESAMPLE_ELEMENTS // n)
    means = torch.cat([d[torch.randint(0, n, (min(block, resamples - i), n), generator=gen)].mean(dim=1)
                       for i in range(0, resamples, block)])
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(means, q).tolist()
    # a Monte Carlo p-value counts the observed statistic as one more resample ((k + 1) / (B + 1)): never 0,
    # so that Holm's products stay conservative however many comparisons there are
    crossing = min(int((means <= 0).sum()), int((means >= 0).sum()))
    p = min(1.0, 2 * (crossing + 1) / (means.numel() + 1)) if n >= 2 else 1.0
    return PairedComparison(float(d.mean()), low, high, float((d > 0).double().mean()), n, level, p)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the ``i``-th smallest ``p`` times
    ``m - i`` (``i`` from 0), made non-decreasing along that order and capped at 1. Rejecting where
    the adjusted value is below ``alpha`` keeps the family-wise error rate at ``alpha``."""
    m = len(p_values)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def family_verdicts(comparisons: list[PairedComparison]) -> list[tuple[str, float]]:
    """For each comparison, the verdict that holds for all of them at once (Holm at ``1 - level``)
    and its adjusted p-value: "better" or "worse" (by the mean's sign) where the adjusted p-value is
    below ``1 - level``, else "no significant difference"."""
    adjusted = holm([c.p_value for c in comparisons])
    out = []
    for c, p in zip(comparisons, adjusted):
        significant = c.n >= 2 and p < 1 - c.level and c.mean != 0
        verdict = ("better" if c.mean > 0 else "worse") if significant else "no significant difference"
        out.append((verdict, p))
    return out
