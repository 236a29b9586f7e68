"""The search (docs/search.md): planted problems where the best expression is known, the oracle's
levels, budgets, checkpoints and resume, and class-based decomposition."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sycam_dsl.evaluate import Terminals
from sycam_dsl.lang.ast import to_sexpr
from sycam_dsl.lang.sexpr import parse_expr
from sycam_dsl.lang.terminals import terminal_types
from sycam_dsl.metrics import MetricInputs, get_metric
from sycam_dsl.parse import parse_grammar
from sycam_dsl.synthesis import Budget, LocalScorer, Problem, Search, SearchConfig
from sycam_dsl.synthesis.evaluation import method_scores
from sycam_dsl.synthesis.oracle import SMALL_LEVEL, hopeless, judge
from sycam_dsl.synthesis.per_class import dispatch_of, search_per_class
from sycam_dsl.synthesis.subsets import make_subsets

GRAMMAR = parse_grammar("""
(synth-cam weights ((grads Vec) (pgrads Vec) (cic Vec) (abl Vec)) Vec
  ((E Vec))
  ((E Vec (grads pgrads cic abl (+ E E) (- E E) (* E E) (relu E)))))
""", source="<test grammar>")

SCH = get_metric("sch")


def planted(n: int = 24, k: int = 6, hw: int = 6, seed: int = 0, plant: tuple[str, str] = ("cic", "abl"),
            targets: torch.Tensor | None = None) -> Problem:
    """Activations whose channel 0 lies exactly on the object mask and the other channels off it;
    terminals where ``(- plant[0] plant[1])`` is ``[1, -1, ..., -1]``: the only heatmap inside the mask
    everywhere, so SCH is 1 on every image for that expression and below 1 for most others. The
    heatmaps have the layer's size, so upsampling is the identity and SCH is exact."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, hw, hw, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, hw - 2, (2,), generator=g).tolist()
        mask[i, r:r + 2, c:c + 3] = True
    acts = torch.rand(n, k, hw, hw, generator=g) + 0.1
    acts[:, 0] *= mask
    acts[:, 1:] *= ~mask[:, None]
    noise = 3 * torch.randn(n, k, generator=g)  # large: no single terminal comes close
    onehot = -torch.ones(n, k)
    onehot[:, 0] = 1
    values = {t: torch.randn(n, k, generator=g) for t in ("grads", "pgrads", "cic", "abl")}
    values[plant[0]] = onehot + noise
    values[plant[1]] = noise
    values["A"], values["G"] = acts, torch.randn(n, k, hw, hw, generator=g)  # for the GradCAM++ baseline
    targets = targets if targets is not None else torch.zeros(n, dtype=torch.long)
    inputs = MetricInputs(torch.zeros(n, 3, hw, hw), targets, masks=mask)
    return Problem(Terminals(values), acts, inputs, targets.clone(), torch.arange(n))


def config(candidates: int | None = 200, seconds: float | None = None, **kw) -> SearchConfig:
    return SearchConfig(SCH, Budget(seconds=seconds, candidates=candidates), level_sizes=(6, 12, None),
                        equivalence_size=6, max_size=5, **kw)


def test_search_finds_the_planted_expression():
    problem = planted()
    out = Search(problem, GRAMMAR, config(), progress=False).run()
    best_scores = method_scores(out.best, [SCH], problem)["sch"]
    assert torch.all(best_scores == 1.0), to_sexpr(out.best)
    assert out.best.size >= 3  # no single terminal does it
    assert out.level_means == {"I3": 1.0, "I2": 1.0, "I1": 1.0}
    for name, scores in out.state.baselines.items():
        assert sum(scores) / len(scores) < 1.0, name
    # the history ends with the winner, and scores only improve
    history = out.state.history
    assert history[-1]["expression"] == to_sexpr(out.best)
    assert all(a["score"] < b["score"] for a, b in zip(history, history[1:]))
    # the winner beats every baseline, so the final check keeps it: every incumbent was enumerated
    assert all(h["candidate"] is not None for h in history)
    assert out.state.counts.accepted == len(history)


