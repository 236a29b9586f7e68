"""Train the bundled SmallCNN on synthetic shapes and save its state dict.

    sycam-dsl train-bundled [--out PATH] [--epochs E] [--train-size N] [--seed S] [--threads T]
                            [--permute-labels SEED]

Deterministic on a CPU: fixed seeds, ``torch.use_deterministic_algorithms(True)`` and a fixed thread
count (default 2; a different count can change float summation order, hence the last digits of the
weights, but not the accuracy). Training images use seed ``--seed`` (default 1000), the held-out
check seed 2000, and the evaluation split ``EVAL_SEED`` (0) is reported as well; none overlap.

Shipped ``small_cnn.pt`` (248 KiB): made with ``sycam-dsl train-bundled`` (defaults: 6 epochs,
6000 training images, batch 64, AdamW + one-cycle schedule, 2 threads). Training took 31-33 s on an idle
2-core CPU (about 45 s with rendering and checks; up to ~130 s when the cores are shared); train accuracy
0.9998, held-out 0.9990 (1000 images, seed 2000), evaluation split 1.0000 (200 images, seed 0). A rerun
gave bit-identical tensors.

``--permute-labels SEED`` trains the same model with the same recipe on the training labels permuted
with ``SEED`` (``permuted_labels``): the model for Adebayo et al.'s data-randomization test
(``sycam-dsl sanity --data-randomized``). Its accuracies against the true labels should be near chance.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SycamError
from ..models.small_cnn import CLASSES, INPUT_SIZE, NORMALIZATION, WEIGHTS_PATH, SmallCNN
from .data import EVAL_SEED, bundled_images
from .shapes import render

TRAIN_SEED = 1000
HELD_OUT_SEED = 2000
HELD_OUT_SIZE = 1000


def _to_input(images: np.ndarray) -> torch.Tensor:
    """``[n, H, W, 3]`` uint8 to normalized ``[n, 3, H, W]`` float32, as ``load_images`` does."""
    return NORMALIZATION(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns: every class is closed under them, so labels stay valid."""
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(3)
    return torch.rot90(x, int(torch.randint(0, 4, (), generator=gen)), dims=(2, 3))


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 250) -> float:
    """Top-1 accuracy of ``model`` on normalized ``x`` ``[n, 3, H, W]`` with labels ``y`` ``[n]``."""
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / max(1, len(x))


def permuted_labels(labels: torch.Tensor, seed: int | None) -> torch.Tensor:
    """``labels`` ``[n]`` shuffled by a permutation drawn with ``seed`` (its own generator), or
    themselves for None: the same multiset, no longer tied to the images."""
    if seed is None:
        return labels
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def train(epochs: int = 6, train_size: int = 6000, seed: int = TRAIN_SEED, batch: int = 64,
          lr: float = 3e-3, log: bool = True, permute_labels: int | None = None) -> SmallCNN:
    """A SmallCNN trained on ``train_size`` images rendered with ``seed`` (CPU, deterministic), on
    their labels permuted with ``permute_labels`` when given (``permuted_labels``)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, _, labels = render(train_size, seed, INPUT_SIZE)
    x, y = _to_input(images), permuted_labels(torch.from_numpy(labels), permute_labels)
    model = SmallCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((train_size + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(train_size, generator=gen)
        total = 0.0
        for i in range(0, train_size, batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(_augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if log:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / train_size:.4f}", flush=True)
    return model.eval()


def train_and_save(out: Path = WEIGHTS_PATH, epochs: int = 6, train_size: int = 6000, seed: int = TRAIN_SEED,
                   threads: int = 2, permute_labels: int | None = None) -> list[str]:
    """Train deterministically (on permuted labels with ``permute_labels``), report the accuracies
    against the true labels, save the state dict to ``out``; returns the report's lines
    (``sycam-dsl train-bundled`` prints them)."""
    if seed in (HELD_OUT_SEED, EVAL_SEED):
        raise SycamError(f"--seed must differ from the held-out seeds {HELD_OUT_SEED} and {EVAL_SEED}")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    model = train(epochs, train_size, seed, permute_labels=permute_labels)
    seconds = time.perf_counter() - start
    images, _, labels = render(train_size, seed, INPUT_SIZE)
    train_acc = accuracy(model, _to_input(images), torch.from_numpy(labels))
    held, _, held_labels = render(HELD_OUT_SIZE, HELD_OUT_SEED, INPUT_SIZE)
    held_acc = accuracy(model, _to_input(held), torch.from_numpy(held_labels))
    ev = bundled_images(200, EVAL_SEED)
    assert ev.labels is not None  # bundled images are always labelled
    eval_acc = accuracy(model, ev.images, ev.labels)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    chance = f"; labels permuted with seed {permute_labels}, chance is {1 / len(CLASSES):.4f}" \
        if permute_labels is not None else ""
    return [f"train accuracy {train_acc:.4f} ({train_size} images, seed {seed}); held-out accuracy "
            f"{held_acc:.4f} ({HELD_OUT_SIZE} images, seed {HELD_OUT_SEED}); eval split {eval_acc:.4f} "
            f"(200 images, seed {EVAL_SEED}); training took {seconds:.0f} s{chance}",
            f"saved {out} ({out.stat().st_size / 1024:.0f} KiB)"]
