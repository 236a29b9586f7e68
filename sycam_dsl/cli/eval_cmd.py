"""``sycam-dsl eval``: score the baselines and given expressions on metrics over an image folder.

Prints a table per metric (mean score, share of images on which each method is best), optionally
also as JSON.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from ..baselines import BASELINE_EXPRESSIONS
from ..errors import SycamError
from ..metrics.registry import known_metrics
from ..util.files import atomic_write_json
from ..util.text import comma_list
from .metric_args import metrics_from_args
from .options import (
    IMAGES_HELP,
    MASKS_HELP,
    add_controls,
    add_model_options,
    add_scoring_options,
    add_targets,
    compute_terminals_from,
    from_store,
    note_metric_batch,
    output_file,
    runtime_from,
    targets_from,
    warn,
    weight_expression,
)

if TYPE_CHECKING:
    import torch

    from ..evaluate import Terminals
    from ..lang.ast import Node
    from ..metrics.registry import Metric, MetricInputs


def _baseline_names(text: str) -> list[str]:
    if text.strip().lower() == "none":
        return []
    by_key = {k.lower(): k for k in BASELINE_EXPRESSIONS}
    names = comma_list(text)
    unknown = [n for n in names if n.lower() not in by_key]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline(s) {', '.join(unknown)}; choose from "
                                         f"{', '.join(BASELINE_EXPRESSIONS)} (or none)")
    return [by_key[n.lower()] for n in names]


def configure(e: argparse.ArgumentParser) -> None:
    e.description = ("Score the baseline CAM methods and the given weight expressions on metrics over an "
                    "image folder; print the mean score of each and the share of images on which it is best.")
    e.add_argument("expressions", nargs="*", metavar="EXPR",
                   help="weight expressions such as '(relu (+ grads cic))', or files holding one")
    add_model_options(e)
    add_scoring_options(e)
    e.add_argument("--images", required=True, metavar="DIR", help=IMAGES_HELP)
    e.add_argument("--masks", metavar="DIR", help=MASKS_HELP)
    e.add_argument("--metric", default="deletion", metavar="NAME[,NAME...]",
                   help=f"metric names, comma-separated (default deletion; known: {', '.join(known_metrics())}, "
                        f"and any registered in Python); average_drop brings increase_in_confidence with it")
    e.add_argument("--baselines", type=_baseline_names, default=list(BASELINE_EXPRESSIONS), metavar="LIST",
                   help=f"comma-separated baselines to score, or none (default all: "
                        f"{','.join(BASELINE_EXPRESSIONS)})")
    add_targets(e)
    add_controls(e)
    e.add_argument("--json", metavar="FILE", help="also write the results (per-image scores included) as JSON")
    e.set_defaults(handler=run)


def _controls(names: tuple[str, ...], methods: dict[str, tuple[str, Node]], metrics: list[Metric],
              inputs: MetricInputs, terms: Terminals, acts: torch.Tensor) -> dict[str, tuple[str, dict]]:
    """Row name -> (text, metric name -> result) of the control maps ``names``; ``blurred`` blurs the
    first given expression's heatmaps (``expr 1``), else the first baseline's (docs/search.md#control-maps)."""
    from ..metrics.controls import CONTROL_PREFIX, control_text, score_controls
    from ..metrics.expression import expression_inputs

    first = "expr 1" if "expr 1" in methods else next(iter(methods))
    source = expression_inputs(methods[first][1], inputs, terms, acts).heatmaps if "blurred" in names else None
    assert inputs.image_ids is not None  # set by MetricInputs
    layer = (int(acts.shape[-2]), int(acts.shape[-1]))
    scored = score_controls(names, metrics, inputs, inputs.image_ids, layer, 0, source)
    return {row: (control_text(row[len(CONTROL_PREFIX):], first), results) for row, results in scored.items()}


def run(args: argparse.Namespace) -> None:
    """Score every method on every metric and print (and optionally write) the tables."""
    from ..baselines import baselines
    from ..cam.images import load_images
    from ..metrics.compare import compare, format_table
    from ..metrics.controls import control_warnings
    from ..metrics.diagnostics import score_problems, weight_problems
    from ..metrics.errors import MetricError
    from ..metrics.expression import score_methods
    from ..metrics.registry import MetricInputs
    from ..models import load_model
    from ..models.targets import Target
    from ..util.progress import progress

    out = output_file(args.json, (".json",)) if args.json else None  # checked before any work
    methods = {b.name: (b.expression, b.node) for b in baselines(args.baselines)}
    for i, text in enumerate(args.expressions, 1):
        methods[f"expr {i}"] = weight_expression(text)
    if not methods:
        raise SycamError("nothing to score: give expressions, or leave --baselines at its default")
    metrics = metrics_from_args(args.metric, args)
    target = getattr(args, "target", None)
    for metric in metrics:
        if metric.needs_masks and args.masks is None:
            raise MetricError(f"metric {metric.name!r} compares heatmaps with object masks: give --masks DIR")
        if isinstance(target, Target):  # one that the metric cannot score, before any work
            metric.check_target(target)
    model = load_model(args.model, args.weights, args.device)
    data = load_images(args.images, size=args.size or model.input_size, normalize=model.normalize,
                       masks=args.masks)
    targets = targets_from(args, data.labels, len(data.images), data.masks)
    names = sorted({t for _, node in methods.values() for t in node.terminals()})
    terms, info = compute_terminals_from(args, model, data.images, targets, names)
    if not args.no_cache:
        print(f"terminals: {from_store(info.stored, len(data))}", file=sys.stderr)
    inputs = MetricInputs(data.images, info.targets, masks=data.masks, model=model.module, device=args.device,
                          batch_size=args.batch_size, precision=args.precision,
                          runtime=runtime_from(args), progress=not args.quiet, target=info.target)
    note_metric_batch(args, inputs)
    # a bar over the methods: on a real model the metrics take minutes after the terminals
    bar = progress(len(methods), f"scoring {', '.join(m.name for m in metrics)} of {len(methods)} methods on "
                                 f"{len(data)} images", not args.quiet)
    results: dict[str, dict] = {m.name: {} for m in metrics}
    try:
        for name, method in methods.items():
            for metric_name, by_method in score_methods({name: method}, metrics, inputs, terms, info.acts).items():
                results[metric_name].update(by_method)
            bar.update()
    finally:
        bar.close()
    for name, (_, node) in methods.items():
        warn(weight_problems(name, node, terms, info.acts)
             + score_problems(name, {m.name: results[m.name][name] for m in metrics}))
    expressions = {n: e for n, (e, _) in methods.items()}
    for name, (text, by_metric) in _controls(args.controls, methods, metrics, inputs, terms, info.acts).items():
        expressions[name] = text
        for metric_name, result in by_metric.items():
            results[metric_name][name] = result
    tables = [(m, compare(results[m.name], expressions, m)) for m in metrics]
    print("\n\n".join(format_table(rows, m, len(data)) for m, rows in tables))
    evaluation = [{"metric": m.name, "higher_is_better": m.higher_is_better, "options": dict(m.options),
                   "methods": [asdict(r) for r in rows]} for m, rows in tables]
    warn(control_warnings(evaluation, []))
    if out is not None:
        atomic_write_json(out, {
            "model": model.name, "weights": args.weights, "layer": info.layer, "size": int(data.images.shape[-1]),
            "files": data.files, "targets": info.targets.tolist(),
            "target": info.target.name if info.target is not None else "class",
            "images_from_store": None if args.no_cache else info.stored,
            "metrics": evaluation,
        })
        print(f"wrote {out}", file=sys.stderr)
