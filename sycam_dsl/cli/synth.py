"""``sycam-dsl synth``: the search.

With no ``--model`` and no ``--images`` it runs the built-in benchmark: the bundled small CNN on
images the package generates (with exact object masks), a one-minute search, and the comparison on
Deletion, Insertion, Average Drop and SCH.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..bundled.data import MAX_BUNDLED_IMAGES
from ..errors import SycamError
from ..metrics.memo import DEFAULT_MAX_MB
from ..metrics.objectives import Objective, metric_list, metric_names, parse_objective
from ..metrics.registry import Metric, known_metrics, metric_key
from ..synthesis.config import DEFAULT_MAX_SIZE, DEFAULT_SECONDS, TERMINAL_MODES, Budget
from ..synthesis.guide import STRATEGIES
from ..synthesis.incumbent import parse_untils
from ..synthesis.split import DEFAULT_TEST_SPLIT, MIN_SPLIT_IMAGES, check_fraction
from ..synthesis.subsets import DEFAULT_EQUIVALENCE_SIZE, parse_level_sizes
from .metric_args import check_metric_options, metric_from_args
from .options import (
    IMAGES_HELP,
    MASKS_HELP,
    add_controls,
    add_model_options,
    add_scoring_options,
    add_targets,
    chunk_size_from,
    from_store,
    int_in,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    reshape_from,
    seed_int,
    targets_from,
    warn,
)

if TYPE_CHECKING:
    from ..run.result import Result


#: The built-in benchmark's settings (what ``sycam-dsl synth`` runs with no model and no images).
BUNDLED: dict[str, Any] = {"images": 200, "time": 60.0, "metric": "deletion", "steps": 10,
           "report_metrics": "deletion,insertion,average_drop,sch", "levels": "50,100,all"}


def _level_sizes(text: str):
    try:
        return parse_level_sizes(text)
    except SycamError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _until(text: str) -> str:
    try:
        parse_untils(text)
    except SycamError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _fraction(text: str) -> float:
    try:
        return check_fraction(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    except SycamError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: rendered in memory before the search, so bounded (a run of this many takes minutes already)
_bundled_count = int_in(1, MAX_BUNDLED_IMAGES)


def _add_engine_options(s: argparse.ArgumentParser) -> None:
    """How the search computes and scores: the memo, the terminals, the strategy, the Ray workers."""
    s.add_argument("--memo-mb", type=nonnegative_float, default=DEFAULT_MAX_MB, metavar="MB",
                   help=f"memory for memoized Deletion / Insertion forward passes (default {DEFAULT_MAX_MB:g}; 0: off)")
    s.add_argument("--terminals", choices=TERMINAL_MODES, default="on-demand",
                   help="on-demand (default): cic and abl are computed per image when the search first reads them, "
                        "so it starts at once; eager: every terminal before the search (same result)")
    s.add_argument("--strategy", choices=STRATEGIES, default="size",
                   help="size (default): enumerate smallest first; guided: learn production costs from candidates "
                        "that beat the incumbent on part of a level while searching (Probe-style; no --resume yet)")
    s.add_argument("--plain-engine", action="store_true",
                   help="score candidates one at a time with no memo and no early stopping (same result, slower; "
                        "for comparisons)")
    s.add_argument("--workers", type=nonnegative_int, default=0, metavar="N",
                   help="Ray workers, each holding a shard of the images: cic, abl and the scoring run there, the "
                        "search here (default 0: this process only; needs pip install 'sycam-dsl[distributed]'); "
                        "the local Ray cluster stops with the run, also on Ctrl-C, SIGTERM and SIGHUP, but not "
                        "after kill -9 (then: ray stop)")
    s.add_argument("--ray-address", metavar="ADDR",
                   help="join this Ray cluster (from ray start --head) instead of starting a local one; needs "
                        "--workers")
    s.add_argument("--worker-cpus", type=positive_float, default=1.0, metavar="N",
                   help="CPUs each worker asks Ray for (default 1; also its torch threads)")
    s.add_argument("--worker-gpus", type=nonnegative_float, default=0.0, metavar="N",
                   help="GPUs each worker asks Ray for (default 0)")


def configure(s: argparse.ArgumentParser) -> None:
    s.description = ("Search a grammar of weight expressions for the one that scores best on a metric for a model "
                    "and images, compare it with GradCAM, GradCAM++, ScoreCAM and AblationCAM, and write "
                    "result.json, cam.pt (TorchScript), report.md and pictures to the output folder. With no --model "
                    "and no --images it runs the built-in benchmark (a small CNN on generated images).")
    add_model_options(s, required=False)
    add_scoring_options(s)
    s.add_argument("--images", metavar="DIR", help=IMAGES_HELP)
    s.add_argument("--masks", metavar="DIR", help=MASKS_HELP)
    add_targets(s)
    s.add_argument("--metric", metavar="NAME[,NAME...]",
                   help=f"the metric to optimize (default deletion; known: {', '.join(known_metrics())}, "
                        f"quantus:NAME); two or more, comma-separated (deletion,insertion), search for their "
                        f"Pareto front: the expressions none beats on every metric at once, written to front/ "
                        f"with front.png, cam.pt being the knee member (--metric-option NAME.KEY=VALUE sets one "
                        f"metric's option)")
    s.add_argument("--grammar", default="g2", metavar="FILE|NAME",
                   help="grammar file, or a shipped grammar: g1, g2 (default), maps")
    budget = s.add_mutually_exclusive_group()
    budget.add_argument("--time", type=positive_float, metavar="SECONDS",
                        help=f"time budget of the whole run: loading, terminals, search, the baselines' check, the "
                             f"final tables, --sanity and the files (the search stops early enough to leave the rest "
                             f"their estimated time; the run says at the start when that is more than the budget "
                             f"leaves); each run of a resumed search gets it anew (default {DEFAULT_SECONDS:g} s; "
                             f"{BUNDLED['time']:g} s for the built-in benchmark)")
    budget.add_argument("--search-time", type=positive_float, metavar="SECONDS",
                        help="time budget of the search alone, counted over every run of a resumed search; the final "
                             "tables come after it (the meaning --time had before)")
    s.add_argument("--until", type=_until, metavar="T",
                   help="stop at the first incumbent whose I1 mean beats T: a number, or a baseline name with an "
                        "optional margin in the metric's better direction (0.40, ScoreCAM, ScoreCAM+0.005: for a "
                        "lower-is-better metric, more than 0.005 below ScoreCAM's mean); with several metrics one T "
                        "per metric, comma-separated: stop once one front member beats them all")
    s.add_argument("--candidates", type=positive_int, metavar="N", help="stop after N enumerated candidates")
    s.add_argument("--max-size", type=positive_int, default=DEFAULT_MAX_SIZE, metavar="N",
                   help=f"largest expression size (default {DEFAULT_MAX_SIZE})")
    s.add_argument("--per-class", action="store_true", help="one search per predicted class, dispatched by class")
    s.add_argument("--levels", type=_level_sizes, metavar="I3,I2,I1",
                   help="oracle level sizes, smallest first (default 100,1000,all; 50,100,all for the benchmark)")
    s.add_argument("--equivalence-images", type=positive_int, default=DEFAULT_EQUIVALENCE_SIZE, metavar="N",
                   help=f"images of the observational-equivalence subset (default {DEFAULT_EQUIVALENCE_SIZE})")
    s.add_argument("--seed", type=seed_int, default=0, help="seed of the image subsets and the test split (default 0)")
    s.add_argument("--test-split", type=_fraction, default=DEFAULT_TEST_SPLIT, metavar="FRACTION",
                   help=f"share of the images held out before the search, stratified by class, and scored only in "
                        f"the final tables (default {DEFAULT_TEST_SPLIT:g}; 0: off; off with a warning when either "
                        f"side would have fewer than {MIN_SPLIT_IMAGES} images)")
    s.add_argument("--report-metrics", metavar="LIST", help="metrics of the final comparison tables, comma-separated "
                                                            "(default: the search metric; all four for the benchmark)")
    s.add_argument("--report-images", type=nonnegative_int, default=4, metavar="N",
                   help="rows of the heatmap grid (default 4)")
    s.add_argument("--sanity", action="store_true",
                   help="after the search, the model-parameter randomization check (as sycam-dsl sanity, seed 0) "
                        "of the result and the baselines on the test split")
    add_controls(s)
    s.add_argument("--bundled-images", type=_bundled_count, default=BUNDLED["images"], metavar="N",
                   help=f"images of the built-in benchmark (default {BUNDLED['images']}, at most "
                        f"{MAX_BUNDLED_IMAGES})")
    _add_engine_options(s)
    s.add_argument("-o", "--out", metavar="DIR", help="output folder (default runs/synth-<date>-<time>)")
    s.add_argument("--resume", action="store_true", help="continue the search whose checkpoint is in --out")
    s.set_defaults(handler=run)


def _data(args: argparse.Namespace):
    """(model, ImageSet with its masks, whether it is the built-in benchmark) from the arguments."""
    if args.model is None and args.images is None:
        from ..bundled import bundled_images, load_bundled_model
        return load_bundled_model(args.device), bundled_images(args.bundled_images), True
    if args.model is None or args.images is None:
        raise SycamError("give both --model and --images, or neither (to run the built-in benchmark)")
    from ..cam.images import load_images
    from ..models import load_model
    model = load_model(args.model, args.weights, args.device)
    data = load_images(args.images, size=args.size or model.input_size, normalize=model.normalize, masks=args.masks)
    return model, data, False


def _check_grammar_size(args: argparse.Namespace) -> None:
    """Refuse a grammar whose smallest program is larger than ``--max-size``: the search would grow
    its other non-terminals for as long as memory lasts and never score a candidate."""
    from ..enumerate import smallest_size
    from ..parse import resolve_grammar

    smallest = smallest_size(resolve_grammar(args.grammar))
    if smallest is not None and smallest > args.max_size:
        raise SycamError(f"the smallest program of grammar {args.grammar} has {smallest} nodes, more than "
                         f"--max-size {args.max_size}: raise --max-size to at least {smallest}")


def run(args: argparse.Namespace) -> int:
    """Run the search, print the result and the tables; 130 when interrupted (Ctrl-C or SIGTERM)."""
    args.started = time.perf_counter()  # --time counts from here: the imports and the model load are part of the run
    from ..run.outputs import take_output_folder

    if args.ray_address is not None and not args.workers:
        raise SycamError("--ray-address needs --workers N (the workers run on that cluster); without it the "
                         "search would run here and ignore the address")
    _check_grammar_size(args)
    out = Path(args.out) if args.out else Path("runs") / f"synth-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    with take_output_folder(out, args.resume, args.per_class, strict=True):
        return _search(args, out)


def _objective(args: argparse.Namespace, bundled: bool) -> tuple[Objective, list[Metric]]:
    """(what the search optimizes, the metrics of the final tables) from ``--metric``,
    ``--report-metrics`` and the metrics' options (``parse_objective``, as ``synthesize`` does)."""
    metric_name = args.metric or BUNDLED["metric"]
    if bundled and args.steps is None and {"deletion", "insertion"} & set(metric_names(metric_name)):
        args.steps = BUNDLED["steps"]
    # several metrics: their Pareto front (Objectives checks they differ)
    metric = parse_objective(metric_name, make=partial(metric_from_args, args=args, strict=False))
    report = args.report_metrics or (BUNDLED["report_metrics"] if bundled else metric.name)
    search_names = [m.name for m in metric_list(metric)]
    report_metrics = metric_list(metric) + [metric_from_args(n, args, strict=False) for n in metric_names(report)
                                            if metric_key(n) not in search_names]
    check_metric_options(args, report_metrics)
    return metric, report_metrics


