"""The ``sycam-dsl terminals`` subcommand: compute a model's terminals on an image folder, save a ``.pt``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import __version__
from ..cli_args import positive_int
from ..errors import SycamError
from ..lang.terminals import TERMINALS

DEFAULT_NAMES = "grads,pgrads,cic,abl"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TERMINALS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown terminal(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(TERMINALS)}")
    return names


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``terminals`` subcommand; its handler is ``args.handler`` (``run_terminals``)."""
    p = subparsers.add_parser(
        "terminals", help="compute a model's terminal values (grads, cic, abl, ...) on an image folder",
        description="Compute the terminals of a classifier's target layer on an image folder and save them "
                    "as a .pt file (torch.save of a dict of tensors and metadata). Results are cached on disk "
                    "($SYCAM_DSL_CACHE, default ~/.cache/sycam-dsl). Nothing is downloaded.")
    p.add_argument("--model", required=True, metavar="NAME|FILE|module:fn",
                   help="a torchvision classifier name (resnet50, vgg16, ...), efficientnet_lite0, a TorchScript "
                        "file, or a factory package.module:function returning an nn.Module")
    p.add_argument("--weights", metavar="FILE",
                   help="state-dict file (torch.save(model.state_dict(), FILE)); random:SEED for seeded random "
                        "weights (demos and tests)")
    p.add_argument("--layer", metavar="PATH", help="target layer's dotted module path (default: the model's "
                                                   "default, e.g. layer4 for ResNets)")
    p.add_argument("--images", required=True, metavar="DIR",
                   help="folder of images, or of one subfolder of images per class")
    p.add_argument("--size", type=positive_int, metavar="PX",
                   help="images are resized (shorter side) and center-cropped to PX x PX (default: the model's "
                        "input size, 224 for most)")
    p.add_argument("--names", type=_names, default=_names(DEFAULT_NAMES), metavar="LIST",
                   help=f"comma-separated terminals (default {DEFAULT_NAMES}; known: {','.join(TERMINALS)})")
    p.add_argument("--targets", choices=("predicted", "labels"), default="predicted",
                   help="target class: the model's prediction (default), or the class-folder index (when the "
                        "folder's classes are the model's class indices in order)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--chunk-size", type=positive_int, default=32, metavar="N",
                   help="most images / masked images / ablated copies per forward pass (default 32)")
    p.add_argument("--ablation", choices=("auto", "fx", "hook"), default="auto",
                   help="abl: fx split (rerun only the layers after the target), hook (rerun everything), or "
                        "auto (fx, falling back to hook)")
    p.add_argument("--cache-dir", metavar="DIR", help="terminal cache folder (default $SYCAM_DSL_CACHE or "
                                                      "~/.cache/sycam-dsl)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the terminal cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output .pt file")
    p.set_defaults(handler=run_terminals)
    return p


def _save_atomic(obj: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name, suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_terminals(args: argparse.Namespace) -> None:
    """Handler of ``sycam-dsl terminals``; every expected failure is a ``SycamError``."""
    from .cache import compute_terminals_cached
    from .images import load_images
    from .models import load_model
    from .terminals import compute_terminals

    t0 = time.perf_counter()
    model = load_model(args.model, args.weights, args.device)
    images = load_images(args.images, size=args.size or model.input_size, normalize=model.normalize)
    targets = None
    if args.targets == "labels":
        if images.labels is None:
            raise SycamError(f"--targets labels needs one subfolder per class in {args.images!r}")
        targets = images.labels
    common = dict(device=args.device, chunk_size=args.chunk_size, progress=not args.quiet, ablation=args.ablation)
    if args.no_cache:
        terms, info = compute_terminals(model, args.layer, images.images, targets, args.names, **common)
    else:
        terms, info = compute_terminals_cached(model, args.layer, images.images, targets, args.names,
                                               cache_dir=args.cache_dir, **common)
    out = Path(args.output)
    _save_atomic({
        "terminals": {n: v.detach().cpu() for n, v in terms.items()},
        "acts": info.acts.detach().cpu(),
        "logits": info.logits.detach().cpu(),
        "targets": info.targets.detach().cpu(),
        "z_c": info.z_c.detach().cpu(),
        "y_c": info.y_c.detach().cpu(),
        "files": list(images.files),
        "labels": images.labels,
        "classes": images.classes,
        "meta": {"model": model.name, "source": model.source, "weights": args.weights, "layer": info.layer,
                 "size": int(images.images.shape[-1]), "names": list(terms), "device": str(args.device),
                 "abl_method": info.abl_method, "from_cache": info.from_cache, "sycam_dsl": __version__,
                 "normalize": {"mean": list(model.normalize.mean), "std": list(model.normalize.std)}},
    }, out)
    hw = "x".join(str(d) for d in info.acts.shape[2:])
    how = "from cache" if info.from_cache else f"in {time.perf_counter() - t0:.1f} s"
    abl = f", abl via {info.abl_method}" if info.abl_method else ""
    print(f"wrote {out}: {', '.join(terms)} for {terms.n} images x {terms.k} channels at {info.layer} ({hw}) "
          f"{how}{abl}", file=sys.stdout)
