"""Scoring candidates for the search: the ``Scorer`` interface the oracle loop talks to, and
``LocalScorer``, which scores on a ``Problem`` in this process.

The search sees each oracle level's block of images (``I3``, then the images ``I2`` adds, then those
``I1`` adds) as a list of chunks; a scorer gives per-image scores of candidates on one chunk, and the
bound on what the remaining chunks of a block could add (for early stopping). Tests script the
search by replacing the scorer; a distributed scorer can implement the same interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from ..evaluate import evaluate
from ..lang.ast import Node
from ..lang.types import Type
from ..metrics.objectives import Objective, best_scores
from ..template import layer_saliency, normalize_upsampled
from .problem import Problem
from .subsets import Subsets

#: Bound on the elements of one batched heatmap tensor ``[C, n, H, W]`` (256 MiB in float32).
MAX_HEATMAP_ELEMENTS = 1 << 26


class Scorer(Protocol):
    """Per-image scores of candidates on the chunks of each level block (blocks in ``Subsets`` order)."""

    @property
    def levels(self) -> int:
        """How many level blocks there are."""
        ...

    def chunks(self, level: int) -> int:
        """How many chunks level block ``level`` is scored in."""
        ...

    def chunk_size(self, level: int, chunk: int) -> int:
        """How many images chunk ``chunk`` of level block ``level`` holds."""
        ...

    def score(self, nodes: list[Node], level: int, chunk: int) -> list[torch.Tensor | None]:
        """Per-image scores ``[n_chunk]`` (``[n_chunk, M]`` for ``Objectives``; CPU float64) of each candidate
        on that chunk, in chunk order; None for a candidate whose heatmaps have NaN or Inf values."""
        ...

    def best_rest(self, level: int, chunk: int) -> float | torch.Tensor | None:
        """The sum of the best scores the images after chunk ``chunk`` of block ``level`` could get
        (``[M]`` for ``Objectives``; None when the metric has no bounds)."""
        ...


#: ``Scorer.score``'s signature: (candidates, level block, chunk) -> per-candidate scores or None.
ScoreFn = Callable[[list[Node], int, int], list[torch.Tensor | None]]

#: What makes a search's scorer: (problem, subsets, metric, the start symbol's type, image_chunk);
#: ``LocalScorer`` is one, ``distributed.RayScorer.factory`` another.
ScorerFactory = Callable[[Problem, Subsets, Objective, Type, "int | None"], Scorer]


def score_part(part: Problem, nodes: list[Node], metric: Objective, start: Type) -> list[torch.Tensor | None]:
    """Per-image scores ``[n]`` (``[n, M]`` for ``Objectives``; CPU float64) of each of ``nodes`` on all of
    ``part``'s images, None for a candidate whose saliency has NaN or Inf values. Candidates are scored
    together, in groups that keep the ``[C, n, H, W]`` heatmaps under ``MAX_HEATMAP_ELEMENTS``."""
    size = tuple(part.inputs.images.shape[-2:])
    full = metric.needs_heatmaps  # else the metric works from S alone: no [C, n, H, W] tensor
    per = part.n * (size[0] * size[1] if full else part.acts.numel() // max(1, part.n))
    group = max(1, MAX_HEATMAP_ELEMENTS // max(1, per))
    out: list[torch.Tensor | None] = []
    for g in range(0, len(nodes), group):
        weights = torch.broadcast_tensors(*[evaluate(n, part.terminals) for n in nodes[g:g + group]])
        s = layer_saliency(torch.stack(weights), part.acts, start)
        finite = torch.isfinite(s).flatten(1).all(dim=1).tolist()
        ok = [k for k, f in enumerate(finite) if f]
        scores = iter(())
        if ok:
            s_ok = s[ok] if len(ok) < len(finite) else s
            candidate = part.inputs.with_heatmaps(normalize_upsampled(s_ok, size) if full else None, s_ok)
            scores = iter(metric.scores(candidate).detach().to("cpu", torch.float64))
        out += [next(scores) if f else None for f in finite]
    return out


def score_levels(scorer: Scorer, node: Node, score: ScoreFn | None = None) -> torch.Tensor | None:
    """One candidate's per-image scores on every level block ``[N]`` (``I1`` in ``Subsets`` order);
    None if invalid. ``score`` (default ``scorer.score``) scores each chunk, one at a time, e.g. to
    check a deadline between chunks."""
    score = score or scorer.score
    parts = [score([node], j, c)[0] for j in range(scorer.levels) for c in range(scorer.chunks(j))]
    scored = [p for p in parts if p is not None]
    return torch.cat(scored) if len(scored) == len(parts) else None


class LocalScorer:
    """Scores on ``problem`` in this process: each level block of ``subsets`` split into chunks of
    ``image_chunk`` images (one chunk when None), candidates scored together with batched saliency
    in groups that keep the ``[C, n, H, W]`` heatmaps under ``MAX_HEATMAP_ELEMENTS``."""

    def __init__(self, problem: Problem, subsets: Subsets, metric: Objective, start: Type,
                 image_chunk: int | None) -> None:
        self.problem, self.metric, self.start, self.image_chunk = problem, metric, start, image_chunk
        self._parts = [self._split(subsets.block(j)) for j in range(len(subsets.level_sizes))]
        self._best_bounds: list[list[torch.Tensor] | None] | None = None

    @property
    def levels(self) -> int:
        """How many level blocks there are."""
        return len(self._parts)

    def _split(self, block: torch.Tensor) -> list[Problem]:
        """The block's images in chunks of ``image_chunk`` (one chunk when None)."""
        size = self.image_chunk or max(1, len(block))
        return [self.problem.subset(block[i:i + size]) for i in range(0, len(block), size)]

    def part(self, level: int, chunk: int) -> Problem:
        """The problem of chunk ``chunk`` of level block ``level``."""
        return self._parts[level][chunk]

    def chunks(self, level: int) -> int:
        return len(self._parts[level])

    def chunk_size(self, level: int, chunk: int) -> int:
        return self._parts[level][chunk].n

    def score(self, nodes: list[Node], level: int, chunk: int) -> list[torch.Tensor | None]:
        """Per-image scores (CPU float64) of each candidate on chunk ``chunk`` of level block ``level``,
        None for a candidate whose heatmaps have NaN or Inf values (``score_part``)."""
        return score_part(self._parts[level][chunk], nodes, self.metric, self.start)

    def best_rest(self, level: int, chunk: int) -> float | torch.Tensor | None:
        """The sum of the best scores the images after chunk ``chunk`` of block ``level`` could get: a
        float, ``[M]`` for ``Objectives`` (``inf`` for a metric without bounds); None when nothing is
        bounded."""
        if self._best_bounds is None:
            self._best_bounds = []
            for parts in self._parts:
                best = [best_scores(self.metric, part.inputs) for part in parts]
                self._best_bounds.append(None if any(b is None for b in best)
                                         else [b.sum(dim=0) for b in best if b is not None])
        sums = self._best_bounds[level]
        if sums is None:
            return None
        rest = sums[chunk + 1:]
        if sums[0].dim() == 0:
            return float(sum(float(s) for s in rest))
        return torch.stack(rest).sum(dim=0) if rest else torch.zeros_like(sums[0])
