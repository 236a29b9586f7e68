"""The Pareto front of a search over several metrics (``front.py``): a planted problem whose front is
known by brute force, the oracle's rule (a dominated candidate never enters, entering evicts the
dominated), the engine and resume changing nothing, ``until`` per metric and the baselines' check."""

from __future__ import annotations

import json

import pytest
import torch

from sycam_dsl.errors import SycamError
from sycam_dsl.evaluate import Terminals
from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.metrics import MetricInputs
from sycam_dsl.metrics.errors import MetricError
from sycam_dsl.metrics.objectives import Objectives, bind_options, objective_of
from sycam_dsl.metrics.registry import Metric, get_metric
from sycam_dsl.parse import parse_grammar
from sycam_dsl.synthesis import Budget, Problem, Search, SearchConfig
from sycam_dsl.synthesis.evaluation import method_scores
from sycam_dsl.synthesis.front import Member, covers, passes_against
from sycam_dsl.synthesis.pareto import pareto_indices
from sycam_dsl.synthesis.state import CHECKPOINT_NAME
from sycam_dsl.synthesis.subsets import make_subsets

from .helpers import brute_force_terms

GRAMMAR = parse_grammar("""
(synth-cam weights ((grads Vec) (pgrads Vec) (cic Vec) (abl Vec)) Vec
  ((E Vec))
  ((E Vec (grads pgrads cic abl (+ E E) (- E E) (* E E) (relu E)))))
""", source="<front grammar>")

N, K, HW = 24, 4, 8
LEVELS = (12, 18, None)  # I3 has 12 images: no small level, the half-the-images rule everywhere


def _regions() -> torch.Tensor:
    """Channel ``c``'s quadrant of the map ``[K, HW, HW]`` (bool)."""
    r = torch.zeros(K, HW, HW, dtype=torch.bool)
    h = HW // 2
    r[0, :h, :h], r[1, :h, h:], r[2, h:, :h], r[3, h:, h:] = True, True, True, True
    return r


def _offsets(seed: int) -> torch.Tensor:
    return torch.rand(N, generator=torch.Generator().manual_seed(seed)).double()


def _share(inputs: MetricInputs, channel: int) -> torch.Tensor:
    """The heatmap's share of mass in ``channel``'s quadrant, ``[..., N]``."""
    h = inputs.heatmaps
    region = _regions()[channel].to(h.dtype)
    return (h * region).sum(dim=(-2, -1)) / h.sum(dim=(-2, -1)).clamp_min(1e-12)


def _bounds(offsets: torch.Tensor):
    def bounds(inputs: MetricInputs):
        off = offsets[inputs.image_ids]
        return off, off + 1
    return bounds


OFF_A, OFF_B = _offsets(1), _offsets(2)
# Two metrics whose optima differ: mass in quadrant 0 (higher is better) and mass outside quadrant 1
# (lower is better). Each image adds its own offset, so images score differently while every image
# ranks two heatmaps alike: the oracle's per-image rule then agrees with the means.
MASS_A = Metric("mass_a", lambda inputs: _share(inputs, 0).double() + OFF_A[inputs.image_ids], True,
                batched=True, bounds=_bounds(OFF_A))
SPILL_B = Metric("spill_b", lambda inputs: 1 - _share(inputs, 1).double() + OFF_B[inputs.image_ids], False,
                 batched=True, bounds=_bounds(OFF_B))
BOTH = Objectives((MASS_A, SPILL_B))


def planted(n: int = N) -> Problem:
    """Every image has the four quadrants as its channels (scaled by an image's own factor) and the
    same weight vectors, so a candidate's heatmap is the same on every image."""
    g = torch.Generator().manual_seed(0)
    acts = _regions().float()[None].repeat(n, 1, 1, 1) * (0.5 + torch.rand(n, 1, 1, 1, generator=g))
    rows = {"grads": [1.0, 0.2, 0.5, 0.0], "pgrads": [0.1, 1.0, 0.0, 0.3], "cic": [0.6, 0.5, -1.0, -1.0],
            "abl": [-1.0, 2.0, 0.2, 0.1]}
    values = {t: torch.tensor(v).repeat(n, 1) for t, v in rows.items()}
    targets = torch.zeros(n, dtype=torch.long)
    inputs = MetricInputs(torch.zeros(n, 3, HW, HW), targets)
    return Problem(Terminals(values), acts, inputs, targets.clone(), torch.arange(n))


