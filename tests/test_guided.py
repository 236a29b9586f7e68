"""Guided search (``strategy="guided"``, ``synthesis.guide``): production costs learned from partial
solutions reach a planted large winner with fewer candidates than size order, the enumerator's
restarts judge no candidate twice, and the cost rule is the documented one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sycam_dsl.errors import SycamError
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.synthesis import Search
from sycam_dsl.synthesis.guide import FIT_MAX, SCALE, Guide
from tests.test_synthesis import GRAMMAR, ScriptedScorer, config, planted, scripted


class CicScorer(ScriptedScorer):
    """Every image scores ``1 - 0.5 ** (number of cic leaves)``: the more ``cic`` the better, so the
    best expressions are large products of ``cic``, and candidates that read it are partial solutions."""

    def scores(self, text: str) -> torch.Tensor:
        return torch.full((self.inner.problem.n,), 1 - 0.5 ** _cics(text), dtype=torch.float64)


def _cics(text: str) -> int:
    return text.replace("(", " ").replace(")", " ").split().count("cic")


def _search(strategy: str, candidates: int = 4000):
    cfg = replace(config(candidates=candidates, baselines=(), strategy=strategy), max_size=7, early_stop=False)
    search, scorer = scripted(Search(planted(), GRAMMAR, cfg, progress=False), CicScorer, {})
    return search, scorer, search.run()


def _first_with(out, cics: int) -> int | None:
    """The candidate index of the first incumbent with at least ``cics`` cic leaves."""
    return next((h["candidate"] for h in out.state.history if _cics(h["expression"]) >= cics), None)


def test_guided_finds_a_large_planted_winner_with_fewer_candidates_than_size_order():
    _, _, by_size = _search("size")
    guided_search, _, guided = _search("guided")
    at_size, at_guided = _first_with(by_size, 4), _first_with(guided, 4)
    assert at_size is not None and at_guided is not None
    assert at_guided < at_size / 4, (at_guided, at_size)
    assert guided_search.restarts > 0 and guided.enumeration["restarts"] == guided_search.restarts


def test_restarts_judge_no_candidate_twice():
    search, scorer, out = _search("guided", candidates=600)
    assert search.restarts > 0
    assert len(scorer.calls) == len(set(scorer.calls))  # no (candidate, level, chunk) scored twice
    judged = [t for t, j, c in scorer.calls if j == 0 and c == 0]
    assert len(judged) == len(set(judged))
    assert out.state.counts.considered == out.state.next_candidate == 600


def test_the_cost_rule():
    guide = Guide(GRAMMAR)
    prods = {str(p.template): p for p in GRAMMAR.nonterminals["E"].productions}
    assert guide.costs() == {p: SCALE * p.fixed_size for p in prods.values()}  # the size order, scaled
    assert not guide.observe(parse_expr("(* cic cic)", GRAMMAR.inputs), 0.2)  # below FIT_MIN: no change
    assert guide.observe(parse_expr("(* cic cic)", GRAMMAR.inputs), 0.9)
    costs = guide.costs()
    assert costs[prods["cic"]] == costs[prods["(* E E)"]] == max(1, round(SCALE * (1 - FIT_MAX)))
    assert costs[prods["abl"]] == SCALE and guide.version == 1
    assert not guide.observe(parse_expr("cic", GRAMMAR.inputs), 0.5)  # a lower fit changes nothing


def test_resuming_a_guided_search_is_refused(tmp_path):
    cfg = replace(config(candidates=5, baselines=(), strategy="guided"))
    Search(planted(), GRAMMAR, cfg, tmp_path, progress=False).run()
    with pytest.raises(SycamError, match="guided"):
        Search(planted(), GRAMMAR, replace(cfg, budget=replace(cfg.budget, candidates=10)), tmp_path,
               progress=False).run()
