"""Several metrics optimized at once (``synth --metric deletion,insertion``): ``Objectives``.

A multi-objective search scores each candidate on every metric of its ``Objectives`` in one pass over
the same heatmaps: per-image scores ``[..., N, M]``, metric ``m`` in column ``m``, each with its own
options and direction. The metrics share the inputs' cache and memo, so Deletion and Insertion on the
same cells share their forward passes (``memo``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..util.text import comma_list
from .errors import MetricError
from .registry import Metric, MetricInputs, get_metric, metric_key


@dataclass(frozen=True)
class Objectives:
    """Two or more distinct metrics; ``scores(inputs)`` gives ``[..., N, M]``."""

    metrics: tuple[Metric, ...]

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if len(names) < 2:
            raise MetricError(f"a multi-objective search needs two or more metrics, got {', '.join(names) or 'none'}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise MetricError(f"metric {', '.join(twice)} is named twice in {','.join(names)}")

    @property
    def name(self) -> str:
        """The metrics' names joined by commas, as ``--metric`` takes them."""
        return ",".join(m.name for m in self.metrics)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.metrics]

    @property
    def higher(self) -> list[bool]:
        """Each metric's direction."""
        return [m.higher_is_better for m in self.metrics]

    @property
    def options(self) -> Mapping[str, Any]:
        """Each metric's options: name -> options."""
        return {m.name: dict(sorted(m.options.items())) for m in self.metrics}

    @property
    def needs_heatmaps(self) -> bool:
        return any(m.needs_heatmaps for m in self.metrics)

    @property
    def needs_masks(self) -> bool:
        return any(m.needs_masks for m in self.metrics)

    def scores(self, inputs: MetricInputs) -> torch.Tensor:
        """Per-image scores ``[..., N, M]`` of ``inputs``' heatmaps on every metric."""
        return torch.stack([m.scores(inputs) for m in self.metrics], dim=-1)

    def score_bounds(self, inputs: MetricInputs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The lowest and highest score each image can get on each metric, ``([N, M], [N, M])``;
        a metric without bounds has ``-inf`` and ``inf`` (None when no metric has bounds)."""
        bounds = [m.score_bounds(inputs) for m in self.metrics]
        if all(b is None for b in bounds):
            return None
        n = inputs.images.shape[0]
        inf = torch.full((n,), float("inf"), dtype=torch.float64)
        low = [(-inf if b is None else b[0].double().cpu()) for b in bounds]
        high = [(inf if b is None else b[1].double().cpu()) for b in bounds]
        return torch.stack(low, dim=-1), torch.stack(high, dim=-1)


#: What a search optimizes: one metric, or several at once.
Objective = Metric | Objectives


def objective_of(metrics: Sequence[Metric]) -> Objective:
    """One metric as itself, several as ``Objectives``."""
    if len(metrics) == 1:
        return metrics[0]
    return Objectives(tuple(metrics))


def metric_list(objective: Objective) -> list[Metric]:
    """The metrics of ``objective``, in column order."""
    return list(objective.metrics) if isinstance(objective, Objectives) else [objective]


def metric_names(text: str) -> list[str]:
    """The names of a comma-separated list of metrics (``"deletion, insertion"``), stripped, blanks
    dropped (``--metric``, ``--report-metrics``, ``metric=``)."""
    return comma_list(text)


def parse_objective(metric: str | Objective | Sequence[str | Metric], options: Mapping[str, Any] | None = None,
                    make: Callable[[str], Metric] = get_metric) -> Objective:
    """What a search optimizes, where ``synthesize`` and ``synth --metric`` meet: one metric, or
    several (a list, or names separated by commas, ``metric_names``) as ``Objectives``, each with its
    own direction. ``make`` turns a name into its metric (``synth``'s applies its command-line
    options); ``options`` apply to the one metric, or with several to every metric that takes them and
    ``NAME.KEY`` to that metric only (``bind_options``)."""
    if isinstance(metric, Objectives):
        return objective_of(bind_options(metric.metrics, options)) if options else metric
    if isinstance(metric, str):
        items: list[str | Metric] = list(metric_names(metric))
    elif isinstance(metric, Metric):
        items = [metric]
    else:
        items = [m.strip() if isinstance(m, str) else m for m in metric if not isinstance(m, str) or m.strip()]
    metrics = [make(m) if isinstance(m, str) else m for m in items]
    if len(metrics) == 1:
        return metrics[0].with_options(**options) if options else metrics[0]
    return objective_of(bind_options(metrics, options) if options else metrics)


def best_scores(objective: Objective, inputs: MetricInputs) -> torch.Tensor | None:
    """The best score each image can get, ``[N]`` for a metric, ``[N, M]`` for ``Objectives`` (``inf``
    in the better direction for a metric without bounds); None when nothing is bounded."""
    b = objective.score_bounds(inputs)
    if b is None:
        return None
    low, high = b[0].double().cpu(), b[1].double().cpu()
    if isinstance(objective, Objectives):
        return torch.where(torch.tensor(objective.higher), high, low)
    return high if objective.higher_is_better else low


def options_for(metric: Metric, options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``options`` that apply to ``metric``: a plain ``KEY`` it takes, and ``NAME.KEY``
    for its name (``deletion.steps``: Deletion's steps only)."""
    out = {}
    for k, v in options.items():
        owner, key = _owner(k)
        if (owner is None and key in metric.option_names) or owner == metric.name:
            out[key] = v
    return out


def _owner(option: str) -> tuple[str | None, str]:
    """``NAME.KEY`` as (NAME as the registry keys it, KEY); a plain ``KEY`` as (None, KEY)."""
    name, dot, key = option.rpartition(".")
    return (metric_key(name), key) if dot else (None, option)


def unused_options(metrics: Sequence[Metric], options: Mapping[str, Any]) -> list[str]:
    """The keys of ``options`` no metric of ``metrics`` takes (``NAME.KEY`` must name one that has ``KEY``)."""
    return sorted(k for k in options if not any(
        _owner(k)[0] in (None, m.name) and _owner(k)[1] in m.option_names for m in metrics))


def bind_options(metrics: Sequence[Metric], options: Mapping[str, Any] | None) -> list[Metric]:
    """Each metric with the ``options`` that apply to it (``options_for``); an option no metric takes is
    a ``MetricError`` naming it."""
    options = options or {}
    unused = unused_options(metrics, options)
    if unused:
        raise MetricError(f"option {', '.join(unused)}: no metric of {', '.join(m.name for m in metrics)} takes it "
                          f"(options: " + "; ".join(f"{m.name}: {', '.join(m.option_names) or 'none'}"
                                                    for m in metrics) + ")")
    return [m.with_options(**options_for(m, options)) for m in metrics]
