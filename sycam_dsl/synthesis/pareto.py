"""Pareto dominance, the Pareto front and its suggested member (the knee), as pure functions over plain
data: a point is one value per metric, and ``higher[m]`` says whether metric ``m`` is better high
(``True``) or low (``False``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _check_point(point: Sequence[float], higher: Sequence[bool], what: str) -> None:
    if len(point) != len(higher):
        raise ValueError(f"{what} has {len(point)} values, expected {len(higher)} (one per metric)")


def _check_metrics(higher: Sequence[bool]) -> None:
    if len(higher) == 0:
        raise ValueError("expected at least one metric, got none")


def _check_not_nan(point: Sequence[float], what: str) -> None:
    # NaN compares false with everything, so it would be neither better nor worse: a point with a NaN
    # could dominate or survive by accident. Infinities order fine and are allowed.
    for m, value in enumerate(point):
        if math.isnan(value):
            raise ValueError(f"{what}, metric {m}: value is NaN")


def dominates(a: Sequence[float], b: Sequence[float], higher: Sequence[bool]) -> bool:
    """Whether ``a`` dominates ``b``: at least as good on every metric (in that metric's direction)
    and strictly better on at least one. Raises ``ValueError`` when a point does not have one value
    per metric, when there are no metrics, or on a NaN value."""
    _check_metrics(higher)
    _check_point(a, higher, "point a")
    _check_point(b, higher, "point b")
    _check_not_nan(a, "point a")
    _check_not_nan(b, "point b")
    strictly = False
    for x, y, high in zip(a, b, higher):
        if not high:  # orient every metric so that higher is better
            x, y = -x, -y
        if x < y:
            return False
        strictly = strictly or x > y
    return strictly


def pareto_indices(points: Sequence[Sequence[float]], higher: Sequence[bool]) -> list[int]:
    """The indices (ascending) of the points no other point dominates (see :func:`dominates`); equal
    points do not dominate each other, so both stay. Raises ``ValueError`` like :func:`dominates`."""
    _check_metrics(higher)
    for i, point in enumerate(points):
        _check_point(point, higher, f"point {i}")
        _check_not_nan(point, f"point {i}")
    if not points:
        return []
    sign = np.where(np.asarray(higher, dtype=bool), 1.0, -1.0)
    oriented = np.asarray(points, dtype=float) * sign  # every metric now better high
    keep = []
    # One vectorized pass per point (O(n^2 m) work, but no Python loop over pairs): a front of a few
    # thousand candidates takes well under a second.
    for i in range(len(oriented)):
        row = oriented[i]
        dominated = ((oriented >= row).all(axis=1) & (oriented > row).any(axis=1)).any()
        if not dominated:
            keep.append(i)
    return keep


def _scale(values: Sequence[float], fallback: Sequence[float]) -> float:
    """The range of ``values`` when there are at least two and it is finite and nonzero, else the
    range of ``fallback`` when nonzero, else 1."""
    if len(values) >= 2:
        spread = max(values) - min(values) if all(math.isfinite(v) for v in values) else math.inf
        if math.isfinite(spread) and spread > 0:
            return spread
    spread = max(fallback) - min(fallback)
    return spread if spread > 0 else 1.0


def knee(front: Sequence[Sequence[float]], baselines: Sequence[Sequence[float]],
         higher: Sequence[bool]) -> int | None:
    """The index of the suggested member of ``front``: the one closest to the ideal point once every
    metric is put on the baselines' scale, so that a metric with a tiny spread does not count less.

    The rule, metric by metric (``m``):

    * scale: ``max - min`` of the baselines' values on ``m``. When there are fewer than two baselines
      or that range is 0 or not finite (a non-finite baseline value makes it not finite), the range of
      the front's values on ``m`` instead; when that is 0 too, 1.
    * ideal: the best value on ``m`` among the front's members (the max when higher is better, the
      min otherwise).

    A member's distance is ``sqrt(sum_m (shortfall_m / scale_m) ** 2)``, where ``shortfall_m`` is
    ``ideal_m - value_m`` when higher is better and ``value_m - ideal_m`` otherwise (never negative).
    The smallest distance wins; ties go to the smallest index. An empty front gives ``None``.

    Raises ``ValueError`` when a point does not have one value per metric, when there are no metrics,
    or when a front member has a non-finite value (naming the member and the metric)."""
    _check_metrics(higher)
    for i, point in enumerate(front):
        _check_point(point, higher, f"front member {i}")
        for m, value in enumerate(point):
            if not math.isfinite(value):
                raise ValueError(f"front member {i}, metric {m}: value {value} is not finite")
    for k, point in enumerate(baselines):
        _check_point(point, higher, f"baseline {k}")
    if not front:
        return None
    scales = []
    ideal = []
    for m, high in enumerate(higher):
        column = [float(point[m]) for point in front]
        scales.append(_scale([float(point[m]) for point in baselines], column))
        ideal.append(max(column) if high else min(column))
    distances = [math.sqrt(sum((((ideal[m] - v) if high else (v - ideal[m])) / scales[m]) ** 2
                               for m, (v, high) in enumerate(zip(point, higher))))
                 for point in front]
    # min keeps the first of equal keys: a tie goes to the smaller index (also when a tiny scale
    # overflows distances to inf)
    return min(range(len(front)), key=distances.__getitem__)
