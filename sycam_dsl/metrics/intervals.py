"""Paired comparison of two methods on the same images: the mean per-image difference with a
bootstrap confidence interval, and the share of images on which the first is better.

The interval is the percentile bootstrap (Efron): ``resamples`` seeded resamples of the images
with replacement, the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled mean
differences. Percentile rather than BCa: it needs no jackknife, is exact for the degenerate cases
that matter here (all differences equal, one image), and with hundreds of images the two agree
to well under the metrics' noise. Differences are oriented so that positive means "the first
method is better" whatever the metric's direction.
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
    images on which the first is strictly better, ``n``: images."""

    mean: float
    low: float
    high: float
    better_share: float
    n: int
    level: float

    @property
    def verdict(self) -> str:
        """"better", "worse" or "no significant difference" (the interval must exclude 0)."""
        if self.n >= 2 and self.low > 0:
            return "better"
        if self.n >= 2 and self.high < 0:
            return "worse"
        return "no significant difference"

    def sentence(self, first: str, second: str) -> str:
        """E.g. "SyCAM is better than ScoreCAM (+0.0046, 95% CI [+0.0021, +0.0071]; better on 61% of 40 images)"."""
        what = {"better": f"is better than {second}", "worse": f"is worse than {second}",
                "no significant difference": f"shows no significant difference from {second}"}[self.verdict]
        return (f"{first} {what} ({self.mean:+.4f}, {100 * self.level:.0f}% CI [{self.low:+.4f}, {self.high:+.4f}]; "
                f"better on {100 * self.better_share:.0f}% of {self.n} images)")


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
    return PairedComparison(float(d.mean()), low, high, float((d > 0).double().mean()), n, level)