class ScriptedScorer:
    """A fake scorer: answers from a table (expression -> per-image scores by image) on the chunks of
    the search's own ``LocalScorer`` (whose bounds it keeps), and logs calls."""

    def __init__(self, inner: LocalScorer, table: dict[str, list[float]]) -> None:
        self.inner, self.table = inner, table
        self.levels = inner.levels
        self.calls: list[tuple[str, int, int]] = []

    def chunks(self, level):
        return self.inner.chunks(level)

    def chunk_size(self, level, chunk):
        return self.inner.chunk_size(level, chunk)

    def best_rest(self, level, chunk):
        return self.inner.best_rest(level, chunk)

    def scores(self, text: str) -> torch.Tensor:
        """The per-image scores ``[N]`` (by image) of the candidate ``text``."""
        return torch.tensor(self.table.get(text, [0.0] * self.inner.problem.n), dtype=torch.float64)

    def score(self, nodes, j, c):
        part = self.inner.part(j, c)
        out = []
        for node in nodes:
            text = to_sexpr(node)
            self.calls.append((text, j, c))
            out.append(self.scores(text)[part.index])
        return out


def scripted(search: Search, make, *args, **kw):
    """``search`` with its scorer wrapped in ``make(scorer, ...)``; returns both."""
    search.scorer = make(search.scorer, *args, **kw)
    return search, search.scorer


def test_oracle_rejects_at_the_first_level_a_candidate_that_loses_on_most_images():
    n = 24
    problem = planted(n)
    # grads (first candidate) becomes the incumbent with 1.0 everywhere; pgrads is far better on a
    # quarter of the images (a better mean) but worse on the rest; cic beats grads everywhere. I3 has
    # 12 images: enough for the half-the-images rule (smaller levels are judged by the mean).
    levels = (12, 18, None)
    order = make_subsets(n, levels, 0, problem.classes, 6).order
    pgrads = [0.0] * n
    for i in order[:12].tolist()[::4] + order[12:].tolist()[::4]:
        pgrads[i] = 10.0
    table = {"grads": [1.0] * n, "pgrads": pgrads, "cic": [2.0] * n}
    cfg = SearchConfig(SCH, Budget(candidates=4), level_sizes=levels, equivalence_size=6, max_size=5, baselines=())
    s, scorer = scripted(Search(problem, GRAMMAR, cfg, progress=False), ScriptedScorer, table)
    out = s.run()
    levels = {j for text, j, _ in scorer.calls if text == "pgrads"}
    assert levels == {0}
    assert out.state.counts.rejected["I3"] >= 1
    assert to_sexpr(out.best) == "cic"
    assert [h["expression"] for h in out.state.history] == ["grads", "cic"]
    v = judge(torch.tensor(pgrads)[order[:12]].double(), torch.ones(12, dtype=torch.float64), True)
    assert not v.passed and v.mean > v.incumbent_mean and 2 * v.wins < v.n


@pytest.mark.parametrize("wins, mean_better, passed", [(6, True, True), (5, True, False), (8, False, False)])
def test_judge_needs_half_the_images_and_a_better_mean(wins, mean_better, passed):
    inc = torch.ones(12, dtype=torch.float64)  # 12 images: not a small level (see test_incumbent.py)
    cand = torch.full((12,), 0.9, dtype=torch.float64)
    cand[:wins] = 1.5 if mean_better else 1.01
    if not mean_better:
        cand[wins:] = 0.0
    assert judge(cand, inc, True).passed == passed
    assert judge(-cand, -inc, False).passed == passed  # lower is better: the mirror image


def test_candidate_budget_stops_the_search():
    out = Search(planted(), GRAMMAR, config(candidates=7), progress=False).run()
    assert out.stopped_by == "candidates"
    assert out.state.next_candidate == 7 and out.state.counts.considered == 7


def test_time_budget_stops_the_search():
    cfg = SearchConfig(SCH, Budget(seconds=2.0), level_sizes=(6, 12, None), equivalence_size=6, max_size=9)
    out = Search(planted(), GRAMMAR, cfg, progress=False).run()
    assert out.stopped_by == "time"  # this grammar to size 9 takes far longer than 2 s to score
    assert 2.0 <= out.seconds < 2.0 + 5.0
    assert out.best is not None


def test_exhausting_the_grammar_stops_the_search():
    small = SearchConfig(SCH, Budget(candidates=None), level_sizes=(6, 12, None), equivalence_size=6, max_size=2)
    out = Search(planted(), GRAMMAR, small, progress=False).run()
    assert out.stopped_by == "exhausted"


class CountingScorer(ScriptedScorer):
    """Real scores; logs calls and counts the (candidate, image) scores computed in ``work``."""

    def __init__(self, inner: LocalScorer) -> None:
        super().__init__(inner, table={})
        self.work = 0

    def score(self, nodes, j, c):
        self.calls += [(to_sexpr(n), j, c) for n in nodes]
        self.work += len(nodes) * self.inner.chunk_size(j, c)
        return self.inner.score(nodes, j, c)


