"""``synthesize``: the Python API of ``sycam-dsl synth``.

    from sycam_dsl import synthesize
    result = synthesize("resnet50", images="photos/", weights="resnet50.pth", metric="deletion",
                        metric_options={"steps": 10}, grammar="g2", budget=600, out_dir="runs/r50")
    print(result.table())          # SyCAM against GradCAM, GradCAM++, ScoreCAM and AblationCAM
    cam = result.compile()         # a TorchScript module computing the weights W

The pipeline: load the model and images, compute the terminals (kept in the terminal store), hold out the
test split (``SearchOptions.test_split``; the search never sees those images), run the search (one,
or one per predicted class) on the rest, score the result and the baselines on the test split and
on the searched images, then write the output folder (``result.json``, ``cam.pt``, ``report.md``,
the heatmap grid and the score plot; see ``outputs.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..allocator import keep_freed_memory
from ..baselines import SEARCH_BASELINES, baseline
from ..cam.compute import TerminalInfo
from ..cam.images import ImageSet, load_images
from ..cam.sanity import check_sanity_size
from ..cam.store import image_digests, reuse_line
from ..errors import SycamError
from ..lang.ast import Node, to_sexpr
from ..lang.sexpr import parse_expr
from ..metrics import get_metric
from ..metrics.objectives import Objective, Objectives, bind_options, metric_list, objective_of
from ..metrics.registry import Metric
from ..models import LoadedModel, Normalization, load_model
from ..models.devices import resolve_device
from ..models.runtime import RuntimeSpec, check_support, runtime_name
from ..parse import resolve_grammar
from ..parse.grammar import Grammar
from ..synthesis.build import build_problem
from ..synthesis.config import Budget, SearchConfig, SearchOptions
from ..synthesis.dispatch import Dispatch
from ..synthesis.distributed import ClusterOptions, RayScorer, ShardPool, WorkerSpec, import_ray, shard_pool, use_pool
from ..synthesis.evaluation import Method, evaluate_methods, method_scores
from ..synthesis.incumbent import parse_untils, until_text
from ..synthesis.on_demand import OnDemandTerminals
from ..synthesis.per_class import ClassSearch, check_resume_kind, dispatch_of, search_per_class
from ..synthesis.problem import Data, Problem
from ..synthesis.search import Search
from ..synthesis.split import Split, make_split
from ..util.progress import note
from .options import DataOptions, OutputOptions
from .outputs import claim_output_folder, write_outputs
from .result import SYCAM, Result, RunRecord


def resolve_metric(metric: str | Metric, options: dict[str, Any] | None) -> Metric:
    m = get_metric(metric) if isinstance(metric, str) else metric
    return m.with_options(**options) if options else m


def resolve_objective(metric: str | Objective | Sequence[str | Metric],
                      options: dict[str, Any] | None) -> Objective:
    """What the search optimizes: one metric, or several (a list, or names separated by commas, e.g.
    ``"deletion,insertion"``) as ``Objectives``; ``options`` apply to every metric that takes them,
    ``NAME.KEY`` to that metric only (``bind_options``)."""
    if isinstance(metric, Objectives):
        return objective_of(bind_options(metric.metrics, options)) if options else metric
    items = metric.split(",") if isinstance(metric, str) else [metric] if isinstance(metric, Metric) else list(metric)
    named = [m for m in items if not isinstance(m, str) or m.strip()]
    if len(named) == 1:
        return resolve_metric(named[0].strip() if isinstance(named[0], str) else named[0], options)
    metrics = [get_metric(m.strip()) if isinstance(m, str) else m for m in named]
    return objective_of(bind_options(metrics, options))


def as_budget(budget: Budget | float | int | None) -> Budget:
    """A ``Budget``; a number is seconds; None is the default of 10 minutes."""
    if budget is None:
        return Budget(seconds=600.0)
    if isinstance(budget, Budget):
        return budget
    return Budget(seconds=float(budget))


def loaded_model(model: LoadedModel | nn.Module | str, weights: str | None, device: str) -> LoadedModel:
    """``model`` as a ``LoadedModel``: a name for ``load_model`` (with ``weights``), a ``LoadedModel``
    as it is, or an ``nn.Module`` moved to ``device`` (taking images as given, its default layer)."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model, weights, device)
    if isinstance(model, nn.Module):
        from ..models.layers import default_layer
        return LoadedModel(model.to(device).eval(), type(model).__name__, default_layer(model),
                           Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), source="module")
    raise SycamError(f"model must be a name, a LoadedModel or an nn.Module, got {type(model).__name__}")


