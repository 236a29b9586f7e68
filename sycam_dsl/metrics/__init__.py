"""Metrics of explanation quality (definitions: docs/metrics.md), one module per family, and a registry by name.

Every metric gives per-image scores and a direction; ``get_metric(name)`` looks one up and
``register_metric`` adds a user-defined one from Python.
"""

from .average_drop import average_drop, increase_in_confidence, masked_scores
from .builtin import register_builtins
from .errors import MetricError
from .overlap import gt_overlap, sch
from .perturbation import DEFAULT_BLUR_SIGMA, blurred, cell_ranks, deletion, insertion, perturbation_curve
from .registry import (
    Metric,
    MetricInputs,
    MetricResult,
    get_metric,
    known_metrics,
    register_metric,
    register_metric_family,
    unregister_metric,
)
from .scoring import class_scores

register_builtins()

__all__ = [
    "DEFAULT_BLUR_SIGMA", "Metric", "MetricError", "MetricInputs", "MetricResult", "average_drop",
    "blurred", "cell_ranks", "class_scores", "deletion", "get_metric", "gt_overlap",
    "increase_in_confidence", "insertion", "known_metrics", "masked_scores", "perturbation_curve",
    "register_metric", "register_metric_family", "sch", "unregister_metric",
]
