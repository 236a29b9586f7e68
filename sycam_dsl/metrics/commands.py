"""The ``sycam-dsl eval`` and ``sycam-dsl explain`` subcommands.

``eval`` scores the baselines and any given expressions on one or more metrics over an image folder
and prints a table per metric (mean score, share of images on which each method is best), optionally
also as JSON.
``explain`` draws one expression's heatmap over one image.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..baselines import BASELINE_EXPRESSIONS, baselines
from ..cli_args import positive_int
from ..errors import SycamError
from ..lang.ast import Node
from .errors import MetricError
from .perturbation import DEFAULT_BLUR_SIGMA
from .registry import Metric, MetricResult, known_metrics

if TYPE_CHECKING:
    from ..evaluate import Terminals
    from .registry import MetricInputs


def _baseline_names(text: str) -> list[str]:
    if text.strip().lower() == "none":
        return []
    by_key = {k.lower(): k for k in BASELINE_EXPRESSIONS}
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n.lower() not in by_key]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline(s) {', '.join(unknown)}; choose from "
                                         f"{', '.join(BASELINE_EXPRESSIONS)} (or none)")
    return [by_key[n.lower()] for n in names]


def model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The options that choose a model, its layer and how terminals and metrics run (shared by
    ``eval``, ``explain`` and ``synth``)."""
    p.add_argument("--model", required=required, metavar="NAME|FILE|module:fn",
                   help="a torchvision classifier name (resnet50, vgg16, ...), efficientnet_lite0, bundled (the "
                        "small CNN of the built-in benchmark), a TorchScript file, or a factory "
                        "package.module:function returning an nn.Module")
    p.add_argument("--weights", metavar="FILE", help="state-dict file; random:SEED for seeded random weights")
    p.add_argument("--layer", metavar="PATH", help="target layer's dotted module path (default: the model's default)")
    p.add_argument("--size", type=positive_int, metavar="PX", help="input size (default: the model's, 224 for most)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N",
                   help="images per forward pass when scoring (default 64)")
    p.add_argument("--chunk-size", type=positive_int, default=32, metavar="N",
                   help="images / masked copies per forward pass when computing terminals (default 32)")
    p.add_argument("--steps", type=positive_int, metavar="P",
                   help="deletion / insertion steps, at most the layer's h*w cells (default: all cells)")
    p.add_argument("--blur-sigma", type=float, default=DEFAULT_BLUR_SIGMA, metavar="PX",
                   help=f"deletion / insertion: Gaussian blur sigma of x~ in pixels (default {DEFAULT_BLUR_SIGMA:g})")
    p.add_argument("--cache-dir", metavar="DIR", help="terminal cache folder (default $SYCAM_DSL_CACHE or "
                                                      "~/.cache/sycam-dsl)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the terminal cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``explain``; their handlers are ``args.handler``."""
    e = subparsers.add_parser(
        "eval", help="score baselines and expressions on metrics over an image folder",
        description="Score the baseline CAM methods and the given weight expressions on metrics over an "
                    "image folder; print the mean score of each and the share of images on which it is best.")
    e.add_argument("expressions", nargs="*", metavar="EXPR",
                   help="weight expressions such as '(relu (+ grads cic))', or files holding one")
    model_args(e)
    e.add_argument("--images", required=True, metavar="DIR", help="folder of images, or of one subfolder per class")
    e.add_argument("--masks", metavar="DIR", help="folder of binary PNG masks, one per image (gt_overlap, sch)")
    e.add_argument("--metric", default="deletion", metavar="NAME[,NAME...]",
                   help=f"metric names, comma-separated (default deletion; known: {', '.join(known_metrics())}, "
                        f"and any registered in Python); average_drop brings increase_in_confidence with it")
    e.add_argument("--baselines", type=_baseline_names, default=list(BASELINE_EXPRESSIONS), metavar="LIST",
                   help=f"comma-separated baselines to score, or none (default all: "
                        f"{','.join(BASELINE_EXPRESSIONS)})")
    e.add_argument("--targets", choices=("predicted", "labels"), default="predicted",
                   help="target class: the prediction (default) or the class-folder index")
    e.add_argument("--json", metavar="FILE", help="also write the results (per-image scores included) as JSON")
    e.set_defaults(handler=run_eval)

    x = subparsers.add_parser(
        "explain", help="draw an expression's heatmap over an image",
        description="Compute one weight expression's heatmap for one image and save it overlaid on the image, "
                    "with a colour bar and a caption naming the expression, the class and its score.")
    x.add_argument("expression", metavar="EXPR", help="a weight expression, or a file holding one")
    model_args(x)
    x.add_argument("--image", required=True, metavar="FILE", help="the image")
    x.add_argument("--target", type=int, metavar="CLASS", help="class index to explain (default: the prediction)")
    x.add_argument("--metric", help="also report this metric's score for the image (e.g. deletion)")
    x.add_argument("-o", "--output", required=True, metavar="FILE", help="output image (.png)")
    x.set_defaults(handler=run_explain)


def _parse_method(text: str) -> tuple[str, Node]:
    from ..cli import read_expression
    from ..lang.sexpr import parse_expr
    from ..lang.terminals import terminal_types

    src = read_expression(text).strip()
    node = parse_expr(src, terminal_types())
    if not node.type.is_tensor:
        raise SycamError(f"expression {src} is a {node.type}; a weight expression must be a Vec or a Map")
    return src, node


def metric_from_args(name: str, args: argparse.Namespace) -> Metric:
    """The metric ``name`` with the ``--steps`` / ``--blur-sigma`` options it takes."""
    from . import get_metric

    metric = get_metric(name)
    options = {"steps": args.steps, "blur_sigma": args.blur_sigma}
    return metric.with_options(**{k: v for k, v in options.items() if k in metric.option_names and v is not None})


def _terminals(model, images: torch.Tensor, targets: torch.Tensor | None, names: list[str],
               args: argparse.Namespace):
    from ..cam.terminals import compute_terminals

    common = dict(device=args.device, chunk_size=args.chunk_size, progress=not args.quiet)
    if args.no_cache:
        return compute_terminals(model, args.layer, images, targets, names, **common)
    from ..cam.cache import compute_terminals_cached
    return compute_terminals_cached(model, args.layer, images, targets, names, cache_dir=args.cache_dir, **common)


def score_methods(methods: dict[str, tuple[str, Node]], metrics: list[Metric], inputs: MetricInputs,
                  terms: Terminals, acts: torch.Tensor) -> dict[str, dict[str, MetricResult]]:
    """Per-image scores: metric name -> method name -> ``MetricResult``, for methods given as
    name -> (expression text, AST). Each method's heatmaps are computed once for all metrics, and
    ``inputs.cache`` keeps what the metrics share (``y_c(x)``, ``x~``)."""
    from .expression import score_expression

    results: dict[str, dict[str, MetricResult]] = {m.name: {} for m in metrics}
    for name, (_, node) in methods.items():
        for metric_name, result in score_expression(node, metrics, inputs, terms, acts).items():
            results[metric_name][name] = result
    return results


def _metrics(text: str, args: argparse.Namespace) -> list[Metric]:
    """The metrics of a comma-separated list; Increase in Confidence joins Average Drop (SPEC 6)."""
    metrics = [metric_from_args(n, args) for n in text.split(",") if n.strip()]
    if not metrics:
        raise MetricError(f"no metric named in {text!r}")
    names = [m.name for m in metrics]
    if "average_drop" in names and "increase_in_confidence" not in names:
        metrics.append(metric_from_args("increase_in_confidence", args))
    return metrics


def run_eval(args: argparse.Namespace) -> None:
    """Handler of ``sycam-dsl eval``."""
    from ..cam.images import load_images
    from ..cam.models import load_model
    from .compare import compare, format_table
    from .registry import MetricInputs

    methods = {b.name: (b.expression, b.node) for b in baselines(args.baselines)}
    for i, text in enumerate(args.expressions, 1):
        methods[f"expr {i}"] = _parse_method(text)
    if not methods:
        raise SycamError("nothing to score: give expressions, or leave --baselines at its default")
    metrics = _metrics(args.metric, args)
    for metric in metrics:
        if metric.needs_masks and args.masks is None:
            raise MetricError(f"metric {metric.name!r} compares heatmaps with object masks: give --masks DIR")
    model = load_model(args.model, args.weights, args.device)
    data = load_images(args.images, size=args.size or model.input_size, normalize=model.normalize,
                       masks=args.masks)
    targets = None
    if args.targets == "labels":
        if data.labels is None:
            raise SycamError(f"--targets labels needs one subfolder per class in {args.images!r}")
        targets = data.labels
    names = sorted({t for _, node in methods.values() for t in node.terminals()})
    terms, info = _terminals(model, data.images, targets, names, args)
    inputs = MetricInputs(data.images, info.targets, masks=data.masks, model=model.module, device=args.device,
                          batch_size=args.batch_size)
    results = score_methods(methods, metrics, inputs, terms, info.acts)
    expressions = {n: e for n, (e, _) in methods.items()}
    tables = [(m, compare(results[m.name], expressions, m)) for m in metrics]
    print("\n\n".join(format_table(rows, m, len(data)) for m, rows in tables))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "model": model.name, "weights": args.weights, "layer": info.layer, "size": int(data.images.shape[-1]),
            "files": data.files, "targets": info.targets.tolist(),
            "metrics": [{"metric": m.name, "higher_is_better": m.higher_is_better, "options": dict(m.options),
                         "methods": [asdict(r) for r in rows]} for m, rows in tables],
        }, indent=2))
        print(f"wrote {out}", file=sys.stderr)


