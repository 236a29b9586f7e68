"""Scoring finished methods (baselines, the synthesized expression, a per-class dispatch) and the
control maps (``metrics.controls``) on every image of the evaluation set, for the result's comparison
tables."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..lang.ast import Node, to_sexpr
from ..metrics.compare import Row, compare
from ..metrics.controls import CONTROL_PREFIX, control_text, score_controls
from ..metrics.diagnostics import weight_problems
from ..metrics.expression import expression_inputs, score_expression
from ..metrics.registry import Metric, MetricResult
from ..util.progress import progress as progress_bar
from .dispatch import Dispatch
from .problem import Problem

Method = Node | Dispatch


def method_scores(method: Method, metrics: list[Metric], problem: Problem) -> dict[str, torch.Tensor]:
    """Per-image scores ``[N]`` (CPU float64) of ``method`` on each metric; a dispatch scores each image
    with the expression of its predicted class."""
    if isinstance(method, Node):
        res = score_expression(method, metrics, problem.inputs, problem.terminals, problem.acts)
        return {name: r.per_image.detach().to("cpu", torch.float64) for name, r in res.items()}
    out = {m.name: torch.full((problem.n,), float("nan"), dtype=torch.float64) for m in metrics}
    for node, idx in method.groups(problem.targets).items():
        part = problem.subset(idx)
        for name, scores in method_scores(node, metrics, part).items():
            out[name][idx] = scores
    return out


def method_heatmaps(method: Method, problem: Problem) -> torch.Tensor:
    """The heatmaps ``H`` ``[N, H, W]`` of ``method`` on ``problem``'s images (a dispatch: each image's
    from the expression of its predicted class)."""
    if isinstance(method, Node):
        h = expression_inputs(method, problem.inputs, problem.terminals, problem.acts).heatmaps
        assert h is not None  # expression_inputs computes heatmaps unless told not to
        return h
    out = torch.zeros(problem.n, *problem.inputs.images.shape[-2:], device=problem.acts.device)
    for node, idx in method.groups(problem.targets).items():
        out[idx.to(out.device)] = method_heatmaps(node, problem.subset(idx)).to(out.device)
    return out


def control_scores(names: Sequence[str], metrics: list[Metric], problem: Problem, blur_of: Method | None = None,
                   seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Row name (``control: NAME``) -> metric name -> per-image scores ``[N]`` (CPU float64) of the
    control maps ``names``; ``blurred`` blurs the heatmaps of ``blur_of`` (left out when None)."""
    source = method_heatmaps(blur_of, problem) if blur_of is not None and "blurred" in names else None
    layer = (int(problem.acts.shape[-2]), int(problem.acts.shape[-1]))
    scored = score_controls(names, metrics, problem.inputs, problem.index, layer, seed, source)
    return {row: {k: r.per_image.detach().to("cpu", torch.float64) for k, r in results.items()}
            for row, results in scored.items()}


def evaluate_methods(methods: dict[str, tuple[str, Method]], metrics: list[Metric], problem: Problem,
                     progress: bool = False, label: str = "final tables", controls: Sequence[str] = (),
                     blur_of: str | None = None, seed: int = 0) -> list[tuple[Metric, list[Row]]]:
    """One comparison table per metric: each method's mean and share of images where it is best, then
    the ``controls`` (``metrics.controls``; ``blurred`` blurs method ``blur_of``'s heatmaps, and is left
    out when it is None or not among ``methods``; ``seed`` seeds ``random``).

    ``methods``: name -> (expression text shown in the table, method); ``progress``: a bar over the
    methods on stderr, named ``label`` (on a slow model the tables take minutes)."""
    bar = progress_bar(len(methods), f"{label}: {len(methods)} methods on {problem.n} images", progress)
    scores = {}
    try:
        for name, (_, method) in methods.items():
            scores[name] = method_scores(method, metrics, problem)
            bar.update()
    finally:
        bar.close()
    texts = {name: text for name, (text, _) in methods.items()}
    source = methods[blur_of][1] if blur_of in methods else None
    for row, by_metric in control_scores(controls, metrics, problem, source, seed).items():
        scores[row] = by_metric
        texts[row] = control_text(row[len(CONTROL_PREFIX):], blur_of)
    tables = []
    for m in metrics:
        results = {name: MetricResult(m.name, scores[name][m.name], m.higher_is_better) for name in texts}
        tables.append((m, compare(results, texts, m)))
    return tables


def method_warnings(methods: dict[str, Method], problem: Problem) -> list[str]:
    """One line per method whose weights are NaN/Inf or whose heatmaps are blank on many of
    ``problem``'s images, with the likely cause (``metrics.diagnostics``); a dispatch is checked per
    class expression on its own images."""
    lines = []
    for name, method in methods.items():
        if isinstance(method, Node):
            lines += weight_problems(name, method, problem.terminals, problem.acts)
            continue
        for node, idx in method.groups(problem.targets).items():
            part = problem.subset(idx)
            lines += weight_problems(f"{name} {to_sexpr(node)}", node, part.terminals, part.acts)
    return lines
