"""``sycam-dsl explain``: one expression's heatmap over one image, with a caption."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .metric_args import metric_from_args
from .options import (
    TARGET_HELP,
    add_model_options,
    add_scoring_options,
    compute_terminals_from,
    note_metric_batch,
    output_file,
    runtime_from,
    target_arg,
    targets_from,
    warn,
    weight_expression,
)

#: What both drawing backends (matplotlib, PIL) write.
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg")


def configure(x: argparse.ArgumentParser) -> None:
    x.description = ("Compute one weight expression's heatmap for one image and save it overlaid on the image, "
                    "with a colour bar and a caption naming the expression, the class and its score.")
    x.add_argument("expression", metavar="EXPR", help="a weight expression, or a file holding one")
    add_model_options(x)
    add_scoring_options(x)
    x.add_argument("--image", required=True, metavar="FILE", help="the image")
    x.add_argument("--target", type=target_arg, metavar="TARGET", help=TARGET_HELP.replace("the --targets class",
                                                                                       "the prediction"))
    x.add_argument("--metric", help="also report this metric's score for the image (e.g. deletion)")
    x.add_argument("-o", "--output", required=True, metavar="FILE", help="output image (.png)")
    x.set_defaults(handler=run)


def _load_one(path: str, size: int, normalize: Any):
    """``load_images`` on a folder holding only ``path``, so one image gets the same preprocessing."""
    from ..cam.errors import ImageError
    from ..cam.images import load_images

    src = Path(path)
    if src.is_dir():
        raise ImageError(f"image {path!r} is a folder; give one image file (sycam-dsl eval takes folders)")
    if not src.is_file():
        raise ImageError(f"image {path!r} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / src.name
        shutil.copy(src, copy)
        try:
            return load_images(tmp, size=size, normalize=normalize).images
        except ImageError as e:  # name the user's file, not the temporary copy
            message = str(e).replace(str(copy), path).replace(f"in {tmp!r}", f"in {path!r}").replace(tmp, path)
            raise ImageError(message) from None


def _class_name(model: Any, c: int, n_classes: int) -> str | None:
    if model.source != "torchvision":
        return None
    try:
        import torchvision
        cats = next(iter(torchvision.models.get_model_weights(model.name))).meta.get("categories")
    except Exception:  # a model without a weights enum: no names, only indices
        return None
    return cats[c] if cats and len(cats) == n_classes else None


def run(args: argparse.Namespace) -> None:
    """Draw the heatmap and print one line saying what was written."""

    from ..cam.overlay import save_overlay
    from ..metrics.diagnostics import score_problems, weight_problems
    from ..metrics.errors import MetricError
    from ..metrics.expression import expression_inputs, score_methods
    from ..metrics.registry import MetricInputs
    from ..models import load_model

    output_file(args.output, OUTPUT_SUFFIXES)
    text, node = weight_expression(args.expression)
    metric = metric_from_args(args.metric, args) if args.metric else None
    if metric is not None and metric.needs_masks:
        raise MetricError(f"explain cannot score {metric.name!r}: it needs an object mask; use sycam-dsl eval --masks")
    model = load_model(args.model, args.weights, args.device)
    x = _load_one(args.image, args.size or model.input_size, model.normalize)
    targets = targets_from(args, None, 1)
    terms, info = compute_terminals_from(args, model, x, targets, sorted(node.terminals()))
    inputs = MetricInputs(x, info.targets, model=model.module, device=args.device, batch_size=args.batch_size,
                          precision=args.precision, runtime=runtime_from(args), target=info.target)
    if metric is not None:
        note_metric_batch(args, inputs)
    h = expression_inputs(node, inputs, terms, info.acts).heatmaps
    assert h is not None  # expression_inputs computes heatmaps unless told not to
    problems = weight_problems("the expression", node, terms, info.acts)
    c, n_classes = int(info.targets[0]), info.logits.shape[1]
    label = _class_name(model, c, n_classes)
    what = f"class {c}{f' ({label})' if label else ''}: score y_c" if info.target is None \
        else f"target {info.target.name}: score"
    caption = [f"{text}", f"{what} = {float(info.y_c[0]):.4f}  ({model.name}, layer {info.layer})"]
    if metric is not None:
        res = score_methods({"expr": (text, node)}, [metric], inputs, terms, info.acts)[metric.name]["expr"]
        caption.append(f"{metric.name} = {float(res.per_image[0]):.4f} "
                       f"({'higher' if metric.higher_is_better else 'lower'} is better)")
        problems += score_problems("the expression", {metric.name: res})
    warn(problems)
    backend = save_overlay(model.normalize.inverse(x[0].cpu()), h[0], caption, args.output)
    print(f"wrote {args.output} ({backend}): " + "; ".join(caption))