def _load_one(path: str, size: int, normalize):
    """``load_images`` on a folder holding only ``path``, so one image gets the same preprocessing."""
    from ..cam.errors import ImageError
    from ..cam.images import load_images

    src = Path(path)
    if not src.is_file():
        raise ImageError(f"image {path!r} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(src, Path(tmp) / src.name)
        return load_images(tmp, size=size, normalize=normalize).images


def _class_name(model, c: int, n_classes: int) -> str | None:
    if model.source != "torchvision":
        return None
    try:
        import torchvision
        cats = next(iter(torchvision.models.get_model_weights(model.name))).meta.get("categories")
    except Exception:  # a model without a weights enum: no names, only indices
        return None
    return cats[c] if cats and len(cats) == n_classes else None


def run_explain(args: argparse.Namespace) -> None:
    """Handler of ``sycam-dsl explain``."""
    from ..cam.models import load_model
    from ..cam.overlay import save_overlay
    from .expression import expression_inputs
    from .registry import MetricInputs

    text, node = _parse_method(args.expression)
    metric = metric_from_args(args.metric, args) if args.metric else None
    if metric is not None and metric.needs_masks:
        raise MetricError(f"explain cannot score {metric.name!r}: it needs an object mask; use sycam-dsl eval --masks")
    model = load_model(args.model, args.weights, args.device)
    x = _load_one(args.image, args.size or model.input_size, model.normalize)
    targets = torch.tensor([args.target]) if args.target is not None else None
    terms, info = _terminals(model, x, targets, sorted(node.terminals()), args)
    inputs = MetricInputs(x, info.targets, model=model.module, device=args.device, batch_size=args.batch_size)
    h = expression_inputs(node, inputs, terms, info.acts).heatmaps
    c, n_classes = int(info.targets[0]), info.logits.shape[1]
    label = _class_name(model, c, n_classes)
    caption = [f"{text}", f"class {c}{f' ({label})' if label else ''}: score y_c = {float(info.y_c[0]):.4f}"
               f"  ({model.name}, layer {info.layer})"]
    if metric is not None:
        res = score_methods({"expr": (text, node)}, [metric], inputs, terms, info.acts)[metric.name]["expr"]
        caption.append(f"{metric.name} = {float(res.per_image[0]):.4f} "
                       f"({'higher' if metric.higher_is_better else 'lower'} is better)")
    backend = save_overlay(model.normalize.inverse(x[0].cpu()), h[0], caption, args.output)
    print(f"wrote {args.output} ({backend}): " + "; ".join(caption))
