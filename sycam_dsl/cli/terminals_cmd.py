"""``sycam-dsl terminals``: compute a model's terminals on an image folder and save them as a ``.pt``."""

from __future__ import annotations

import argparse
import sys
import time

from ..lang.terminals import TERMINALS
from ..util.files import atomic_torch_save
from ..util.text import comma_list
from ..version import __version__
from .options import (
    IMAGES_HELP,
    add_cache_options,
    add_chunk_size,
    add_model_options,
    add_precision,
    add_targets,
    compute_terminals_from,
    from_store,
    output_file,
    targets_from,
)

DEFAULT_NAMES = "grads,pgrads,cic,abl"


def _names(text: str) -> list[str]:
    names = comma_list(text)
    unknown = [n for n in names if n not in TERMINALS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown terminal(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(TERMINALS)}")
    return names


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Compute the terminals of a classifier's target layer on an image folder and save them "
                    "as a .pt file (torch.save of a dict of tensors and metadata). Computed values are kept per "
                    "image in the terminal store ($SYCAM_DSL_CACHE, default ~/.cache/sycam-dsl; see sycam-dsl "
                    "cache). Nothing is downloaded.")
    add_model_options(p)
    p.add_argument("--images", required=True, metavar="DIR", help=IMAGES_HELP)
    p.add_argument("--names", type=_names, default=_names(DEFAULT_NAMES), metavar="LIST",
                   help=f"comma-separated terminals (default {DEFAULT_NAMES}; known: {','.join(TERMINALS)})")
    add_targets(p)
    add_chunk_size(p)
    add_precision(p)
    p.add_argument("--ablation", choices=("auto", "fx", "hook"), default="auto",
                   help="abl: fx split (rerun only the layers after the target), hook (rerun everything), or "
                        "auto (fx, falling back to hook)")
    add_cache_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output .pt file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Compute, save, and print one line saying what was written."""
    from ..cam.images import load_images
    from ..models import load_model

    out = output_file(args.output)
    t0 = time.perf_counter()
    model = load_model(args.model, args.weights, args.device)
    images = load_images(args.images, size=args.size or model.input_size, normalize=model.normalize)
    targets = targets_from(args, images.labels, len(images.images))
    terms, info = compute_terminals_from(args, model, images.images, targets, args.names, ablation=args.ablation)
    atomic_torch_save({
        "terminals": {n: v.detach().cpu() for n, v in terms.items()},
        "acts": info.acts.detach().cpu(),
        "logits": info.logits.detach().cpu(),
        "targets": info.targets.detach().cpu(), "target": info.target.name if info.target is not None else "class",
        "z_c": info.z_c.detach().cpu(),
        "y_c": info.y_c.detach().cpu(),
        "files": list(images.files),
        "labels": images.labels,
        "classes": images.classes,
        "meta": {"model": model.name, "source": model.source, "weights": args.weights, "layer": info.layer,
                 "size": int(images.images.shape[-1]), "names": list(terms), "device": str(args.device),
                 "abl_method": info.abl_method, "sycam_dsl": __version__,
                 "images_from_store": None if args.no_cache else info.stored,
                 "precision": args.precision, "batch_sizes": dict(info.batch_sizes),
                 "normalize": {"mean": list(model.normalize.mean), "std": list(model.normalize.std)}},
    }, out)
    hw = "x".join(str(d) for d in info.acts.shape[2:])
    stored = "" if args.no_cache else f", {from_store(info.stored, terms.n)}"
    abl = f", abl via {info.abl_method}" if info.abl_method else ""
    print(f"wrote {out}: {', '.join(terms)} for {terms.n} images x {terms.k} channels at {info.layer} ({hw}) "
          f"in {time.perf_counter() - t0:.1f} s{stored}{abl}", file=sys.stdout)
