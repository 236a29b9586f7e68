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
from ..cam.scorecam_pass import live_channels
from ..lang.ast import Node
from ..lang.sexpr import parse_expr
from ..lang.terminals import pass_of, terminal_types
from ..metrics.registry import Metric
from .evaluation import method_scores
from .on_demand import OnDemandTerminals
from .problem import Problem

#: The most images the metrics are timed on (with GradCAM, whose terminals are already there), after
#: one that warms them up: one image, then 2, 4, ... of them while a call takes less than
#: ``SAMPLE_SECONDS``, so that a call's fixed cost and the cost per image come apart at the batch
#: sizes the tables run at (timed on one or a few images alone, the fixed cost and the batches' small
#: size made the bundled CNN's tables look 8x dearer than they were).
SAMPLE_IMAGES = 64
SAMPLE_SECONDS = 1.0
#: Terminals on demand are timed on one image, and when that took less than this, on
#: ``TERMINAL_SAMPLE`` more (the tables need them anyway): one image's rate is mostly the call's
#: fixed cost on a small model.
TERMINAL_FAST_SECONDS = 0.5
TERMINAL_SAMPLE = 16
#: Seconds set aside for writing the output folder (TorchScript, figures, report).
OUTPUT_SECONDS = 3.0
#: The incumbents the generalization curve is estimated to score on the test split (the number is
#: known only after the search; a search keeps a handful, and more overrun the budget a little).
CURVE_INCUMBENTS = 8


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
    still need, the baselines' ``check`` on the searched images, the final ``tables``, the
    generalization ``curve`` (the incumbents on the test split), the ``sanity`` check and the
    ``outputs``."""

    terminals: float = 0.0
    check: float = 0.0
    tables: float = 0.0
    sanity: float = 0.0
    outputs: float = OUTPUT_SECONDS
    curve: float = 0.0
    #: the terminals on demand the baselines' check needs on the searched images: the search reserves
    #: them itself (``Search._reserve``, at the rates it measures), so they are not in ``set_aside``
    searched_terminals: float = 0.0

    @property
    def set_aside(self) -> float:
        """What the search's budget leaves out."""
        return self.terminals + self.check + self.tables + self.sanity + self.outputs + self.curve

    @property
    def total(self) -> float:
        return self.set_aside + self.searched_terminals

    def describe(self) -> str:
        parts = [("terminals", self.terminals + self.searched_terminals), ("baselines' check", self.check),
                 ("tables", self.tables), ("generalization curve", self.curve), ("sanity check", self.sanity),
                 ("files", self.outputs)]
        return ", ".join(f"{name} {s:.0f} s" for name, s in parts if s >= 0.5)


def table_cost(problem: Problem, methods: Sequence[Node], metrics: Sequence[Metric], images: torch.Tensor) -> Cost:
    """The ``Cost`` of scoring ``methods`` on ``metrics`` over n images the way the tables do (one subset,
    every method in turn, so that what the metrics share is computed once), timed on ``images[0]`` to
    warm up, then on 1, 2, 4, ... fresh images (the Deletion / Insertion memo must not answer from an
    earlier call) while a call takes less than ``SAMPLE_SECONDS``, at most ``SAMPLE_IMAGES``. Fewer
    than 3 images: one's cost, per image."""
    def timed(index: torch.Tensor) -> float:
        sub = problem.subset(index)
        t = time.perf_counter()
        for node in methods:
            method_scores(node, list(metrics), sub)
        return time.perf_counter() - t

    if images.numel() < 3:
        return Cost(0.0, timed(images[:1]))
    timed(images[:1])
    one, start, k = timed(images[1:2]), 2, 1
    more = one
    while start + 2 * k <= images.numel() and 2 * k <= SAMPLE_IMAGES and more < SAMPLE_SECONDS:
        k *= 2
        more = timed(images[start:start + k])
        start += k
    # two points of fixed + per_image * n; on a busy machine one call can take longer than k images
    per_image = (more - one) / (k - 1) if k > 1 and more > one else more / k
    return Cost(max(one - per_image, 0.0), per_image)


@dataclass(frozen=True)
class AfterSearch:
    """The work after the search that ``estimate_reserve`` times: the tables score ``methods`` rows
    (the ``baselines``, the result and the control maps) on the ``search_metrics`` and the ``shown`` ones, reading the
    terminals ``names``; the baselines' check scores the baselines on the ``search_metrics``; the
    sanity check runs on ``sanity_images`` images (0: none); the generalization curve scores
    ``curve_rows`` incumbents on the search metrics and the test split (0: no curve)."""

    search_metrics: Sequence[Metric]
    shown: Sequence[Metric]
    names: Sequence[str]
    baselines: Sequence[str]
    methods: int
    sanity_images: int
    curve_rows: int = 0