def config(candidates: int | None = None, **kw) -> SearchConfig:
    kw = {"level_sizes": LEVELS, "equivalence_size": 6, "max_size": 5, "baselines": (), **kw}
    return SearchConfig(BOTH, Budget(candidates=candidates), **kw)


def _key(means) -> tuple[float, ...]:
    return tuple(round(float(x), 6) for x in means)


@pytest.fixture(scope="module")
def brute() -> dict[str, tuple[float, ...]]:
    """Every expression of the grammar up to size 5 -> its means on all images (the search's ``I1``)."""
    problem = planted()
    terms = {t for by_size in brute_force_terms(GRAMMAR, 5)["E"].values() for t in by_size}
    out = {}
    for t in sorted(terms, key=to_sexpr):
        s = method_scores(t, [MASS_A, SPILL_B], problem)
        if all(torch.isfinite(v).all() for v in s.values()):
            out[to_sexpr(t)] = (float(s["mass_a"].mean()), float(s["spill_b"].mean()))
    return out


def test_the_search_returns_exactly_the_planted_front(brute):
    out = Search(planted(), GRAMMAR, config(), progress=False).run()
    assert out.stopped_by == "exhausted"
    points = list(brute.values())
    front = {_key(points[i]) for i in pareto_indices(points, [True, False])}
    got = [_key(m.means) for m in out.front]
    assert len(got) == len(set(got))  # one member per point of the front
    assert set(got) == front and len(front) >= 3  # a real trade-off, not one winner
    # each member's means are its expression's, and no expression of the grammar dominates one
    for m in out.front:
        assert _key(brute[m.expression]) == _key(m.means)
        assert not any(covers(p, m.means, [True, False]) and _key(p) != _key(m.means) for p in points)
    assert out.best is not None and to_sexpr(out.best) == out.front[out.knee].expression


def test_entering_the_front_evicts_the_dominated_and_a_dominated_candidate_never_enters():
    out = Search(planted(), GRAMMAR, config(), progress=False).run()
    history = out.state.history
    evicted = {e for h in history for e in h["evicted"]}
    members = {m.expression for m in out.front}
    entered = [h["expression"] for h in history]
    assert evicted and not evicted & members
    assert set(entered) == evicted | members  # whoever entered either stayed or was evicted
    # replay: each entrant was dominated by no member of the front at that time, and every member
    # it evicted fails against it on I1 on both metrics
    scores = {h["expression"]: h["scores"] for h in history}
    front: list[str] = []
    for h in history:
        assert not any(covers(scores[f], h["scores"], [True, False]) for f in front), h
        for e in h["evicted"]:
            assert e in front and covers(h["scores"], scores[e], [True, False])
        front = [f for f in front if f not in h["evicted"]] + [h["expression"]]
    assert front == [m.expression for m in out.front]


class TableScorer:
    """A fake scorer answering ``[n, M]`` scores from a table (expression -> one ``[M]`` row for every
    image); expressions not in the table score ``default``."""

    def __init__(self, inner, table: dict[str, list[float]], default: list[float]) -> None:
        self.inner, self.table, self.default = inner, table, default
        self.levels = inner.levels
        self.calls: list[str] = []

    def chunks(self, level):
        return self.inner.chunks(level)

    def chunk_size(self, level, chunk):
        return self.inner.chunk_size(level, chunk)

    def best_rest(self, level, chunk):
        return None

    def score(self, nodes, j, c):
        n = self.inner.chunk_size(j, c)
        out = []
        for node in nodes:
            self.calls.append(to_sexpr(node))
            row = self.table.get(to_sexpr(node), self.default)
            out.append(torch.tensor([row] * n, dtype=torch.float64))
        return out


def test_a_dominated_candidate_never_enters_and_the_entrant_evicts_exactly_those_it_dominates():
    # enumeration order: grads, pgrads, cic, abl, ...; mass_a higher is better, spill_b lower
    table = {"grads": [0.5, 0.5], "pgrads": [0.4, 0.6], "cic": [0.9, 0.7], "abl": [0.6, 0.4]}
    s = Search(planted(), GRAMMAR, config(candidates=4), progress=False)
    s.scorer = TableScorer(s.scorer, table, [0.0, 1.0])
    out = s.run()
    history = out.state.history
    assert [h["expression"] for h in history] == ["grads", "cic", "abl"]  # pgrads: dominated by grads
    assert history[2]["evicted"] == ["grads"]  # abl beats grads on both; cic trades, so it stays
    assert [m.expression for m in out.front] == ["cic", "abl"]
    assert out.state.counts.rejected["I3"] == 1