def _budget(args: argparse.Namespace, bundled: bool) -> tuple[float, Budget]:
    """(the seconds asked for, the ``Budget``): ``--search-time`` of the search alone, or ``--time`` of
    the whole run, less what the start-up already took."""
    if args.search_time is not None:
        return args.search_time, Budget(args.search_time, args.candidates)
    # what the start-up already took is part of the run
    seconds = args.time or (BUNDLED["time"] if bundled else DEFAULT_SECONDS)
    return seconds, Budget(max(seconds - (time.perf_counter() - args.started), 1e-3), args.candidates, whole_run=True)


def _search(args: argparse.Namespace, out: Path) -> int:
    from ..run import DataOptions, OutputOptions, synthesize
    from ..synthesis import SearchOptions
    from ..synthesis.distributed import ClusterOptions

    cluster = ClusterOptions(args.workers, args.ray_address, args.worker_cpus, args.worker_gpus)
    if cluster.on and cluster.address is None:  # a local cluster: its GPUs are this machine's, known now
        import math

        import torch

        from ..synthesis.distributed import check_resources

        check_resources(cluster, {"CPU": math.inf, "GPU": torch.cuda.device_count()}, "this machine")
    model, data, bundled = _data(args)
    metric, report_metrics = _objective(args, bundled)
    seconds, budget = _budget(args, bundled)
    levels = args.levels or (_level_sizes(BUNDLED["levels"]) if bundled else None)
    targets = targets_from(args, data.labels, len(data.images), data.masks)
    engine = {} if levels is None else {"level_sizes": levels}
    if args.plain_engine:
        engine.update(memo_mb=0, candidate_batch=1, image_chunk=None, early_stop=False)
    else:
        engine.update(memo_mb=args.memo_mb)
    result = synthesize(model, args.layer, data, metric=metric, grammar=args.grammar,
                        budget=budget, per_class=args.per_class, out_dir=out,
                        resume=args.resume, device=args.device,
                        data=DataOptions(targets=targets, batch_size=args.batch_size, chunk_size=chunk_size_from(args),
                                         precision=args.precision, runtime=args.runtime, cache_dir=args.cache_dir,
                                         use_cache=not args.no_cache, cache_size=args.cache_size,
                                         reshape=reshape_from(args)),
                        search=SearchOptions(seed=args.seed, test_split=args.test_split,
                                             equivalence_size=args.equivalence_images, max_size=args.max_size,
                                             until=args.until, terminals=args.terminals,
                                             strategy=args.strategy, **engine),
                        output=OutputOptions(report_metrics=report_metrics, report_images=args.report_images,
                                             progress=not args.quiet,
                                             settings={"bundled_benchmark": bundled, "budget_seconds": seconds},
                                             sanity=args.sanity, controls=args.controls),
                        cluster=cluster)
    return _report(result, out)