class InterruptedScorer(CountingScorer):
    """Real scores, but Ctrl-C arrives at the ``at``-th scoring call on the first chunk of ``I3``."""

    def __init__(self, inner: LocalScorer, at: int) -> None:
        super().__init__(inner)
        self.at = at
        self.first_level = 0

    def score(self, nodes, j, c):
        if j == 0 and c == 0 and self.first_level == self.at:  # between candidates: nothing half-scored
            raise KeyboardInterrupt
        self.first_level += j == 0 and c == 0
        return super().score(nodes, j, c)


def _summary(out):
    c = out.state.counts
    return (to_sexpr(out.best), [(h["expression"], h["score"], h["candidate"]) for h in out.state.history],
            out.state.next_candidate, c.considered, c.heatmap_equivalent, c.invalid, c.scored, c.rejected, c.accepted,
            out.state.baselines)


@pytest.mark.parametrize("batch", [1, 8])
def test_resume_after_an_interrupt_gives_the_uninterrupted_result_and_scores_nothing_twice(tmp_path, batch):
    problem = planted(seed=3)
    cfg = config(candidates=120, candidate_batch=batch, image_chunk=2)
    full, full_calls = scripted(Search(problem, GRAMMAR, cfg, tmp_path / "a", progress=False), CountingScorer)
    expected = full.run()
    assert expected.stopped_by == "candidates"

    first, first_calls = scripted(Search(problem, GRAMMAR, cfg, tmp_path / "b", progress=False), InterruptedScorer,
                                  at=30 if batch == 1 else 6)
    stopped = first.run()
    assert stopped.stopped_by == "interrupted"
    saved = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert 0 < saved["state"]["next_candidate"] < 120

    second, second_calls = scripted(Search(problem, GRAMMAR, cfg, tmp_path / "b", progress=False), CountingScorer)
    second.resumed_state()  # the checkpoint's scores are scored again to check them: not the search's work
    second_calls.calls.clear()
    resumed = second.run(resume=True)
    assert _summary(resumed) == _summary(expected)
    if batch == 1:
        # every (candidate, level, chunk) scored once over the two runs, as in the uninterrupted one
        assert sorted(first_calls.calls + second_calls.calls) == sorted(full_calls.calls)
    else:
        # only the batch the interrupt cut short is scored again
        again = len(first_calls.calls) + len(second_calls.calls) - len(full_calls.calls)
        assert again <= batch * first.scorer.chunks(0)


def test_a_bigger_budget_continues_a_finished_search(tmp_path):
    problem = planted(seed=4)
    expected = Search(problem, GRAMMAR, config(candidates=90), tmp_path / "a", progress=False).run()
    Search(problem, GRAMMAR, config(candidates=40), tmp_path / "b", progress=False).run()
    resumed = Search(problem, GRAMMAR, config(candidates=90), tmp_path / "b", progress=False).run(resume=True)
    assert _summary(resumed) == _summary(expected)


def test_resuming_another_search_is_refused(tmp_path):
    Search(planted(seed=1), GRAMMAR, config(candidates=5), tmp_path, progress=False).run()
    with pytest.raises(Exception, match="different problem"):
        Search(planted(seed=2), GRAMMAR, config(candidates=5), tmp_path, progress=False).run(resume=True)
    with pytest.raises(Exception, match="different .*seed"):
        Search(planted(seed=1), GRAMMAR, config(candidates=5, seed=9), tmp_path, progress=False).run(resume=True)