def test_equal_means_do_not_enter_the_front():
    table = {"grads": [0.5, 0.5], "pgrads": [0.5, 0.5]}
    s = Search(planted(), GRAMMAR, config(candidates=2), progress=False)
    s.scorer = TableScorer(s.scorer, table, [0.0, 1.0])
    out = s.run()
    assert [m.expression for m in out.front] == ["grads"]


def _front(out) -> list[tuple[str, tuple[float, ...]]]:
    return [(m.expression, tuple(m.means)) for m in out.front]


class Counting:
    """Wraps a scorer, counting the (candidate, image) scores computed."""

    def __init__(self, inner) -> None:
        self.inner, self.levels, self.work = inner, inner.levels, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, nodes, j, c):
        self.work += len(nodes) * self.inner.chunk_size(j, c)
        return self.inner.score(nodes, j, c)


def test_the_front_is_the_same_with_and_without_early_stopping_and_batching():
    searches = [Search(planted(), GRAMMAR, config(early_stop=False, candidate_batch=1, image_chunk=None),
                       progress=False),
                Search(planted(), GRAMMAR, config(early_stop=True, candidate_batch=8, image_chunk=4),
                       progress=False)]
    for s in searches:
        s.scorer = Counting(s.scorer)
    plain, fast = (s.run() for s in searches)
    assert searches[1].scorer.work < searches[0].scorer.work  # early stopping saved work
    assert _front(plain) == _front(fast)
    assert [h["expression"] for h in plain.state.history] == [h["expression"] for h in fast.state.history]
    assert fast.state.counts.rejected == plain.state.counts.rejected


def test_a_guided_search_keeps_a_front_too():
    # the guided order reaches larger expressions (costs fall below a node's 4), so its front is not
    # the size order's; it must still be a front of its members' true means
    s = Search(planted(), GRAMMAR, config(strategy="guided", candidates=400), progress=False)
    out = s.run()
    assert s.restarts >= 1 and len(out.front) >= 3
    problem = planted()
    for m in out.front:
        node = parse_expr(m.expression, GRAMMAR.inputs)
        got = method_scores(node, [MASS_A, SPILL_B], problem)
        assert _key([float(got["mass_a"].mean()), float(got["spill_b"].mean())]) == _key(m.means)
    assert not any(covers(a.means, b.means, [True, False]) for a in out.front for b in out.front if a is not b)


def test_resume_gives_the_same_front(tmp_path):
    whole = Search(planted(), GRAMMAR, config(), progress=False).run()
    first = Search(planted(), GRAMMAR, config(candidates=40), tmp_path, progress=False).run()
    assert first.stopped_by == "candidates" and first.front
    saved = json.loads((tmp_path / CHECKPOINT_NAME).read_text())
    assert saved["state"]["front"] and saved["state"]["incumbent"] is None
    resumed = Search(planted(), GRAMMAR, config(), tmp_path, progress=False).run(resume=True)
    assert _front(resumed) == _front(whole)
    assert resumed.state.history == [dict(h, seconds=h2["seconds"]) for h, h2 in
                                     zip(whole.state.history, resumed.state.history)]


def test_a_forged_front_score_is_refused_on_resume(tmp_path):
    Search(planted(), GRAMMAR, config(candidates=40), tmp_path, progress=False).run()
    path = tmp_path / CHECKPOINT_NAME
    data = json.loads(path.read_text())
    data["state"]["front"][0]["blocks"][0][0][1] = 7.5  # spill_b is at most its offset + 1
    path.write_text(json.dumps(data))
    with pytest.raises(SycamError, match=r"state\.front\[0\]\.blocks\[0\]\[0\].*outside the metric's bounds"):
        Search(planted(), GRAMMAR, config(), tmp_path, progress=False).run(resume=True)


def test_until_stops_once_one_member_beats_every_threshold():
    table = {"grads": [0.5, 0.5], "pgrads": [0.9, 0.9], "cic": [0.6, 0.4], "abl": [0.95, 0.1]}
    s = Search(planted(), GRAMMAR, config(candidates=None, until="0.55,0.45"), progress=False)
    s.scorer = TableScorer(s.scorer, table, [0.0, 1.0])
    out = s.run()
    # pgrads beats the first threshold only and grads neither: cic is the first to beat both
    assert out.stopped_by == "threshold"
    assert out.front[-1].expression == "cic" and out.state.next_candidate == 3
    assert out.threshold == [0.55, 0.45]
    with pytest.raises(SycamError, match="one threshold per metric"):
        Search(planted(), GRAMMAR, config(until="0.5"), progress=False)


