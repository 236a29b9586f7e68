"""The keeper of a search's result: what a candidate must pass against, what happens when one
passes ``I1`` (and the history entry it leaves), when the search may stop early (``until``) and the
final check against the baselines the grammar expresses. ``IncumbentKeeper`` keeps one incumbent
(one metric, ``oracle.judge``); ``FrontKeeper`` a Pareto front (several metrics, ``front``). The
search loop (``search``) picks one with ``make_keeper`` and talks to it through ``Keeper`` alone.

The final check: the best baseline the grammar expresses (``incumbent``) replaces the incumbent if
its ``I1`` mean is better, whatever the small first levels said about it; it is recorded in the
history with ``candidate`` None and its ``baseline`` name. Over several metrics each baseline the
grammar expresses is offered to the front on its ``I1`` means (``front``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ..baselines import baseline
from ..errors import SycamError
from ..lang.ast import to_sexpr
from ..metrics.objectives import Objectives
from ..parse.grammar import Grammar
from .config import SearchConfig
from .front import Member, cannot_pass, column_means, covers, passes_against, reached
from .incumbent import Until, best_baseline, better, grammar_baselines, parse_untils
from .oracle import hopeless, judge
from .pareto import knee
from .scorer import Scorer, score_levels
from .state import Incumbent, SearchState


def score_baseline(name: str, state: SearchState, scorer: Scorer, terminals: Container[str]) -> list[Any]:
    """Baseline ``name``'s per-image ``I1`` scores, in ``state.baselines`` (scored once, whatever the
    time budget: the final tables need them anyway); ``terminals``: the names the problem has values of."""
    if name not in state.baselines:
        b = baseline(name)
        missing = [t for t in b.terminals if t not in terminals]
        if missing:
            raise SycamError(f"baseline {name} needs terminal(s) {', '.join(missing)}, which the problem lacks")
        scores = score_levels(scorer, b.node)
        if scores is None:
            raise SycamError(f"baseline {name} ({b.expression}) gives NaN or Inf heatmaps on these images")
        state.baselines[name] = scores.tolist()
    return state.baselines[name]


def level_blocks(scores: list[Any], level_sizes: Sequence[int]) -> list[list[Any]]:
    """Per-image ``I1`` scores (in ``Subsets`` order) cut into the level blocks (``level_sizes``: the
    levels' cumulative sizes, ``I3`` first)."""
    sizes = list(level_sizes)
    return [scores[a:b] for a, b in zip([0] + sizes, sizes)]


@dataclass(frozen=True)
class Hooks:
    """What a keeper asks of its search: the search seconds so far (``elapsed``), a block during which
    Ctrl-C and SIGTERM wait (``deferred``), a baseline's per-image ``I1`` scores, scored once
    (``score_baseline``), and per-image ``I1`` scores cut into the level blocks (``level_blocks``)."""

    elapsed: Callable[[SearchState], float]
    deferred: Callable[[], AbstractContextManager[None]]
    score_baseline: Callable[[str, SearchState], list[Any]]
    level_blocks: Callable[[list[Any]], list[list[Any]]]


class Keeper(ABC):
    """What a search keeps and how a candidate gets in; ``higher`` says, per metric, whether a high
    score is better, ``columns`` is the shape of one image's score beyond the image (``()`` for one
    metric, ``(M,)`` for ``M``), ``untils`` the ``until`` thresholds (one per metric; None: none)."""

    columns: tuple[int, ...] = ()

    def __init__(self, config: SearchConfig, grammar: Grammar, higher: list[bool], hooks: Hooks) -> None:
        self.config, self.grammar, self.higher, self.hooks = config, grammar, higher, hooks
        self.untils = parse_untils(config.until, len(higher))
        for u in self.untils or []:
            if u.baseline is not None and u.baseline not in config.baselines:
                raise SycamError(f"until {u}: the search does not score baseline {u.baseline} "
                                 f"(it scores {', '.join(config.baselines) or 'none'})")
        #: the running search's state (set by ``Search.run``): it bounds the cache of member levels
        self.state: SearchState | None = None
        self._levels: dict[tuple[int, int], tuple[Incumbent | Member, torch.Tensor, Any]] = {}

    # -- what a keeper says for itself ------------------------------------------------------------

    @property
    def until(self) -> Until | None:
        """The one ``until`` threshold of a single-metric search (None: none, or several metrics)."""
        return None

    @property
    @abstractmethod
    def threshold(self) -> float | list[float] | None:
        """The ``until`` threshold's value once computed (one per metric over several; None: not yet)."""

    @abstractmethod
    def members(self, state: SearchState) -> list[Incumbent | Member]:
        """What a candidate must pass against."""

    @abstractmethod
    def hopeless(self, scored: torch.Tensor, member: Incumbent | Member, j: int, rest: Any) -> bool:
        """Whether a candidate with level-``j`` scores ``scored`` so far (``[s]``, ``[s, M]``) can no longer
        pass level ``j`` against ``member`` (``rest``: the best the level's remaining images could add)."""

    @abstractmethod
    def passes_one(self, blocks: torch.Tensor, member: Incumbent | Member, j: int) -> tuple[bool, float]:
        """Whether a candidate with scores ``blocks`` on levels ``0..j`` passes level ``j`` against
        ``member``, and its share of images won there."""

    @abstractmethod
    def accept(self, state: SearchState, text: str, blocks: list[torch.Tensor], seconds: float,
               index: int) -> None:
        """Candidate ``index`` (``text``, its level blocks ``blocks``) passed ``I1``: keep it, with its
        history entry."""

    def final_check(self, state: SearchState) -> None:
        """Score the baselines on ``I1`` and (``baseline_check``) offer the ones the grammar expresses."""
        for name in self.config.baselines:
            self.hooks.score_baseline(name, state)
        if self.config.baseline_check:
            self._offer_baselines(state)

    @abstractmethod
    def _offer_baselines(self, state: SearchState) -> None:
        """Offer the scored baselines the grammar expresses (the final check)."""

    @abstractmethod
    def reached(self, state: SearchState) -> bool:
        """Whether what is kept beats the ``until`` threshold(s)."""

    @abstractmethod
    def chosen(self, state: SearchState) -> tuple[Incumbent | Member | None, int | None]:
        """The result (None: nothing) and, over several metrics, its index in the front (the knee)."""

    @abstractmethod
    def _direction(self) -> torch.Tensor:
        """``higher`` as a tensor that broadcasts over one image's score (``[]`` or ``[M]``)."""

    @abstractmethod
    def _mean(self, level: torch.Tensor) -> Any:
        """The mean of per-image scores ``[n]`` (a float) or ``[n, M]`` (a list of ``M``)."""

    # -- what every keeper does the same way ------------------------------------------------------

    def level(self, member: Incumbent | Member, j: int) -> tuple[torch.Tensor, Any]:
        """A member's per-image scores on level ``j`` ``[n_j]`` (``[n_j, M]``; float64) and their mean
        (a list over several metrics), built once per member rather than once per check."""
        got = self._levels.get((id(member), j))
        if got is None or got[0] is not member:  # a new member may reuse an evicted one's id
            levels = len(member.blocks)  # every member has one block per level
            if len(self._levels) > 4 * levels * (len(self.state.front) + 1 if self.state else 1):
                self._levels = {}  # drop those of replaced incumbents and evicted members
            level = torch.tensor(sum(member.blocks[:j + 1], []), dtype=torch.float64)
            got = self._levels[(id(member), j)] = (member, level, self._mean(level))
        return got[1], got[2]

    def passes(self, blocks: torch.Tensor, members: Sequence[Incumbent | Member], j: int,
               fit_wanted: bool) -> tuple[bool, float]:
        """Whether a candidate with scores ``blocks`` on levels ``0..j`` passes level ``j`` against every
        member, and its fit for the guide (its weakest share of images won against a member; checked
        against every member only when ``fit_wanted``)."""
        passed, fit = True, 1.0
        for member in members:
            ok, share = self.passes_one(blocks, member, j)
            passed, fit = passed and ok, min(fit, share)
            if not passed and not fit_wanted:
                break
        return passed, fit

    def wins(self, scored: torch.Tensor, members: Sequence[Incumbent | Member], j: int) -> float:
        """The share of the images scored so far on level ``j`` (``scored`` ``[s]``, ``[s, M]``) where the
        candidate beats a member (its weakest against any member; over several metrics, on its best metric)."""
        if not len(scored):
            return 0.0
        higher = self._direction()
        shares = []
        for member in members:
            level = self.level(member, j)[0][:len(scored)]
            beats = torch.where(higher, scored > level, scored < level)
            shares.append(float(beats.double().mean(dim=0).max()))
        return min(shares)


class IncumbentKeeper(Keeper):
    """One metric: the incumbent, replaced by each candidate that passes ``I1`` against it."""

    def __init__(self, config: SearchConfig, grammar: Grammar, higher: list[bool], hooks: Hooks) -> None:
        super().__init__(config, grammar, higher, hooks)
        self._threshold: float | None = None

    @property
    def until(self) -> Until | None:
        return self.untils[0] if self.untils is not None else None

    @property
    def threshold(self) -> float | None:
        return self._threshold

    def members(self, state: SearchState) -> list[Incumbent | Member]:
        return [] if state.incumbent is None else [state.incumbent]

    def hopeless(self, scored: torch.Tensor, member: Incumbent | Member, j: int, rest: Any) -> bool:
        level, mean = self.level(member, j)
        assert rest is None or isinstance(rest, float)
        return hopeless(scored, level[:len(scored)], len(level), mean, self.higher[0], rest, self.config.small_level)

    def passes_one(self, blocks: torch.Tensor, member: Incumbent | Member, j: int) -> tuple[bool, float]:
        v = judge(blocks, self.level(member, j)[0], self.higher[0], self.config.small_level)
        return v.passed, v.wins / max(1, v.n)

    def accept(self, state: SearchState, text: str, blocks: list[torch.Tensor], seconds: float,
               index: int) -> None:
        state.incumbent = Incumbent(text, [b.tolist() for b in blocks], seconds, index)
        state.history.append({"expression": text, "score": float(torch.cat(blocks).mean()),
                              "seconds": seconds, "candidate": index})

    def _offer_baselines(self, state: SearchState) -> None:
        """The best baseline the grammar expresses becomes the incumbent when its ``I1`` mean is better
        than the incumbent's (its candidate index is None: it was not enumerated)."""
        best = best_baseline(self.grammar, state.baselines, self.higher[0])
        if best is None:
            return
        name, node = best
        scores = state.baselines[name]
        mean = sum(scores) / len(scores)
        if state.incumbent is not None and not better(mean, state.incumbent.mean, self.higher[0]):
            return
        blocks = self.hooks.level_blocks(scores)
        text = to_sexpr(node)
        with self.hooks.deferred():
            seconds = self.hooks.elapsed(state)
            state.incumbent = Incumbent(text, blocks, seconds, None)
            state.history.append({"expression": text, "score": mean, "seconds": seconds, "candidate": None,
                                  "baseline": name})

    def reached(self, state: SearchState) -> bool:
        """Whether the incumbent's ``I1`` mean beats the ``until`` threshold (a baseline's is computed,
        scoring that baseline, the first time there is an incumbent)."""
        until = self.until
        if until is None or state.incumbent is None:
            return False
        if self._threshold is None:
            if until.baseline is not None:  # its I1 scores, now (with their terminals, on demand)
                self.hooks.score_baseline(until.baseline, state)
            self._threshold = until.threshold(state.baselines, self.higher[0])
        return better(state.incumbent.mean, self._threshold, self.higher[0])

    def chosen(self, state: SearchState) -> tuple[Incumbent | Member | None, int | None]:
        return state.incumbent, None

    def _direction(self) -> torch.Tensor:
        return torch.tensor(self.higher[0])

    def _mean(self, level: torch.Tensor) -> Any:
        return float(level.mean())


class FrontKeeper(Keeper):
    """Several metrics: a Pareto front of members (``front``); a candidate that passes ``I1`` against
    every member enters and evicts those that do not pass against it."""

    def __init__(self, config: SearchConfig, grammar: Grammar, higher: list[bool], hooks: Hooks) -> None:
        super().__init__(config, grammar, higher, hooks)
        self.columns = (len(higher),)
        self._thresholds: list[float] | None = None

    @property
    def threshold(self) -> list[float] | None:
        return self._thresholds

    def members(self, state: SearchState) -> list[Incumbent | Member]:
        return list(state.front)

    def hopeless(self, scored: torch.Tensor, member: Incumbent | Member, j: int, rest: Any) -> bool:
        level, mean = self.level(member, j)
        assert rest is None or isinstance(rest, torch.Tensor)
        return cannot_pass(scored, level[:len(scored)], len(level), mean, self.higher, rest, self.config.small_level)

    def passes_one(self, blocks: torch.Tensor, member: Incumbent | Member, j: int) -> tuple[bool, float]:
        return passes_against(blocks, self.level(member, j)[0], self.higher, self.config.small_level)

    def accept(self, state: SearchState, text: str, blocks: list[torch.Tensor], seconds: float,
               index: int) -> None:
        self._enter(state, Member(text, [b.tolist() for b in blocks], seconds, index))

    def _offer_baselines(self, state: SearchState) -> None:
        """Each scored baseline the grammar expresses, in the order of ``baselines``, enters the front
        when no member's ``I1`` means are at least as good on every metric (``front``)."""
        scored = [b for b in self.config.baselines if b in state.baselines]
        for name, node in grammar_baselines(self.grammar, scored).items():
            member = Member(to_sexpr(node), self.hooks.level_blocks(state.baselines[name]), self.hooks.elapsed(state),
                            None, name)
            if any(covers(f.means, member.means, self.higher) for f in state.front):
                continue
            with self.hooks.deferred():
                self._enter(state, member, by_means=True)

    def reached(self, state: SearchState) -> bool:
        """Whether one member's ``I1`` means beat every threshold."""
        if self.untils is None or not state.front:
            return False
        if self._thresholds is None:
            for u in self.untils:
                if u.baseline is not None:
                    self.hooks.score_baseline(u.baseline, state)
            self._thresholds = [u.threshold({b: [row[m] for row in v] for b, v in state.baselines.items()}, h)
                                for m, (u, h) in enumerate(zip(self.untils, self.higher))]
        return any(reached(f.means, self._thresholds, self.higher) for f in state.front)

    def chosen(self, state: SearchState) -> tuple[Incumbent | Member | None, int | None]:
        """The front's knee member (``pareto.knee``, on the baselines' scale)."""
        if not state.front:
            return None, None
        means = [column_means(v) for v in state.baselines.values()]
        at = knee([f.means for f in state.front], means, self.higher)
        return (None if at is None else state.front[at]), at

    def _direction(self) -> torch.Tensor:
        return torch.tensor(self.higher)

    def _mean(self, level: torch.Tensor) -> Any:
        return level.mean(dim=0).tolist()

    def _enter(self, state: SearchState, member: Member, by_means: bool = False) -> None:
        """``member`` (it passed ``I1`` against every member) enters the front, and the members that do
        not pass against it on ``I1`` leave; ``by_means``: a baseline, judged on the means alone (see
        ``front``). Recorded in the history with what it evicted."""
        last = len(member.blocks) - 1
        mine = torch.tensor(sum(member.blocks, []), dtype=torch.float64)
        stay: list[Member] = []
        for f in state.front:
            if by_means:
                dominated = covers(member.means, f.means, self.higher)
            else:
                dominated = not passes_against(self.level(f, last)[0], mine, self.higher, self.config.small_level)[0]
            if dominated:
                member.evicted.append(f.expression)
            else:
                stay.append(f)
        state.front = [*stay, member]
        state.history.append({"expression": member.expression, "scores": member.means, "seconds": member.seconds,
                              "candidate": member.candidate, "evicted": list(member.evicted),
                              **({"baseline": member.baseline} if member.baseline is not None else {})})


def make_keeper(config: SearchConfig, grammar: Grammar, hooks: Hooks) -> Keeper:
    """The keeper for ``config.metric``: a front over several metrics (``Objectives``), else an incumbent."""
    if isinstance(config.metric, Objectives):
        return FrontKeeper(config, grammar, list(config.metric.higher), hooks)
    return IncumbentKeeper(config, grammar, [config.metric.higher_is_better], hooks)