def _report(result: Result, out: Path) -> int:
    """Print the result, its tables and where the files are; the exit code: 130 when interrupted, 2 when
    the search scored no candidate, else 0."""
    d = result.data
    warn(d.get("warnings", []))
    if result.dispatch is not None:
        print("per-class result:")
        for c, text in result.dispatch.describe().items():
            print(f"  {c}: {text}")
    elif result.front:
        front = d["front"]
        names = [m["name"] for m in front["metrics"]]
        print(f"Pareto front of {', '.join(names)} ({len(result.front)} members; means on the searched images):")
        for k, m in enumerate(front["members"]):
            means = ", ".join(f"{n} {m['search'][n]:.4f}" for n in names)
            print(f"  {k}{' (knee)' if m['knee'] else '':7} {means}  {m['expression']}")
        print(f"knee member (cam.pt, SyCAM below): {result.expression}")
    elif result.best is not None:
        print(f"best expression: {result.expression}")
    print()
    print(result.table())
    print()
    from ..run.generalization import best_test_line
    line = best_test_line(d)
    if line is not None:
        print(line)
        print()
    if d.get("sanity") and "error" not in d["sanity"]:
        from ..cam.sanity import check_lines
        print("\n".join(check_lines(d["sanity"])))
        print()
    c = d["counts"]
    seconds = sum(o.seconds for o in result.outcomes)  # over every run of a resumed search
    held_out = d["test_split"]["images"]
    searched = f" ({d['images']['searched']} searched, {held_out} held out)" if held_out else ""
    stored = d["settings"].get("images_from_store")
    stored = "" if stored is None else f"; {from_store(stored, d['images']['total'])}"
    print(f"{c['considered']} candidates in {seconds:.1f} s of search ({d['stopped_by']}); "
          f"{d['images']['total']} images{searched}{stored}; total {d['timings']['total_s']:.1f} s")
    print(f"wrote {out}/: " + ", ".join(v if isinstance(v, str) else ", ".join(v) for v in d["files"].values()))
    if d["stopped_by"] == "interrupted":
        # a guided search cannot be resumed yet (Search.run refuses it): do not suggest it
        more = ("start it again with another --out (a guided search cannot be resumed yet)"
                if d["settings"].get("strategy") == "guided" else f"continue with --resume -o {out}")
        print(f"sycam-dsl: interrupted; the results so far are in {out}; {more}", file=sys.stderr)
        return 130
    if result.best is None:
        # the tables above hold only the baselines: say so as an error, not a result
        print(f"sycam-dsl: error: the search scored no candidate ({d['counts']['invalid']} invalid of "
              f"{c['considered']} considered, stopped by {d['stopped_by']}); the baselines' tables are in "
              f"{out}/report.md", file=sys.stderr)
        return 2
    return 0