@pytest.mark.parametrize("cic, front, evicted", [
    ([0.9, 0.2], ["cic"], ["grads"]),            # ScoreCAM dominates the front's grads: it replaces it
    ([0.9, 0.9], ["grads", "cic"], []),          # a trade-off: both stay
    ([0.4, 0.6], ["grads"], None),               # dominated by grads: it does not enter
])
def test_the_baselines_the_grammar_expresses_are_offered_to_the_front_at_the_end(cic, front, evicted):
    # ScoreCAM is (cic) here; a candidate budget of one leaves grads alone in the front before the check
    s = Search(planted(), GRAMMAR, config(candidates=1, baselines=("ScoreCAM",)), progress=False)
    s.scorer = TableScorer(s.scorer, {"grads": [0.5, 0.5], "cic": cic}, [0.0, 1.0])
    out = s.run()
    assert [m.expression for m in out.front] == front
    last = out.state.history[-1]
    if evicted is None:
        assert len(out.state.history) == 1 and last["expression"] == "grads"
    else:
        assert last["candidate"] is None and last["baseline"] == "ScoreCAM" and last["evicted"] == evicted
        assert out.front[-1].baseline == "ScoreCAM"
    off = Search(planted(), GRAMMAR, config(candidates=1, baselines=("ScoreCAM",), baseline_check=False),
                 progress=False)
    off.scorer = TableScorer(off.scorer, {"grads": [0.5, 0.5], "cic": cic}, [0.0, 1.0])
    assert [m.expression for m in off.run().front] == ["grads"]  # the plain oracle: no check


def test_a_single_metric_search_keeps_its_incumbent_and_checkpoint_format(tmp_path):
    out = Search(planted(), GRAMMAR, SearchConfig(MASS_A, Budget(candidates=10), level_sizes=LEVELS, equivalence_size=6,
                                                  max_size=5, baselines=()), tmp_path, progress=False).run()
    assert out.state.incumbent is not None and out.front == [] and out.knee is None
    assert all("score" in h and "scores" not in h and "evicted" not in h for h in out.state.history)
    saved = json.loads((tmp_path / CHECKPOINT_NAME).read_text())["state"]
    assert "front" not in saved and saved["incumbent"]["expression"] == to_sexpr(out.best)


def test_passes_against_is_the_single_metric_oracle_on_each_metric():
    inc = torch.tensor([[1.0, 1.0]] * 12, dtype=torch.float64)
    better_a = inc.clone()
    better_a[:, 0] = 2.0  # better on the first metric (higher is better), equal on the second
    assert passes_against(better_a, inc, [True, True])[0]
    assert not passes_against(inc, better_a, [True, True])[0]
    assert passes_against(-better_a, -inc, [False, False])[0]  # the mirror image
    worse = inc.clone()
    worse[:, 1] = 0.0
    assert not passes_against(worse, inc, [True, True])[0]
    assert passes_against(worse, inc, [True, False])[0]  # lower is better on the second metric


def test_objectives_need_two_distinct_metrics_and_bind_options_per_metric():
    deletion, insertion = get_metric("deletion"), get_metric("insertion")
    assert objective_of([deletion]) is deletion
    with pytest.raises(MetricError, match="named twice"):
        Objectives((deletion, deletion))
    bound = bind_options([deletion, insertion], {"steps": 10, "insertion.blur_sigma": 3.0})
    assert bound[0].options == {"steps": 10} and bound[1].options == {"steps": 10, "blur_sigma": 3.0}
    with pytest.raises(MetricError, match="option deletion.frobnicate: no metric"):
        bind_options([deletion, insertion], {"deletion.frobnicate": 1})


def test_the_subsets_of_the_planted_problem_are_levels_of_twelve_or_more():
    subsets = make_subsets(N, LEVELS, 0, torch.zeros(N, dtype=torch.long), 6)
    assert list(subsets.level_sizes) == [12, 18, 24]
    assert Member("grads", [[[1.0, 2.0]], [[3.0, 4.0]]], 0.0, 0).means == [2.0, 3.0]