def estimate_reserve(problem: Problem, search_index: torch.Tensor, test_index: torch.Tensor | None,
                     after: AfterSearch, up_front_seconds: float) -> Reserve:
    """The ``Reserve`` of a run on ``problem``: the searched images at ``search_index``, the held-out ones
    at ``test_index``, ``after`` the work after the search, ``up_front_seconds`` the gradient pass's
    seconds per image (the sanity check runs it again, on a randomized model too).

    Computes each terminal on demand for one image (to know its rate, per image or, for a pass that
    skips constant channels, per live channel; for ``TERMINAL_SAMPLE`` more when that was fast) and
    times the tables' work on a few images (``table_cost``)."""
    search_metrics, shown, names, baselines, methods = (after.search_metrics, after.shown, after.names,
                                                         after.baselines, after.methods)
    terms = problem.terminals
    pool = test_index if test_index is not None and test_index.numel() else search_index
    per_image = up_front_seconds
    terminals = later = 0.0
    if isinstance(terms, OnDemandTerminals):
        source = terms.source
        groups = {"+".join(source.group(n)): n for n in names if n in source.on_demand}
        # a pass that skips constant channels costs per live channel, which varies per image (on
        # EfficientNet-Lite0 a one-image sample gave 180 s for terminals that took 394 s); at least one
        # each, for the call's fixed cost
        live = live_channels(problem.acts).sum(dim=1).clamp(min=1).cpu().double() \
            if problem.acts.dim() == 4 and problem.acts.shape[0] == source.n else None

        def units(name: str, index: torch.Tensor) -> float:
            """The work of ``name``'s pass on the images at ``index``: images, or their live channels."""
            if live is None or not pass_of(name).per_live_channel:
                return float(index.numel())
            return float(live[index].sum())

        rates: dict[str, float] = {}  # group -> seconds per unit, of the last sample (not the first call's)

        def sample(index: torch.Tensor) -> float:
            before = {k: (source.work.seconds.get(k, 0.0), units(n, source.missing(n, index)))
                      for k, n in groups.items()}
            t = time.perf_counter()
            for name in groups.values():
                source.ensure(name, index)
            for k, (seconds, done) in before.items():
                if done:
                    rates[k] = (source.work.seconds.get(k, 0.0) - seconds) / done
            return time.perf_counter() - t

        if sample(pool[:1]) < TERMINAL_FAST_SECONDS:  # a small model: the first call's fixed cost is most of it
            sample(pool[1:1 + TERMINAL_SAMPLE])
        every_image = torch.arange(source.n)
        per_image += sum(rates.get(k, 0.0) * units(n, every_image) / max(1, source.n) for k, n in groups.items())

        def remaining(index: torch.Tensor | None) -> float:
            return sum(rates.get(k, 0.0) * units(n, source.missing(n, index)) for k, n in groups.items())

        terminals = remaining(test_index) if test_index is not None else 0.0
        later = remaining(search_index if test_index is not None else None) + terminals
    order = torch.cat([test_index, search_index]) if test_index is not None else search_index
    every = list({m.name: m for m in [*search_metrics, *shown]}.values())
    # the tables' rows: the baselines, and a method of its own standing in for the result (another
    # ranking than the baselines', so the memo does not answer for it)
    stand_in = parse_expr("(relu grads)", terminal_types(), source="<budget>")
    rows = [baseline(b).node for b in baselines][:methods] + [stand_in] * max(0, methods - len(baselines))
    cost = table_cost(problem, rows, every, order)
    n_search, n_test = int(search_index.numel()), 0 if test_index is None else int(test_index.numel())
    tables = sum(cost(n) for n in (n_search, n_test) if n)
    # the check scores the baselines on the search's metrics only: that share of a table's rows and metrics
    check = cost(n_search) * len(baselines) / max(1, len(rows)) * len(search_metrics) / max(1, len(every))
    curve = cost(n_test) * after.curve_rows / max(1, len(rows)) * len(search_metrics) / max(1, len(every)) \
        if n_test else 0.0
    return Reserve(terminals, check, tables, 2 * after.sanity_images * per_image, curve=curve,
                   searched_terminals=later - terminals)
