"""Comparing methods on one metric: mean score, and the share of images on which each is best."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .controls import is_control
from .registry import Metric, MetricResult


@dataclass(frozen=True)
class Row:
    """One method's line of a comparison table."""

    name: str
    expression: str
    mean: float
    best_share: float          # fraction of images on which no other method scores strictly better
    per_image: list[float]
    control: bool = False      # a control map's row (``metrics.controls``), not a method


def best_shares(scores: torch.Tensor, higher_is_better: bool) -> torch.Tensor:
    """``scores`` ``[M, N]`` of ``M`` methods on ``N`` images -> ``[M]``: the fraction of images on
    which each method's score is the best one (ties count for every method that reaches it)."""
    best = scores.amax(dim=0) if higher_is_better else scores.amin(dim=0)
    return (scores == best).to(torch.float64).mean(dim=1)


def compare(results: dict[str, MetricResult], expressions: dict[str, str], metric: Metric) -> list[Row]:
    """Table rows in the order of ``results`` (method name -> per-image scores ``[N]``). The methods'
    best shares are among the methods only; a control's (``control: NAME``) is among the methods and it,
    so adding controls changes no method's share."""
    names = list(results)
    scores = torch.stack([results[n].per_image.detach().to("cpu", torch.float64) for n in names])
    methods = [i for i, n in enumerate(names) if not is_control(n)]
    shares = torch.zeros(len(names), dtype=torch.float64)
    if methods:
        shares[methods] = best_shares(scores[methods], metric.higher_is_better)
    for i in (i for i, n in enumerate(names) if is_control(n)):
        shares[i] = best_shares(scores[methods + [i]], metric.higher_is_better)[-1]
    return [Row(n, expressions[n], float(scores[i].mean()), float(shares[i]), scores[i].tolist(), is_control(n))
            for i, n in enumerate(names)]


def format_table(rows: list[Row], metric: Metric, n_images: int) -> str:
    """A plain-text table: method, mean, % of images best, expression."""
    direction = "higher" if metric.higher_is_better else "lower"
    width = max([len("method")] + [len(r.name) for r in rows])
    lines = [f"{metric.name} on {n_images} images ({direction} is better)",
             f"{'method':<{width}}  {'mean':>10}  {'best on':>8}  expression"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.mean:>10.4f}  {100 * r.best_share:>7.1f}%  {r.expression}")
    return "\n".join(lines)
