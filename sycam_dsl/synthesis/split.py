"""The held-out test split: images set aside before any search, scored only in the final tables.

The split is drawn with the run's seed and stratified by class: each class gives its share of the
test images (largest remainders, so every class's test count is within one image of
``fraction * class size``), chosen at random inside the class. Both sides need at least
``MIN_SPLIT_IMAGES`` images; with fewer the split is turned off and the run says so (a warning in
the output and the report) rather than refused, so that tiny runs still work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SycamError
from .problem import Problem

#: Share of the images held out by default.
DEFAULT_TEST_SPLIT = 0.2
#: The fewest images either side of a split may have.
MIN_SPLIT_IMAGES = 2


def check_fraction(fraction: float) -> float:
    """``fraction`` as a float in ``[0, 1)``, or a ``SycamError``."""
    f = float(fraction)
    if not math.isfinite(f) or not 0.0 <= f < 1.0:
        raise SycamError(f"the test split must be a fraction in [0, 1) (0: off), got {fraction}")
    return f


def held_out_counts(sizes: list[int], fraction: float, gen: torch.Generator) -> list[int]:
    """Test images per class for class sizes ``sizes``: ``round(fraction * sum(sizes))`` in all, each
    class ``floor`` or ``ceil`` of its quota (largest remainders; ties broken at random by ``gen``)."""
    quotas = [round(fraction * s, 9) for s in sizes]
    counts = [math.floor(q) for q in quotas]
    total = math.floor(fraction * sum(sizes) + 0.5)
    tie = torch.randperm(len(sizes), generator=gen).tolist()
    by_remainder = sorted(range(len(sizes)), key=lambda c: (counts[c] - quotas[c], tie[c]))
    for c in by_remainder[:max(0, total - sum(counts))]:
        counts[c] += 1
    return counts


def split_indices(n: int, fraction: float, seed: int,
                  classes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(search, test) positions in ``range(n)``, each sorted: a seeded ``fraction`` of the images held
    out, stratified by ``classes`` ``[n]`` when given."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, dtype=torch.long) if classes is None else classes.detach().cpu().long()
    members = [(labels == c).nonzero().flatten() for c in torch.unique(labels).tolist()]
    counts = held_out_counts([len(m) for m in members], fraction, gen)
    test = [m[torch.randperm(len(m), generator=gen)[:k]] for m, k in zip(members, counts)]
    is_test = torch.zeros(n, dtype=torch.bool)
    for t in test:
        is_test[t] = True
    return (~is_test).nonzero().flatten(), is_test.nonzero().flatten()


@dataclass(frozen=True)
class Split:
    """The split of a problem: ``fraction`` asked for; ``search`` and ``test`` positions in the
    problem (``test`` empty when the split is off); ``warning`` why it is off despite a fraction."""

    fraction: float
    search: torch.Tensor
    test: torch.Tensor
    warning: str | None = None

    @property
    def on(self) -> bool:
        return self.test.numel() > 0


def make_split(problem: Problem, fraction: float, seed: int, classes: torch.Tensor | None) -> Split:
    """The seeded test split of ``problem`` stratified by ``classes`` ``[N]`` (see the module doc)."""
    fraction = check_fraction(fraction)
    everything = torch.arange(problem.n)
    if fraction == 0.0:
        return Split(0.0, everything, everything[:0])
    search, test = split_indices(problem.n, fraction, seed, classes)
    if min(len(search), len(test)) < MIN_SPLIT_IMAGES:
        return Split(fraction, everything, everything[:0],
                     f"test split off: {problem.n} images are too few for a {fraction:g} test split (each side "
                     f"needs at least {MIN_SPLIT_IMAGES}); every score is on the searched images")
    return Split(fraction, search, test)
