"""The command line's metric options: ``--metric``, ``--steps``, ``--blur-sigma`` and
``--metric-option KEY=VALUE`` read into ``Metric`` objects, checked in one line each."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from typing import Any

from ..errors import SycamError
from ..metrics.registry import Metric


def metric_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--metric-option KEY=VALUE`` as a dict, each VALUE parsed as JSON when it is JSON, else kept as text."""
    out: dict[str, Any] = {}
    for item in getattr(args, "metric_option", None) or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SycamError(f"--metric-option {item!r}: expected KEY=VALUE, e.g. percentiles=[20,50,80]")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def metric_from_args(name: str, args: argparse.Namespace, strict: bool = True) -> Metric:
    """The metric ``name`` with the ``--steps`` / ``--blur-sigma`` / ``--metric-option`` options it takes;
    ``strict``: a ``--metric-option`` it does not take is an error (for the one metric a command scores)."""
    from ..metrics import get_metric
    from ..metrics.objectives import options_for, unused_options

    metric = get_metric(name)
    options = {"steps": args.steps, "blur_sigma": args.blur_sigma}
    chosen = metric_options(args)
    if strict and unused_options([metric], chosen):  # raises, naming the options the metric has
        metric.with_options(**{k: chosen[k] for k in unused_options([metric], chosen)})
    own = options_for(metric, chosen)  # NAME.KEY: this metric's only
    _check_option_types(metric, own)
    options.update(own)
    return metric.with_options(**{k: v for k, v in options.items() if k in metric.option_names and v is not None})


def _check_option_types(metric: Metric, options: dict[str, Any]) -> None:
    """A text value for an option that takes a number is refused here, in one line (it failed deep in
    the metric, after the terminals)."""
    import inspect

    params = inspect.signature(metric.fn).parameters
    for key, value in options.items():
        p = params.get(key)
        if p is None or not isinstance(value, str):
            continue
        numeric = isinstance(p.default, int | float) and not isinstance(p.default, bool)
        hint = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        if numeric or (re.search(r"\b(int|float)\b", str(hint)) and "str" not in str(hint)):
            raise SycamError(f"--metric-option {key}={value!r}: metric {metric.name!r} takes a number for {key}")


def check_metric_options(args: argparse.Namespace, metrics: Sequence[Metric]) -> None:
    """Every ``--metric-option`` is taken by one of ``metrics`` (each took those it has)."""
    from ..metrics.errors import MetricError
    from ..metrics.objectives import unused_options

    unused = unused_options(metrics, metric_options(args))
    if unused:
        raise MetricError(f"--metric-option {', '.join(unused)}: no metric of {', '.join(m.name for m in metrics)} "
                          f"takes it")


def metrics_from_args(text: str, args: argparse.Namespace) -> list[Metric]:
    """The metrics of a comma-separated list; Increase in Confidence joins Average Drop (docs/metrics.md)."""
    from ..metrics.errors import MetricError
    from ..metrics.objectives import metric_names

    metrics: list[Metric] = []
    for n in metric_names(text):
        metric = metric_from_args(n, args, strict=False)
        if metric.name not in {m.name for m in metrics}:  # deletion,deletion: one table
            metrics.append(metric)
    if not metrics:
        raise MetricError(f"no metric named in {text!r}")
    names = [m.name for m in metrics]
    if "average_drop" in names and "increase_in_confidence" not in names:
        metrics.append(metric_from_args("increase_in_confidence", args, strict=False))
    check_metric_options(args, metrics)
    return metrics