def _data(images: ImageSet | torch.Tensor | str | Path, masks: torch.Tensor | str | Path | None,
          labels: torch.Tensor | None, model: LoadedModel, size: int | None) -> Data:
    if isinstance(images, (str, Path)):
        mask_dir = masks if isinstance(masks, (str, Path)) else None
        images = load_images(images, size=size or model.input_size, normalize=model.normalize, masks=mask_dir)
    if isinstance(images, ImageSet):
        data = Data(images.images, images.files, images.labels, images.masks, images.classes, str(images.root))
    elif isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise SycamError(f"images must be a tensor [N, 3, H, W], got shape {list(images.shape)}")
        data = Data(images, [f"image {i}" for i in range(images.shape[0])])
    else:
        raise SycamError(f"images must be a folder, an ImageSet or a tensor [N, 3, H, W], got {type(images).__name__}")
    if isinstance(masks, torch.Tensor):
        data.masks = masks.bool()
    if labels is not None:
        data.labels = torch.as_tensor(labels).long()
    n, hw = data.images.shape[0], tuple(data.images.shape[-2:])
    if data.masks is not None and tuple(data.masks.shape) != (n, *hw):
        raise SycamError(f"masks must be [N, H, W] = {[n, *hw]}, one per image, got {list(data.masks.shape)}")
    if data.labels is not None and tuple(data.labels.shape) != (n,):
        raise SycamError(f"labels must be [N] = [{n}], got {list(data.labels.shape)}")
    return data


def result_sanity(model: LoadedModel, layer: str, problem: Problem, best: Node, device: str, chunk_size: int | str,
                  progress: bool, runtime: RuntimeSpec | None = None) -> dict[str, Any]:
    """``synth --sanity``: the randomization check (``cam.sanity.check_result``, seed 0) of ``best``
    and the baselines on at most ``DEFAULT_SANITY_IMAGES`` of ``problem``'s images, spread evenly;
    a check that cannot run gives ``{"error": why}`` instead of failing the finished search."""
    from ..cam.sanity import DEFAULT_SANITY_IMAGES, check_result, spread

    images = problem.inputs.images[spread(problem.n, DEFAULT_SANITY_IMAGES).to(problem.inputs.images.device)]
    methods: dict[str, Node] = {SYCAM: best, **{b: baseline(b).node for b in SEARCH_BASELINES}}
    texts = {SYCAM: to_sexpr(best), **{b: baseline(b).expression for b in SEARCH_BASELINES}}
    try:
        return check_result(model, layer, images, methods, texts, SYCAM, device=device, chunk_size=chunk_size,
                            progress=progress, runtime=runtime)
    except SycamError as e:
        return {"error": str(e)}


#: The least share of a whole-run budget the search gets, even when the rest of the run needs more
#: (the run then says so at the start, and overruns): the estimate of the rest errs high (the memo
#: the tables share with the search is not in it), and a search that gets no time finds nothing.
MIN_SEARCH_SHARE = 0.5


