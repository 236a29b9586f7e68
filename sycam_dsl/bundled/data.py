"""The bundled evaluation split: synthetic shapes as an ``ImageSet`` or as an image + mask folder.

``bundled_images(n, seed)`` and ``load_images(write_bundled(folder, n, seed) / "images", size=64,
normalize=NORMALIZATION, masks=folder / "masks")`` give identical tensors: files are named
``<class>/<i:04d>.png`` after the render index ``i``, and the set is ordered as ``load_images``
orders a class-folder tree (class folder, then file name).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cam.images import ImageSet
from ..models.small_cnn import CLASSES, INPUT_SIZE, NORMALIZATION
from .shapes import render

#: Seed of the evaluation split (the training script uses other seeds).
EVAL_SEED = 0
#: The most images the set renders (they are made in memory at once, about 64 KB each).
MAX_BUNDLED_IMAGES = 20_000


def _ordered(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Rendered arrays sorted by (class, index), with their relative file names."""
    if not 1 <= n <= MAX_BUNDLED_IMAGES:
        raise ValueError(f"the bundled set has 1 to {MAX_BUNDLED_IMAGES} images, got {n}")
    images, masks, labels = render(n, seed, INPUT_SIZE)
    order = np.argsort(labels, kind="stable")  # CLASSES is sorted, so label order is folder order
    files = [f"{CLASSES[labels[i]]}/{i:04d}.png" for i in order]
    return images[order], masks[order], labels[order], files


def bundled_images(n: int = 200, seed: int = EVAL_SEED) -> ImageSet:
    """``n`` synthetic images: ``images`` ``[n, 3, 64, 64]`` normalized with ``NORMALIZATION``,
    ``labels`` ``[n]``, ``masks`` ``[n, 64, 64]`` bool, ``classes`` ``list(CLASSES)``."""
    images, masks, labels, files = _ordered(n, seed)
    # The same operations as load_images: uint8 -> float / 255, then normalize.
    x = NORMALIZATION(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    return ImageSet(images=x.contiguous(), files=files, root=Path("<bundled>"),
                    labels=torch.from_numpy(labels).long(), classes=list(CLASSES),
                    masks=torch.from_numpy(masks).bool())


def write_bundled(folder: str | Path, n: int = 200, seed: int = EVAL_SEED) -> Path:
    """Write ``folder/images/<class>/<i:04d>.png`` and binary (0/255) ``folder/masks/<class>/<i:04d>.png``;
    returns ``folder``. Needs ``n >= len(CLASSES)`` so every class folder exists (labels are folder indices)."""
    if n < len(CLASSES):
        raise ValueError(f"write_bundled needs n >= {len(CLASSES)} (one image per class) so the class folders "
                         f"give the same labels, got n={n}")
    root = Path(folder)
    images, masks, _, files = _ordered(n, seed)
    for img, mask, rel in zip(images, masks, files):
        for sub, arr in (("images", img), ("masks", mask.astype(np.uint8) * 255)):
            path = root / sub / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    return root