def test_per_class_searches_dispatch_by_predicted_class():
    from sycam_dsl.backend.dispatch_module import compile_dispatch

    n = 24
    targets = torch.tensor([0, 1] * (n // 2))
    a = planted(n, seed=5, plant=("cic", "abl"), targets=targets)
    b = planted(n, seed=6, plant=("grads", "pgrads"), targets=targets)
    # class 0's images come from problem a, class 1's from problem b
    pick = lambda t0, t1: torch.where((targets == 0).view(-1, *[1] * (t0.dim() - 1)), t0, t1)  # noqa: E731
    terms = Terminals({t: pick(a.terminals[t], b.terminals[t]) for t in a.terminals})
    inputs = MetricInputs(torch.zeros(n, 3, 6, 6), targets, masks=pick(a.inputs.masks, b.inputs.masks))
    problem = Problem(terms, pick(a.acts, b.acts), inputs, targets.clone(), torch.arange(n))
    cfg = SearchConfig(SCH, Budget(candidates=200), level_sizes=(4, 8, None), equivalence_size=4, max_size=5)

    searches, stopped = search_per_class(problem, GRAMMAR, cfg, None, progress=False)
    assert [s.cls for s in searches] == [0, 1] and stopped == "candidates"
    dispatch = dispatch_of(searches, cfg, problem)
    scores = method_scores(dispatch, [SCH], problem)["sch"]
    assert torch.all(scores == 1.0)
    for c, other in ((0, 1), (1, 0)):
        own = problem.subset((targets == c).nonzero().flatten())
        assert torch.all(method_scores(dispatch.per_class[c], [SCH], own)["sch"] == 1.0)
        assert method_scores(dispatch.per_class[other], [SCH], own)["sch"].mean() < 1.0
    module = compile_dispatch(dispatch.per_class, dispatch.fallback)
    names = [t for t in ("grads", "pgrads", "cic", "abl") if t in {v for node in dispatch.per_class.values()
                                                                   for v in node.terminals()}]
    w = module(targets, *[terms[t] for t in names])
    from sycam_dsl.evaluate import evaluate
    for i in range(n):
        want = evaluate(dispatch.expression_for(int(targets[i])), terms.subset([i]))
        assert torch.allclose(w[i:i + 1], want)


def test_subsets_nest_and_balance_classes():
    classes = torch.tensor([0] * 30 + [1] * 10 + [2] * 20)
    s = make_subsets(60, (6, 30, None), seed=1, classes=classes, equivalence_size=3)
    assert s.level_sizes == (6, 30, 60) and s.names == ["I3", "I2", "I1"]
    assert sorted(s.order.tolist()) == list(range(60))
    assert sorted(classes[s.equivalence].tolist()) == [0, 1, 2]
    assert sorted(classes[s.level(0)].tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.equal(torch.cat([s.block(0), s.block(1), s.block(2)]), s.order)
    again = make_subsets(60, (6, 30, None), seed=1, classes=classes, equivalence_size=3)
    assert torch.equal(s.order, again.order)
    assert not torch.equal(s.order, make_subsets(60, (6, 30, None), seed=2, classes=classes).order)
    with pytest.raises(Exception, match="grow"):
        make_subsets(60, (30, 6, None))


def test_expression_parse_round_trip_of_incumbent():
    node = parse_expr("(- cic abl)", terminal_types())
    assert to_sexpr(node) == "(- cic abl)"


def test_a_tiny_time_budget_stops_the_search_before_any_candidate():
    # the budget bounds the search: once it is spent no candidate is scored, and the final check
    # returns the best baseline the grammar expresses (without it, nothing)
    cfg = SearchConfig(SCH, Budget(seconds=1e-6), level_sizes=(6, 12, None), equivalence_size=6, max_size=9)
    out = Search(planted(), GRAMMAR, cfg, progress=False).run()
    assert out.stopped_by == "time" and out.state.counts.considered == 0 and out.seconds < 1.0
    means = {k: sum(v) / len(v) for k, v in out.state.baselines.items() if k != "GradCAM++"}  # not in GRAMMAR
    assert out.state.history[-1]["baseline"] == max(means, key=means.__getitem__)
    plain = Search(planted(), GRAMMAR, replace(cfg, baseline_check=False), progress=False).run()
    assert plain.stopped_by == "time" and plain.best is None and plain.level_means == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 0.99)), min_size=1, max_size=30), st.booleans(),
       st.sampled_from([0, SMALL_LEVEL, 31]), st.data())
def test_hopeless_is_never_wrong(pairs, higher, small_level, data):
    """Early stopping is sound: whenever ``hopeless`` gives up on a prefix, even the best possible
    scores on the remaining images (the bound, which beats the incumbent on each of them) fail;
    under the half-the-images rule (``small_level`` 0), the small-level mean-with-margin rule (31:
    every level here is small) and the default (levels below 10 images small, the others not)."""
    c = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    i = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    if not higher:  # mirror: lower is better, scores in [-1, 0], best bound -1
        c, i = -c, -i
    n = len(pairs)
    s = data.draw(st.integers(0, n))
    best = 1.0 if higher else -1.0
    if hopeless(c[:s], i[:s], n, float(i.mean()), higher, best_rest=best * (n - s), small_level=small_level):
        completed = torch.cat([c[:s], torch.full((n - s,), best, dtype=torch.float64)])
        assert not judge(completed, i, higher, small_level).passed
    if hopeless(c[:s], i[:s], n, float(i.mean()), higher, small_level=small_level):  # no bounds: counting only
        completed = torch.cat([c[:s], torch.full((n - s,), 1e9 if higher else -1e9, dtype=torch.float64)])
        assert not judge(completed, i, higher, small_level).passed
