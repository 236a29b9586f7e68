"""``sycam-dsl export``: a method and a model as one self-contained explainer file (``deploy.explainer``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import SycamError
from .options import (
    TARGET_HELP,
    add_model_options,
    expression_source,
    output_file,
    positive_int,
    reshape_from,
    target_arg,
    warn,
)

SUFFIXES = {"torchscript": ".pt", "export": ".pt2"}


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Write one file that holds the model split at the target layer, the computation of the "
                     "terminals the method reads (gradients, ScoreCAM's masked passes, ablation), the method's "
                     "weights (a per-class result's dispatch too), upsampling and normalization: "
                     "torch.jit.load(FILE)(images, targets=None) returns heatmaps [N, H, W] without sycam-dsl.")
    p.add_argument("method", metavar="RESULT_DIR_OR_EXPR",
                   help="a weight expression, a file holding one, or a sycam-dsl synth output folder (or its "
                        "result.json; a per-class result exports its dispatch; a result searched on a model "
                        "with another number of classes is refused; on the searched model, the result's layer is the "
                        "default --layer)")
    p.add_argument("--member", metavar="K|knee", help="of the output of a search over several metrics: export front "
                                                     "member K (default: the knee member, the result's expression)")
    add_model_options(p)
    p.add_argument("--chunk-size", type=positive_int, default=None, metavar="N",
                   help="masked images / ablated copies per forward pass inside the explainer (default: the "
                        "engine's, so the heatmaps equal sycam-dsl explain's)")
    p.add_argument("--target", type=target_arg, metavar="TARGET",
                   help=TARGET_HELP.split(": ", 1)[0] + " (default: the result's own, else the class): class, "
                   "classes:3,7, output:I or segmentation:C; a Python callable cannot go into the file")
    p.add_argument("--format", choices=tuple(SUFFIXES), default="torchscript",
                   help="torchscript (default): a .pt for torch.jit.load, any method; export: a .pt2 for "
                        "torch.export.load, one expression of gradient terminals only")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the explainer file (.pt, or .pt2 for "
                                                                         "--format export)")
    p.set_defaults(handler=run)


def _probe(module: Any, example: Any, size: int) -> None:
    """One example image through the model, so that a size it cannot take is one line, not a traceback."""
    import torch

    from ..util.text import first_line  # here: util's package imports torch, which --help need not load

    try:
        with torch.no_grad():
            module(example[:1])
    except Exception as e:  # the user's model code: torch raises RuntimeError, ValueError, ... on bad sizes
        first = first_line(e)
        raise SycamError(f"the model fails on one {size}x{size} image ({first}); use a larger --size") from None


def run(args: argparse.Namespace) -> None:
    import torch

    from ..cam.compute import DEFAULT_CHUNK_SIZE
    from ..deploy.explainer import explainer_size, export_explainer, save_explainer
    from ..deploy.method import load_method, method_terminals, result_settings
    from ..lang.ast import Node
    from ..models import load_model, resolve_layer
    from ..models.devices import resolve_device

    out = output_file(args.output, (SUFFIXES[args.format],))
    searched = result_settings(args.method)
    reshape = reshape_from(args, searched)
    method = load_method(expression_source(args.method), member=args.member)
    model = load_model(args.model, args.weights, args.device)
    size = args.size or model.input_size
    # the split is checked, and a half that cannot be scripted is traced, on two seeded example images
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(resolve_device(args.device))
    if searched is not None:
        _check_classes(*searched, model, example, per_class=not isinstance(method, Node))
    target = _target(args.target, searched)
    layer = resolve_layer(model.module, args.layer or _searched_layer(searched, model.name) or model.target_layer)[0]
    _probe(model.module, example, size)
    if args.format == "export" and target is not None:
        raise SycamError(f"the export format explains classes only, not target {target.name}; use --format "
                         f"torchscript")
    if args.format == "export":
        export_explainer(model.module, layer, method, out, example, reshape=reshape)
        call = "torch.export.load(FILE).module()(images, targets) (targets [N]; -1: the predicted class)"
    else:
        save_explainer(model.module, layer, method, out, example, model.name, args.chunk_size or DEFAULT_CHUNK_SIZE,
                       target, reshape=reshape)
        call = "torch.jit.load(FILE)(images, targets=None)"
    print(f"wrote {out} ({explainer_size(out)}, {args.format}): {model.name} at layer {layer}, "
          f"terminals {' '.join(method_terminals(method))}; {call} -> heatmaps [N, H, W]")


def _target(given: Any, searched: tuple[Path, dict[str, Any]] | None) -> Any:
    """``--target`` (not a class index: the call names the class), else the result's (``settings.target``)."""
    from ..models.targets import Target, parse_target

    if given is not None:
        if not isinstance(given, Target):  # a class index
            raise SycamError("an explainer file explains the class each call names (its targets argument) or "
                             "the predicted one; leave --target out, or give classes:, output: or segmentation:")
        return None if given.is_class else given
    recorded = searched[1].get("target") if searched is not None else None
    if not isinstance(recorded, str) or recorded == "class":
        return None
    if recorded.startswith("callable:"):
        raise SycamError(f"{searched[0] if searched else 'the result'} was searched for target {recorded}, a Python "
                         f"callable, which an explainer file cannot hold; give --target (class, classes:, output: or "
                         f"segmentation:)")
    return parse_target(recorded)


def _searched_layer(searched: tuple[Path, dict[str, Any]] | None, model_name: str) -> str | None:
    """The layer the search of ``searched`` explained, when it ran on the model being exported (``model_name``)."""
    if searched is None or searched[1].get("model") != model_name:
        return None
    layer = searched[1].get("layer")
    return layer if isinstance(layer, str) else None


def _n_classes(module: Any, size: int, device: Any = "cpu") -> int | None:
    """The number of logits ``module`` gives for one image of ``size`` px (None: no logits [1, C])."""
    import torch

    with torch.no_grad():
        out = module(torch.zeros(1, 3, size, size, device=device))
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def _check_classes(result: Path, settings: dict[str, Any], model: Any, example: Any, per_class: bool) -> None:
    """Refuse a result searched on a model with another number of classes than ``model``'s: a per-class
    result's expressions are chosen by class index, and a search's scores hold for its own model only."""
    from ..models import load_model
    from ..util.text import first_line

    name = settings.get("model")
    if not isinstance(name, str) or name == model.name:
        return
    spec = "bundled" if settings.get("model_source") == "bundled" else name
    try:
        if settings.get("model_source") == "torchscript":
            raise SycamError("a TorchScript model is recorded by its file's stem only")
        other = load_model(spec, settings.get("weights"), "cpu")
        searched = _n_classes(other.module, int(settings.get("size") or other.input_size))
    except Exception as e:  # the recorded model may be gone or not load here: the check is then skipped
        warn([f"{result} was searched on {name}, which cannot be loaded here to check that its classes are "
              f"{model.name}'s ({first_line(e)})"])
        return
    try:
        n = _n_classes(model.module, example.shape[-1], example.device)
    except Exception:  # the explainer's own checks say what is wrong with the model
        return
    if n is None or searched is None or n == searched:
        return
    what = "its per-class expressions are chosen by class index" if per_class else "its scores hold for that model"
    raise SycamError(f"{result} was searched on {name} ({searched} classes), not on {model.name} ({n} classes): "
                     f"{what}; export it with --model {spec}, or give the expression itself as text to use it "
                     f"on {model.name}")
