"""Class-based decomposition (docs/search.md#per-class-search): one search per predicted class on that class's
images, then a dispatch with a fallback for classes that have no expression of their own."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..baselines import baseline
from ..errors import SycamError
from ..lang.ast import Node
from ..metrics.objectives import Objectives
from ..parse.grammar import Grammar
from .config import DEFAULT_MIN_CLASS_IMAGES, Budget, SearchConfig
from .dispatch import Dispatch
from .evaluation import method_scores
from .incumbent import better
from .pareto import knee
from .problem import Problem
from .scorer import ScorerFactory
from .search import Search, SearchOutcome
from .state import CHECKPOINT_NAME


@dataclass
class ClassSearch:
    """The search of one class: ``index`` the class's image positions in the problem."""

    cls: int
    index: torch.Tensor
    outcome: SearchOutcome


def class_folder(out_dir: Path, c: int) -> Path:
    return out_dir / "classes" / f"class-{c}"


def checkpoint_kind(out_dir: Path) -> str | None:
    """What ``out_dir`` holds: ``single`` (the checkpoint of one search), ``per-class`` (those of
    per-class searches) or None (no checkpoint)."""
    if (out_dir / CHECKPOINT_NAME).is_file():
        return "single"
    if any((out_dir / "classes").glob(f"class-*/{CHECKPOINT_NAME}")):
        return "per-class"
    return None


def search_per_class(problem: Problem, grammar: Grammar, config: SearchConfig, out_dir: Path | None,
                     progress: bool = True, resume: bool = True,
                     min_images: int = DEFAULT_MIN_CLASS_IMAGES,
                     scorer: ScorerFactory | None = None) -> tuple[list[ClassSearch], str]:
    """Run one search per predicted class with at least ``min_images`` images, in class order
    (``scorer``: what makes each search's scorer, as for ``Search``).

    The time budget is shared equally by the classes searched; the candidate budget applies to each.
    Returns the searches and why the last one stopped (``interrupted`` stops the remaining classes)."""
    classes = [c for c in torch.unique(problem.targets.cpu()).tolist()
               if int((problem.targets.cpu() == c).sum()) >= min_images]
    if not classes:
        raise SycamError(f"--per-class needs a predicted class with at least {min_images} images; "
                         f"none has (give more images, or search without --per-class)")
    seconds = config.budget.seconds
    share = replace(config, budget=Budget(seconds / len(classes) if seconds is not None else None,
                                          config.budget.candidates, config.budget.whole_run))
    done: list[ClassSearch] = []
    stopped_by = "exhausted"
    searches = []
    for c in classes:
        idx = (problem.targets.cpu() == c).nonzero().flatten()
        folder = class_folder(out_dir, c) if out_dir is not None else None
        searches.append((c, idx, Search(problem.subset(idx), grammar, share, folder, progress, label=f" class {c}",
                                        scorer=scorer)))
    if resume:  # every checkpoint is checked before the first search starts
        for _, _, search in searches:
            search.resumed_state()
    for c, idx, search in searches:
        outcome = search.run(resume=resume)
        done.append(ClassSearch(c, idx, outcome))
        stopped_by = outcome.stopped_by
        if stopped_by == "interrupted":
            break
    return done, stopped_by


def choose_fallback(candidates: list[Node], config: SearchConfig, problem: Problem) -> Node:
    """The candidate with the best mean score on all of ``problem``'s images (ties: the smallest); over
    several metrics the knee (``pareto.knee``) of the candidates' means there, scaled by the range of
    the baselines' means there."""
    metric = config.metric
    nodes = sorted(set(candidates), key=lambda n: (n.size, str(n)))
    assert nodes, "choose_fallback needs at least one candidate"
    if isinstance(metric, Objectives):
        metrics = list(metric.metrics)

        def means(node: Node) -> list[float]:
            return [float(v.mean()) for v in method_scores(node, metrics, problem).values()]

        base = [means(baseline(b).node) for b in config.baselines
                if all(t in problem.terminals for t in baseline(b).terminals)]
        at = knee([means(n) for n in nodes], base, metric.higher)
        assert at is not None
        return nodes[at]
    best: Node | None = None
    best_mean = 0.0
    for node in nodes:
        mean = float(method_scores(node, [metric], problem)[metric.name].mean())
        if best is None or better(mean, best_mean, metric.higher_is_better):
            best, best_mean = node, mean
    assert best is not None
    return best


def dispatch_of(searches: list[ClassSearch], config: SearchConfig, problem: Problem) -> Dispatch | None:
    """The per-class result: each class's incumbent (over several metrics, its front's knee), and as
    fallback the class winner that scores best on all images (``choose_fallback``). None when no class
    search scored a candidate."""
    per_class = {s.cls: s.outcome.best for s in searches if s.outcome.best is not None}
    if not per_class:
        return None
    return Dispatch(per_class, choose_fallback(list(per_class.values()), config, problem))
