"""``synthesize``: the Python API of ``sycam-dsl synth``.

    from sycam_dsl import synthesize
    result = synthesize("resnet50", images="photos/", weights="resnet50.pth", metric="deletion",
                        metric_options={"steps": 10}, grammar="g2", budget=600, out_dir="runs/r50")
    print(result.table())          # SyCAM against GradCAM, GradCAM++, ScoreCAM and AblationCAM
    cam = result.compile()         # a TorchScript module computing the weights W

``synthesize`` builds one ``Run`` and runs its phases: load the model and images (``Run.open``),
compute the terminals (kept in the terminal store), hold out the test split
(``SearchOptions.test_split``; the search never sees those images), run the search (one, or one per
predicted class) on the rest, score the result and the baselines on the test split and on the
searched images, then write the output folder (``result.json``, ``cam.pt``, ``report.md``, the
heatmap grid and the score plot; see ``outputs.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..allocator import keep_freed_memory
from ..baselines import SEARCH_BASELINES, baseline
from ..cam.compute import TerminalInfo
from ..cam.images import ImageSet
from ..cam.reshape import Reshape, reshape_text
from ..cam.sanity import check_sanity_size
from ..cam.store import image_digests, reuse_line
from ..errors import SycamError
from ..lang.ast import Node, to_sexpr
from ..lang.sexpr import parse_expr
from ..metrics.compare import Row
from ..metrics.objectives import Objective, metric_list, parse_objective
from ..metrics.registry import Metric
from ..models import LoadedModel
from ..models.devices import resolve_device
from ..models.runtime import RuntimeSpec, check_support, runtime_name
from ..models.targets import Target, target_name
from ..parse import resolve_grammar
from ..parse.grammar import Grammar
from ..synthesis.build import ProblemOptions, build_problem
from ..synthesis.config import Budget, SearchConfig, SearchOptions
from ..synthesis.dispatch import Dispatch
from ..synthesis.distributed import ClusterOptions, RayScorer, ShardPool, WorkerSpec, import_ray, shard_pool, use_pool
from ..synthesis.evaluation import Method, evaluate_methods, method_scores
from ..synthesis.incumbent import parse_untils, until_text
from ..synthesis.on_demand import OnDemandTerminals
from ..synthesis.per_class import ClassSearch, dispatch_of, search_per_class
from ..synthesis.problem import Data, Problem
from ..synthesis.search import Search, SearchOutcome
from ..synthesis.split import Split, make_split
from ..util.progress import note
from .generalization import generalization
from .inputs import as_budget, load_data, loaded_model, resolve_metric
from .options import DataOptions, OutputOptions, RunOptions
from .outputs import take_output_folder, write_outputs
from .result import SYCAM, Result, RunRecord

__all__ = ["MIN_SEARCH_SHARE", "Data", "Run", "as_budget", "build_problem", "loaded_model", "resolve_metric",
           "result_sanity", "synthesize"]


def result_sanity(model: LoadedModel, layer: str, problem: Problem, best: Node, device: str, chunk_size: int | str,
                  progress: bool, runtime: RuntimeSpec | None = None, reshape: Reshape = "auto") -> dict[str, Any]:
    """``synth --sanity``: the randomization check (``cam.sanity.check_result``, seed 0) of ``best``
    and the baselines on at most ``DEFAULT_SANITY_IMAGES`` of ``problem``'s images, spread evenly;
    a check that cannot run gives ``{"error": why}`` instead of failing the finished search."""
    from ..cam.sanity import DEFAULT_SANITY_IMAGES, check_result, spread

    images = problem.inputs.images[spread(problem.n, DEFAULT_SANITY_IMAGES).to(problem.inputs.images.device)]
    methods: dict[str, Node] = {SYCAM: best, **{b: baseline(b).node for b in SEARCH_BASELINES}}
    texts = {SYCAM: to_sexpr(best), **{b: baseline(b).expression for b in SEARCH_BASELINES}}
    try:
        return check_result(model, layer, images, methods, texts, SYCAM, device=device, chunk_size=chunk_size,
                            progress=progress, runtime=runtime, reshape=reshape)
    except SycamError as e:
        return {"error": str(e)}


#: The least share of a whole-run budget the search gets, even when the rest of the run needs more
#: (the run then says so at the start, and overruns): the estimate of the rest errs high (the memo
#: the tables share with the search is not in it), and a search that gets no time finds nothing.
MIN_SEARCH_SHARE = 0.5


@dataclass
class Found:
    """What the search phase found: the ``config`` it ran with, its ``outcomes`` (one, or one per
    class: ``searches``), why it stopped, the ``best`` expression (a per-class run's fallback) or the
    per-class ``dispatch``, the searched images of the final tables (``eval_problem``), the Pareto
    ``front`` (empty for one metric) and the search's ``seconds``."""

    config: SearchConfig
    outcomes: list[SearchOutcome]
    searches: list[ClassSearch]
    stopped_by: str
    best: Node | None
    dispatch: Dispatch | None
    eval_problem: Problem
    front: list[Node]
    seconds: float


@dataclass
class Tables:
    """What the evaluate phase scored: the final tables on the searched images and on the test split
    (None: no split), the front members' means on the test split, the sanity check's figures (None:
    not run), its ``seconds`` and the generalization curve (``generalization.py``; None: no test split,
    or per-class searches)."""

    search: list[tuple[Metric, list[Row]]]
    test: list[tuple[Metric, list[Row]]] | None
    front_test: list[dict[str, float]] | None
    sanity: dict[str, Any] | None
    seconds: float
    generalization: dict[str, Any] | None = None


class Run:
    """One synthesis, built once by ``Run.open`` from what ``synthesize`` was given: the ``model``, the
    images' ``data``, the ``objective`` and the metrics ``shown`` in the tables, the ``grammar``, the
    ``options`` and the run's start ``t_start``. Its phases, in order (``execute`` runs them): the
    ``terminals`` (on the worker ``pool`` when there is one) give the ``problem``; ``split`` holds out
    the test split; ``search``; ``evaluate`` scores the final tables; ``write`` writes the output
    folder from the ``record`` of the run and gives the ``Result``."""

    pool: ShardPool | None
    problem: Problem
    info: TerminalInfo
    terminal_seconds: float
    test_split: Split
    search_problem: Problem
    test_problem: Problem | None

    def __init__(self, model: LoadedModel, data: Data, objective: Objective, shown: list[Metric], grammar: Grammar,
                 options: RunOptions, t_start: float) -> None:
        self.model, self.data, self.objective, self.shown = model, data, objective, shown
        self.grammar, self.options, self.t_start = grammar, options, t_start

    @classmethod
    def open(cls, model: LoadedModel | nn.Module | str, images: ImageSet | torch.Tensor | str | Path,
             metric: str | Objective | Sequence[str | Metric], metric_options: dict[str, Any] | None,
             grammar: str | Path | Grammar, options: RunOptions, t_start: float) -> Run:
        """Check what can be checked before any work (each a one-line ``SycamError``), then load the
        model, the grammar and the images."""
        data, search, output = options.data, options.search, options.output
        if options.cluster.on:
            import_ray()  # one line, before any work, when Ray is missing
        check_support(data.runtime, data.precision, resolve_device(options.device))  # one line, before any work
        objective = parse_objective(metric, metric_options)
        shown = metric_list(objective)
        parse_untils(search.until, len(shown))  # one threshold per metric, refused before any work
        for m in output.report_metrics or []:
            m = resolve_metric(m, None)
            if m.name not in {s.name for s in shown}:
                shown.append(m)
        if isinstance(data.targets, Target):  # a metric that cannot score the target, before any work
            for m in shown:
                m.check_target(data.targets)
        loaded = loaded_model(model, options.weights, options.device)
        gram = resolve_grammar(grammar)
        images_data = load_data(images, data.masks, data.labels, loaded, data.size)
        if output.sanity:  # before any work: the check's SSIM needs its whole window
            check_sanity_size(tuple(images_data.images.shape[-2:]))
        for m in shown:
            if m.needs_masks and images_data.masks is None:
                raise SycamError(f"metric {m.name!r} compares heatmaps with object masks: give masks (--masks DIR)")
        return cls(loaded, images_data, objective, shown, gram, options, t_start)

    def execute(self) -> Result:
        """Every phase, in order; the worker pool (if any) stops when they end or fail."""
        names = list(dict.fromkeys(list(self.grammar.inputs)
                                   + [t for b in SEARCH_BASELINES for t in baseline(b).terminals]))
        t0 = time.perf_counter()
        with ExitStack() as stack:
            self.pool = self._start_pool(stack, names)
            self.terminals(names, t0)
            self.split()
            found = self.search()
            return self.write(found, self.evaluate(found))

    def problem_options(self) -> ProblemOptions:
        """How ``build_problem`` computes the terminals here and, for their shards, on the workers."""
        data, search = self.options.data, self.options.search
        return ProblemOptions(data.batch_size, data.chunk_size, data.cache_dir, data.use_cache,
                              self.options.output.progress, search.memo_mb, data.cache_size,
                              on_demand=search.terminals == "on-demand" or self.options.cluster.on,
                              precision=data.precision, runtime=RuntimeSpec(data.runtime, data.precision),
                              reshape=data.reshape)

    def _start_pool(self, stack: ExitStack, names: list[str]) -> ShardPool | None:
        """The Ray workers (stopped with ``stack``), which run the gradient pass of their shards, then
        ``cic`` and ``abl`` on demand; None without a cluster."""
        if not self.options.cluster.on:
            return None
        chosen = self.problem_options()
        settings = {f.name: getattr(chosen, f.name) for f in fields(chosen) if f.name not in ("progress", "on_demand")}
        spec = WorkerSpec(self.model, self.options.layer, tuple(names), self.objective, self.grammar.start.type,
                          settings)
        return stack.enter_context(shard_pool(self.options.cluster, spec, self.data.images,
                                              self.options.data.targets, self.data.masks))

    def terminals(self, names: list[str], t0: float) -> None:
        """The terminals ``names`` of every image (up front, or the gradient pass's with ``cic`` and
        ``abl`` on demand) and the ``problem`` built on them; ``t0``: when this phase started."""
        data, progress, pool = self.options.data, self.options.output.progress, self.pool
        device = self.options.device
        up_front = None if pool is None else partial(pool.up_front, device=device)
        self.problem, self.info = build_problem(self.model, self.options.layer, self.data, names, data.targets,
                                                device, options=self.problem_options(), up_front=up_front)
        note(f"forward passes: {runtime_name(self.problem.inputs.model)}, {data.precision} (asked: {data.runtime})",
             progress)
        terms = self.problem.terminals
        if pool is not None and isinstance(terms, OnDemandTerminals):
            use_pool(terms.source, pool, self.options.search.terminals == "eager", progress)
        if data.use_cache:
            later = " (the gradient pass; cic and abl come on demand)" if isinstance(terms, OnDemandTerminals) else ""
            note(f"terminals: {reuse_line(self.info.stored, self.problem.n)}{later}", progress)
        self.terminal_seconds = time.perf_counter() - t0

    def split(self) -> None:
        """Hold out the test split before any search: the searches only ever get ``search_problem``."""
        problem, search = self.problem, self.options.search
        self.test_split = make_split(problem, search.test_split, search.seed,
                                     problem.targets if self.options.per_class else problem.classes)
        self.search_problem = problem.subset(self.test_split.search) if self.test_split.on else problem
        self.test_problem = problem.subset(self.test_split.test) if self.test_split.on else None

    def search_budget(self) -> Budget:
        """The search's budget: the one asked for, or for a whole-run budget what is left of it once the
        time spent since ``t_start`` and the estimated cost of the work after the search (``budget.py``)
        are set aside; when that work needs more than what is left, one line says so now."""
        budget = as_budget(self.options.budget)
        if not budget.whole_run or budget.seconds is None:
            return budget
        from ..cam.sanity import DEFAULT_SANITY_IMAGES
        from ..synthesis.budget import CURVE_INCUMBENTS, AfterSearch, estimate_reserve

        problem, split = self.problem, self.test_split
        after = AfterSearch(metric_list(self.objective), self.shown,
                            [t for b in SEARCH_BASELINES for t in baseline(b).terminals], SEARCH_BASELINES,
                            len(SEARCH_BASELINES) + 1 + len(self.options.output.control_names),
                            min(DEFAULT_SANITY_IMAGES, problem.n) if self.options.output.sanity else 0,
                            0 if self.options.per_class else CURVE_INCUMBENTS)
        reserve = estimate_reserve(problem, split.search if split.on else torch.arange(problem.n),
                                   split.test if split.on else None, after, self.terminal_seconds / max(1, problem.n))
        left = budget.seconds - (time.perf_counter() - self.t_start)
        floor = MIN_SEARCH_SHARE * budget.seconds
        if left - reserve.total >= floor:
            # the search sets the baselines' terminals on demand aside itself (Search._reserve)
            return Budget(left - reserve.set_aside, budget.candidates, whole_run=True)
        total = budget.seconds - left + floor + reserve.total
        # a warning, not a note: it shows with --quiet too
        why = (f"more than the {max(left, 0.0):.0f} s left of the time budget" if reserve.total > left else
               f"which leaves the search less than half of the {budget.seconds:.0f} s time budget")
        logging.getLogger(__name__).warning(
            "the work after the search needs about %.0f s (%s), %s: the search gets %.1f s (the terminals it "
            "computes on demand come on top) and the run will take about %.0f s in all (give more time, or "
            "fewer images or report metrics)", reserve.total,
            reserve.describe(), why, floor, total)
        # the floor is the search's own: it does not end early by the terminals the baselines' check will
        # need (else a slow model's search ended before its first candidate, its floor all reserved), and
        # the terminals it computes on demand do not count against it (else the first candidates' cic
        # took a slow model's whole floor: 3 candidates judged on Lite0 in 60 s)
        return Budget(floor, budget.candidates, whole_run=True, sets_aside=False)

    def search(self) -> Found:
        """One search, or one per predicted class, on ``search_problem`` (candidates scored by the
        pool's workers, or here without one)."""
        search, out, progress = self.options.search, self.options.out, self.options.output.progress
        scorer = RayScorer.factory(self.pool) if self.pool is not None else None
        options = {f.name: getattr(search, f.name) for f in fields(SearchOptions)}
        held_out = tuple(image_digests(self.test_problem.inputs.images)) if self.test_problem is not None else ()
        config = SearchConfig(self.objective, self.search_budget(),
                              **{**options, "level_sizes": tuple(search.level_sizes)}, held_out=held_out)
        t0 = time.perf_counter()
        dispatch: Dispatch | None = None
        searches: list[ClassSearch] = []
        if self.options.per_class:
            searches, stopped_by = search_per_class(self.search_problem, self.grammar, config, out, progress,
                                                    self.options.resume, search.min_class_images, scorer)
            outcomes = [s.outcome for s in searches]
            dispatch = dispatch_of(searches, config, self.search_problem)
            best = dispatch.fallback if dispatch is not None else None
            eval_problem = self.search_problem
        else:
            outcome = Search(self.search_problem, self.grammar, config, out, progress,
                             scorer=scorer).run(resume=self.options.resume)
            outcomes, stopped_by, best = [outcome], outcome.stopped_by, outcome.best
            eval_problem = self.search_problem.subset(outcome.subsets.level(len(outcome.subsets.level_sizes) - 1))
        seconds = time.perf_counter() - t0
        front = [parse_expr(m.expression, self.grammar.inputs, source="<front>") for m in outcomes[0].front] \
            if dispatch is None else []
        return Found(config, outcomes, searches, stopped_by, best, dispatch, eval_problem, front, seconds)

    def evaluate(self, found: Found) -> Tables:
        """The final tables of the result and the baselines on the searched images and on the test split,
        the front members' means on the test split, and the sanity check when asked for."""
        output, test_problem = self.options.output, self.test_problem
        front_test = None
        if found.front and test_problem is not None:  # the means on the searched images are the search's own
            front_test = [{k: float(v.mean()) for k, v in method_scores(node, metric_list(self.objective),
                                                                         test_problem).items()}
                          for node in found.front]
        t0 = time.perf_counter()
        methods: dict[str, tuple[str, Method]] = {b: (baseline(b).expression, baseline(b).node)
                                                  for b in SEARCH_BASELINES}
        if found.dispatch is not None:
            methods[SYCAM] = ("per-class dispatch", found.dispatch)
        elif found.best is not None:
            methods[SYCAM] = (to_sexpr(found.best), found.best)
        def tables(problem: Problem, label: str) -> list[tuple[Metric, list[Row]]]:
            return evaluate_methods(methods, self.shown, problem, output.progress, f"final tables, {label}",
                                    output.control_names, SYCAM, self.options.search.seed)

        search_tables = tables(found.eval_problem, "searched images")
        test_tables = tables(test_problem, "test split") if test_problem is not None else None
        curve = None
        if test_problem is not None and found.dispatch is None and not self.options.per_class:
            history = found.outcomes[0].state.history
            note(f"generalization curve: {len(history)} incumbents on the test split", output.progress)
            curve = generalization(history, metric_list(self.objective), test_problem, self.grammar.inputs,
                                   found.best)
        seconds = time.perf_counter() - t0
        sanity = None
        if output.sanity and found.best is not None:
            t0 = time.perf_counter()
            note(f"sanity check: the result and {len(SEARCH_BASELINES)} baselines on a randomized model",
                 output.progress)
            # the randomized model is converted in memory only: its file would never be read again
            runtime = RuntimeSpec(runtime_name(self.problem.inputs.model), self.options.data.precision)
            sanity = result_sanity(self.model, self.info.layer, test_problem or found.eval_problem, found.best,
                                   self.options.device, self.options.data.chunk_size, output.progress, runtime,
                                   self.options.data.reshape)
            seconds += time.perf_counter() - t0
        return Tables(search_tables, test_tables, front_test, sanity, seconds, curve)

    def write(self, found: Found, tables: Tables) -> Result:
        """The ``Result``, with the output folder written from the run's ``record``."""
        knee = found.outcomes[0].knee if found.front else None
        if tables.test is not None:
            result = Result(found.best, found.dispatch, tables.test, {}, self.options.out, found.outcomes,
                            search_tables=tables.search, front=found.front, knee=knee)
        else:
            result = Result(found.best, found.dispatch, tables.search, {}, self.options.out, found.outcomes,
                            front=found.front, knee=knee)
        write_outputs(self.record(result, found, tables))
        return result

    def timings(self, found: Found, tables: Tables) -> dict[str, float]:
        """The seconds of each phase, for ``result.json``."""
        terminals = self.problem.terminals
        demand_s = terminals.source.work.total_seconds if isinstance(terminals, OnDemandTerminals) else 0
        timings = {"terminals_s": self.terminal_seconds, "terminals_on_demand_s": demand_s,
                   "search_s": found.seconds, "evaluation_s": tables.seconds}
        first = [o.state.first_scored for o in found.outcomes if o.state.first_scored is not None]
        if first:  # from the run's start: the terminals up front, then the search's own clock
            timings["first_scored_s"] = self.terminal_seconds + min(first)
        return timings

    def settings(self, config: SearchConfig) -> dict[str, Any]:
        """The run's settings, for ``result.json`` (``config``: the search's)."""
        o, data, search, loaded = self.options, self.options.data, self.options.search, self.model
        problem, pool, objective = self.problem, self.pool, self.objective
        return {
            "model": loaded.name, "model_source": loaded.source, "weights": o.weights, "layer": self.info.layer,
            "images": self.data.source, "working_dir": os.getcwd(),  # where a relative images path is (sanity)
            "size": int(self.data.images.shape[-1]), "metric": objective.name,
            "metric_options": dict(objective.options), "grammar": self.grammar.source,
            "budget_seconds": as_budget(o.budget).seconds,
            "budget_candidates": config.budget.candidates, "budget_whole_run": config.budget.whole_run,
            "search_budget_seconds": config.budget.seconds, "per_class": o.per_class, "seed": search.seed,
            "level_sizes": [s for s in search.level_sizes], "equivalence_size": search.equivalence_size,
            "max_size": search.max_size, "report_metrics": [m.name for m in self.shown], "device": str(o.device),
            "batch_size": data.batch_size, "chunk_size": data.chunk_size, "precision": data.precision,
            "target": target_name(data.targets),
            "runtime": {"asked": data.runtime, "used": runtime_name(problem.inputs.model)},
            "reshape": reshape_text(data.reshape),
            "forward": {"batch_size": problem.inputs.batch_size, "channels_last": problem.inputs.channels_last,
                        "terminal_batch_sizes": problem.terminal_batch_sizes},
            "min_class_images": search.min_class_images,
            "memo_mb": search.memo_mb, "candidate_batch": search.candidate_batch, "image_chunk": search.image_chunk,
            "early_stop": search.early_stop, "until": until_text(parse_untils(search.until)),
            "test_split": self.test_split.fraction, "terminals": search.terminals, "strategy": search.strategy,
            "images_from_store": self.info.stored if data.use_cache else None,
            "workers": len(pool.workers) if pool is not None else 0, "controls": list(o.output.control_names),
            **(o.output.settings or {}),
        }

    def record(self, result: Result, found: Found, tables: Tables) -> RunRecord:
        """Everything the output folder is written from (``RunRecord``)."""
        pool = self.pool
        return RunRecord(result, self.model, self.data, self.problem, found.eval_problem, self.grammar,
                         found.searches, found.stopped_by, self.settings(found.config), self.timings(found, tables),
                         self.t_start, self.options.output.report_images, search_problem=self.search_problem,
                         test_problem=self.test_problem, split=self.test_split, sanity=tables.sanity,
                         front_test=tables.front_test, generalization=tables.generalization,
                         workers=None if pool is None else {"count": len(pool.workers), "restarts": pool.restarts},
                         stratified_by="predicted class" if self.options.per_class or self.data.labels is None
                         else "label")


def synthesize(model: LoadedModel | nn.Module | str, layer: str | None = None,
               images: ImageSet | torch.Tensor | str | Path | None = None, *,
               metric: str | Objective | Sequence[str | Metric] = "deletion",
               metric_options: dict[str, Any] | None = None,
               grammar: str | Path | Grammar = "g2", budget: Budget | float | None = None,
               per_class: bool = False, out_dir: str | Path | None = None, resume: bool = False,
               weights: str | None = None, device: str = "cpu", data: DataOptions = DataOptions(),
               search: SearchOptions = SearchOptions(), output: OutputOptions = OutputOptions(),
               cluster: ClusterOptions = ClusterOptions()) -> Result:
    """Search ``grammar`` for the weight expression that scores best on ``metric`` for ``model`` at
    ``layer`` (None: the model's default) on ``images``, and write the results to ``out_dir``. Several
    metrics (``"deletion,insertion"`` or a list) give the Pareto front of the expressions none beats on
    every metric at once (``front``): ``result.front`` holds it, ``result.best`` its knee member.

    ``model``: a name for ``load_model`` (with ``weights``), a ``LoadedModel`` or an ``nn.Module``
    (taking images as given). ``images``: a folder, an ``ImageSet`` or a tensor ``[N, 3, H, W]``
    normalized for the model. ``metric_options``: the metric's options (e.g. ``{"steps": 10}``; with
    several metrics each takes those it has, ``"deletion.steps"`` names one).
    ``budget``: a ``Budget`` or seconds (of search; ``Budget(seconds, whole_run=True)``: of the whole
    call, the work after the search estimated and set aside, see ``budget.py``). ``per_class``: one
    search per predicted class, compiled into one dispatching module. An ``out_dir`` that holds a
    checkpoint of the same search is resumed when ``resume`` is True (a single search's checkpoint
    only without ``per_class``, and per-class ones only with it). ``out_dir`` is created and locked
    first: a file, a folder that cannot be written, or one another run holds is refused before any
    work. A search that scored no candidate before its time ran out gives ``best`` None
    (``expression: null``).

    The rest comes in groups: ``data`` (masks, labels, targets, image size, batch sizes, the
    terminal cache; ``DataOptions``), ``search`` (subsets, expression size, the evaluation engine;
    ``SearchOptions``), ``output`` (report metrics and images, progress, extra settings;
    ``OutputOptions``) and ``cluster`` (Ray workers for the terminals and the scoring; ``ClusterOptions``,
    see ``distributed``: the same result as one process). It builds one ``Run`` and runs its phases."""
    t_start = time.perf_counter()
    keep_freed_memory()  # about 2x faster scoring here (see allocator); changes no result
    if images is None:
        raise SycamError("give images: a folder, an ImageSet or a tensor [N, 3, H, W]")
    if isinstance(data.targets, Target) and not data.targets.is_class and per_class:
        raise SycamError(f"target {data.targets.name} explains no class: a per-class search needs a class "
                         f"target; drop per_class, or use a class target")
    options = RunOptions(layer, budget, per_class, Path(out_dir) if out_dir is not None else None, resume, weights,
                         device, data, search, output, cluster)
    # checked and locked before any work, and locked until the files are written
    with take_output_folder(options.out, resume, per_class) if options.out is not None else nullcontext():
        return Run.open(model, images, metric, metric_options, grammar, options, t_start).execute()