def _search_budget(budget: Budget, problem: Problem, split: Split, search_metric: Objective, shown: list[Metric],
                   output: OutputOptions, terminal_seconds: float, t_start: float) -> Budget:
    """The search's budget: ``budget`` itself, or for a whole-run budget what is left of it once the
    time spent since ``t_start`` and the estimated cost of the work after the search (``budget.py``)
    are set aside; when that work needs more than what is left, one line says so now."""
    if not budget.whole_run or budget.seconds is None:
        return budget
    from ..cam.sanity import DEFAULT_SANITY_IMAGES
    from ..synthesis.budget import estimate_reserve

    names = [t for b in SEARCH_BASELINES for t in baseline(b).terminals]
    everything = torch.arange(problem.n)
    reserve = estimate_reserve(problem, split.search if split.on else everything, split.test if split.on else None,
                               metric_list(search_metric), shown, names, SEARCH_BASELINES, len(SEARCH_BASELINES) + 1,
                               min(DEFAULT_SANITY_IMAGES, problem.n) if output.sanity else 0,
                               terminal_seconds / max(1, problem.n))
    left = budget.seconds - (time.perf_counter() - t_start)
    search_seconds = left - reserve.set_aside
    floor = MIN_SEARCH_SHARE * budget.seconds
    if left - reserve.total < floor:
        total = budget.seconds - left + max(search_seconds, floor) + reserve.total
        # a warning, not a note: it shows with --quiet too
        why = (f"more than the {max(left, 0.0):.0f} s left of the time budget" if reserve.total > left else
               f"which leaves the search less than half of the {budget.seconds:.0f} s time budget")
        logging.getLogger(__name__).warning(
            "the work after the search needs about %.0f s (%s), %s: the search gets %.1f s and the run will take "
            "about %.0f s in all (give more time, or fewer images or report metrics)", reserve.total,
            reserve.describe(), why, max(search_seconds, floor), total)
    return Budget(max(search_seconds, floor), budget.candidates, whole_run=True)


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
    see ``distributed``: the same result as one process)."""
    t_start = time.perf_counter()
    keep_freed_memory()  # about 2x faster scoring here (see allocator); changes no result
    if images is None:
        raise SycamError("give images: a folder, an ImageSet or a tensor [N, 3, H, W]")
    out = Path(out_dir) if out_dir is not None else None
    # checked and locked before any work, and locked until the files are written
    with claim_output_folder(out) if out is not None else nullcontext():
        if out is not None and resume:
            check_resume_kind(out, per_class)
        return _synthesize(model, layer, images, metric, metric_options, grammar, budget, per_class, out, resume,
                           weights, device, data, search, output, cluster, t_start)


def _synthesize(model: LoadedModel | nn.Module | str, layer: str | None, images: ImageSet | torch.Tensor | str | Path,
                metric: str | Objective | Sequence[str | Metric], metric_options: dict[str, Any] | None,
                grammar: str | Path | Grammar,
                budget: Budget | float | None, per_class: bool, out: Path | None, resume: bool, weights: str | None,
                device: str, data: DataOptions, search: SearchOptions, output: OutputOptions,
                cluster: ClusterOptions, t_start: float) -> Result:
    """``synthesize`` once the output folder is claimed."""
    if cluster.on:
        import_ray()  # one line, before any work, when Ray is missing
    check_support(data.runtime, data.precision, resolve_device(device))  # one line, before any work
    search_metric = resolve_objective(metric, metric_options)
    shown = metric_list(search_metric)
    parse_untils(search.until, len(shown))  # one threshold per metric, refused before any work
    loaded = loaded_model(model, weights, device)
    gram = resolve_grammar(grammar)
    for m in output.report_metrics or []:
        m = resolve_metric(m, None)
        if m.name not in {s.name for s in shown}:
            shown.append(m)
    images_data = _data(images, data.masks, data.labels, loaded, data.size)
    if output.sanity:  # before any work: the check's SSIM needs its whole window
        check_sanity_size(tuple(images_data.images.shape[-2:]))
    for m in shown:
        if m.needs_masks and images_data.masks is None:
            raise SycamError(f"metric {m.name!r} compares heatmaps with object masks: give masks (--masks DIR)")
    names = list(dict.fromkeys(list(gram.inputs) + [t for b in SEARCH_BASELINES for t in baseline(b).terminals]))
    t0 = time.perf_counter()
    pool = None
    with ExitStack() as stack:
        if cluster.on:  # the workers run the gradient pass of their shards, then cic and abl on demand
            settings = {"batch_size": data.batch_size, "chunk_size": data.chunk_size, "cache_dir": data.cache_dir,
                        "use_cache": data.use_cache, "memo_mb": search.memo_mb, "cache_size": data.cache_size,
                        "precision": data.precision, "runtime": RuntimeSpec(data.runtime, data.precision)}
            spec = WorkerSpec(loaded, layer, tuple(names), search_metric, gram.start.type, settings)
            pool = stack.enter_context(shard_pool(cluster, spec, images_data.images, data.targets,
                                                  images_data.masks))
        problem, info = build_problem(loaded, layer, images_data, names, data.targets, device, data.batch_size,
                                      data.chunk_size, data.cache_dir, data.use_cache, output.progress,
                                      search.memo_mb, data.cache_size,
                                      on_demand=search.terminals == "on-demand" or pool is not None,
                                      precision=data.precision, runtime=RuntimeSpec(data.runtime, data.precision),
                                      up_front=None if pool is None else partial(pool.up_front, device=device))
        note(f"forward passes: {runtime_name(problem.inputs.model)}, {data.precision} (asked: {data.runtime})",
             output.progress)
        if pool is not None and isinstance(problem.terminals, OnDemandTerminals):
            use_pool(problem.terminals.source, pool, search.terminals == "eager", output.progress)
        return _search_and_write(loaded, images_data, problem, info, gram, search_metric, shown, budget, per_class,
                                 out, resume, weights, device, data, search, output, pool, t0, t_start)


def _search_and_write(loaded: LoadedModel, images_data: Data, problem: Problem, info: TerminalInfo, gram: Grammar,
                      search_metric: Objective, shown: list[Metric], budget: Budget | float | None, per_class: bool,
                      out: Path | None, resume: bool, weights: str | None, device: str, data: DataOptions,
                      search: SearchOptions, output: OutputOptions, pool: ShardPool | None, t0: float,
                      t_start: float) -> Result:
    """The search (candidates scored by ``pool``'s workers, or here when None), the final tables and the
    output files of ``_synthesize``, on the problem it built (``t0``: when its terminals started)."""
    layer_name = info.layer
    scorer = RayScorer.factory(pool) if pool is not None else None
    if data.use_cache:
        later = " (the gradient pass; cic and abl come on demand)" if isinstance(problem.terminals,
                                                                                OnDemandTerminals) else ""
        note(f"terminals: {reuse_line(info.stored, problem.n)}{later}", output.progress)
    terminal_seconds = time.perf_counter() - t0
    # the test split is set aside before any search: the searches only ever get ``search_problem``
    split = make_split(problem, search.test_split, search.seed, problem.targets if per_class else problem.classes)
    search_problem = problem.subset(split.search) if split.on else problem
    test_problem = problem.subset(split.test) if split.on else None
    options = {f.name: getattr(search, f.name) for f in fields(SearchOptions)}
    held_out = tuple(image_digests(test_problem.inputs.images)) if test_problem is not None else ()
    run_budget = _search_budget(as_budget(budget), problem, split, search_metric, shown, output, terminal_seconds,
                                t_start)
    config = SearchConfig(search_metric, run_budget, **{**options, "level_sizes": tuple(search.level_sizes)},
                          held_out=held_out)

    t0 = time.perf_counter()
    dispatch: Dispatch | None = None
    searches: list[ClassSearch] = []
    if per_class:
        searches, stopped_by = search_per_class(search_problem, gram, config, out, output.progress, resume,
                                                search.min_class_images, scorer)
        outcomes = [s.outcome for s in searches]
        dispatch = dispatch_of(searches, config, search_problem)
        best = dispatch.fallback if dispatch is not None else None
        eval_problem = search_problem
    else:
        outcome = Search(search_problem, gram, config, out, output.progress, scorer=scorer).run(resume=resume)
        outcomes, stopped_by, best = [outcome], outcome.stopped_by, outcome.best
        eval_problem = search_problem.subset(outcome.subsets.level(len(outcome.subsets.level_sizes) - 1))
    search_seconds = time.perf_counter() - t0
    front = [parse_expr(m.expression, gram.inputs, source="<front>") for m in outcomes[0].front] \
        if dispatch is None else []
    front_test = None
    if front and test_problem is not None:  # the means on the searched images are the search's own
        front_test = [{k: float(v.mean()) for k, v in method_scores(node, metric_list(search_metric),
                                                                     test_problem).items()} for node in front]

    t0 = time.perf_counter()
    methods: dict[str, tuple[str, Method]] = {b: (baseline(b).expression, baseline(b).node)
                                              for b in SEARCH_BASELINES}
    if dispatch is not None:
        methods[SYCAM] = ("per-class dispatch", dispatch)
    elif best is not None:
        methods[SYCAM] = (to_sexpr(best), best)
    search_tables = evaluate_methods(methods, shown, eval_problem, output.progress, "final tables, searched images")
    test_tables = evaluate_methods(methods, shown, test_problem, output.progress, "final tables, test split") \
        if test_problem is not None else None
    eval_seconds = time.perf_counter() - t0
    sanity = None
    if output.sanity and best is not None:
        t0 = time.perf_counter()
        note(f"sanity check: the result and {len(SEARCH_BASELINES)} baselines on a randomized model", output.progress)
        # the randomized model is converted in memory only: its file would never be read again
        sanity = result_sanity(loaded, layer_name, test_problem or eval_problem, best, device, data.chunk_size,
                               output.progress, RuntimeSpec(runtime_name(problem.inputs.model), data.precision))
        eval_seconds += time.perf_counter() - t0

    knee = outcomes[0].knee if front else None
    if test_tables is not None:
        result = Result(best, dispatch, test_tables, {}, out, outcomes, search_tables=search_tables, front=front,
                        knee=knee)
    else:
        result = Result(best, dispatch, search_tables, {}, out, outcomes, front=front, knee=knee)
    demand_s = problem.terminals.source.work.total_seconds if isinstance(problem.terminals, OnDemandTerminals) else 0
    timings = {"terminals_s": terminal_seconds, "terminals_on_demand_s": demand_s, "search_s": search_seconds,
               "evaluation_s": eval_seconds}
    first = [o.state.first_scored for o in outcomes if o.state.first_scored is not None]
    if first:  # from the run's start: the terminals up front, then the search's own clock
        timings["first_scored_s"] = terminal_seconds + min(first)
    run_settings = {
        "model": loaded.name, "model_source": loaded.source, "weights": weights, "layer": layer_name,
        "images": images_data.source, "working_dir": os.getcwd(),  # where a relative images path is (sanity)
        "size": int(images_data.images.shape[-1]), "metric": search_metric.name,
        "metric_options": dict(search_metric.options), "grammar": gram.source,
        "budget_seconds": as_budget(budget).seconds,
        "budget_candidates": config.budget.candidates, "budget_whole_run": config.budget.whole_run,
        "search_budget_seconds": config.budget.seconds, "per_class": per_class, "seed": search.seed,
        "level_sizes": [s for s in search.level_sizes], "equivalence_size": search.equivalence_size,
        "max_size": search.max_size, "report_metrics": [m.name for m in shown], "device": str(device),
        "batch_size": data.batch_size, "chunk_size": data.chunk_size, "precision": data.precision,
        "runtime": {"asked": data.runtime, "used": runtime_name(problem.inputs.model)},
        "forward": {"batch_size": problem.inputs.batch_size, "channels_last": problem.inputs.channels_last,
                    "terminal_batch_sizes": problem.terminal_batch_sizes},
        "min_class_images": search.min_class_images,
        "memo_mb": search.memo_mb, "candidate_batch": search.candidate_batch, "image_chunk": search.image_chunk,
        "early_stop": search.early_stop, "until": until_text(parse_untils(search.until)),
        "test_split": split.fraction, "terminals": search.terminals, "strategy": search.strategy,
        "images_from_store": info.stored if data.use_cache else None,
        "workers": len(pool.workers) if pool is not None else 0, **(output.settings or {}),
    }
    write_outputs(RunRecord(result, loaded, images_data, problem, eval_problem, gram, searches, stopped_by,
                            run_settings, timings, t_start, output.report_images, search_problem=search_problem,
                            test_problem=test_problem, split=split, sanity=sanity, front_test=front_test,
                            workers=None if pool is None else {"count": len(pool.workers), "restarts": pool.restarts},
                            stratified_by="predicted class" if per_class or images_data.labels is None
                            else "label"))
    return result
