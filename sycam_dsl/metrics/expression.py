"""Scoring one weight expression: its heatmaps on a set of images, then the metrics.

The one place where an expression becomes ``MetricInputs`` (``eval``, ``explain`` and the search
all go through it), so every command scores an expression the same way.
"""

from __future__ import annotations

import torch

from ..evaluate import Terminals, evaluate
from ..lang.ast import Node
from ..template.heatmaps import layer_saliency, normalize_upsampled
from .registry import Metric, MetricInputs, MetricResult


def expression_inputs(node: Node, inputs: MetricInputs, terms: Terminals, acts: torch.Tensor,
                      heatmaps: bool = True) -> MetricInputs:
    """``inputs`` with the heatmaps ``H`` ``[N, H, W]`` (unless ``heatmaps`` is False) and saliency
    ``S`` ``[N, h, w]`` of ``node``, for terminals and activations ``acts`` ``[N, K, h, w]`` of the
    same ``N`` images."""
    s = layer_saliency(evaluate(node, terms), acts, node.type)
    return inputs.with_heatmaps(normalize_upsampled(s, tuple(inputs.images.shape[-2:])) if heatmaps else None, s)


def score_expression(node: Node, metrics: list[Metric], inputs: MetricInputs, terms: Terminals,
                     acts: torch.Tensor) -> dict[str, MetricResult]:
    """Per-image scores of ``node`` on each metric (metric name -> result); the heatmaps are computed
    once, and only when a metric needs them (the others score from ``S``, as in the search)."""
    candidate = expression_inputs(node, inputs, terms, acts, any(m.needs_heatmaps for m in metrics))
    return {m.name: m(candidate) for m in metrics}


def score_methods(methods: dict[str, tuple[str, Node]], metrics: list[Metric], inputs: MetricInputs,
                  terms: Terminals, acts: torch.Tensor) -> dict[str, dict[str, MetricResult]]:
    """Per-image scores: metric name -> method name -> ``MetricResult``, for methods given as
    name -> (expression text, AST). Each method's heatmaps are computed once for all metrics, and
    ``inputs.cache`` keeps what the metrics share (``y_c(x)``, ``x~``)."""
    results: dict[str, dict[str, MetricResult]] = {m.name: {} for m in metrics}
    for name, (_, node) in methods.items():
        for metric_name, result in score_expression(node, metrics, inputs, terms, acts).items():
            results[metric_name][name] = result
    return results
