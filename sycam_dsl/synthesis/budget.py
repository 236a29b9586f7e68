"""The whole run's time budget (``Budget(whole_run=True)``, ``synth --time``).

What comes after the search costs about as much as the search itself on a slow model: the
baselines' check scores four baselines on every searched image, the final tables score every method
on every report metric on every image, and ScoreCAM and AblationCAM need ``cic`` and ``abl``
(``K`` forward passes per image) where they were not computed yet. So, the way terminals on demand
are reserved inside the search (``Search._reserve``), that work is measured on a sample before the
search and set aside: the search gets what is left of the budget. The sample's work is not lost (the
terminals computed are kept, and the tables need them anyway).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..baselines import baseline
from ..metrics.registry import Metric
from .evaluation import method_scores
from .on_demand import OnDemandTerminals
from .problem import Problem

#: Images the metrics are timed on (with GradCAM, whose terminals are already there), after one that
#: warms them up: one image, then this many, so that a call's fixed cost and the cost per image come
#: apart (timed on a few images alone, the fixed cost made the tables look several times dearer).
SAMPLE_IMAGES = 8
#: Seconds set aside for writing the output folder (TorchScript, figures, report).
OUTPUT_SECONDS = 3.0


@dataclass(frozen=True)
class Cost:
    """Seconds one call of a metric takes on ``n`` images: ``fixed + per_image * n``."""

    fixed: float
    per_image: float

    def __call__(self, n: int) -> float:
        return self.fixed + self.per_image * n


@dataclass(frozen=True)
class Reserve:
    """Estimated seconds of the work after the search: ``terminals`` on demand that the held-out images
    still need, the baselines' ``check`` on the searched images, the final ``tables``, the ``sanity``
    check and the ``outputs``."""

    terminals: float = 0.0
    check: float = 0.0
    tables: float = 0.0
    sanity: float = 0.0
    outputs: float = OUTPUT_SECONDS
    #: the terminals on demand the baselines' check needs on the searched images: the search reserves
    #: them itself (``Search._reserve``, at the rates it measures), so they are not in ``set_aside``
    searched_terminals: float = 0.0

    @property
    def set_aside(self) -> float:
        """What the search's budget leaves out."""
        return self.terminals + self.check + self.tables + self.sanity + self.outputs

    @property
    def total(self) -> float:
        return self.set_aside + self.searched_terminals

    def describe(self) -> str:
        parts = [("terminals", self.terminals + self.searched_terminals), ("baselines' check", self.check),
                 ("tables", self.tables), ("sanity check", self.sanity), ("files", self.outputs)]
        return ", ".join(f"{name} {s:.0f} s" for name, s in parts if s >= 0.5)


def metric_costs(problem: Problem, metrics: Sequence[Metric], images: torch.Tensor) -> dict[str, Cost]:
    """Each metric's ``Cost`` per call, timed on GradCAM: on ``images[0]`` to warm up, then on
    ``images[1]`` and on ``images[2:2 + SAMPLE_IMAGES]`` (every image scored once: the Deletion /
    Insertion memo must not answer from an earlier call). Fewer than 3 images: one's cost, per image."""
    node = baseline("GradCAM").node

    def timed(m: Metric, index: torch.Tensor) -> float:
        t = time.perf_counter()
        method_scores(node, [m], problem.subset(index))
        return time.perf_counter() - t

    out = {}
    for m in metrics:
        if images.numel() < 3:
            out[m.name] = Cost(0.0, timed(m, images[:1]))
            continue
        k = min(SAMPLE_IMAGES, int(images.numel()) - 2)
        timed(m, images[:1])
        one, more = timed(m, images[1:2]), timed(m, images[2:2 + k])
        # two points of fixed + per_image * n; on a busy machine one call can take longer than k images
        per_image = (more - one) / (k - 1) if k > 1 and more > one else more / k
        out[m.name] = Cost(max(one - per_image, 0.0), per_image)
    return out


def estimate_reserve(problem: Problem, search_index: torch.Tensor, test_index: torch.Tensor | None,
                     search_metrics: Sequence[Metric], shown: Sequence[Metric], names: Sequence[str],
                     baselines: Sequence[str], methods: int, sanity_images: int, up_front_seconds: float) -> Reserve:
    """The ``Reserve`` of a run on ``problem``: the searched images at ``search_index``, the held-out ones
    at ``test_index``; ``names`` the terminals the tables read, ``methods`` the rows of each table,
    ``sanity_images`` the images of the sanity check (0: none), ``up_front_seconds`` the gradient
    pass's seconds per image (the sanity check runs it again, on a randomized model too).

    Computes each terminal on demand for one image (to know its rate) and times the metrics on a few
    images (``metric_costs``)."""
    terms = problem.terminals
    first = (test_index if test_index is not None and test_index.numel() else search_index)[:1]
    per_image = up_front_seconds
    if isinstance(terms, OnDemandTerminals):
        source = terms.source
        for name in names:
            if name in source.on_demand:
                source.ensure(name, first)
        per_image += sum(source.seconds_per_image(n) or 0.0 for n in {source.group(n)[0] for n in source.on_demand})
    terminals = 0.0
    if isinstance(terms, OnDemandTerminals) and test_index is not None:
        terminals = terms.source.remaining_seconds(list(names), test_index)
    later = terms.remaining_seconds(list(names)) if isinstance(terms, OnDemandTerminals) else 0.0
    order = torch.cat([test_index, search_index]) if test_index is not None else search_index
    cost = metric_costs(problem, list({m.name: m for m in [*search_metrics, *shown]}.values()), order)
    n_search, n_test = int(search_index.numel()), 0 if test_index is None else int(test_index.numel())
    check = len(baselines) * sum(cost[m.name](n_search) for m in search_metrics)
    tables = methods * sum(cost[m.name](n) for m in shown for n in (n_search, n_test) if n)
    return Reserve(terminals, check, tables, 2 * sanity_images * per_image, searched_terminals=later - terminals)
