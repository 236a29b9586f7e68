"""Terminals on demand (``synthesis.on_demand``): the search starts before ``cic`` and ``abl`` exist
for every image, computes them per level as candidates that read them get there, finds what a
search over precomputed terminals finds, and counts that work in its time budget."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from sycam_dsl.errors import ShapeError
from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.metrics import get_metric
from sycam_dsl.parse import resolve_grammar
from sycam_dsl.run import DataOptions, OutputOptions, synthesize
from sycam_dsl.run.runner import build_problem, loaded_model
from sycam_dsl.synthesis import Budget, Search, SearchConfig, SearchOptions
from sycam_dsl.synthesis.on_demand import OnDemandTerminals, TerminalSource, terminal_status
from sycam_dsl.synthesis.problem import Data
from tests.test_synthesize_api import SCHEMA, data, tiny_model

NAMES = ["grads", "pgrads", "cic", "abl", "G", "A"]


def _problem(n: int = 16, on_demand: bool = True):
    x, masks = data(n)
    problem, _ = build_problem(loaded_model(tiny_model(), None, "cpu"), "features",
                               Data(x, [str(i) for i in range(n)], masks=masks), NAMES, use_cache=False,
                               progress=False, on_demand=on_demand)
    return problem


def _recorded(source: TerminalSource) -> list[tuple[list[str], list[int]]]:
    """Log each on-demand computation of ``source``: (names, images)."""
    calls: list[tuple[list[str], list[int]]] = []
    compute = source._compute

    def logged(names, index):
        calls.append((list(names), sorted(index.tolist())))
        return compute(names, index)

    source._compute = logged
    return calls


def test_values_on_demand_equal_those_computed_up_front():
    eager, lazy = _problem(on_demand=False), _problem()
    assert isinstance(lazy.terminals, OnDemandTerminals) and not isinstance(eager.terminals, OnDemandTerminals)
    calls = _recorded(lazy.terminals.source)
    part = lazy.terminals.subset(torch.tensor([3, 1, 7]))
    torch.testing.assert_close(part["cic"], eager.terminals["cic"][[3, 1, 7]], rtol=1e-5, atol=1e-6)
    assert calls == [(["cic"], [1, 3, 7])]  # one image set, only what was read
    torch.testing.assert_close(lazy.terminals["abl"], eager.terminals["abl"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lazy.terminals["cic"], eager.terminals["cic"], rtol=1e-5, atol=1e-6)
    # abl for all 16, then cic for the 13 not computed yet: nothing twice
    assert calls[1:] == [(["abl"], list(range(16))), (["cic"], [i for i in range(16) if i not in (1, 3, 7)])]
    assert torch.equal(lazy.terminals["grads"], eager.terminals["grads"])  # up front, with the gradient pass
    assert lazy.digest() == eager.digest()  # so a checkpoint of one mode resumes in the other


def test_a_search_starts_before_cic_exists_and_computes_it_level_by_level():
    problem = _problem(24)
    source = problem.terminals.source
    calls = _recorded(source)
    grammar = resolve_grammar("g2")
    cfg = SearchConfig(get_metric("deletion", steps=3), Budget(candidates=6), level_sizes=(8, 16, None),
                       equivalence_size=4, image_chunk=None, baselines=())
    search = Search(problem, grammar, cfg, progress=False)
    subsets = search.subsets
    first = {}
    inner = search.scorer.score

    def score(nodes, j, c):
        if not first:  # when the first candidate is scored
            first["done"] = 24 - int(source.missing("cic").numel())
            first["nodes"] = [to_sexpr(n) for n in nodes]
        return inner(nodes, j, c)

    search.scorer.score = score
    search.run()
    eq = sorted(subsets.equivalence.tolist())
    # the first candidate (grads, alone in the first batch) is scored before any cic exists; the
    # enumerator then computes cic for the equivalence subset first
    assert first == {"done": 0, "nodes": ["grads"]}
    assert calls[0] == (["cic"], eq)
    i3 = set(subsets.level(0).tolist())
    # every later computation is of one level's images (I3 first), none of the test of others
    blocks = [set(subsets.block(j).tolist()) | (i3 if j == 0 else set()) for j in range(3)]
    for names, images in calls[1:]:
        assert any(set(images) <= b for b in blocks), (names, images)
    assert set(calls[1][1]) <= i3


def test_on_demand_and_eager_searches_find_the_same_incumbents(tmp_path):
    x, masks = data(30)
    runs = {}
    for mode in ("eager", "on-demand"):
        result = synthesize(tiny_model(), "features", x, metric="deletion", metric_options={"steps": 3},
                            budget=Budget(candidates=25), data=DataOptions(masks=masks, use_cache=False),
                            search=SearchOptions(level_sizes=(6, 12, None), equivalence_size=4, seed=1,
                                                 terminals=mode),
                            output=OutputOptions(progress=False, report_images=0), out_dir=tmp_path / mode)
        d = json.loads((tmp_path / mode / "result.json").read_text())
        jsonschema.validate(d, SCHEMA)
        runs[mode] = (result, d)
    (eager, de), (lazy, dl) = runs["eager"], runs["on-demand"]
    history = [[(h["expression"], h["candidate"], h.get("baseline")) for h in d["history"]] for d in (de, dl)]
    assert history[0] == history[1] and eager.expression == lazy.expression
    assert de["counts"] == dl["counts"]
    for (_, rows_e), (_, rows_l) in zip(eager.tables, lazy.tables):
        assert [r.name for r in rows_e] == [r.name for r in rows_l]
        for a, b in zip(rows_e, rows_l):
            assert a.mean == pytest.approx(b.mean, rel=1e-4, abs=1e-6)
    assert dl["settings"]["terminals"] == "on-demand" and dl["timings"]["terminals_on_demand_s"] > 0
    assert de["timings"]["terminals_on_demand_s"] == 0
    assert dl["timings"]["first_scored_s"] <= dl["timings"]["terminals_s"] + dl["timings"]["search_s"]


def test_the_status_line_shows_the_terminal_work():
    problem = _problem(8)
    assert terminal_status(problem.terminals) == "cic 0/8, abl 0/8"
    problem.terminals.subset(torch.arange(3))["cic"]
    assert terminal_status(problem.terminals) == "cic 3/8, abl 0/8"
    assert terminal_status(_problem(8, on_demand=False).terminals) == ""
    cfg = SearchConfig(get_metric("deletion", steps=3), Budget(candidates=1), level_sizes=(4, None),
                       equivalence_size=2)
    search = Search(problem, resolve_grammar("g2"), cfg, progress=False)
    search.run()
    text = search._status_text(search._state, 1.0)
    assert "| terminals: cic 8/8, abl 8/8" in text  # the baselines' final check read them all
    search._busy_text = "computing cic of 4 image(s)"
    assert search._status_text(search._state, 1.0).endswith("| computing cic of 4 image(s)")


def test_the_budget_reserves_the_terminal_work_the_end_needs():
    acts = torch.zeros(10, 4)
    ticks = iter(range(1000))

    def compute(names, index):
        next(ticks)
        return {n: torch.ones(len(index), 4) for n in names}

    source = TerminalSource(["acts", "cic", "mlogits", "abl"], {"acts": acts}, compute, groups=[("cic", "mlogits")])
    assert source.remaining_seconds(["cic", "abl"]) == 0.0  # nothing measured yet
    source.work.add(["cic", "mlogits"], 2, 1.0)  # as if 2 images had taken 1 s
    assert source.remaining_seconds(["cic", "mlogits", "abl"]) == pytest.approx(0.5 * 10)
    source.ensure("mlogits", torch.tensor([0, 1, 2]))
    assert bool(source.have["cic"][:3].all()) and bool(source.have["mlogits"][:3].all())  # a group comes together
    with pytest.raises(ShapeError, match="not asked for"):
        source.ensure("grads", torch.tensor([0]))


def _slow_terminals(monkeypatch, n: int = 24, per_image: float = 0.1):
    """(a problem of ``n`` images with terminals on demand, its source, the clock): the search's and the
    source's clock is a fake that only the test moves, and each image of terminal work moves it
    ``per_image`` seconds."""
    from types import SimpleNamespace

    from sycam_dsl.synthesis import on_demand as on_demand_module
    from sycam_dsl.synthesis import search as search_module

    clock = SimpleNamespace(t=0.0)
    fake = SimpleNamespace(perf_counter=lambda: clock.t, monotonic=lambda: clock.t)
    monkeypatch.setattr(search_module, "time", fake)
    monkeypatch.setattr(on_demand_module, "time", fake)
    problem = _problem(n)
    source = problem.terminals.source
    compute = source._compute

    def slow(names, index):
        clock.t += per_image * len(index)
        return compute(names, index)

    source._compute = slow
    return problem, source, clock


def test_a_search_with_slow_terminals_stops_early_enough_for_the_end(monkeypatch):
    """The loop ends when the time spent plus the terminal work the end still needs reaches the
    budget (on a fake clock that only terminal work moves: 0.1 s per image)."""
    problem, source, clock = _slow_terminals(monkeypatch)
    cfg = SearchConfig(get_metric("deletion", steps=3), Budget(seconds=3.0), level_sizes=(8, 16, None),
                       equivalence_size=4)
    search = Search(problem, resolve_grammar("g2"), cfg, progress=False)
    stops = []
    out_of_time = search._out_of_time

    def recorded(state):
        stop = out_of_time(state)
        if stop and not stops:
            stops.append((search._elapsed(state), search._reserve()))
        return stop

    search._out_of_time = recorded
    out = search.run()
    assert out.stopped_by == "time"
    elapsed, reserve = stops[0]
    # cic and abl for the 4 images of the equivalence subset: 0.8 s spent, and at that rate the other
    # 20 images x 2 terminals x 0.1 s the end needs make 4.8 s > 3 s: no candidate is scored
    # grads is judged before any cic exists; then pgrads and cic (a batch of 2) need cic for I3's 8
    # images, abl (next batch) for the equivalence subset's 4: 1.2 s spent, and at that rate the
    # cic of 16 and the abl of 20 more images the end needs make 4.8 s > 3 s: the loop stops there
    assert (elapsed, reserve) == (pytest.approx(1.2), pytest.approx(3.6))
    assert out.state.counts.considered == 3 and [h["expression"] for h in out.state.history][0] == "grads"
    assert search._reserve() == 0.0  # by the end every image has them (the final check read them)


def test_a_floor_budget_counts_the_searchs_own_seconds_not_its_terminals(monkeypatch):
    """With ``Budget.sets_aside`` off (the floor of a whole-run budget too small for the work after the
    search), the terminals computed on demand do not count against the budget: on a fake clock moved
    0.1 s per image by the terminal work and 0.1 s per scoring call, the search stops when the scoring
    alone reaches 1 s, long after the terminal work alone passed it (before: at the first 1 s of both,
    so a slow model's floor went to the first candidates' cic)."""
    problem, source, clock = _slow_terminals(monkeypatch)
    cfg = SearchConfig(get_metric("deletion", steps=3), Budget(seconds=1.0, sets_aside=False),
                       level_sizes=(8, 16, None), equivalence_size=4)
    search = Search(problem, resolve_grammar("g2"), cfg, progress=False)
    score = search.scorer.score
    calls = []

    def scored(*args, **kwargs):
        calls.append(1)
        clock.t += 0.1
        return score(*args, **kwargs)

    search.scorer.score = scored
    stops = []
    out_of_time = search._out_of_time

    def recorded(state):
        stop = out_of_time(state)
        if stop and not stops:
            stops.append((search._elapsed(state), source.work.total_seconds, len(calls)))
        return stop

    search._out_of_time = recorded
    out = search.run()
    assert out.stopped_by == "time"
    elapsed, terminal_seconds, scorings = stops[0]
    assert terminal_seconds > 1.0  # the terminals alone outran the budget before the search stopped
    # the search's own seconds: 10 scoring calls of 0.1 s
    assert elapsed - terminal_seconds == pytest.approx(1.0) and scorings == 10, stops
    assert out.state.counts.considered > 3
