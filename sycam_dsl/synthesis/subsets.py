"""The image subsets of the search (docs/search.md#image-levels): ``I3 ⊂ I2 ⊂ I1`` and the equivalence subset.

All of them are prefixes of one seeded order of the images. Where classes are known the order
interleaves the classes (a random order inside each class, then one image of each class in turn),
so every prefix is as balanced over classes as it can be and the subsets nest by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import SycamError

#: The defaults (docs/search.md#image-levels), smallest level first: I3 = 100 images, I2 = 1000, I1 = all (None).
DEFAULT_LEVEL_SIZES: tuple[int | None, ...] = (100, 1000, None)
#: The default size (docs/language.md#observational-equivalence) of the observational-equivalence subset.
DEFAULT_EQUIVALENCE_SIZE = 10


def stratified_order(n: int, seed: int, classes: torch.Tensor | None = None) -> torch.Tensor:
    """A seeded permutation of ``range(n)``; with ``classes`` ``[n]``, classes take turns (round robin,
    in order of class index) so that any prefix holds every class about equally often."""
    gen = torch.Generator().manual_seed(seed)
    if classes is None:
        return torch.randperm(n, generator=gen)
    classes = classes.detach().cpu().long()
    if classes.shape != (n,):
        raise SycamError(f"classes must be [{n}], one per image, got shape {list(classes.shape)}")
    per_class = []
    for c in torch.unique(classes).tolist():
        members = (classes == c).nonzero().flatten()
        per_class.append(members[torch.randperm(len(members), generator=gen)].tolist())
    order = [m[r] for r in range(max(map(len, per_class))) for m in per_class if r < len(m)]
    return torch.tensor(order, dtype=torch.long)


@dataclass(frozen=True)
class Subsets:
    """``order`` ``[n]`` the seeded image order; ``level_sizes`` the sizes of ``I3, I2, I1`` (scoring
    order, nested prefixes of ``order``); ``equivalence_size`` the prefix used for equivalence."""

    order: torch.Tensor
    level_sizes: tuple[int, ...]
    equivalence_size: int

    @property
    def names(self) -> list[str]:
        """``["I3", "I2", "I1"]`` for three levels: the largest level is ``I1``."""
        return [f"I{len(self.level_sizes) - j}" for j in range(len(self.level_sizes))]

    def level(self, j: int) -> torch.Tensor:
        """Image indices of level ``j`` (0 = the smallest, scored first)."""
        return self.order[:self.level_sizes[j]]

    def block(self, j: int) -> torch.Tensor:
        """The images level ``j`` adds to level ``j - 1``: scoring blocks ``0..j`` scores level ``j``."""
        start = self.level_sizes[j - 1] if j else 0
        return self.order[start:self.level_sizes[j]]

    @property
    def equivalence(self) -> torch.Tensor:
        return self.order[:self.equivalence_size]


def make_subsets(n: int, level_sizes: Sequence[int | None] = DEFAULT_LEVEL_SIZES, seed: int = 0,
                 classes: torch.Tensor | None = None,
                 equivalence_size: int = DEFAULT_EQUIVALENCE_SIZE) -> Subsets:
    """Nested subsets of ``n`` images. ``level_sizes`` lists the levels smallest first (None = all
    images); sizes above ``n`` are clipped to ``n`` and levels that add no image are dropped."""
    if n < 1:
        raise SycamError("the search needs at least one image")
    if not level_sizes:
        raise SycamError("give at least one level size (e.g. 100,1000,all)")
    sizes: list[int] = []
    for s in level_sizes:
        if s is not None and s < 1:
            raise SycamError(f"level sizes must be positive (or all), got {s}")
        s = n if s is None else min(int(s), n)
        if sizes and s < sizes[-1]:
            raise SycamError(f"level sizes must grow from the first level scored to the last (I3 <= I2 <= I1), "
                             f"got {list(level_sizes)}")
        if not sizes or s > sizes[-1]:
            sizes.append(s)
    if equivalence_size < 1:
        raise SycamError(f"the equivalence subset needs at least one image, got {equivalence_size}")
    return Subsets(stratified_order(n, seed, classes), tuple(sizes), min(equivalence_size, n))


def parse_level_sizes(text: str) -> tuple[int | None, ...]:
    """``"100,1000,all"`` -> ``(100, 1000, None)``."""
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("all", "*"):
            out.append(None)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise SycamError(f"level sizes are positive integers or 'all', comma-separated (e.g. 100,1000,all); "
                             f"got {text!r}")
    given = [n for n in out if n is not None]
    if None in out[:-1] or any(a >= b for a, b in zip(given, given[1:])):
        raise SycamError(f"level sizes must increase from the first level scored to the last, with 'all' only "
                         f"last (e.g. 100,1000,all); got {text!r}")
    return tuple(out)
