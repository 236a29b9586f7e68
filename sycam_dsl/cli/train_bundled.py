"""``sycam-dsl train-bundled``: retrain the built-in benchmark's SmallCNN (reproduces the shipped weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SycamError
from .options import output_file, positive_int, seed_int


def configure(p: argparse.ArgumentParser) -> None:
    from ..bundled.train import TRAIN_SEED
    from ..models.small_cnn import WEIGHTS_PATH

    p.description = ("Train the bundled SmallCNN on generated shapes, deterministically on a CPU, report its "
                     "accuracies and save its state dict (the shipped weights were made with the defaults).")
    p.add_argument("--out", "-o", type=Path, help="where to save the state dict (default: the package's weights "
                                                  f"file, {WEIGHTS_PATH.name}; required with --permute-labels)")
    p.add_argument("--epochs", type=positive_int, default=6, help="epochs (default 6)")
    p.add_argument("--train-size", type=positive_int, default=6000, help="training images (default 6000)")
    p.add_argument("--seed", type=seed_int, default=TRAIN_SEED, help=f"training images and initialization "
                                                               f"(default {TRAIN_SEED})")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads, fixed for reproducibility "
                                                                   "(default 2)")
    p.add_argument("--permute-labels", type=seed_int, metavar="SEED",
                   help="train on the training labels permuted with SEED (same recipe otherwise): the model for "
                        "sycam-dsl sanity --data-randomized; its accuracies should be near chance")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..bundled.train import train_and_save
    from ..models.small_cnn import WEIGHTS_PATH

    if args.out is None and args.permute_labels is not None:
        raise SycamError("--permute-labels needs --out: a model trained on permuted labels must not replace the "
                         "shipped weights")
    out = WEIGHTS_PATH if args.out is None else args.out
    output_file(str(out))  # a folder or an unwritable path is refused before the training
    for line in train_and_save(out, args.epochs, args.train_size, args.seed, args.threads, args.permute_labels):
        print(line)
