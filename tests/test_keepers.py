"""Each keeper alone (``synthesis.keepers``): what it accepts, refuses, keeps and records, without a search."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from sycam_dsl.errors import SycamError
from sycam_dsl.metrics import get_metric
from sycam_dsl.metrics.objectives import Objectives
from sycam_dsl.metrics.registry import Metric
from sycam_dsl.synthesis import Budget, SearchConfig
from sycam_dsl.synthesis.keepers import FrontKeeper, Hooks, IncumbentKeeper, level_blocks, make_keeper
from sycam_dsl.synthesis.state import SearchState

from .test_synthesis import GRAMMAR

SIZES = (2, 4)  # two levels: I2 the first 2 images, I1 all 4


def hooks() -> Hooks:
    return Hooks(elapsed=lambda state: 1.5, deferred=nullcontext,
                 score_baseline=lambda name, state: state.baselines[name],
                 level_blocks=lambda scores: level_blocks(scores, SIZES))


def keeper(metric, **kw):
    cfg = SearchConfig(metric, Budget(candidates=10), level_sizes=SIZES, equivalence_size=2, small_level=0, **kw)
    return make_keeper(cfg, GRAMMAR, hooks())


def blocks(*rows) -> list[torch.Tensor]:
    """Scores of the images of I1, cut into the two level blocks."""
    t = torch.tensor(rows, dtype=torch.float64)
    return [t[:2], t[2:]]


def test_the_incumbent_keeper_keeps_the_candidate_that_passes_and_refuses_a_worse_one():
    k = keeper(get_metric("sch"))
    assert isinstance(k, IncumbentKeeper) and k.columns == ()
    state = SearchState()
    assert k.members(state) == []
    k.accept(state, "cic", blocks(0.5, 0.5, 0.5, 0.5), 1.0, 3)
    assert state.incumbent.expression == "cic" and state.incumbent.candidate == 3
    assert state.history == [{"expression": "cic", "score": 0.5, "seconds": 1.0, "candidate": 3}]
    members = k.members(state)
    better = torch.cat(blocks(0.6, 0.7, 0.6, 0.7))
    worse = torch.cat(blocks(0.4, 0.3, 0.4, 0.3))
    assert k.passes(better, members, 1, fit_wanted=False) == (True, 1.0)
    assert k.passes(worse, members, 1, fit_wanted=False)[0] is False
    assert k.wins(worse[:2], members, 0) == 0.0
    assert k.chosen(state) == (state.incumbent, None)


def test_the_incumbent_keeper_stops_at_its_threshold_and_takes_a_better_baseline_at_the_end():
    k = keeper(get_metric("sch"), until=0.55, baselines=("GradCAM",))
    state = SearchState()
    k.state = state
    k.accept(state, "cic", blocks(0.5, 0.5, 0.5, 0.5), 1.0, 0)
    assert not k.reached(state) and k.threshold == 0.55
    k.accept(state, "abl", blocks(0.6, 0.6, 0.6, 0.6), 2.0, 1)
    assert k.reached(state)
    state.baselines["GradCAM"] = [0.9, 0.9, 0.9, 0.9]
    k.final_check(state)
    assert state.incumbent.expression == "grads" and state.incumbent.candidate is None
    assert state.history[-1] == {"expression": "grads", "score": 0.9, "seconds": 1.5, "candidate": None,
                                 "baseline": "GradCAM"}


def test_a_keeper_refuses_a_threshold_on_a_baseline_it_does_not_score():
    with pytest.raises(SycamError, match="does not score baseline ScoreCAM"):
        keeper(get_metric("sch"), until="ScoreCAM", baselines=("GradCAM",))


def test_the_front_keeper_admits_a_trade_off_and_evicts_what_a_newcomer_dominates():
    a, b = (Metric(name, lambda inputs: inputs.heatmaps.sum(dim=(-2, -1)), True, batched=True) for name in "ab")
    k = keeper(Objectives((a, b)))  # both better high; the keeper never calls them
    assert isinstance(k, FrontKeeper) and k.columns == (2,)
    state = SearchState()
    k.state = state
    k.accept(state, "cic", blocks([0.8, 0.2], [0.8, 0.2], [0.8, 0.2], [0.8, 0.2]), 1.0, 0)
    members = k.members(state)
    trade = torch.cat(blocks([0.2, 0.8], [0.2, 0.8], [0.2, 0.8], [0.2, 0.8]))
    dominated = torch.cat(blocks([0.7, 0.1], [0.7, 0.1], [0.7, 0.1], [0.7, 0.1]))
    assert k.passes(trade, members, 1, fit_wanted=False)[0] is True
    assert k.passes(dominated, members, 1, fit_wanted=False)[0] is False
    k.accept(state, "abl", blocks([0.2, 0.8], [0.2, 0.8], [0.2, 0.8], [0.2, 0.8]), 2.0, 1)
    assert [m.expression for m in state.front] == ["cic", "abl"]
    k.accept(state, "grads", blocks([0.9, 0.9], [0.9, 0.9], [0.9, 0.9], [0.9, 0.9]), 3.0, 2)
    assert [m.expression for m in state.front] == ["grads"]
    assert state.history[-1] == {"expression": "grads", "scores": [0.9, 0.9], "seconds": 3.0, "candidate": 2,
                                 "evicted": ["cic", "abl"]}
    assert k.chosen(state) == (state.front[0], 0)
